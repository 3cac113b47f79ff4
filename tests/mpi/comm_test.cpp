// Every collective of the MPI communicator against what it must compute, on 2 and 4 ranks.
#include <gtest/gtest.h>

#include <numeric>

#include "parallel/collectives.h"
#include "parallel/mesh.h"
#include "parallel/mpi_comm.h"

using namespace meshdit;

namespace {

TEST(MpiComm, AllReduceGatherScatterAllToAll) {
  auto w = world_communicator();
  const int R = w->size(), r = w->rank();
  ASSERT_GE(R, 2) << "run under mpirun -np 2 or more";
  std::vector<float> a = {float(r), float(10 * r + 1)};
  w->all_reduce_sum(a.data(), 2);
  EXPECT_EQ(a[0], float(R * (R - 1) / 2));
  EXPECT_EQ(a[1], float(10 * R * (R - 1) / 2 + R));

  std::vector<float> g(size_t(2 * R));
  const float mine[2] = {float(r), float(-r)};
  w->all_gather(mine, 2, g.data());
  for (int q = 0; q < R; ++q) {
    EXPECT_EQ(g[size_t(2 * q)], float(q));
    EXPECT_EQ(g[size_t(2 * q + 1)], float(-q));
  }

  std::vector<float> send(static_cast<size_t>(R)), recv(1);
  for (int q = 0; q < R; ++q) send[size_t(q)] = float(100 * r + q);
  w->reduce_scatter_sum(send.data(), recv.data(), 1);
  EXPECT_EQ(recv[0], float(100 * R * (R - 1) / 2 + R * r));

  std::vector<float> a2a(static_cast<size_t>(R));
  w->all_to_all(send.data(), a2a.data(), 1);
  for (int q = 0; q < R; ++q) EXPECT_EQ(a2a[size_t(q)], float(100 * q + r));  // block r of rank q
}

TEST(MpiComm, AllToAllVRingAndStrings) {
  auto w = world_communicator();
  const int R = w->size(), r = w->rank();
  // Rank r sends q+1 copies of (r, q) to rank q.
  std::vector<int64_t> sc(static_cast<size_t>(R)), rc(static_cast<size_t>(R));
  std::vector<float> send;
  for (int q = 0; q < R; ++q) {
    sc[size_t(q)] = q + 1;
    rc[size_t(q)] = r + 1;
    for (int i = 0; i <= q; ++i) send.push_back(float(10 * r + q));
  }
  std::vector<float> recv(size_t((r + 1) * R));
  w->all_to_all_v(send.data(), sc, recv.data(), rc);
  for (int q = 0; q < R; ++q)
    for (int i = 0; i <= r; ++i) EXPECT_EQ(recv[size_t(q * (r + 1) + i)], float(10 * q + r));

  // Ring: pass to the right, receive from the left, both blocking and overlapped.
  const int right = (r + 1) % R, left = (r + R - 1) % R;
  std::vector<float> out(3, float(r)), in(3, -1.0f);
  w->send_recv(out.data(), 3, right, in.data(), 3, left);
  EXPECT_EQ(in[2], float(left));
  std::fill(in.begin(), in.end(), -1.0f);
  w->send_recv_start(out.data(), 3, right, in.data(), 3, left);
  w->send_recv_wait();
  EXPECT_EQ(in[0], float(left));

  std::vector<float> b = {r == 1 ? 42.0f : 0.0f};
  w->broadcast(b.data(), 1, 1);
  EXPECT_EQ(b[0], 42.0f);

  auto strs = w->gather_strings(std::string(size_t(r), 'x') + "r" + std::to_string(r), 0);
  if (r == 0) {
    ASSERT_EQ(int(strs.size()), R);
    for (int q = 0; q < R; ++q) EXPECT_EQ(strs[size_t(q)], std::string(size_t(q), 'x') + "r" + std::to_string(q));
  } else {
    EXPECT_TRUE(strs.empty());
  }
}

// The tensor-level exchanges of parallel/collectives.h that layers and models call.
TEST(Collectives, TensorExchangesMatchTheBufferCalls) {
  auto w = world_communicator();
  const int R = w->size(), r = w->rank();
  const Tensor mine = Tensor::from_f32({2, 1}, {float(r), float(-r)});
  const Tensor all = all_gather_stacked(mine, *w);
  ASSERT_EQ(all.shape(), (Shape{int64_t(R), 2, 1}));
  const std::vector<float> av = all.to_vector();
  for (int q = 0; q < R; ++q) {
    EXPECT_EQ(av[size_t(2 * q)], float(q));
    EXPECT_EQ(av[size_t(2 * q + 1)], float(-q));
  }

  // A non-periodic halo: the first rank receives nothing from above, the last sends nothing below.
  const int up = r > 0 ? r - 1 : -1, down = r + 1 < R ? r + 1 : -1;
  const Tensor row = Tensor::from_f32({3}, {float(r), float(r), float(r)});
  Tensor from_below = down >= 0 ? Tensor::empty({3}) : Tensor();
  send_recv(row, up, from_below, down, *w);
  if (down >= 0) {
    EXPECT_EQ(from_below.to_vector(), std::vector<float>(3, float(down)));
  }

  // The ring step, posted then completed; a strided send is copied (blocking) or refused (posted).
  const int right = (r + 1) % R, left = (r + R - 1) % R;
  Tensor in = Tensor::empty({2});
  send_recv_start(Tensor::from_f32({2}, {float(r), 1.0f}), right, in, left, *w);
  send_recv_wait(*w);
  EXPECT_EQ(in.to_vector(), (std::vector<float>{float(left), 1.0f}));
  const Tensor wide = Tensor::from_f32({2, 2}, {float(r), 0.0f, float(r), 0.0f});
  send_recv(wide.slice(1, 0, 1), right, in, left, *w);
  EXPECT_EQ(in.to_vector(), (std::vector<float>{float(left), float(left)}));

  // Rank r sends q + 1 copies of 10 r + q to rank q.
  std::vector<int64_t> sc(static_cast<size_t>(R)), rc(static_cast<size_t>(R));
  std::vector<float> send;
  for (int q = 0; q < R; ++q) {
    sc[size_t(q)] = q + 1;
    rc[size_t(q)] = r + 1;
    for (int i = 0; i <= q; ++i) send.push_back(float(10 * r + q));
  }
  Tensor recv = Tensor::empty({int64_t(R), r + 1});
  all_to_all_v(Tensor::from_f32({int64_t(send.size())}, send), sc, recv, rc, *w);
  const std::vector<float> rv = recv.to_vector();
  for (int q = 0; q < R; ++q)
    for (int i = 0; i <= r; ++i) EXPECT_EQ(rv[size_t(q * (r + 1) + i)], float(10 * q + r));
}

TEST(Mesh, GroupsFollowTheRankLayout) {
  const int R = world_communicator()->size();
  // Every factorisation of R into cfg*sp*tp with cfg <= 2.
  for (int cfg = 1; cfg <= 2; ++cfg)
    for (int tp = 1; tp <= R; ++tp) {
      if (R % (cfg * tp)) continue;
      ParallelConfig pc;
      pc.cfg = cfg;
      pc.tp = tp;
      pc.sp = R / (cfg * tp);
      MeshShape shape{R >= 4 ? 2 : 1, R >= 4 ? R / 2 : R};
      auto m = Mesh::create(world_communicator(), shape, pc);
      ASSERT_TRUE(m.ok()) << m.error().message;
      const int r = m->rank();
      EXPECT_EQ(m->tp().size(), tp);
      EXPECT_EQ(m->sp().size(), pc.sp);
      EXPECT_EQ(m->cfg().size(), cfg);
      EXPECT_EQ(m->tp().rank(), r % tp);
      EXPECT_EQ(m->sp().rank(), (r / tp) % pc.sp);
      EXPECT_EQ(m->cfg().rank(), r / (tp * pc.sp));
      EXPECT_EQ(m->row().size(), shape.cols);
      EXPECT_EQ(m->col().size(), shape.rows);
      // The TP group sums exactly the world ranks it holds.
      std::vector<float> v = {float(r)};
      m->tp().all_reduce_sum(v.data(), 1);
      const int base = r - r % tp;
      EXPECT_EQ(v[0], float(tp * base + tp * (tp - 1) / 2));
    }
}

TEST(Mesh, WrongProcessCountIsAClearError) {
  const int R = world_communicator()->size();
  ParallelConfig pc;
  pc.sp = R + 1;
  auto m = Mesh::create(world_communicator(), MeshShape{1, R + 1}, pc);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("mpirun -np " + std::to_string(R + 1)), std::string::npos) << m.error().message;
}

}  // namespace
