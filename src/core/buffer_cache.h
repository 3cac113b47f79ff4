// A cache of freed large buffers, so the next request reuses memory that is already resident instead of asking
// the OS for fresh pages. A denoising step allocates the same activations every step; fresh memory costs a page
// fault and a zeroed page per 4 KiB (2-35 us each in the VMs we measured: up to 1.5 s per Flux step at 512x512,
// bench/README.md "Host buffer cache"). The host allocator keeps its large buffers here.
//
// The buffers are ranges of large reserved address spaces (regions), handed out best fit (the smallest free range
// that holds the request, its lowest-addressed one on a tie), split on the way out and merged with free neighbours
// on the way back, like a caching GPU allocator's "expandable segments". A cache of separate buffers by size
// class kept, at Flux's peak, ~100 MB of freed buffers of sizes nothing asked for at that moment (bench/README.md
// "A host arena"); ranges of one address space serve any request that fits. A region's pages are committed (made
// usable) as the highest range handed out grows; a freed range stays resident for reuse while the freed memory
// in total stays under the limit, and beyond it the longest-free ranges give their pages back (discard) while
// keeping their addresses. Limit 0 turns caching off: every buffer is then its own reservation, given back whole
// when freed, so a sanitizer build still faults on a use after free.
//
// The backing functions are given, so the policy is tested with a fake backing (and runs under the sanitizers),
// while the host allocator maps anonymous memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <vector>

#include "core/align.h"

namespace meshdit {

class BufferCache {
 public:
  struct Backing {
    void* (*reserve)(size_t bytes);          // address space of `bytes` (a multiple of kGranule); null if refused
    bool (*commit)(void* p, size_t bytes);   // makes reserved pages usable; false when out of memory
    void (*discard)(void* p, size_t bytes);  // gives committed pages back; they stay usable (read as zeros)
    void (*unreserve)(void* p, size_t bytes);
  };
  struct Stats {
    size_t cached_bytes = 0;     // freed, still resident, waiting for reuse
    size_t committed_bytes = 0;  // the regions' usable pages, in use or not
    size_t limit_bytes = 0;
    uint64_t hits = 0, misses = 0, evictions = 0;  // a miss reaches pages that were never used or were discarded
  };

  static constexpr size_t kGranule = size_t(64) << 10;    // sizes and offsets are multiples of this
  static constexpr size_t kCommitStep = size_t(2) << 20;  // pages are committed in steps of a huge page

  // region_bytes: the address space reserved at a time (a request larger than that gets a region of its own).
  BufferCache(Backing backing, size_t limit_bytes, size_t region_bytes);
  ~BufferCache();
  BufferCache(const BufferCache&) = delete;
  BufferCache& operator=(const BufferCache&) = delete;

  // The size a request of `bytes` takes: rounded up to the granule.
  static size_t size_class(size_t bytes) { return bytes == 0 ? kGranule : align_up(bytes, kGranule); }

  // A buffer of at least `bytes`, aligned to the granule; null when out of memory.
  void* allocate(size_t bytes);
  // Gives back a buffer from allocate(bytes), with the same bytes.
  void deallocate(void* p, size_t bytes);
  // Gives every freed range's pages back to the OS (buffers in use are not affected), and the regions nothing
  // uses any more, but the first, their address space.
  void release_all();
  // A new limit; freed memory over it is given back at once. 0 turns caching off.
  void set_limit(size_t bytes);
  Stats stats() const;

 private:
  struct Range {
    size_t bytes = 0;
    size_t region = 0;  // index into regions_
    bool free = false;
    size_t resident = 0;  // free ranges: how many of its bytes hold pages (an upper bound after merges)
    uint64_t freed_at = 0;
  };
  struct Region {
    char* base = nullptr;
    size_t bytes = 0, committed = 0;  // pages [base, base + committed) are usable
  };
  using RangeMap = std::map<char*, Range>;
  void insert_free(RangeMap::iterator it);
  void erase_free(RangeMap::iterator it);
  RangeMap::iterator merge_free(RangeMap::iterator it);  // with its free neighbours in the same region
  void discard(RangeMap::iterator it);                   // gives a free range's pages back
  void evict_until(size_t limit);                        // oldest freed first
  bool add_region(size_t bytes);

  Backing backing_;
  size_t limit_, region_bytes_;
  mutable std::mutex mu_;
  std::vector<Region> regions_;
  RangeMap ranges_;                             // every range of every region, in use or free
  std::set<std::pair<size_t, char*>> by_size_;  // the free ones: (bytes, address)
  std::map<void*, size_t> direct_;              // buffers made with caching off: their own reservations
  size_t cached_ = 0;
  uint64_t clock_ = 0, hits_ = 0, misses_ = 0, evictions_ = 0;
};

}  // namespace meshdit
