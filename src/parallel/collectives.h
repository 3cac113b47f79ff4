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

// The sizes along a split axis of every rank: shard_range(n, P, r).size() for r < P.
std::vector<int64_t> shard_sizes(int64_t n, int parts);

}  // namespace meshdit
