// The NCCL communicator against the MPI one: every collective runs on both (device buffers for NCCL, host
// for MPI) and the results must agree exactly (integer-valued floats, so the order of a sum cannot
// matter). Runs under mpirun with any number of ranks, 1 included (ctest nccl_np1 on a one-GPU machine);
// skips, saying why, when the build has no NCCL or the ranks have no GPU each.
#include "parallel/nccl_comm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "parallel/mpi_comm.h"

#if defined(MESHDIT_HAVE_NCCL) && MESHDIT_HAVE_NCCL
#include <cuda_runtime.h>
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

#endif  // MESHDIT_HAVE_NCCL

}  // namespace
