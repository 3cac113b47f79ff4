// A stand-in for a GPU in a build without one: the CPU backend registered under the CUDA device tag, with
// its own allocator (counting live buffers) and host<->device copies, for as long as the object lives.
// Tensors on it live in host memory but carry the CUDA tag, so any code path that mixes them with host
// tensors, or reads them without the registered copies, is caught exactly as on a real device.
#pragma once
#include <atomic>
#include <cstring>

#include "backend/backend.h"
#include "core/allocator.h"
#include "core/tensor.h"

namespace meshdit::test {

// Host<->device copies through the stand-in, counted (tests check that data did cross, and only there).
inline std::atomic<int64_t> g_uploads{0}, g_downloads{0};
inline void counted_to_host(void* dst, const void* src, size_t bytes) {
  ++g_downloads;
  std::memcpy(dst, src, bytes);
}
inline void counted_from_host(void* dst, const void* src, size_t bytes) {
  ++g_uploads;
  std::memcpy(dst, src, bytes);
}

class StandInDevice {
 public:
  StandInDevice() {
    table_ = cpu_backend();
    table_.name = "cpu-as-cuda";
    table_.device = Device::CUDA;
    table_.allocator = &alloc_;
    table_.copy_to_host = counted_to_host;
    table_.copy_from_host = counted_from_host;
    copies_ = DeviceCopy{table_.copy, table_.copy_to_host, table_.copy_from_host, table_.zero};
    prev_alloc_ = set_allocator(Device::CUDA, &alloc_);
    prev_copy_ = set_device_copy(Device::CUDA, &copies_);
    prev_backend_ = set_backend_for_testing(Device::CUDA, &table_);
  }
  ~StandInDevice() {
    set_backend_for_testing(Device::CUDA, prev_backend_);
    set_device_copy(Device::CUDA, prev_copy_);
    set_allocator(Device::CUDA, prev_alloc_);
  }
  StandInDevice(const StandInDevice&) = delete;
  StandInDevice& operator=(const StandInDevice&) = delete;
  int64_t live() const { return alloc_.live.load(); }
  // What the device reports as free memory (Backend::free_memory; the host's MemAvailable by default).
  void set_free_memory(size_t (*f)()) { table_.free_memory = f; }

 private:
  class Counting final : public Allocator {
   public:
    void* allocate(size_t bytes) override {
      ++live;
      return host_allocator().allocate(bytes);
    }
    void deallocate(void* p, size_t bytes) override {
      --live;
      host_allocator().deallocate(p, bytes);
    }
    const char* name() const override { return "stand-in"; }
    std::atomic<int64_t> live{0};
  };
  Backend table_{};
  Counting alloc_;
  DeviceCopy copies_{};
  Allocator* prev_alloc_ = nullptr;
  const DeviceCopy* prev_copy_ = nullptr;
  const Backend* prev_backend_ = nullptr;
};

}  // namespace meshdit::test
