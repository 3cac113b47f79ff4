#include "parallel/comm.h"

#include <cstdio>
#include <cstdlib>

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace meshdit {

void LocalComm::all_gather(const float* send, int64_t n, float* recv) {
  if (send != recv) std::memmove(recv, send, size_t(n) * sizeof(float));
}

void LocalComm::reduce_scatter_sum(const float* send, float* recv, int64_t n) {
  if (send != recv) std::memmove(recv, send, size_t(n) * sizeof(float));
}

void LocalComm::all_to_all(const float* send, float* recv, int64_t n) {
  if (send != recv) std::memmove(recv, send, size_t(n) * sizeof(float));
}

void LocalComm::all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                             const std::vector<int64_t>& recv_counts) {
  MD_CHECK(send_counts.size() == 1 && recv_counts.size() == 1 && send_counts[0] == recv_counts[0],
           "LocalComm::all_to_all_v: counts must be one equal pair");
  if (send != recv) std::memmove(recv, send, size_t(send_counts[0]) * sizeof(float));
}

void LocalComm::send_recv(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) {
  if (src < 0) return;
  MD_CHECK(dst == 0 && src == 0 && n_send == n_recv, "LocalComm::send_recv: only to itself, same size");
  if (send != recv) std::memmove(recv, send, size_t(n_send) * sizeof(float));
}

Range shard_range(int64_t n, int parts, int part) {
  MD_CHECK(parts >= 1 && part >= 0 && part < parts, "shard_range: part out of range");
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = part * base + std::min<int64_t>(part, extra);
  return Range{begin, begin + base + (part < extra ? 1 : 0)};
}

void ShapeOnlyComm::no(const char* op) {
  std::fprintf(stderr, "meshdit internal error: %s on a shape-only communicator, which carries no data\n", op);
  std::abort();
}

}  // namespace meshdit
