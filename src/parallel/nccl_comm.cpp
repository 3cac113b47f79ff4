// The NCCL communicator (nccl_comm.h). Compiled only when CMake found CUDA and NCCL; plain C++ against
// cuda_runtime.h and nccl.h (no device code), so gcc and clang both build it.
#include "parallel/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "parallel/nccl_host.h"

#if defined(NCCL_VERSION) && NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
#define MESHDIT_NCCL_HAS_SPLIT 1
#else
#define MESHDIT_NCCL_HAS_SPLIT 0
#endif

namespace meshdit {
namespace {

void cuda_check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  fatal(__FILE__, __LINE__, std::string(what) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

void nccl_check(ncclResult_t r, const char* what, ncclComm_t comm = nullptr) {
  if (r == ncclSuccess) return;
  std::string msg = std::string(what) + ": " + ncclGetErrorString(r);
  if (const char* last = ncclGetLastError(comm); last && *last) msg += " (" + std::string(last) + ")";
  fatal(__FILE__, __LINE__, msg);
}

size_t elems(int64_t n, const char* what) {
  MD_CHECK(n >= 0, std::string(what) + ": negative count " + std::to_string(n));
  return size_t(n);
}

// The communicator's device current for the duration of one call, the caller's restored after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cuda_check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) cuda_check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

using nccl_host::Group;
using nccl_host::Probe;

// An NCCL communicator over the ranks of `host`: rank 0 makes the unique id, the host group (MPI) carries it to
// the others.
ncclComm_t init_over(Group& host) {
  const int rank = host.rank(), size = host.size();
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (rank == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  host.broadcast_bytes(&id, int(sizeof id), 0);
  ncclComm_t nc = nullptr;
  nccl_check(ncclCommInitRank(&nc, size, id, rank), "ncclCommInitRank");
  return nc;
}

class NcclComm final : public Communicator {
 public:
  // Takes ownership of `host` (the same ranks in the same order as `nccl`, for bootstrap and host strings)
  // and of `nccl`.
  NcclComm(std::unique_ptr<Group> host, ncclComm_t nccl, int device)
      : host_(std::move(host)), nccl_(nccl), device_(device) {
    rank_ = host_->rank();
    size_ = host_->size();
    int nr = -1, ns = -1;
    nccl_check(ncclCommUserRank(nccl_, &nr), "ncclCommUserRank", nccl_);
    nccl_check(ncclCommCount(nccl_, &ns), "ncclCommCount", nccl_);
    MD_CHECK(nr == rank_ && ns == size_, "NCCL communicator: NCCL rank " + std::to_string(nr) + "/" +
                                             std::to_string(ns) + " differs from the host group's rank " +
                                             std::to_string(rank_) + "/" + std::to_string(size_));
    DeviceGuard g(device_);
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    cuda_check(cudaMalloc(reinterpret_cast<void**>(&scratch_), sizeof(float)), "cudaMalloc");
    cuda_check(cudaMemset(scratch_, 0, sizeof(float)), "cudaMemset");
  }
  ~NcclComm() override {
    {
      DeviceGuard g(device_);
      if (in_flight_) cudaStreamSynchronize(stream_);
      // Errors here are not worth an abort on the way out.
      if (nccl_) ncclCommDestroy(nccl_);
      if (scratch_) cudaFree(scratch_);
      if (stream_) cudaStreamDestroy(stream_);
    }
    // host_ goes after NCCL's communicator (MPI_Comm_free in the MPI build).
  }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "nccl"; }

  void all_reduce_sum(float* data, int64_t n) override {
    const size_t c = elems(n, "all_reduce_sum");
    if (c == 0) return;
    DeviceGuard g(device_);
    idle("all_reduce_sum");
    nccl_check(ncclAllReduce(data, data, c, ncclFloat, ncclSum, nccl_, stream_), "ncclAllReduce", nccl_);
    sync();
  }
  void all_gather(const float* send, int64_t n, float* recv) override {
    const size_t c = elems(n, "all_gather");
    if (c == 0) return;
    DeviceGuard g(device_);
    idle("all_gather");
    // In place (send == recv + rank * n) is NCCL's own in-place all-gather.
    nccl_check(ncclAllGather(send, recv, c, ncclFloat, nccl_, stream_), "ncclAllGather", nccl_);
    sync();
  }
  void reduce_scatter_sum(const float* send, float* recv, int64_t n) override {
    const size_t c = elems(n, "reduce_scatter_sum");
    if (c == 0) return;
    DeviceGuard g(device_);
    idle("reduce_scatter_sum");
    nccl_check(ncclReduceScatter(send, recv, c, ncclFloat, ncclSum, nccl_, stream_), "ncclReduceScatter", nccl_);
    sync();
  }
  void all_to_all(const float* send, float* recv, int64_t n) override {
    const size_t c = elems(n, "all_to_all");
    if (c == 0) return;
    std::vector<int64_t> counts(size_t(size_), n);
    exchange("all_to_all", send, counts, recv, counts);
  }
  void all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                    const std::vector<int64_t>& recv_counts) override {
    MD_CHECK(int(send_counts.size()) == size_ && int(recv_counts.size()) == size_, "all_to_all_v: one count per rank");
    exchange("all_to_all_v", send, send_counts, recv, recv_counts);
  }
  void send_recv(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) override {
    DeviceGuard g(device_);
    idle("send_recv");
    post_send_recv(send, n_send, dst, recv, n_recv, src);
    sync();
  }
  // Enqueued on the communicator's stream; send_recv_wait() waits for it.
  void send_recv_start(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) override {
    MD_CHECK(!in_flight_, "send_recv_start: a ring step is already in flight");
    DeviceGuard g(device_);
    post_send_recv(send, n_send, dst, recv, n_recv, src);
    in_flight_ = true;
  }
  void send_recv_wait() override {
    if (!in_flight_) return;
    DeviceGuard g(device_);
    sync();
    in_flight_ = false;
  }
  void broadcast(float* data, int64_t n, int root) override {
    const size_t c = elems(n, "broadcast");
    MD_CHECK(root >= 0 && root < size_, "broadcast: root " + std::to_string(root) + " outside the group");
    if (c == 0) return;
    DeviceGuard g(device_);
    idle("broadcast");
    nccl_check(ncclBroadcast(data, data, c, ncclFloat, root, nccl_, stream_), "ncclBroadcast", nccl_);
    sync();
  }
  // Every rank has reached it once the one-element all-reduce completes on every rank's stream.
  void barrier() override {
    DeviceGuard g(device_);
    idle("barrier");
    nccl_check(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, nccl_, stream_), "ncclAllReduce(barrier)",
               nccl_);
    sync();
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MD_CHECK(color >= 0, "split: color " + std::to_string(color) + " must be >= 0");
    DeviceGuard g(device_);
    idle("split");
    std::unique_ptr<Group> sub = host_->split(color, key);
    ncclComm_t nc = nullptr;
#if MESHDIT_NCCL_HAS_SPLIT
    // Same ordering rule as MPI_Comm_split (key, then parent rank): the constructor checks the ranks agree.
    nccl_check(ncclCommSplit(nccl_, color, key, &nc, nullptr), "ncclCommSplit", nccl_);
#else
    nc = init_over(*sub);
#endif
    return std::make_unique<NcclComm>(std::move(sub), nc, device_);
  }
  std::vector<std::string> gather_strings(const std::string& s, int root) override {
    return host_->gather_strings(s, root);
  }

 private:
  void idle(const char* what) const { MD_CHECK(!in_flight_, std::string(what) + ": a ring step is in flight"); }

  // Waits for the stream; an NCCL failure that happens meanwhile (a peer gone, a network error) aborts
  // instead of hanging in cudaStreamSynchronize.
  void sync() {
    for (;;) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) cuda_check(e, "cudaStreamQuery");
      ncclResult_t async = ncclSuccess;
      nccl_check(ncclCommGetAsyncError(nccl_, &async), "ncclCommGetAsyncError", nccl_);
      nccl_check(async, "NCCL asynchronous error", nccl_);
      std::this_thread::yield();
    }
  }

  void copy_self(const float* src, float* dst, size_t n) {
    if (n && src != dst)
      cuda_check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync");
  }

  // Point-to-point to every peer in one NCCL group; the block for this rank itself is a device copy.
  void exchange(const char* what, const float* send, const std::vector<int64_t>& send_counts, float* recv,
                const std::vector<int64_t>& recv_counts) {
    DeviceGuard g(device_);
    idle(what);
    std::vector<size_t> so(size_t(size_) + 1, 0), ro(size_t(size_) + 1, 0);
    for (int q = 0; q < size_; ++q) {
      so[size_t(q) + 1] = so[size_t(q)] + elems(send_counts[size_t(q)], what);
      ro[size_t(q) + 1] = ro[size_t(q)] + elems(recv_counts[size_t(q)], what);
    }
    const size_t me = size_t(rank_);
    MD_CHECK(send_counts[me] == recv_counts[me], std::string(what) + ": this rank sends itself " +
                                                     std::to_string(send_counts[me]) + " elements but receives " +
                                                     std::to_string(recv_counts[me]));
    copy_self(send + so[me], recv + ro[me], size_t(send_counts[me]));
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      const size_t sc = size_t(send_counts[size_t(q)]), rc = size_t(recv_counts[size_t(q)]);
      if (sc) nccl_check(ncclSend(send + so[size_t(q)], sc, ncclFloat, q, nccl_, stream_), "ncclSend", nccl_);
      if (rc) nccl_check(ncclRecv(recv + ro[size_t(q)], rc, ncclFloat, q, nccl_, stream_), "ncclRecv", nccl_);
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd", nccl_);
    sync();
  }

  void post_send_recv(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) {
    const size_t ns = elems(n_send, "send_recv"), nr = elems(n_recv, "send_recv");
    MD_CHECK(dst < size_ && src < size_, "send_recv: peer outside the group");
    MD_CHECK((dst == rank_) == (src == rank_), "send_recv: a rank sending to itself must receive from itself");
    if (dst == rank_) {
      MD_CHECK(ns == nr, "send_recv: this rank sends itself " + std::to_string(ns) + " elements but receives " +
                             std::to_string(nr));
      copy_self(send, recv, ns);
      return;
    }
    const bool do_send = dst >= 0 && ns > 0, do_recv = src >= 0 && nr > 0;
    if (!do_send && !do_recv) return;
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    if (do_send) nccl_check(ncclSend(send, ns, ncclFloat, dst, nccl_, stream_), "ncclSend", nccl_);
    if (do_recv) nccl_check(ncclRecv(recv, nr, ncclFloat, src, nccl_, stream_), "ncclRecv", nccl_);
    nccl_check(ncclGroupEnd(), "ncclGroupEnd", nccl_);
  }

  std::unique_ptr<Group> host_;
  ncclComm_t nccl_;
  int device_;
  int rank_ = 0, size_ = 1;
  cudaStream_t stream_ = nullptr;
  float* scratch_ = nullptr;
  bool in_flight_ = false;
};

Probe probe_device(int local_rank) {
  Probe p;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    p.why = std::string("no usable GPU: cudaGetDeviceCount: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
    cudaGetLastError();  // not sticky, but do not leave it for the next caller
    return p;
  }
  if (count <= 0) {
    p.why = "no usable GPU: cudaGetDeviceCount found no CUDA device";
    return p;
  }
  p.device = local_rank % count;
  if (const cudaError_t b = cudaDeviceGetPCIBusId(p.bus, int(sizeof p.bus), p.device); b != cudaSuccess) {
    p.why = "no usable GPU: cudaDeviceGetPCIBusId(device " + std::to_string(p.device) + "): " + cudaGetErrorString(b);
    cudaGetLastError();
    p.bus[0] = '\0';
  }
  p.bus[sizeof p.bus - 1] = '\0';
  return p;
}

void set_device(int device) { cuda_check(cudaSetDevice(device), "cudaSetDevice"); }

}  // namespace

bool nccl_available() { return true; }

Result<std::unique_ptr<Communicator>> nccl_world_communicator() {
  MD_TRY(nccl_host::World w, nccl_host::join_world(probe_device, set_device));
  ncclComm_t nc = init_over(*w.group);
  return std::unique_ptr<Communicator>(std::make_unique<NcclComm>(std::move(w.group), nc, w.device));
}

}  // namespace meshdit
