// What code outside the CUDA backend needs to order its own CUDA work with the backend's: the NCCL
// communicator (parallel/nccl_comm.cpp) runs collectives on a stream of its own, ordered against the compute
// stream with events instead of host waits, and must be able to stop a host wait on the compute stream when
// a collective it waits on has failed. Plain C++ (no CUDA headers), so the parallel layer includes it without
// nvcc. Defined in memory.cu, so only in builds with the CUDA backend (MESHDIT_HAVE_CUDA_BACKEND).
#pragma once

namespace meshdit::cuda {

// The backend's compute stream (cuda::stream(), a cudaStream_t), made on the current device at its first use.
void* compute_stream_handle();

// Checks run while the host waits for the compute stream (copy_to_host and copy_from_host, the backend's
// only host waits). The stream can wait on work from elsewhere (an NCCL collective) that fails without ever
// completing, a peer gone: a check that sees such a failure aborts with its message, where
// cudaStreamSynchronize would wait forever. A check must not wait for the compute stream itself. With no
// check registered the wait is a plain cudaStreamSynchronize.
using StreamCheck = void (*)(void* ctx);
void add_stream_check(StreamCheck check, void* ctx);
void remove_stream_check(StreamCheck check, void* ctx);

}  // namespace meshdit::cuda
