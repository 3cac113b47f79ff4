#include "backend/backend.h"

#include <array>
#include <atomic>

#if defined(MESHDIT_HAVE_CUDA_BACKEND)
#include "backend/cuda/cuda_backend.h"
#endif

namespace meshdit {
namespace {

std::array<std::atomic<const Backend*>, kDeviceCount>& stand_ins() {
  static std::array<std::atomic<const Backend*>, kDeviceCount> s{};
  return s;
}

// Registers b's memory and data movement with core, leaving registrations already there alone: the
// host's are core's own, and an application may have installed its own (caching) allocator.
void set_up(const Backend& b) {
  static DeviceCopy copies[kDeviceCount];
  const size_t i = size_t(b.device);
  copies[i] = DeviceCopy{b.copy, b.copy_to_host, b.copy_from_host, b.zero};
  if (!allocator_for(b.device)) set_allocator(b.device, b.allocator);
  if (!device_copy(b.device)) set_device_copy(b.device, &copies[i]);
}

}  // namespace

const std::vector<const Backend*>& compiled_backends() {
  static const std::vector<const Backend*> list = [] {
    std::vector<const Backend*> v{&cpu_backend()};
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
    // Only with a device: a CUDA build on a machine without a GPU (CI) runs as a CPU-only one.
    if (cuda::device_present()) v.push_back(&cuda_backend());
#endif
    for (const Backend* b : v) set_up(*b);
    return v;
  }();
  return list;
}

const Backend* find_backend(Device d) {
  if (const Backend* b = stand_ins()[size_t(d)].load(std::memory_order_relaxed)) return b;
  for (const Backend* b : compiled_backends())
    if (b->device == d) return b;
  return nullptr;
}

const Backend* set_backend_for_testing(Device d, const Backend* b) {
  MD_CHECK(!b || b->device == d, "set_backend_for_testing: the backend is for another device");
  return stand_ins()[size_t(d)].exchange(b);
}

const Backend& backend_for(Device d) {
  const Backend* b = find_backend(d);
  MD_CHECK(b != nullptr, std::string("no backend for device ") + device_name(d) +
                            " (not compiled in, or no such device present)");
  return *b;
}

}  // namespace meshdit
