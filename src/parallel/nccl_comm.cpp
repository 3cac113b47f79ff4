// The NCCL communicator (nccl_comm.h). Compiled only when CMake found CUDA and NCCL; plain C++ against
// cuda_runtime.h and nccl.h (no device code), so gcc and clang both build it.
//
// Ordering. Collectives run on the communicator's own stream, ordered against the CUDA backend's compute
// stream (backend/cuda/stream_hooks.h) by events, never by a host wait:
//  - before a collective, the NCCL stream waits on an event recorded on the compute stream: the kernels that
//    wrote its data have run, and so has every earlier use of its buffers' memory;
//  - after it, the compute stream waits on an event recorded on the NCCL stream: whatever is enqueued next
//    (a kernel reading the result, a copy to the host) runs after the collective.
// The caching allocator (backend/cuda/memory.cu) stays safe. It hands a block freed on the host to the next allocation
// at once, trusting stream order. Host code frees a buffer a collective reads or writes only after the collective's
// call returned, and by then the compute stream already waits on the collective's event. The block's next user is
// either a kernel, copy or memset on the compute stream (the backend has no other stream: every launch and copy in
// memory.cu and the kernel files is on cuda::stream()), ordered after that wait, or another collective, on this or any
// other NcclComm's stream, which first waits on an event recorded on the compute stream after that wait. Either way it
// runs after the collective. The second case is a block whose first use is not on the compute stream (a receive buffer:
// ring_attention's next block, all_gather's output), and the edge before every collective is what makes it safe;
// without that edge the receive could overwrite memory a kernel still reads. (Staged host buffers come from
// cudaMallocAsync on the NCCL stream, not from this allocator.) Work on the legacy default stream (cudaMemcpy, as the
// tests do) is ordered too: the compute stream is a blocking stream, so the legacy stream waits for it, and so for the
// events it waits on, and the compute stream's later work (the event a collective waits on) waits for the legacy
// stream. The one exception is the ring step in flight (send_recv_start): until send_recv_wait, nothing orders the
// compute stream after it, so its two buffers must stay alive and untouched until then (collectives.h; ring_attention
// holds both). It is also the one way two communicators' collectives can run at once (any other collective waits on the
// compute stream, which waits on the previous one): ring_attention makes no other collective while its step is in
// flight.
//
// Host memory. A buffer that is not device memory of this communicator's GPU (pageable or pinned host memory,
// managed memory) is staged through device memory, and that call waits for its result on the host as MPI
// does: a CPU tensor gives MPI's semantics, only slower. Device memory of another GPU is refused.
//
// Errors. A failed collective (a peer gone, a network error) is reported by ncclCommGetAsyncError, never by
// the stream, which just stops. It is checked when a call starts, while this file waits on the host (barrier,
// split, a call on host memory, destruction) and, through the backend's stream checks, while the backend
// waits for the compute stream (its copies to and from the host). nccl_comm.h lists where a hang remains.
#include "parallel/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "parallel/nccl_host.h"

#if defined(MESHDIT_HAVE_CUDA_BACKEND) && MESHDIT_HAVE_CUDA_BACKEND
#include "backend/cuda/stream_hooks.h"
#define MESHDIT_NCCL_WITH_BACKEND 1
#else
#define MESHDIT_NCCL_WITH_BACKEND 0
#endif

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

void nccl_check(ncclResult_t r, const std::string& what, ncclComm_t comm = nullptr) {
  if (r == ncclSuccess) return;
  std::string msg = what + ": " + ncclGetErrorString(r);
  if (const char* last = ncclGetLastError(comm); last && *last) msg += " (" + std::string(last) + ")";
  fatal(__FILE__, __LINE__, msg);
}

size_t elems(int64_t n, const char* what) {
  MD_CHECK(n >= 0, std::string(what) + ": negative count " + std::to_string(n));
  return size_t(n);
}

// Between two polls of a stream: yield at first (a collective is usually done within microseconds), then
// sleep, so a long wait does not hold a core.
void backoff(int polls) {
  if (polls < 1000)
    std::this_thread::yield();
  else
    std::this_thread::sleep_for(std::chrono::microseconds(50));
}

// The stream the collectives are ordered against: the CUDA backend's compute stream, or, in a build without
// the backend (no nvcc), the legacy default stream, where callers' own cudaMemcpy and kernels run.
cudaStream_t compute_stream() {
#if MESHDIT_NCCL_WITH_BACKEND
  return static_cast<cudaStream_t>(cuda::compute_stream_handle());
#else
  return nullptr;
#endif
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
    // Made here, on this device, when nothing has used the backend yet; made earlier on another device, its
    // kernels would not run where this rank's data is: refused.
    compute_ = compute_stream();
#if CUDART_VERSION >= 12080  // cudaStreamGetDevice
    int compute_device = -1;
    cuda_check(cudaStreamGetDevice(compute_, &compute_device), "cudaStreamGetDevice");
    MD_CHECK(compute_device == device_, "NCCL communicator: the CUDA backend's stream is on device " +
                                            std::to_string(compute_device) + " but this rank's GPU is device " +
                                            std::to_string(device_) +
                                            " (the backend was used before the NCCL communicator chose the GPU)");
#endif
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    cuda_check(cudaEventCreateWithFlags(&inputs_ready_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    cuda_check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    cuda_check(cudaMalloc(reinterpret_cast<void**>(&scratch_), sizeof(float)), "cudaMalloc");
    cuda_check(cudaMemset(scratch_, 0, sizeof(float)), "cudaMemset");
#if MESHDIT_NCCL_WITH_BACKEND
    cuda::add_stream_check(&NcclComm::stream_check, this);
#endif
  }
  ~NcclComm() override {
#if MESHDIT_NCCL_WITH_BACKEND
    cuda::remove_stream_check(&NcclComm::stream_check, this);
#endif
    {
      DeviceGuard g(device_);
      // What was enqueued finishes before the communicator goes; a failed collective would never finish, so
      // the communicator is aborted instead. Errors here are not worth an abort on the way out.
      const bool failed = !drain_quietly();
      if (nccl_) failed ? ncclCommAbort(nccl_) : ncclCommDestroy(nccl_);
      if (scratch_) cudaFree(scratch_);
      if (done_) cudaEventDestroy(done_);
      if (inputs_ready_) cudaEventDestroy(inputs_ready_);
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
    Call call(*this, "all_reduce_sum", {{data, c, true}});
    float* d = call.dev(0);
    nccl_check(ncclAllReduce(d, d, c, ncclFloat, ncclSum, nccl_, stream_), "ncclAllReduce", nccl_);
    call.finish();
  }
  void all_gather(const float* send, int64_t n, float* recv) override {
    const size_t c = elems(n, "all_gather");
    if (c == 0) return;
    // In place (send == recv + rank * n) on the device is NCCL's own in-place all-gather; on the host the two
    // are staged apart, which NCCL then runs out of place with the same result.
    Call call(*this, "all_gather", {{send, c, false}, {recv, c * size_t(size_), true}});
    nccl_check(ncclAllGather(call.dev(0), call.dev(1), c, ncclFloat, nccl_, stream_), "ncclAllGather", nccl_);
    call.finish();
  }
  void reduce_scatter_sum(const float* send, float* recv, int64_t n) override {
    const size_t c = elems(n, "reduce_scatter_sum");
    if (c == 0) return;
    Call call(*this, "reduce_scatter_sum", {{send, c * size_t(size_), false}, {recv, c, true}});
    nccl_check(ncclReduceScatter(call.dev(0), call.dev(1), c, ncclFloat, ncclSum, nccl_, stream_), "ncclReduceScatter",
               nccl_);
    call.finish();
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
    Call call(*this, "send_recv", exchange_buffers(send, n_send, dst, recv, n_recv, src));
    post_send_recv(call.dev(0), n_send, dst, call.dev(1), n_recv, src);
    call.finish();
  }
  // Enqueued on the communicator's stream after the compute stream's work so far; send_recv_wait() makes the
  // compute stream wait for it, and neither waits on the host, so the caller's kernels enqueued in between run
  // while the data travels. On host memory the exchange completes here (staged, waited for).
  void send_recv_start(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) override {
    MD_CHECK(!in_flight_, "send_recv_start: a ring step is already in flight");
    Call call(*this, "send_recv_start", exchange_buffers(send, n_send, dst, recv, n_recv, src));
    post_send_recv(call.dev(0), n_send, dst, call.dev(1), n_recv, src);
    if (call.staged()) {
      call.finish();
      return;
    }
    in_flight_ = true;  // finished by send_recv_wait
  }
  void send_recv_wait() override {
    if (!in_flight_) return;
    DeviceGuard g(device_);
    in_flight_ = false;
    check_async("send_recv_wait");
    compute_after_collective();
  }
  void broadcast(float* data, int64_t n, int root) override {
    const size_t c = elems(n, "broadcast");
    MD_CHECK(root >= 0 && root < size_, "broadcast: root " + std::to_string(root) + " outside the group");
    if (c == 0) return;
    Call call(*this, "broadcast", {{data, c, true}});
    float* d = call.dev(0);
    nccl_check(ncclBroadcast(d, d, c, ncclFloat, root, nccl_, stream_), "ncclBroadcast", nccl_);
    call.finish();
  }
  // Every rank has reached it once the one-element all-reduce completes on every rank's stream; since that
  // waits for the compute stream, this rank's device work enqueued before it has completed too. A host
  // synchronisation point: a failed collective surfaces here at the latest.
  void barrier() override {
    Call call(*this, "barrier", {});
    nccl_check(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, nccl_, stream_), "ncclAllReduce(barrier)",
               nccl_);
    call.finish();
    drain("barrier");
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MD_CHECK(color >= 0, "split: color " + std::to_string(color) + " must be >= 0");
    DeviceGuard g(device_);
    idle("split");
    // No collective of this communicator in flight while NCCL makes the new one (a setup step, not a hot path).
    drain("split");
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
    check_async("gather_strings");
    return host_->gather_strings(s, root);
  }

 private:
  // One buffer of a call as the caller passed it: `p` [n], written by the call when `out`.
  struct Buffer {
    const float* p = nullptr;
    size_t n = 0;
    bool out = false;
  };

  // One call, from its buffers to its completion: the device current, the collective ordered after the
  // compute stream's work, host buffers staged. finish() orders the compute stream after it (device buffers)
  // or copies the results back and waits for them (staged buffers). A failure on the way aborts (comm.h), so
  // there is no unwinding to handle.
  class Call {
   public:
    Call(NcclComm& c, const char* what, std::vector<Buffer> buffers)
        : c_(c), guard_(c.device_), what_(what), bufs_(std::move(buffers)) {
      c_.idle(what);
      c_.check_async(what);
      dev_.resize(bufs_.size(), nullptr);
      std::vector<bool> stage(bufs_.size(), false);
      for (size_t i = 0; i < bufs_.size(); ++i) {
        dev_[i] = const_cast<float*>(bufs_[i].p);  // written only when the caller passed it as `out`
        if (bufs_[i].n && bufs_[i].p) stage[i] = !c_.on_this_device(bufs_[i].p, what);
        staged_ = staged_ || stage[i];
      }
      // A copy from pageable memory may wait for the stream inside the runtime, where no error is checked.
      if (staged_) c_.drain(what);
      for (size_t i = 0; i < bufs_.size(); ++i) {
        if (!stage[i]) continue;
        const size_t bytes = bufs_[i].n * sizeof(float);
        cuda_check(cudaMallocAsync(reinterpret_cast<void**>(&dev_[i]), bytes, c_.stream_), "cudaMallocAsync");
        // Outputs too: what the collective does not write (a block nobody sends) comes back unchanged.
        cuda_check(cudaMemcpyAsync(dev_[i], bufs_[i].p, bytes, cudaMemcpyHostToDevice, c_.stream_),
                   "cudaMemcpyAsync(host to device)");
      }
      owned_ = stage;
      c_.collective_after_compute();
    }
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

    float* dev(size_t i) const { return dev_[i]; }
    bool staged() const { return staged_; }

    void finish() {
      if (!staged_) {
        c_.compute_after_collective();
        return;
      }
      // Results are complete (and a failure reported) before the copies, which would wait inside the runtime.
      c_.drain(what_);
      for (size_t i = 0; i < bufs_.size(); ++i) {
        if (!owned_[i]) continue;
        if (bufs_[i].out)
          cuda_check(cudaMemcpyAsync(const_cast<float*>(bufs_[i].p), dev_[i], bufs_[i].n * sizeof(float),
                                     cudaMemcpyDeviceToHost, c_.stream_),
                     "cudaMemcpyAsync(device to host)");
        cuda_check(cudaFreeAsync(dev_[i], c_.stream_), "cudaFreeAsync");
      }
      c_.drain(what_);
    }

   private:
    NcclComm& c_;
    DeviceGuard guard_;
    const char* what_;
    std::vector<Buffer> bufs_;
    std::vector<float*> dev_;
    std::vector<bool> owned_;
    bool staged_ = false;
  };

  // The backend's stream check (stream_hooks.h): a failure of this communicator aborts the host's wait for
  // the compute stream, which may be waiting on one of its collectives.
  static void stream_check(void* self) {
    static_cast<NcclComm*>(self)->check_async("a host wait for the CUDA backend's stream");
  }

  void idle(const char* what) const { MD_CHECK(!in_flight_, std::string(what) + ": a ring step is in flight"); }

  void check_async(const char* what) const {
    ncclResult_t async = ncclSuccess;
    nccl_check(ncclCommGetAsyncError(nccl_, &async), "ncclCommGetAsyncError", nccl_);
    nccl_check(async, "NCCL asynchronous error on communicator '" + name() + "' (noticed in " + what + ")", nccl_);
  }

  // Device memory of this communicator's GPU (used in place) or not (staged). Another GPU's memory would
  // reach NCCL as an invalid pointer on this one: refused with both devices named.
  bool on_this_device(const void* p, const char* what) const {
    cudaPointerAttributes a{};
    cuda_check(cudaPointerGetAttributes(&a, p), "cudaPointerGetAttributes");
    if (a.type != cudaMemoryTypeDevice) return false;
    MD_CHECK(a.device == device_, std::string(what) + ": a buffer on device " + std::to_string(a.device) +
                                      ", but this communicator works on device " + std::to_string(device_));
    return true;
  }

  // The two event edges of every collective (this file's header says why they suffice).
  void collective_after_compute() {
    cuda_check(cudaEventRecord(inputs_ready_, compute_), "cudaEventRecord(compute stream)");
    cuda_check(cudaStreamWaitEvent(stream_, inputs_ready_, 0), "cudaStreamWaitEvent(NCCL stream)");
  }
  void compute_after_collective() {
    cuda_check(cudaEventRecord(done_, stream_), "cudaEventRecord(NCCL stream)");
    cuda_check(cudaStreamWaitEvent(compute_, done_, 0), "cudaStreamWaitEvent(compute stream)");
  }

  // Waits on the host for everything enqueued on the communicator's stream; a failure that happens meanwhile
  // (a peer gone, a network error) aborts instead of hanging in cudaStreamSynchronize.
  void drain(const char* what) {
    for (int polls = 0;; ++polls) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) cuda_check(e, "cudaStreamQuery");
      check_async(what);
      backoff(polls);
    }
  }
  // The same on the way out, without aborting: false when a collective failed or the stream did.
  bool drain_quietly() {
    if (!stream_ || !nccl_) return true;
    for (int polls = 0;; ++polls) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return true;
      if (e != cudaErrorNotReady) return false;
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(nccl_, &async) != ncclSuccess || async != ncclSuccess) return false;
      backoff(polls);
    }
  }

  void copy_self(const float* src, float* dst, size_t n) {
    if (n && src != dst)
      cuda_check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync");
  }

  // The buffers of one send_recv, checked: 0 is what is sent, 1 where the data lands (empty on a side
  // without a peer, whose pointer may be anything).
  std::vector<Buffer> exchange_buffers(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv,
                                       int src) const {
    const size_t ns = elems(n_send, "send_recv"), nr = elems(n_recv, "send_recv");
    MD_CHECK(dst < size_ && src < size_, "send_recv: peer outside the group");
    MD_CHECK((dst == rank_) == (src == rank_), "send_recv: a rank sending to itself must receive from itself");
    MD_CHECK(dst != rank_ || ns == nr, "send_recv: this rank sends itself " + std::to_string(ns) +
                                           " elements but receives " + std::to_string(nr));
    return {Buffer{dst >= 0 ? send : nullptr, dst >= 0 ? ns : 0, false},
            Buffer{src >= 0 ? recv : nullptr, src >= 0 ? nr : 0, true}};
  }

  // Point-to-point to every peer in one NCCL group; the block for this rank itself is a device copy.
  void exchange(const char* what, const float* send, const std::vector<int64_t>& send_counts, float* recv,
                const std::vector<int64_t>& recv_counts) {
    std::vector<size_t> so(size_t(size_) + 1, 0), ro(size_t(size_) + 1, 0);
    for (int q = 0; q < size_; ++q) {
      so[size_t(q) + 1] = so[size_t(q)] + elems(send_counts[size_t(q)], what);
      ro[size_t(q) + 1] = ro[size_t(q)] + elems(recv_counts[size_t(q)], what);
    }
    const size_t me = size_t(rank_);
    MD_CHECK(send_counts[me] == recv_counts[me], std::string(what) + ": this rank sends itself " +
                                                     std::to_string(send_counts[me]) + " elements but receives " +
                                                     std::to_string(recv_counts[me]));
    Call call(*this, what, {{send, so[size_t(size_)], false}, {recv, ro[size_t(size_)], true}});
    const float* s = call.dev(0);
    float* r = call.dev(1);
    copy_self(s + so[me], r + ro[me], size_t(send_counts[me]));
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      const size_t sc = size_t(send_counts[size_t(q)]), rc = size_t(recv_counts[size_t(q)]);
      if (sc) nccl_check(ncclSend(s + so[size_t(q)], sc, ncclFloat, q, nccl_, stream_), "ncclSend", nccl_);
      if (rc) nccl_check(ncclRecv(r + ro[size_t(q)], rc, ncclFloat, q, nccl_, stream_), "ncclRecv", nccl_);
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd", nccl_);
    call.finish();
  }

  void post_send_recv(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) {
    const size_t ns = elems(n_send, "send_recv"), nr = elems(n_recv, "send_recv");
    if (dst == rank_) {
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
  cudaStream_t compute_ = nullptr;  // the backend's (not owned)
  cudaStream_t stream_ = nullptr;
  cudaEvent_t inputs_ready_ = nullptr, done_ = nullptr;
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
