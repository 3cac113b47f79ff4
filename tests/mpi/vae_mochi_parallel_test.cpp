// The row-split AutoencoderKLMochi decode (decode_parallel) against the single-device decode of the same
// latents and against the vae_mochi reference: over the world group (2 or 4 ranks) and sub-groups, with even
// and uneven bands, chunks of one and of several latent frames; and its errors.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../test_util.h"
#include "io/checkpoint.h"
#include "models/vae/autoencoder_kl_mochi.h"
#include "parallel/mpi_comm.h"

using namespace meshdit;
using test::fixture_tensor;
using test::rel_l2;

namespace {

const char* kCase = "vae_mochi";

const AutoencoderKLMochi& fixture_vae() {
  static const AutoencoderKLMochi vae = [] {
    const std::string dir = test::fixtures_dir() + "/" + kCase;
    auto cfg = AutoencoderKLMochiConfig::from_json(dir + "/config.json");
    MD_CHECK(cfg.ok(), cfg.ok() ? "" : cfg.error().message);
    auto ck = Checkpoint::open(dir + "/diffusion_pytorch_model.safetensors");
    MD_CHECK(ck.ok(), ck.ok() ? "" : ck.error().message);
    auto m = AutoencoderKLMochi::load(*ck, *cfg);
    MD_CHECK(m.ok(), m.ok() ? "" : m.error().message);
    return std::move(*m);
  }();
  return vae;
}

// The fixture latent [1, 12, 3, 4, 6] cut to `rows` rows starting at `first`, repeating it past its 4 rows.
Tensor latent_rows(int64_t first, int64_t rows) {
  const Tensor z = fixture_tensor(kCase, "inputs.safetensors", "z");
  const int64_t h = z.size(3);
  std::vector<Tensor> parts;
  for (int64_t r = first; r < first + rows; ++r) parts.push_back(z.slice(3, r % h, r % h + 1));
  return concat(parts, 3);
}

void expect_matches_single(const Tensor& z, Communicator& comm, int64_t chunk_frames = 1) {
  SCOPED_TRACE("latent " + shape_str(z.shape()) + " on " + std::to_string(comm.size()) + " ranks, rank " +
               std::to_string(comm.rank()) + ", chunks of " + std::to_string(chunk_frames));
  MochiDecodeOptions o;
  o.chunk_frames = chunk_frames;
  auto single = fixture_vae().decode(z, o);
  ASSERT_TRUE(single.ok()) << single.error().message;
  auto par = fixture_vae().decode_parallel(z, comm, o);
  ASSERT_TRUE(par.ok()) << par.error().message;
  ASSERT_EQ(par->shape(), single->shape());
  EXPECT_LT(rel_l2(*par, *single), 1e-5);
}

TEST(MochiVaeParallel, WorldMatchesTheSingleDecodeAndTheReference) {
  auto world = world_communicator();
  ASSERT_GE(world->size(), 2) << "run under mpirun -np 2 or more";
  // h = 4: 2 + 2 rows on 2 ranks, one each on 4.
  const Tensor z = fixture_tensor(kCase, "inputs.safetensors", "z");
  const Tensor ref = fixture_tensor(kCase, "outputs.safetensors", "decoded");
  for (int64_t chunk : {1, 2}) {
    expect_matches_single(z, *world, chunk);
    MochiDecodeOptions o;
    o.chunk_frames = chunk;
    auto par = fixture_vae().decode_parallel(z, *world, o);
    ASSERT_TRUE(par.ok()) << par.error().message;
    EXPECT_EQ(par->shape(), (Shape{1, 3, 13, 32, 48}));
    EXPECT_LT(rel_l2(*par, ref), 1e-4);
  }
}

TEST(MochiVaeParallel, UnevenBandsAndSubGroups) {
  auto world = world_communicator();
  // 5 rows: 3 + 2 on 2 ranks, 2 + 1 + 1 + 1 on 4; one row per rank.
  expect_matches_single(latent_rows(1, 5), *world);
  expect_matches_single(latent_rows(0, world->size()), *world, 3);
  // Pairs of neighbouring ranks, each decoding its own latent.
  auto pair = world->split(world->rank() / 2, world->rank());
  ASSERT_EQ(pair->size(), 2);
  expect_matches_single(latent_rows(world->rank() / 2, 3), *pair);
  if (world->size() == 4) {
    auto three = world->split(world->rank() < 3 ? 0 : 1, world->rank());
    if (three->size() == 3) expect_matches_single(latent_rows(0, 4), *three);  // 2 + 1 + 1
  }
}

TEST(MochiVaeParallel, GroupOfOneIsTheSingleDecode) {
  auto world = world_communicator();
  auto alone = world->split(world->rank(), 0);
  ASSERT_EQ(alone->size(), 1);
  const Tensor z = latent_rows(world->rank(), 3);
  auto single = fixture_vae().decode(z);
  auto par = fixture_vae().decode_parallel(z, *alone);
  ASSERT_TRUE(single.ok() && par.ok());
  EXPECT_EQ(par->to_vector(), single->to_vector());
}

TEST(MochiVaeParallel, ProgressOnEveryRank) {
  auto world = world_communicator();
  int64_t calls = 0, last_frames = 0;
  MochiDecodeOptions o;
  o.on_chunk = [&](const MochiDecodeProgress& p) {
    ++calls;
    last_frames = p.frames_done;
  };
  auto par = fixture_vae().decode_parallel(fixture_tensor(kCase, "inputs.safetensors", "z"), *world, o);
  ASSERT_TRUE(par.ok()) << par.error().message;
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(last_frames, 13);
}

TEST(MochiVaeParallel, TooFewLatentRowsIsAClearError) {
  auto world = world_communicator();
  auto r = fixture_vae().decode_parallel(latent_rows(0, world->size() - 1), *world);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("at least one latent row per rank"), std::string::npos) << r.error().message;
  auto bad = fixture_vae().decode_parallel(test::random_tensor({1, 16, 2, 4, 6}, 4), *world);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("[B, 12, F, h, w]"), std::string::npos) << bad.error().message;
}

}  // namespace
