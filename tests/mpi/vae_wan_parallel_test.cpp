// The row-split AutoencoderKLWan decode (decode_parallel) against the single-device decode of the same
// latents: one frame on the vae_qwenimage fixture, several (the temporal cache and upsampling) on vae_wan21,
// over the world group (2 or 4 ranks) and sub-groups, with even and uneven bands, with hooks; and its errors.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "../test_util.h"
#include "io/checkpoint.h"
#include "models/vae/autoencoder_kl_wan.h"
#include "parallel/mpi_comm.h"

using namespace meshdit;
using test::fixture_tensor;
using test::rel_l2;

namespace {

std::string case_dir(const std::string& name) { return test::fixtures_dir() + "/" + name; }

const AutoencoderKLWan& fixture_vae(const std::string& name) {
  static std::map<std::string, AutoencoderKLWan> models;
  auto it = models.find(name);
  if (it != models.end()) return it->second;
  auto cfg = AutoencoderKLWanConfig::from_json(case_dir(name) + "/config.json");
  MD_CHECK(cfg.ok(), cfg.ok() ? "" : cfg.error().message);
  auto ck = Checkpoint::open(case_dir(name) + "/diffusion_pytorch_model.safetensors");
  MD_CHECK(ck.ok(), ck.ok() ? "" : ck.error().message);
  auto m = AutoencoderKLWan::load(*ck, *cfg);
  MD_CHECK(m.ok(), m.ok() ? "" : m.error().message);
  return models.emplace(name, std::move(*m)).first->second;
}

// A case's latent [B, 16, F, 6, w] cut to `rows` rows starting at `first`, repeating it past its 6 rows.
Tensor latent_rows(const std::string& name, int64_t first, int64_t rows) {
  const Tensor z = fixture_tensor(name, "inputs.safetensors", "z");
  const int64_t h = z.size(3);
  std::vector<Tensor> parts;
  for (int64_t r = first; r < first + rows; ++r) parts.push_back(z.slice(3, r % h, r % h + 1));
  return concat(parts, 3);
}

void expect_matches_single(const std::string& name, const Tensor& z, Communicator& comm, double tol = 1e-5) {
  SCOPED_TRACE(name + " latent " + shape_str(z.shape()) + " on " + std::to_string(comm.size()) + " ranks, rank " +
               std::to_string(comm.rank()));
  auto single = fixture_vae(name).decode(z);
  ASSERT_TRUE(single.ok()) << single.error().message;
  auto par = fixture_vae(name).decode_parallel(z, comm);
  ASSERT_TRUE(par.ok()) << par.error().message;
  ASSERT_EQ(par->shape(), single->shape());
  EXPECT_LT(rel_l2(*par, *single), tol);
}

TEST(WanVaeParallel, OneFrameOnTheWorldMatchesTheSingleDecodeAndTheReference) {
  auto world = world_communicator();
  ASSERT_GE(world->size(), 2) << "run under mpirun -np 2 or more";
  // h = 6: 3 + 3 rows on 2 ranks, 2 + 2 + 1 + 1 on 4.
  const Tensor z = fixture_tensor("vae_qwenimage", "inputs.safetensors", "z");  // [2, 16, 1, 6, 10]
  expect_matches_single("vae_qwenimage", z, *world);
  auto par = fixture_vae("vae_qwenimage").decode_parallel(z, *world);
  ASSERT_TRUE(par.ok()) << par.error().message;
  EXPECT_LT(rel_l2(*par, fixture_tensor("vae_qwenimage", "outputs.safetensors", "decoded")), 1e-4);
}

TEST(WanVaeParallel, SeveralFramesOnTheWorldMatchTheSingleDecodeAndTheReference) {
  auto world = world_communicator();
  const Tensor z = fixture_tensor("vae_wan21", "inputs.safetensors", "z");  // [1, 16, 3, 6, 8]
  expect_matches_single("vae_wan21", z, *world);
  auto par = fixture_vae("vae_wan21").decode_parallel(z, *world);
  ASSERT_TRUE(par.ok()) << par.error().message;
  EXPECT_EQ(par->shape(), (Shape{1, 3, 9, 48, 64}));
  EXPECT_LT(rel_l2(*par, fixture_tensor("vae_wan21", "outputs.safetensors", "decoded")), 1e-4);
}

TEST(WanVaeParallel, UnevenBandsAndSubGroups) {
  auto world = world_communicator();
  // 5 rows: 3 + 2 on 2 ranks, 2 + 1 + 1 + 1 on 4; 7 rows; one row per rank.
  for (int64_t h : {int64_t(5), int64_t(7), int64_t(world->size())})
    expect_matches_single("vae_qwenimage", latent_rows("vae_qwenimage", 0, h), *world);
  expect_matches_single("vae_wan21", latent_rows("vae_wan21", 1, 5), *world);
  // Pairs of neighbouring ranks, each decoding its own latent.
  auto pair = world->split(world->rank() / 2, world->rank());
  ASSERT_EQ(pair->size(), 2);
  expect_matches_single("vae_qwenimage", latent_rows("vae_qwenimage", world->rank() / 2, 5), *pair);
  if (world->size() == 4) {
    auto three = world->split(world->rank() < 3 ? 0 : 1, world->rank());
    if (three->size() == 3) expect_matches_single("vae_wan21", latent_rows("vae_wan21", 0, 4), *three);  // 2 + 1 + 1
  }
}

TEST(WanVaeParallel, GroupOfOneIsTheSingleDecode) {
  auto world = world_communicator();
  auto alone = world->split(world->rank(), 0);
  ASSERT_EQ(alone->size(), 1);
  const Tensor z = latent_rows("vae_wan21", world->rank(), 5);
  auto single = fixture_vae("vae_wan21").decode(z);
  auto par = fixture_vae("vae_wan21").decode_parallel(z, *alone);
  ASSERT_TRUE(single.ok() && par.ok());
  EXPECT_EQ(par->to_vector(), single->to_vector());
}

TEST(WanVaeParallel, HooksReportTheWholeTensors) {
  auto world = world_communicator();
  const Tensor z = latent_rows("vae_wan21", 0, 5);
  std::map<std::string, Tensor> single_hooks, par_hooks;
  Hooks into_single = [&](const std::string& n, const Tensor& t) { single_hooks[n] = t.clone(); };
  Hooks into_par = [&](const std::string& n, const Tensor& t) { par_hooks[n] = t.clone(); };
  ASSERT_TRUE(fixture_vae("vae_wan21").decode(z, &into_single).ok());
  ASSERT_TRUE(fixture_vae("vae_wan21").decode_parallel(z, *world, &into_par).ok());
  ASSERT_EQ(single_hooks.size(), 1u);
  ASSERT_EQ(par_hooks.size(), single_hooks.size());
  for (const auto& entry : single_hooks) {
    const std::string& name = entry.first;
    ASSERT_TRUE(par_hooks.count(name)) << name;
    ASSERT_EQ(par_hooks[name].shape(), entry.second.shape()) << name;
    EXPECT_LT(rel_l2(par_hooks[name], entry.second), 1e-5) << name;
  }
}

TEST(WanVaeParallel, TooFewLatentRowsIsAClearError) {
  auto world = world_communicator();
  auto r = fixture_vae("vae_qwenimage").decode_parallel(latent_rows("vae_qwenimage", 0, world->size() - 1), *world);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("at least one latent row per rank"), std::string::npos) << r.error().message;
  auto bad = fixture_vae("vae_qwenimage").decode_parallel(test::random_tensor({1, 16, 6, 9}, 4), *world);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("[B, 16, F, h, w]"), std::string::npos) << bad.error().message;
}

}  // namespace
