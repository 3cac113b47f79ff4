#include "core/allocator.h"

#include <array>
#include <atomic>
#include <cstdlib>

namespace meshdit {
namespace {

class HostAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    // aligned_alloc wants a size that is a multiple of the alignment.
    return std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  }
  void deallocate(void* p, size_t) override { std::free(p); }
  const char* name() const override { return "host"; }
};

// Atomic: a test may swap an allocator while pool threads allocate.
struct Registry {
  std::array<std::atomic<Allocator*>, kDeviceCount> slots{};
  Registry() {
    for (auto& s : slots) s.store(nullptr);
    slots[size_t(Device::CPU)].store(&host_allocator());
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

Allocator& host_allocator() {
  // Never destroyed: a tensor held in a static may give its buffer back after function-local statics
  // are gone at exit.
  static HostAllocator* a = new HostAllocator;
  return *a;
}

Allocator* allocator_for(Device d) { return registry().slots[size_t(d)].load(); }

Allocator* set_allocator(Device d, Allocator* a) { return registry().slots[size_t(d)].exchange(a); }

}  // namespace meshdit
