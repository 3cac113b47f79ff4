// A cache of freed large buffers, so the next request of the same size class reuses one instead of asking
// the OS for fresh pages. A denoising step allocates the same activations every step; fresh memory costs a
// page fault and a zeroed page per 4 KiB (2-35 us each in the VMs we measured: up to 1.5 s per Flux step at
// 512x512, bench/README.md "Host buffer cache"). The host allocator keeps its large buffers here.
//
// Sizes are rounded up to classes at most 1/8 apart (a 63 MB request takes a 64 MB buffer), so buffers of
// nearby sizes are shared; freed buffers wait, least recently freed evicted first, while their total stays
// under the limit. The backing functions are given, so the policy is tested with a fake backing (and runs
// under the sanitizers), while the host allocator maps anonymous memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>

namespace meshdit {

class BufferCache {
 public:
  struct Backing {
    void* (*acquire)(size_t bytes);          // null when out of memory
    void (*release)(void* p, size_t bytes);  // bytes as acquired
  };
  struct Stats {
    size_t cached_bytes = 0;  // freed buffers waiting for reuse
    size_t limit_bytes = 0;
    uint64_t hits = 0, misses = 0, evictions = 0;
  };

  BufferCache(Backing backing, size_t limit_bytes) : backing_(backing), limit_(limit_bytes) {}
  ~BufferCache() { release_all(); }
  BufferCache(const BufferCache&) = delete;
  BufferCache& operator=(const BufferCache&) = delete;

  // The size actually acquired for a request of `bytes`: at least bytes, at most 1/8 more (and a multiple of 64 KiB).
  static size_t size_class(size_t bytes);

  // A buffer of at least `bytes`: a cached one of the same class, else a fresh one from the backing.
  void* allocate(size_t bytes);
  // Gives back a buffer from allocate(bytes) with the same bytes: kept for reuse while the cache stays under
  // its limit (older buffers are released to make room), else released.
  void deallocate(void* p, size_t bytes);
  // Releases every cached buffer (buffers in use are not affected).
  void release_all();
  // A new limit; cached buffers over it are released at once. 0 turns caching off.
  void set_limit(size_t bytes);
  Stats stats() const;

 private:
  struct Entry {
    void* p;
    size_t bytes;
  };
  void evict_until(size_t limit);  // with mu_ held

  Backing backing_;
  size_t limit_;
  mutable std::mutex mu_;
  std::list<Entry> lru_;  // oldest first
  std::multimap<size_t, std::list<Entry>::iterator> by_size_;
  size_t cached_ = 0;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0;
};

}  // namespace meshdit
