// The CUDA side of GraphedForward (backend/graphed_forward.h) and the caching allocator's capture hooks
// (memory.cu) it drives. Plain C++: graphed_forward.cpp includes it without CUDA headers.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "backend/graphed_forward.h"
#include "core/graph_pool.h"

namespace meshdit::cuda {

// A graph captured on the backend's stream; its pool serves the capture (graph.cu).
std::unique_ptr<DeviceGraph> make_graph();

// Thrown while this thread captures, in place of the process abort a failed CUDA call (MD_CUDA) otherwise
// means, and by the allocator and the host copies on what a capture cannot do; caught by the capture alone.
struct CaptureAborted {
  std::string why;
};

// memory.cu's hooks. While a rehearsal pool is set, every allocation and free of the caching allocator is
// noted in it, and the bytes uploaded from the host counted; ending it returns that count.
void begin_rehearsal(GraphPool* pool);
size_t end_rehearsal();
// Gives the pool the blocks of its plan (from the free lists, else the driver) and registers it: pool blocks
// freed while it is registered come back to it. An error when the driver has not the memory.
Status reserve_pool(GraphPool& pool);
// Unregisters the pool; its free and held blocks go to the allocator's free lists.
void close_pool(GraphPool& pool);
// While capturing (this thread, between the two): allocations come from `pool` only, frees of other blocks
// are held by it, uploads from the host are staged in `staging` (pinned, `staging_bytes`, kept by the graph,
// so a replay copies the same bytes again), and a device-to-host copy or a failed CUDA call throws
// CaptureAborted.
void begin_capture_hooks(GraphPool* pool, char* staging, size_t staging_bytes);
void end_capture_hooks();

}  // namespace meshdit::cuda
