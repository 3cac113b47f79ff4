// The row-split AutoencoderKL decode (decode_parallel) against the single-device decode of the same
// latents, on the vae_kl16 fixture: over the world group (2 or 4 ranks), over sub-groups split from it,
// with even and uneven bands, with hooks; plus its errors, and the traffic it causes against a count
// derived from the architecture (which also gives the figure for the real SD3 VAE).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "../test_util.h"
#include "io/checkpoint.h"
#include "models/vae/autoencoder_kl.h"
#include "parallel/mpi_comm.h"

using namespace meshdit;
using test::rel_l2;

namespace {

const std::string& case_dir() {
  static const std::string d = test::fixtures_dir() + "/vae_kl16";
  return d;
}

const AutoencoderKL& fixture_vae() {
  static const AutoencoderKL vae = [] {
    auto cfg = AutoencoderKLConfig::from_json(case_dir() + "/config.json");
    MD_CHECK(cfg.ok(), cfg.ok() ? "" : cfg.error().message);
    auto ck = Checkpoint::open(case_dir() + "/diffusion_pytorch_model.safetensors");
    MD_CHECK(ck.ok(), ck.ok() ? "" : ck.error().message);
    auto m = AutoencoderKL::load(*ck, *cfg);
    MD_CHECK(m.ok(), m.ok() ? "" : m.error().message);
    return std::move(*m);
  }();
  return vae;
}

Tensor fixture_tensor(const std::string& file, const std::string& name) {
  return test::fixture_tensor("vae_kl16", file, name);
}

// The fixture latent [2, 16, 6, 10] cut to `rows` rows starting at `first`, or stretched past 6 by
// repeating it (a taller latent for more ranks than the fixture has rows to spare).
Tensor latent_rows(int64_t first, int64_t rows) {
  const Tensor z = fixture_tensor("inputs.safetensors", "z");
  std::vector<Tensor> parts;
  for (int64_t r = first; r < first + rows; ++r) parts.push_back(z.slice(2, r % 6, r % 6 + 1));
  return concat(parts, 2);
}

// decode_parallel on `comm` against decode() of the same latent on this rank.
void expect_matches_single(const Tensor& z, Communicator& comm, double tol = 1e-5) {
  SCOPED_TRACE("latent " + shape_str(z.shape()) + " on " + std::to_string(comm.size()) + " ranks, rank " +
               std::to_string(comm.rank()));
  auto single = fixture_vae().decode(z);
  ASSERT_TRUE(single.ok()) << single.error().message;
  auto par = fixture_vae().decode_parallel(z, comm);
  ASSERT_TRUE(par.ok()) << par.error().message;
  ASSERT_EQ(par->shape(), single->shape());
  EXPECT_LT(rel_l2(*par, *single), tol);
}

TEST(VaeParallel, WorldMatchesTheSingleDecodeAndTheReference) {
  auto world = world_communicator();
  ASSERT_GE(world->size(), 2) << "run under mpirun -np 2 or more";
  // h = 6: 3 + 3 rows on 2 ranks, 2 + 2 + 1 + 1 on 4.
  const Tensor z = fixture_tensor("inputs.safetensors", "z");
  expect_matches_single(z, *world);
  auto par = fixture_vae().decode_parallel(z, *world);
  ASSERT_TRUE(par.ok()) << par.error().message;
  // The fixture's own tolerance for `decoded` against diffusers.
  EXPECT_LT(rel_l2(*par, fixture_tensor("outputs.safetensors", "decoded")), 1e-4);
}

TEST(VaeParallel, UnevenBandsOnTheWorld) {
  auto world = world_communicator();
  // 5 rows: 3 + 2 on 2 ranks, 2 + 1 + 1 + 1 on 4; 7 rows: 4 + 3, 2 + 2 + 2 + 1; one row per rank.
  for (int64_t h : {int64_t(5), int64_t(7), int64_t(world->size())}) expect_matches_single(latent_rows(0, h), *world);
}

TEST(VaeParallel, SubGroupsOfTwoDecodeTheirOwnLatents) {
  auto world = world_communicator();
  // Pairs of neighbouring world ranks (one pair on 2 ranks, two on 4), each decoding a different latent,
  // uneven (h = 5: 3 + 2) and even.
  auto pair = world->split(world->rank() / 2, world->rank());
  ASSERT_EQ(pair->size(), 2);
  const int64_t first = world->rank() / 2;
  expect_matches_single(latent_rows(first, 5), *pair);
  expect_matches_single(latent_rows(first, 4), *pair);
  // Groups of 4 and of 3 when the world has 4: the fixture latent's 6 rows as 2 + 2 + 1 + 1.
  if (world->size() == 4) {
    expect_matches_single(latent_rows(0, 6), *world);
    auto three = world->split(world->rank() < 3 ? 0 : 1, world->rank());
    if (three->size() == 3) expect_matches_single(latent_rows(1, 5), *three);  // 2 + 2 + 1
  }
}

TEST(VaeParallel, GroupOfOneIsTheSingleDecode) {
  auto world = world_communicator();
  auto alone = world->split(world->rank(), 0);
  ASSERT_EQ(alone->size(), 1);
  const Tensor z = latent_rows(world->rank(), 5);
  auto single = fixture_vae().decode(z);
  auto par = fixture_vae().decode_parallel(z, *alone);
  ASSERT_TRUE(single.ok() && par.ok());
  EXPECT_EQ(par->to_vector(), single->to_vector());
}

TEST(VaeParallel, HooksReportTheWholeTensors) {
  auto world = world_communicator();
  const Tensor z = latent_rows(0, 5);
  std::map<std::string, Tensor> single_hooks, par_hooks;
  Hooks into_single = [&](const std::string& n, const Tensor& t) { single_hooks[n] = t.clone(); };
  Hooks into_par = [&](const std::string& n, const Tensor& t) { par_hooks[n] = t.clone(); };
  ASSERT_TRUE(fixture_vae().decode(z, &into_single).ok());
  ASSERT_TRUE(fixture_vae().decode_parallel(z, *world, &into_par).ok());
  ASSERT_EQ(par_hooks.size(), single_hooks.size());
  for (const auto& [name, ref] : single_hooks) {
    ASSERT_TRUE(par_hooks.count(name)) << name;
    ASSERT_EQ(par_hooks[name].shape(), ref.shape()) << name;
    EXPECT_LT(rel_l2(par_hooks[name], ref), 1e-5) << name;
  }
}

TEST(VaeParallel, TooFewLatentRowsIsAClearError) {
  auto world = world_communicator();
  auto r = fixture_vae().decode_parallel(latent_rows(0, world->size() - 1), *world);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("at least one latent row per rank"), std::string::npos) << r.error().message;
  auto bad = fixture_vae().decode_parallel(test::random_tensor({1, 4, 6, 9}, 4), *world);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("[B, 16, h, w]"), std::string::npos) << bad.error().message;
}

// ---- traffic -------------------------------------------------------------------------------------------

// Forwards to a real communicator, counting the floats this rank puts in: what it sends in a send_recv,
// its contribution to a reduction or a gather.
class CountingComm final : public Communicator {
 public:
  explicit CountingComm(Communicator& inner) : inner_(inner) {}
  int64_t halo = 0, reduced = 0, gathered = 0;
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  const char* backend() const override { return inner_.backend(); }
  void all_reduce_sum(float* d, int64_t n) override {
    reduced += n;
    inner_.all_reduce_sum(d, n);
  }
  void all_gather(const float* s, int64_t n, float* r) override {
    gathered += n;
    inner_.all_gather(s, n, r);
  }
  void reduce_scatter_sum(const float* s, float* r, int64_t n) override {
    ADD_FAILURE() << "unexpected reduce_scatter";
    inner_.reduce_scatter_sum(s, r, n);
  }
  void all_to_all(const float* s, float* r, int64_t n) override {
    ADD_FAILURE() << "unexpected all_to_all";
    inner_.all_to_all(s, r, n);
  }
  void all_to_all_v(const float* s, const std::vector<int64_t>& sc, float* r, const std::vector<int64_t>& rc) override {
    ADD_FAILURE() << "unexpected all_to_all_v";
    inner_.all_to_all_v(s, sc, r, rc);
  }
  void send_recv(const float* s, int64_t ns, int dst, float* r, int64_t nr, int src) override {
    halo += ns;
    inner_.send_recv(s, ns, dst, r, nr, src);
  }
  void broadcast(float* d, int64_t n, int root) override { inner_.broadcast(d, n, root); }
  void barrier() override { inner_.barrier(); }
  std::unique_ptr<Communicator> split(int color, int key) override { return inner_.split(color, key); }
  std::vector<std::string> gather_strings(const std::string& s, int root) override {
    return inner_.gather_strings(s, root);
  }

 private:
  Communicator& inner_;
};

struct Traffic {
  int64_t halo = 0, reduced = 0, gathered = 0;  // floats rank r puts in
  int64_t total() const { return halo + reduced + gathered; }
};

// What rank r of P puts in during one decode of latents [B, latent_channels, h, w] without hooks, from the
// decoder's architecture: for every 3x3 conv one row of its input to each neighbour; for every GroupNorm
// two [B, groups] sums; the mid-block attention's keys and values padded to the tallest band (the first);
// the image's band, padded likewise.
Traffic expected_traffic(const AutoencoderKLConfig& cfg, int64_t B, int64_t h, int64_t w, int P, int r) {
  const auto& ch = cfg.block_out_channels;
  const int64_t levels = int64_t(ch.size()), f = cfg.spatial_scale();
  const int64_t neighbours = (r > 0 ? 1 : 0) + (r + 1 < P ? 1 : 0), tall = shard_range(h, P, 0).size();
  int64_t row_floats = 0, norms = 0;  // sum of input channels x row width over the 3x3 convs; GroupNorms
  auto conv3 = [&](int64_t channels, int64_t scale) { row_floats += channels * w * scale; };
  conv3(cfg.latent_channels, 1);                    // conv_in
  for (int i = 0; i < 4; ++i) conv3(ch.back(), 1);  // mid block: two resnets
  norms += 4 + (cfg.mid_block_add_attention ? 1 : 0);
  int64_t out = ch.back();
  for (int64_t i = 0; i < levels; ++i) {
    const int64_t in = out, scale = int64_t(1) << i;
    out = ch[size_t(levels - 1 - i)];
    for (int64_t l = 0; l <= cfg.layers_per_block; ++l) {
      conv3(l == 0 ? in : out, scale);
      conv3(out, scale);
      norms += 2;
    }
    if (i != levels - 1) conv3(out, 2 * scale);  // the upsampler's conv, at the new resolution
  }
  conv3(ch[0], f);  // conv_out after conv_norm_out
  norms += 1;
  Traffic t;
  t.halo = neighbours * B * row_floats;
  t.reduced = norms * 2 * B * cfg.norm_num_groups;
  if (cfg.mid_block_add_attention) t.gathered += 2 * B * tall * w * ch.back();
  t.gathered += B * cfg.out_channels * tall * f * w * f;
  return t;
}

TEST(VaeParallel, TrafficFollowsTheArchitecture) {
  auto world = world_communicator();
  CountingComm counting(*world);
  const Tensor z = latent_rows(0, 5);
  ASSERT_TRUE(fixture_vae().decode_parallel(z, counting).ok());
  const Traffic want = expected_traffic(fixture_vae().config(), 2, 5, 10, world->size(), world->rank());
  EXPECT_EQ(counting.halo, want.halo);
  EXPECT_EQ(counting.reduced, want.reduced);
  EXPECT_EQ(counting.gathered, want.gathered);

  // The real SD3 / SD3.5 VAE decoding one 1024 x 1024 image (latents [1, 16, 128, 128]).
  if (world->rank() != 0) return;
  AutoencoderKLConfig sd3;
  sd3.block_out_channels = {128, 256, 512, 512};
  sd3.down_block_types.assign(4, "DownEncoderBlock2D");
  sd3.up_block_types.assign(4, "UpDecoderBlock2D");
  sd3.layers_per_block = 2;
  sd3.latent_channels = 16;
  for (int P : {2, 4, 8}) {
    Traffic sum;
    for (int q = 0; q < P; ++q) {
      const Traffic t = expected_traffic(sd3, 1, 128, 128, P, q);
      sum.halo += t.halo, sum.reduced += t.reduced, sum.gathered += t.gathered;
    }
    const Traffic r1 = expected_traffic(sd3, 1, 128, 128, P, 1);
    // What a rank receives: the same halo rows back, the reduced sums, and P gather blocks.
    const int64_t recv1 = r1.halo + r1.reduced + P * r1.gathered;
    std::printf(
        "SD3 VAE 1024x1024 on %d ranks: %.2f MiB put in by all ranks (halo %.2f, GroupNorm sums %.3f, attention "
        "k/v + image gather %.2f); rank 1 sends %.2f MiB, receives %.2f MiB\n",
        P, 4.0 * double(sum.total()) / (1 << 20), 4.0 * double(sum.halo) / (1 << 20),
        4.0 * double(sum.reduced) / (1 << 20), 4.0 * double(sum.gathered) / (1 << 20),
        4.0 * double(r1.total()) / (1 << 20), 4.0 * double(recv1) / (1 << 20));
  }
}

}  // namespace
