// Collectives on tensors: what layers call. Each is a "comm" span in the trace carrying its bytes, so time
// spent waiting on other ranks is visible per rank. A size-1 group costs nothing (no copy, no span).
#pragma once
#include <vector>

#include "core/tensor.h"
#include "parallel/comm.h"

namespace meshdit {

// x (float32, made contiguous in place if it is not) = sum over the group.
void all_reduce_(Tensor& x, Communicator& c);
// Concatenation along `dim` of every rank's x (same shape on every rank).
Tensor all_gather(const Tensor& x, int64_t dim, Communicator& c);
// Same with rank r holding sizes[r] entries along `dim` (an uneven sequence split).
Tensor all_gather_v(const Tensor& x, int64_t dim, Communicator& c, const std::vector<int64_t>& sizes);
// x [B, k * n] made of k chunks of n features each (rank r holds features [r n, (r+1) n) of every chunk)
// -> [B, k * n * P] with each chunk whole: the layout of the unsharded modulation linear's output.
Tensor all_gather_chunks(const Tensor& x, int64_t k, Communicator& c);

// The buffer-level collectives on tensors: each tensor's memory goes to the communicator as it is (host
// memory for MPI, device memory for NCCL), so layers and models never take its address themselves. Tensors
// are contiguous float32; counts are the tensors' element counts.

// [P, ...x.shape]: every rank's x (the same shape on every rank) stacked in rank order, one all-gather.
Tensor all_gather_stacked(const Tensor& x, Communicator& c);
// Sends `send` to rank dst and receives `recv` (allocated by the caller) from rank src, blocking. dst < 0:
// nothing is sent (send may be undefined); src < 0: nothing is received (recv may be undefined).
void send_recv(const Tensor& send, int dst, Tensor& recv, int src, Communicator& c);
// The same exchange posted to run while the caller computes, completed by send_recv_wait; both tensors
// must stay alive and untouched until then.
void send_recv_start(const Tensor& send, int dst, Tensor& recv, int src, Communicator& c);
void send_recv_wait(Communicator& c);
// send_counts[r] elements of send (blocks packed in rank order) go to rank r; recv_counts[r] elements from
// rank r land in recv, packed likewise.
void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                  const std::vector<int64_t>& recv_counts, Communicator& c);

// The sizes along a split axis of every rank: shard_range(n, P, r).size() for r < P.
std::vector<int64_t> shard_sizes(int64_t n, int parts);

}  // namespace meshdit
