// `meshdit plan` (app/plan.h): weights against the real tensors of the fixture checkpoints, hand-computed
// sharded sizes and collective volumes, and the errors a user gets.
#include "app/plan.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "../test_util.h"
#include "io/checkpoint.h"
#include "io/json_config.h"

namespace fs = std::filesystem;
using namespace meshdit;

namespace {

std::string fixture(const std::string& name) { return test::fixtures_dir() + "/" + name; }

Plan plan_ok(const PlanRequest& r) {
  auto p = make_plan(r);
  EXPECT_TRUE(p.ok()) << p.error().message;
  return p.ok() ? p.value() : Plan{};
}

std::string plan_error(const PlanRequest& r) {
  auto p = make_plan(r);
  EXPECT_FALSE(p.ok());
  return p.ok() ? "" : p.error().message;
}

const PlanComm& comm(const PlanRank& r, const std::string& kind) {
  for (const auto& c : r.comm)
    if (c.kind == kind) return c;
  static PlanComm none;
  ADD_FAILURE() << "no collective " << kind;
  return none;
}

// The tiny fixture transformers: small sizes that fit their position tables.
PlanRequest tiny(const std::string& name) {
  PlanRequest r;
  r.model = fixture(name);
  r.width = 64;
  r.height = 48;
  r.text_tokens = 10;
  r.dtype_bytes = 4;  // the fixtures are f32
  if (name.rfind("wan", 0) == 0) r.frames = 5;
  return r;
}

class PlanFixture : public ::testing::TestWithParam<const char*> {};

// Weight bytes at tp=1 = the sum of the real tensors' sizes, and every name and shape matches the file.
TEST_P(PlanFixture, WeightsAreTheCheckpointsTensors) {
  const std::string dir = fixture(GetParam());
  auto ck = Checkpoint::open(dir + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  int64_t nbytes = 0;
  std::map<std::string, Shape> want;
  for (const auto& n : ck->names()) {
    auto t = ck->get(n);
    ASSERT_TRUE(t.ok()) << t.error().message;
    nbytes += int64_t(t->nbytes());
    want[n] = t->shape();
  }
  const Plan p = plan_ok(tiny(GetParam()));
  ASSERT_EQ(p.ranks.size(), 1u);
  EXPECT_EQ(p.ranks[0].weight_bytes, nbytes);
  EXPECT_EQ(p.total_weight_bytes, nbytes);
  std::map<std::string, Shape> got;
  for (const auto& w : p.weights) got[w.name] = Shape(w.shape.begin(), w.shape.end());
  EXPECT_EQ(got, want);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PlanFixture,
                         ::testing::Values("flux1_dev_transformer", "sd35_large_transformer", "wan22_t2v_transformer"));

TEST(Plan, TensorParallelShardsWeightsByHand) {
  // Tiny FLUX.1-dev fixture: D = 32, 2 heads x 16, FF 128, in 64, text 48, pooled 32, 2 double + 2 single.
  // Elements, full / at tp=2 (column-parallel: weight and bias halved; row-parallel: weight halved, bias whole):
  //   replicated: x_embedder 2080, timestep 8224 + 1056, guidance 8224 + 1056, pooled 1056 + 1056,
  //               context_embedder 1568, norm_out 2112, proj_out 2112                      = 28544
  //   double block: norm1/norm1_context 2 x 6336, q/k/v x 2 streams 6 x 1056, 4 qk norms 64,
  //               out 2 x 1056, FF 2 x (4224 + 4128)                                      = 37888
  //               at tp=2: 6336 + 3168 + 64 + 2 x (512 + 32) + 2 x (2112 + 2048 + 32)      = 19040
  //   single block: norm 3168, q/k/v 3168, norms 32, proj_mlp 4224, proj_out 5152           = 15744
  //               at tp=2: 1584 + 1584 + 32 + 2112 + (2560 + 32)                             = 7904
  PlanRequest r = tiny("flux1_dev_transformer");
  const Plan one = plan_ok(r);
  EXPECT_EQ(one.ranks[0].weight_bytes, (28544 + 2 * 37888 + 2 * 15744) * 4);
  r.mesh = "1x2";
  const Plan two = plan_ok(r);
  EXPECT_EQ(two.parallel.tp, 2);
  ASSERT_EQ(two.ranks.size(), 2u);
  for (const auto& rk : two.ranks) {
    EXPECT_EQ(rk.weight_bytes, (28544 + 2 * 19040 + 2 * 7904) * 4);
    EXPECT_GT(rk.weight_bytes, one.ranks[0].weight_bytes / 2);
    EXPECT_LT(rk.weight_bytes, one.ranks[0].weight_bytes);
  }
  // Only 2 heads: tp=4 is refused with validate()'s words.
  r.mesh = "1x4";
  r.parallel = "tp=4,sp=1";
  EXPECT_NE(plan_error(r).find("attention heads are not divisible by tp=4"), std::string::npos);
}

TEST(Plan, BuiltinParameterCounts) {
  PlanRequest r;
  r.model = "flux-dev";
  EXPECT_EQ(plan_ok(r).params, 11901408320);  // FLUX.1-dev's transformer
  r.model = "flux-schnell";                   // no guidance embedder: 2 x (256 x 3072 + 3072) + 3072 x 3072 + 3072
  EXPECT_EQ(plan_ok(r).params, 11901408320 - (256 * 3072 + 3072 + 3072 * 3072 + 3072));
  r.model = "wan22-t2v-a14b";
  const Plan wan = plan_ok(r);
  EXPECT_GT(wan.params, 14000000000);  // one 14 B expert
  EXPECT_LT(wan.params, 14500000000);
  EXPECT_EQ(wan.image_tokens, 21 * 45 * 80);  // 81 frames -> 21 latent, 720/16 x 1280/16
  EXPECT_EQ(wan.text_tokens, 512);
  r.model = "sd35-large";
  const Plan sd = plan_ok(r);
  EXPECT_EQ(sd.image_tokens, 64 * 64);
  EXPECT_EQ(sd.text_tokens, 333);
  EXPECT_EQ(sd.batch, 2);
}

TEST(Plan, OneDeviceCommunicatesNothing) {
  for (const char* m : {"flux-dev", "sd35-large", "wan22-t2v-a14b"}) {
    PlanRequest r;
    r.model = m;
    const Plan p = plan_ok(r);
    ASSERT_EQ(p.ranks.size(), 1u);
    EXPECT_EQ(p.ranks[0].sent_bytes(), 0) << m;
    EXPECT_EQ(p.ranks[0].comm_s(), 0) << m;
    EXPECT_DOUBLE_EQ(p.step_s, p.ranks[0].compute_s) << m;
    EXPECT_DOUBLE_EQ(p.step_s, p.single_device_step_s) << m;
  }
}

TEST(Plan, RingAndUlyssesVolumes) {
  // flux-dev 1024x1024: N = 4096 image tokens, L = 512, D = 3072, 19 + 38 = 57 attentions, f32 messages.
  const int64_t N = 4096, D = 3072, att = 57, n = N / 4, ab = 4;
  PlanRequest r;
  r.model = "flux-dev";
  r.mesh = "1x4";
  r.parallel = "tp=1,sp=4,sp_mode=ring";
  const Plan ring = plan_ok(r);
  ASSERT_EQ(ring.ranks.size(), 4u);
  for (const auto& rk : ring.ranks) {
    EXPECT_EQ(rk.image_tokens, n);
    const PlanComm& kv = comm(rk, "sp_ring_kv");
    EXPECT_EQ(kv.calls, att * 3);                        // sp-1 passes per attention
    EXPECT_EQ(kv.sent_bytes, att * 3 * 2 * n * D * ab);  // K and V of one shard per pass
    EXPECT_TRUE(kv.overlapped);
    EXPECT_EQ(comm(rk, "sp_ulysses_all_to_all").calls, 0);
    const PlanComm& g = comm(rk, "sp_final_gather");
    EXPECT_EQ(g.payload_bytes, N * 64 * ab);
    EXPECT_EQ(g.sent_bytes, N * 64 * ab * 3 / 4);
    EXPECT_EQ(comm(rk, "tp_all_reduce").calls, 0);
    EXPECT_EQ(comm(rk, "cfg_combine_all_gather").calls, 0);
  }
  r.parallel = "tp=1,sp=4,sp_mode=ulysses";
  const Plan uly = plan_ok(r);
  for (const auto& rk : uly.ranks) {
    const PlanComm& a2a = comm(rk, "sp_ulysses_all_to_all");
    EXPECT_EQ(a2a.calls, 4 * att);  // q, k, v in, output back
    EXPECT_EQ(a2a.payload_bytes, 4 * att * n * D * ab);
    EXPECT_EQ(a2a.sent_bytes, 4 * att * n * D * ab * 3 / 4);  // (n-1)/n of each leaves the rank
    EXPECT_FALSE(a2a.overlapped);
    EXPECT_EQ(comm(rk, "sp_ring_kv").calls, 0);
  }
  // Ulysses attention FLOPs: all tokens for heads/sp, no recomputed text queries: less than ring's.
  EXPECT_LT(uly.ranks[0].flops, ring.ranks[0].flops);
  // 24 heads cannot be split 16 ways by Ulysses.
  r.mesh = "2x8";
  r.parallel = "tp=1,sp=16,sp_mode=ulysses";
  EXPECT_NE(plan_error(r).find("Ulysses needs the 24 heads per TP rank divisible by sp=16"), std::string::npos);
}

TEST(Plan, TensorParallelAndCfgVolumes) {
  // flux-dev on 1x2: tp=2. All-reduces: 19 double blocks x 2 streams x 2 (attention out, FF) + 38 single
  // blocks x 1, of (tokens of the stream) x D; ring all-reduce sends 2(n-1)/n = 1 x payload.
  const int64_t N = 4096, L = 512, D = 3072, ab = 4;
  PlanRequest r;
  r.model = "flux-dev";
  r.mesh = "1x2";
  const Plan p = plan_ok(r);
  EXPECT_EQ(p.parallel.tp, 2);
  const PlanComm& ar = comm(p.ranks[0], "tp_all_reduce");
  EXPECT_EQ(ar.calls, 19 * 4 + 38);
  EXPECT_EQ(ar.payload_bytes, (19 * 2 * (N + L) + 38 * (N + L)) * D * ab);
  EXPECT_EQ(ar.sent_bytes, ar.payload_bytes);
  const PlanComm& ag = comm(p.ranks[0], "adaln_all_gather");
  EXPECT_EQ(ag.calls, 19 * 2 + 38);
  EXPECT_EQ(ag.payload_bytes, (19 * 12 + 38 * 3) * D * ab);
  EXPECT_EQ(ag.sent_bytes, ag.payload_bytes / 2);
  EXPECT_GT(p.ranks[0].step_s, p.ranks[0].compute_s);

  // sd35-large on 2x1: the guidance batch splits over the rows (cfg=2), one sample per rank; the combine
  // gathers both halves' latents (64 values per token).
  r.model = "sd35-large";
  r.mesh = "2x1";
  const Plan sd = plan_ok(r);
  EXPECT_EQ(sd.parallel.cfg, 2);
  const PlanComm& cfg = comm(sd.ranks[1], "cfg_combine_all_gather");
  EXPECT_EQ(cfg.calls, 1);
  EXPECT_EQ(cfg.payload_bytes, 2 * N * 64 * ab);
  EXPECT_EQ(cfg.sent_bytes, N * 64 * ab);
  // Same weights as one device; half the activations (batch 1 instead of 2) give the same peak per sample.
  r.mesh = "1x1";
  const Plan sd1 = plan_ok(r);
  EXPECT_EQ(sd.ranks[0].weight_bytes, sd1.ranks[0].weight_bytes);
  EXPECT_LT(sd.ranks[0].activation_bytes, sd1.ranks[0].activation_bytes);
  EXPECT_NEAR(sd.ranks[0].compute_s * 2, sd1.ranks[0].compute_s, 1e-9 * sd1.ranks[0].compute_s);
}

// Motif-Image 6B: 30 heads padded to 32 under TP; tt_dit's presets (2x4: cfg 2, tp 4; 4x8: cfg 2, sp 4, tp 4)
// run as overrides, and the guidance batch of two makes cfg=2 possible.
TEST(Plan, MotifTtDitPresets) {
  PlanRequest r;
  r.model = "motif";
  r.mesh = "2x4";
  r.parallel = "cfg=2,tp=4";
  const Plan a = plan_ok(r);
  EXPECT_EQ(a.parallel.cfg, 2);
  EXPECT_EQ(a.parallel.tp, 4);
  EXPECT_EQ(a.image_tokens, 4096);
  EXPECT_EQ(a.text_tokens, 77 + 256 + 1);
  EXPECT_EQ(a.ranks.size(), 8u);
  // 30 blocks x 4 row-parallel outputs (o_proj, add_o_proj, two MLP down-projections).
  EXPECT_EQ(comm(a.ranks[0], "tp_all_reduce").calls, 30 * 4);
  r.mesh = "4x8";
  r.parallel = "cfg=2,sp=4,tp=4";
  const Plan b = plan_ok(r);
  EXPECT_EQ(b.parallel.cfg, 2);
  EXPECT_EQ(b.parallel.sp, 4);
  EXPECT_EQ(b.parallel.tp, 4);
  EXPECT_EQ(b.ranks.size(), 32u);
  EXPECT_LT(b.ranks[0].step_s, a.ranks[0].step_s);
  // About 6 B parameters; every rank of tp=4 holds a bit over a quarter of the sharded ones.
  EXPECT_GT(a.params, 5'500'000'000);
  EXPECT_LT(a.params, 6'500'000'000);
  EXPECT_LT(a.ranks[0].weight_bytes, a.total_weight_bytes / 2);
  r.width = 1024;
  r.height = 768;
  r.parallel = "";
  EXPECT_NE(plan_error(r).find("square"), std::string::npos);
}

TEST(Plan, Errors) {
  PlanRequest r;
  r.mesh = "2y3";
  EXPECT_NE(plan_error(r).find("--mesh 2y3"), std::string::npos);
  r.mesh = "1x5";
  r.parallel = "tp=5,sp=1";
  EXPECT_NE(plan_error(r).find("24 attention heads are not divisible by tp=5"), std::string::npos);
  r.parallel = "tp=2";  // 2 x sp=1 != 5 ranks
  EXPECT_NE(plan_error(r).find("must equal the mesh's 5 ranks"), std::string::npos);
  r.parallel = "bogus=1";
  EXPECT_NE(plan_error(r).find("unknown key 'bogus'"), std::string::npos);
  r = PlanRequest{};
  r.parallel = "cfg=2,sp=1";
  r.mesh = "2x1";
  EXPECT_NE(plan_error(r).find("cfg=2 needs a guidance batch"), std::string::npos);
  r = PlanRequest{};
  r.model = "sdxl";
  EXPECT_NE(plan_error(r).find("not a built-in model"), std::string::npos);
  r.model = "flux-dev";
  r.width = 1000;
  EXPECT_NE(plan_error(r).find("multiples of 16"), std::string::npos);

  const test::TempDir d;
  d.write("config.json", R"({"_class_name": "UNet2DConditionModel"})");
  r = PlanRequest{};
  r.model = d.str();
  EXPECT_NE(plan_error(r).find("'UNet2DConditionModel' is not supported"), std::string::npos);
}

TEST(Plan, Cli) {
  std::string out;
  int rc = test::run_command(std::string(MESHDIT_CLI) + " plan --model sd35-large --mesh 2x2", &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("cfg=2,sp=1,tp=2"), std::string::npos) << out;
  EXPECT_NE(out.find("predicted step"), std::string::npos) << out;
  rc = test::run_command(std::string(MESHDIT_CLI) + " plan --model flux-dev --mesh 2x4 --json", &out);
  ASSERT_EQ(rc, 0) << out;
  auto j = parse_json(out, "plan --json");
  ASSERT_TRUE(j.ok()) << j.error().message;
  EXPECT_EQ((*j)["ranks"].size(), 8u);
  EXPECT_EQ((*j)["parallel"]["tp"], 4);  // TP along the rows (4 wide), SP over the 2 rows: no CFG batch
  EXPECT_EQ((*j)["parallel"]["sp"], 2);
  rc = test::run_command(std::string(MESHDIT_CLI) + " plan --model flux-dev --mesh 2x 2>&1", &out);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("meshdit plan: --mesh 2x"), std::string::npos) << out;
}

}  // namespace
