// The private memory pool of one captured device graph (backend/cuda/graph.cu). Replaying a graph reuses the
// addresses it captured, so every buffer the captured forward allocated must stay reserved for the graph
// while it lives: nothing outside the graph may be handed one of them.
//
// The pool is bookkeeping only: the device allocator (backend/cuda/memory.cu) does the driver calls and holds
// its lock around every call here. Its life, in the order the graph drives it:
//   1. rehearse: an eager forward runs with note_alloc / note_free on every allocation and free, so the pool
//      learns how many blocks of each size class the forward holds at once (plan());
//   2. reserve: before the capture, add_reserved() gives the pool those blocks, from the allocator's free lists
//      or the driver, since the driver may not be asked for memory while a stream is captured;
//   3. capture: every allocation is take()n from the pool (null on a miss: the capture is then abandoned),
//      every free of a pool block comes back to it (give_back), and a block allocated before the capture and
//      freed during it is held (hold), never reused: the captured kernels may read it, and a replay must find
//      what they read there then, not what a later kernel of the pool wrote;
//   4. while the graph lives, pool blocks freed later come back to the pool, and only the next capture of the
//      same pool could take them;
//   5. close: the free and held blocks go back to the allocator's free lists; blocks still in use (a tensor the
//      caller kept) are forgotten, so their later free goes to the allocator like any other block.
// Reuse inside the pool during the capture is safe because a replay runs the kernels in capture order on one
// stream, the order the eager allocator relies on too.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace meshdit {

class GraphPool {
 public:
  // Rehearsal: an allocation of size class `cls` at p, and a free of p (blocks from before the rehearsal are
  // ignored).
  void note_alloc(void* p, size_t cls);
  void note_free(void* p);
  // Blocks per size class the rehearsed forward held at most at once.
  const std::map<size_t, int64_t>& plan() const { return peak_; }
  // Bytes the plan reserves.
  size_t plan_bytes() const;

  // A block of class `cls` for the pool's free list (outside a capture).
  void add_reserved(void* p, size_t cls);
  // A free block of class `cls`, or null when the pool has none (counted in misses()).
  void* take(size_t cls);
  // p back into the pool when it is one of its blocks in use (true); false otherwise (the caller's block).
  bool give_back(void* p);
  // A block from outside the pool freed during the capture: kept, never reused, until close().
  void hold(void* p, size_t cls);
  // Whether p is a block of the pool (free, held or in use).
  bool owns(void* p) const { return cls_of_.count(p) != 0; }

  // Ends the pool: the blocks the caller gets back (free and held, with their classes); blocks in use are
  // forgotten. Afterwards the pool owns nothing.
  std::vector<std::pair<void*, size_t>> close();

  size_t reserved_bytes() const { return reserved_bytes_; }
  size_t in_use_blocks() const { return taken_.size(); }
  uint64_t misses() const { return misses_; }

 private:
  // Rehearsal.
  std::unordered_map<void*, size_t> rehearsed_;  // blocks allocated in the rehearsal and not freed yet
  std::map<size_t, int64_t> live_, peak_;
  // Reserved and held blocks.
  std::unordered_map<void*, size_t> cls_of_;   // every block the pool owns -> its class
  std::unordered_set<void*> held_;             // foreign blocks freed during the capture
  std::unordered_set<void*> taken_;            // pool blocks in use
  std::map<size_t, std::vector<void*>> free_;  // pool blocks free for take()
  size_t reserved_bytes_ = 0;
  uint64_t misses_ = 0;
};

}  // namespace meshdit
