// The devices a tensor can live on. Core only names them; what a device can do (allocate, copy, compute) is
// registered by its backend (core/allocator.h, set_device_copy in core/tensor.h, backend/backend.h).
#pragma once
#include <cstdint>

namespace meshdit {

enum class Device : uint8_t { CPU, CUDA };
inline constexpr int kDeviceCount = 2;

inline const char* device_name(Device d) {
  switch (d) {
    case Device::CPU: return "cpu";
    case Device::CUDA: return "cuda";
  }
  return "?";
}

}  // namespace meshdit
