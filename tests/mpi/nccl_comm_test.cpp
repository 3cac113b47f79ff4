// The NCCL communicator against the MPI one: every collective runs on both (device buffers for NCCL, host
// for MPI) and the results must agree exactly (integer-valued floats, so the order of a sum cannot
// matter). Runs under mpirun with any number of ranks, 1 included (ctest nccl_np1 on a one-GPU machine);
// skips, saying why, when the build has no NCCL or the ranks have no GPU each. Then the stream ordering:
// with the CUDA backend's stream held shut, collectives and a ring step must return without waiting for it
// and still feed the kernels enqueued after them; and host buffers, which NCCL stages and waits for.
#include "parallel/nccl_comm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "parallel/mpi_comm.h"

#if defined(MESHDIT_HAVE_NCCL) && MESHDIT_HAVE_NCCL
#include <cuda_runtime.h>
#endif
#if defined(MESHDIT_HAVE_CUDA_BACKEND) && MESHDIT_HAVE_CUDA_BACKEND
#include "backend/backend.h"
#include "backend/cuda/stream_hooks.h"
#include "backend/ops.h"
#include "core/tensor.h"
#endif

using namespace meshdit;

namespace {

// One NCCL world communicator for every test (ncclCommInitRank is slow). The factory is collective and
// every rank reaches the same verdict, so every rank skips or runs the same tests.
struct Shared {
  bool tried = false;
  std::unique_ptr<Communicator> comm;
  std::string skip, error;
};

Shared& shared() {
  static Shared s;
  if (!s.tried) {
    s.tried = true;
    auto c = nccl_world_communicator();
    if (c.ok()) {
      s.comm = std::move(c).value();
    } else {
      const std::string& m = c.error().message;
      // What a machine may lack, not what the code may get wrong.
      for (const char* reason : {"built without NCCL", "no usable GPU", "share GPU", "MPI is not initialised"})
        if (m.find(reason) != std::string::npos) s.skip = m;
      if (s.skip.empty()) s.error = m;
    }
  }
  return s;
}

TEST(NcclFactory, AnswersOrSaysWhyNot) {
  Shared& s = shared();
  if (!nccl_available()) {
    EXPECT_FALSE(s.comm);
    EXPECT_NE(s.skip.find("built without NCCL"), std::string::npos) << s.skip;
  }
  EXPECT_TRUE(s.error.empty()) << s.error;
  if (!s.comm) {
    EXPECT_FALSE(s.skip.empty());
    GTEST_SKIP() << s.skip;
  }
  EXPECT_STREQ(s.comm->backend(), "nccl");
}

#if defined(MESHDIT_HAVE_NCCL) && MESHDIT_HAVE_NCCL

void cuda_ok(cudaError_t e, const char* what) { ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e); }

// A device copy of a host vector, and back.
class DeviceBuf {
 public:
  explicit DeviceBuf(size_t n) : n_(n) {
    cuda_ok(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * sizeof(float)), "cudaMalloc");
  }
  explicit DeviceBuf(const std::vector<float>& h) : DeviceBuf(h.size()) {
    cuda_ok(cudaMemcpy(p_, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  ~DeviceBuf() { cudaFree(p_); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  float* get() { return p_; }
  std::vector<float> host() const { return host(n_); }
  std::vector<float> host(size_t n) const {
    std::vector<float> h(n);
    cuda_ok(cudaMemcpy(h.data(), p_, n * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    return h;
  }

 private:
  float* p_ = nullptr;
  size_t n_ = 0;
};

// Integer-valued, different on every rank and element.
std::vector<float> data(int rank, size_t n, int salt = 0) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = float(int64_t((rank + 1) * 7919 + salt * 104729 + int64_t(i) * 31) % 1000 - 500);
  return v;
}

class NcclComm : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { shared().comm.reset(); }
  void SetUp() override {
    Shared& s = shared();
    ASSERT_TRUE(s.error.empty()) << s.error;
    if (!s.comm) GTEST_SKIP() << s.skip;
    nc = s.comm.get();
    w = world_communicator();
    R = w->size();
    r = w->rank();
  }
  Communicator* nc = nullptr;
  std::unique_ptr<Communicator> w;
  int R = 1, r = 0;
};

TEST_F(NcclComm, SameRanksAsMpi) {
  EXPECT_EQ(nc->size(), R);
  EXPECT_EQ(nc->rank(), r);
  EXPECT_STREQ(nc->backend(), "nccl");
}

TEST_F(NcclComm, AllReduceSum) {
  for (size_t n : {size_t(1), size_t(1000), size_t(1) << 20 | 3}) {
    auto h = data(r, n);
    DeviceBuf d(h);
    w->all_reduce_sum(h.data(), int64_t(n));
    nc->all_reduce_sum(d.get(), int64_t(n));
    EXPECT_EQ(d.host(), h) << "n=" << n;
  }
}

TEST_F(NcclComm, AllGather) {
  for (size_t n : {size_t(1), size_t(4097)}) {
    auto mine = data(r, n);
    std::vector<float> h(size_t(R) * n);
    w->all_gather(mine.data(), int64_t(n), h.data());
    DeviceBuf send(mine), recv(size_t(R) * n);
    nc->all_gather(send.get(), int64_t(n), recv.get());
    EXPECT_EQ(recv.host(), h) << "n=" << n;
    // In place: this rank's block already sits in the output.
    std::vector<float> pre(size_t(R) * n, -1.0f);
    std::copy(mine.begin(), mine.end(), pre.begin() + int64_t(r) * int64_t(n));
    DeviceBuf inplace(pre);
    nc->all_gather(inplace.get() + size_t(r) * n, int64_t(n), inplace.get());
    EXPECT_EQ(inplace.host(), h) << "in place, n=" << n;
  }
}

TEST_F(NcclComm, ReduceScatterSum) {
  for (size_t n : {size_t(1), size_t(3001)}) {
    auto send = data(r, size_t(R) * n);
    std::vector<float> h(n);
    w->reduce_scatter_sum(send.data(), h.data(), int64_t(n));
    DeviceBuf ds(send), dr(n);
    nc->reduce_scatter_sum(ds.get(), dr.get(), int64_t(n));
    EXPECT_EQ(dr.host(), h) << "n=" << n;
  }
}

TEST_F(NcclComm, AllToAll) {
  for (size_t n : {size_t(1), size_t(1025)}) {
    auto send = data(r, size_t(R) * n);
    std::vector<float> h(size_t(R) * n);
    w->all_to_all(send.data(), h.data(), int64_t(n));
    DeviceBuf ds(send), dr(size_t(R) * n);
    nc->all_to_all(ds.get(), dr.get(), int64_t(n));
    EXPECT_EQ(dr.host(), h) << "n=" << n;
  }
}

TEST_F(NcclComm, AllToAllV) {
  // Rank a sends count(a, b) elements to rank b: some zero, the block to itself never.
  auto count = [](int a, int b) { return int64_t(((a + 2 * b) % 3) * 5 + (a == b ? 2 : 0)); };
  std::vector<int64_t> sc(static_cast<size_t>(R)), rc(static_cast<size_t>(R));
  int64_t ns = 0, nr = 0;
  for (int q = 0; q < R; ++q) {
    sc[size_t(q)] = count(r, q);
    rc[size_t(q)] = count(q, r);
    ns += sc[size_t(q)];
    nr += rc[size_t(q)];
  }
  auto send = data(r, static_cast<size_t>(ns));
  std::vector<float> h(static_cast<size_t>(nr));
  w->all_to_all_v(send.data(), sc, h.data(), rc);
  DeviceBuf ds(send), dr(static_cast<size_t>(nr));
  nc->all_to_all_v(ds.get(), sc, dr.get(), rc);
  EXPECT_EQ(dr.host(), h);
}

TEST_F(NcclComm, SendRecvRingAndEdges) {
  const size_t n = 777;
  auto out = data(r, n);
  // Periodic ring (on one rank: to itself), blocking and overlapped, then the edges of a non-periodic split.
  const int right = (r + 1) % R, left = (r + R - 1) % R;
  const int next = r + 1 < R ? r + 1 : -1, prev = r > 0 ? r - 1 : -1;
  for (int pass = 0; pass < 3; ++pass) {
    const int dst = pass < 2 ? right : next, src = pass < 2 ? left : prev;
    std::vector<float> h(n, -7.0f);
    w->send_recv(out.data(), int64_t(n), dst, h.data(), int64_t(n), src);
    DeviceBuf ds(out), dr(std::vector<float>(n, -7.0f));
    if (pass == 1) {
      nc->send_recv_start(ds.get(), int64_t(n), dst, dr.get(), int64_t(n), src);
      nc->send_recv_wait();
    } else {
      nc->send_recv(ds.get(), int64_t(n), dst, dr.get(), int64_t(n), src);
    }
    EXPECT_EQ(dr.host(), h) << "pass " << pass;
  }
}

TEST_F(NcclComm, Broadcast) {
  for (int root : {0, R - 1}) {
    auto h = data(r, 5000, root);
    DeviceBuf d(h);
    w->broadcast(h.data(), 5000, root);
    nc->broadcast(d.get(), 5000, root);
    EXPECT_EQ(d.host(), h) << "root " << root;
  }
}

TEST_F(NcclComm, BarrierAndStrings) {
  nc->barrier();
  nc->barrier();
  const std::string s = std::string(size_t(r), 'x') + "nccl" + std::to_string(r);
  for (int root : {0, R - 1}) EXPECT_EQ(nc->gather_strings(s, root), w->gather_strings(s, root)) << "root " << root;
}

TEST_F(NcclComm, SplitMatchesMpiSplit) {
  // Two groups by parity, ordered backwards by key; then a split of the split.
  auto ns = nc->split(r % 2, -r);
  auto ms = w->split(r % 2, -r);
  ASSERT_TRUE(ns && ms);
  EXPECT_STREQ(ns->backend(), "nccl");
  EXPECT_EQ(ns->size(), ms->size());
  EXPECT_EQ(ns->rank(), ms->rank());
  const int sr = ms->rank(), sn = ms->size();

  auto h = data(r, 513);
  DeviceBuf d(h);
  ms->all_reduce_sum(h.data(), 513);
  ns->all_reduce_sum(d.get(), 513);
  EXPECT_EQ(d.host(), h);

  auto mine = data(r, 9, 1);
  std::vector<float> g(size_t(sn) * 9);
  ms->all_gather(mine.data(), 9, g.data());
  DeviceBuf dm(mine), dg(size_t(sn) * 9);
  ns->all_gather(dm.get(), 9, dg.get());
  EXPECT_EQ(dg.host(), g);

  const int right = (sr + 1) % sn, left = (sr + sn - 1) % sn;
  std::vector<float> hr(9);
  ms->send_recv(mine.data(), 9, right, hr.data(), 9, left);
  DeviceBuf dr(9);
  ns->send_recv(dm.get(), 9, right, dr.get(), 9, left);
  EXPECT_EQ(dr.host(), hr);

  const std::string s = "sub" + std::to_string(r);
  EXPECT_EQ(ns->gather_strings(s, 0), ms->gather_strings(s, 0));
  ns->barrier();

  auto nss = ns->split(0, sr);
  ASSERT_TRUE(nss);
  EXPECT_EQ(nss->size(), sn);
  EXPECT_EQ(nss->rank(), sr);
  std::vector<float> one = {float(r)}, expect = one;
  ms->all_reduce_sum(expect.data(), 1);
  DeviceBuf d1(one);
  nss->all_reduce_sum(d1.get(), 1);
  EXPECT_EQ(d1.host(), expect);
}

TEST_F(NcclComm, HostBuffersAreStagedAndWaitedFor) {
  // Pageable host memory on the NCCL side too: the results must be in place when each call returns.
  const size_t n = 3001;
  auto h = data(r, n), d = h;
  w->all_reduce_sum(h.data(), int64_t(n));
  nc->all_reduce_sum(d.data(), int64_t(n));
  EXPECT_EQ(d, h) << "all_reduce_sum";

  auto mine = data(r, n, 2);
  std::vector<float> g(size_t(R) * n), gn(size_t(R) * n, -1.0f);
  w->all_gather(mine.data(), int64_t(n), g.data());
  nc->all_gather(mine.data(), int64_t(n), gn.data());
  EXPECT_EQ(gn, g) << "all_gather";
  // In place on the host: staged apart, the same result.
  std::vector<float> inplace(size_t(R) * n, -1.0f);
  std::copy(mine.begin(), mine.end(), inplace.begin() + int64_t(r) * int64_t(n));
  nc->all_gather(inplace.data() + size_t(r) * n, int64_t(n), inplace.data());
  EXPECT_EQ(inplace, g) << "all_gather in place";

  // A ring step with one side on the device and the other on the host; started and waited for.
  const int right = (r + 1) % R, left = (r + R - 1) % R;
  std::vector<float> hr(n, -7.0f), nr(n, -7.0f);
  w->send_recv(mine.data(), int64_t(n), right, hr.data(), int64_t(n), left);
  DeviceBuf ds(mine);
  nc->send_recv_start(ds.get(), int64_t(n), right, nr.data(), int64_t(n), left);
  EXPECT_EQ(nr, hr) << "send_recv_start on a host buffer completes in start";
  nc->send_recv_wait();
  EXPECT_EQ(nr, hr) << "send_recv";

  auto b = data(r, 77, 3), bn = b;
  w->broadcast(b.data(), 77, R - 1);
  nc->broadcast(bn.data(), 77, R - 1);
  EXPECT_EQ(bn, b) << "broadcast";
}

#if defined(MESHDIT_HAVE_CUDA_BACKEND) && MESHDIT_HAVE_CUDA_BACKEND

cudaStream_t compute_stream() { return static_cast<cudaStream_t>(cuda::compute_stream_handle()); }

// Holds a stream shut until open(): a host function in stream order, so everything enqueued after it waits.
// A call that waited on the host for that work could not return before open(); the hold gives up after 30 s
// so that such a call fails the test (timed_out) instead of hanging it.
class StreamGate {
 public:
  explicit StreamGate(cudaStream_t s) {
    if (const cudaError_t e = cudaLaunchHostFunc(s, &StreamGate::hold, this); e != cudaSuccess) {
      released_ = true;
      ADD_FAILURE() << "cudaLaunchHostFunc: " << cudaGetErrorString(e);
    }
  }
  ~StreamGate() {
    open();
    while (!released_.load()) std::this_thread::yield();  // `this` is the host function's argument
  }
  StreamGate(const StreamGate&) = delete;
  StreamGate& operator=(const StreamGate&) = delete;
  void open() { open_.store(true); }
  bool timed_out() const { return timed_out_.load(); }

 private:
  static void hold(void* self) {  // no CUDA calls in a host function
    auto* g = static_cast<StreamGate*>(self);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!g->open_.load() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    if (!g->open_.load()) g->timed_out_.store(true);
    g->released_.store(true);
  }
  std::atomic<bool> open_{false}, timed_out_{false}, released_{false};
};

std::vector<float> host_of(const Tensor& t) {
  const Tensor h = ops::to_device(t, Device::CPU);
  return std::vector<float>(h.f32(), h.f32() + h.numel());
}

class NcclStreamOrder : public NcclComm {
 protected:
  void SetUp() override {
    NcclComm::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (!find_backend(Device::CUDA)) GTEST_SKIP() << "the CUDA backend is not listed (no device)";
  }
};

TEST_F(NcclStreamOrder, AllReduceFeedsTheNextKernelWithoutAHostWait) {
  const int64_t n = int64_t(1) << 20;
  auto h = data(r, size_t(n));
  std::vector<float> want = h;
  w->all_reduce_sum(want.data(), n);
  for (float& v : want) v = 2.0f * v + 1.0f;
  const Tensor src = ops::to_device(Tensor::from_f32({n}, h), Device::CUDA);
  // Once unheld (the allocator's blocks for these sizes cached, the collective's setup done), then held: the
  // producer kernel, the all-reduce and the consumer kernel are all enqueued while the stream is shut.
  for (bool held : {false, true}) {
    SCOPED_TRACE(held ? "stream held" : "stream free");
    std::vector<float> got;
    {
      std::unique_ptr<StreamGate> gate = held ? std::make_unique<StreamGate>(compute_stream()) : nullptr;
      Tensor x = ops::affine(src, 1.0f, 0.0f);  // written behind the gate: only stream order shows it to NCCL
      nc->all_reduce_sum(x.f32(), n);
      const Tensor y = ops::affine(x, 2.0f, 1.0f);  // reads the result, no host wait in between
      if (gate) {
        EXPECT_FALSE(gate->timed_out()) << "all_reduce_sum waited on the host for the compute stream";
        EXPECT_EQ(cudaStreamQuery(compute_stream()), cudaErrorNotReady);
        gate->open();
      }
      got = host_of(y);
      if (gate) {
        EXPECT_FALSE(gate->timed_out());
      }
    }
    EXPECT_EQ(got, want);
  }
}

TEST_F(NcclStreamOrder, RingStepOverlapsComputeAndFeedsTheNextKernel) {
  // On one rank the step is a copy to itself, on the NCCL stream all the same.
  const int64_t n = 777 * 64;
  const int right = (r + 1) % R, left = (r + R - 1) % R;
  auto out = data(r, size_t(n), 4);
  std::vector<float> want(size_t(n), -7.0f);
  w->send_recv(out.data(), n, right, want.data(), n, left);
  for (float& v : want) v += 1.0f;
  const Tensor src = ops::to_device(Tensor::from_f32({n}, out), Device::CUDA);
  const Tensor other = ops::to_device(Tensor::from_f32({n}, data(r, size_t(n), 5)), Device::CUDA);
  std::vector<float> other_want = data(r, size_t(n), 5);
  for (float& v : other_want) v *= 3.0f;
  for (bool held : {false, true}) {
    SCOPED_TRACE(held ? "stream held" : "stream free");
    std::vector<float> got, busy_got;
    {
      Tensor recv = ops::full({n}, -7.0f, Device::CUDA);
      std::unique_ptr<StreamGate> gate = held ? std::make_unique<StreamGate>(compute_stream()) : nullptr;
      Tensor send = ops::affine(src, 1.0f, 0.0f);
      nc->send_recv_start(send.f32(), n, right, recv.f32(), n, left);
      const Tensor busy = ops::affine(other, 3.0f, 0.0f);  // the compute the transfer overlaps
      nc->send_recv_wait();
      const Tensor y = ops::affine(recv, 1.0f, 1.0f);
      if (gate) {
        EXPECT_FALSE(gate->timed_out()) << "the ring step waited on the host for the compute stream";
        EXPECT_EQ(cudaStreamQuery(compute_stream()), cudaErrorNotReady);
        gate->open();
      }
      got = host_of(y);
      busy_got = host_of(busy);
    }
    EXPECT_EQ(got, want);
    EXPECT_EQ(busy_got, other_want);
  }
}

TEST_F(NcclStreamOrder, BackendHostWaitsRunTheStreamChecks) {
  // This communicator registered its check; a counting one beside it must run while copy_to_host polls.
  static std::atomic<int> calls{0};
  calls = 0;
  auto count = [](void*) { calls.fetch_add(1); };
  cuda::add_stream_check(count, nullptr);
  const Tensor x = ops::to_device(Tensor::from_f32({4}, {1, 2, 3, 4}), Device::CUDA);
  std::vector<float> got;
  {
    StreamGate gate(compute_stream());
    const Tensor y = ops::affine(x, 1.0f, 0.0f);
    std::thread opener([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      gate.open();
    });
    got = host_of(y);
    opener.join();
    EXPECT_FALSE(gate.timed_out());
  }
  cuda::remove_stream_check(count, nullptr);
  EXPECT_EQ(got, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_GT(calls.load(), 0);
}

#endif  // MESHDIT_HAVE_CUDA_BACKEND

#endif  // MESHDIT_HAVE_NCCL

}  // namespace
