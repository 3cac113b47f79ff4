// NCCL behind the Communicator interface, for GPU ranks (one GPU per rank), bootstrapped over MPI: rank 0
// makes the ncclUniqueId and broadcasts it over MPI. Built without MPI (MESHDIT_WITH_MPI=OFF) the world is
// this one process: an NCCL communicator of one rank on one GPU, whose bootstrap, sub-groups and strings stay
// in the process (nccl_host.h). gather_strings is host strings over MPI.
//
// Device buffers (float32 device pointers of the communicator's GPU) are stream-ordered, not host-synchronous:
// a call enqueues the collective on the communicator's own stream after the work already enqueued on the CUDA
// backend's compute stream, and makes the compute stream wait for it, then returns without waiting. Kernels
// and copies the backend enqueues afterwards see the result; host code sees it after a host wait on the
// compute stream (the backend's copy to the host). Buffers may be freed as soon as a call returns (the
// caching allocator's reuse stays ordered; nccl_comm.cpp says why). send_recv_start leaves the compute stream
// free to run the caller's kernels while its data travels; send_recv_wait makes the compute stream wait for
// it. Between the two the caller must not free or touch its buffers. Trace spans around these calls measure
// the enqueue, not the transfer.
// Host buffers (pageable, pinned or managed memory) are staged through device memory, and such a call
// returns with the result in place, as MPI's does. Device memory of another GPU is refused.
// For send_recv the receive count must equal the count the peer sends (NCCL matches messages by count, not by
// capacity as MPI does). CUDA and NCCL failures abort with a message naming the call (comm.h).
//
// A failed collective (a peer gone, a network error) is an NCCL asynchronous error; it aborts, instead of
// hanging, when noticed: at the start of every call, in barrier(), split() and calls on host memory, and in
// the CUDA backend's host waits for its stream (copies to and from the host, so at the latest where a step's
// result reaches the host). A hang is still possible where NCCL raises no error or nothing looks:
//  - a peer that dies while a transfer between GPUs of one node is in flight (NVLink, PCIe P2P, shared
//    memory): NCCL's kernels wait on the peer's memory and no error is raised;
//  - a rank that never makes the matching call (ranks whose control flow differ);
//  - host waits outside those points: cudaDeviceSynchronize, cudaStreamSynchronize or cudaMemcpy in other
//    code, cudaFree (the caching allocator's release synchronises the device);
//  - the bootstrap (ncclCommInitRank, ncclCommSplit), which waits on the other ranks on the host.
// Only a watchdog thread that calls ncclCommAbort after a timeout would end those; there is none.
//
// This header is present in every build; nccl_comm.cpp is compiled only when CMake found CUDA and NCCL
// (MESHDIT_CUDA), otherwise nccl_stub.cpp, whose factory says the build has no NCCL.
#pragma once
#include <memory>

#include "core/error.h"
#include "parallel/comm.h"

namespace meshdit {

// True when this build has the NCCL communicator (CUDA and NCCL found at configure time). Says nothing
// about whether this machine has a GPU: nccl_world_communicator() finds that out.
bool nccl_available();

// The NCCL communicator over every rank of MPI_COMM_WORLD. Collective: every rank must call it, and every
// rank gets an error when any rank cannot take part (built without NCCL, MPI not initialised, no CUDA
// device or driver, two ranks of one node on the same GPU), so no rank is left waiting. Rank r uses device
// (local rank % device count), the local rank taken from OMPI_COMM_WORLD_LOCAL_RANK (or the rank among
// the ranks sharing its node) and made current on the calling thread.
Result<std::unique_ptr<Communicator>> nccl_world_communicator();

}  // namespace meshdit
