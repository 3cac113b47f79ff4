#include "core/allocator.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <string>

#include "core/align.h"
#include "core/buffer_cache.h"

#if defined(__SANITIZE_ADDRESS__)
#define MESHDIT_HOST_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) || __has_feature(thread_sanitizer)
#define MESHDIT_HOST_CACHE 0
#endif
#endif
#ifndef MESHDIT_HOST_CACHE
#define MESHDIT_HOST_CACHE 1
#endif

namespace meshdit {
namespace {

constexpr size_t kLarge = size_t(1) << 20;  // from here on buffers are mapped and cached

constexpr size_t kHugePage = size_t(2) << 20;

// Address space only (no memory, no commit charge): aligned to a huge page, so committed steps of 2 MiB can be
// backed by transparent huge pages.
void* reserve(size_t bytes) {
  void* p = mmap(nullptr, bytes + kHugePage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  const uintptr_t raw = uintptr_t(p), base = align_up(raw, kHugePage);
  if (base > raw) munmap(p, base - raw);
  if (raw + bytes + kHugePage > base + bytes) munmap(reinterpret_cast<void*>(base + bytes), raw + kHugePage - base);
  return reinterpret_cast<void*>(base);
}

bool commit(void* p, size_t bytes) {
  if (mprotect(p, bytes, PROT_READ | PROT_WRITE) != 0) return false;
  // One fault per 2 MiB instead of per 4 KiB where transparent huge pages are on request ("madvise").
  if (bytes >= kHugePage) madvise(p, bytes, MADV_HUGEPAGE);
  return true;
}

void discard(void* p, size_t bytes) { madvise(p, bytes, MADV_DONTNEED); }

void unreserve(void* p, size_t bytes) { munmap(p, bytes); }

size_t physical_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? size_t(pages) * size_t(page) : 0;
}

size_t default_limit() {
  if (const char* env = std::getenv("MESHDIT_HOST_CACHE_MB")) {
    char* end = nullptr;
    const unsigned long long mb = std::strtoull(env, &end, 10);
    if (end != env && *end == '\0') return size_t(mb) << 20;
  }
  const size_t total = physical_memory();
  const size_t cap = size_t(4) << 30;
  return total / 8 < cap ? total / 8 : cap;
}

BufferCache& cache() {
  // Never destroyed, like the allocator: tensors in statics give their buffers back after exit starts.
  // Regions as large as the machine's memory: one holds every buffer a run can have at once (address space is
  // plentiful; only committed pages count), so freed ranges of it serve requests of any size.
  static BufferCache* c =
      new BufferCache({reserve, commit, discard, unreserve}, MESHDIT_HOST_CACHE ? default_limit() : 0,
                      std::max(physical_memory(), size_t(1) << 30));
  return *c;
}

std::atomic<size_t> g_live{0}, g_peak_live{0};

class HostAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    if (MESHDIT_HOST_CACHE && bytes >= kLarge)
      p = cache().allocate(bytes);
    else  // aligned_alloc wants a size that is a multiple of the alignment.
      p = std::aligned_alloc(64, align_up(bytes, 64));
    if (p) {
      const size_t live = g_live.fetch_add(bytes, std::memory_order_relaxed) + bytes;
      size_t peak = g_peak_live.load(std::memory_order_relaxed);
      while (live > peak && !g_peak_live.compare_exchange_weak(peak, live, std::memory_order_relaxed)) {
      }
    }
    return p;
  }
  void deallocate(void* p, size_t bytes) override {
    g_live.fetch_sub(bytes, std::memory_order_relaxed);
    if (MESHDIT_HOST_CACHE && bytes >= kLarge) return cache().deallocate(p, bytes);
    std::free(p);
  }
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

HostCacheStats host_cache_stats() {
  const BufferCache::Stats s = cache().stats();
  return HostCacheStats{s.cached_bytes,
                        s.committed_bytes,
                        s.limit_bytes,
                        s.hits,
                        s.misses,
                        s.evictions,
                        g_live.load(std::memory_order_relaxed),
                        g_peak_live.load(std::memory_order_relaxed)};
}

void release_host_cache() { cache().release_all(); }

void set_host_cache_limit(size_t bytes) { cache().set_limit(MESHDIT_HOST_CACHE ? bytes : 0); }

Allocator* allocator_for(Device d) { return registry().slots[size_t(d)].load(); }

Allocator* set_allocator(Device d, Allocator* a) { return registry().slots[size_t(d)].exchange(a); }

}  // namespace meshdit
