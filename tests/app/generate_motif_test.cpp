// `meshdit generate --model DIR` on a Motif-Image folder as released (no model_index.json, the DiT in a PyTorch
// .bin under checkpoints/ with the `dit.` prefix), built small from the shared fixtures: pipe_sd3's tokenizers,
// CLIP encoders (16 + 16 wide) and 16-channel VAE, a random T5 as wide as the DiT's fixed text width (4096), and
// motif_transformer's DiT with its pooled-text MLP resized to the CLIP pair's 32.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../io/torch_checkpoint_writer.h"
#include "../test_util.h"
#include "encoders/tokenizers/clip_tokenizer.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "models/transformers/motif.h"
#include "pipelines/motif.h"

namespace fs = std::filesystem;
using namespace meshdit;

namespace {

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The DiT as torch.save writes a state dict: every tensor float32 under "dit.".
void write_dit_bin(const fs::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors) {
  test::Pickle p;
  p.proto(2).global("collections", "OrderedDict").binput(0).empty_tuple().reduce().binput(1).mark();
  std::vector<std::pair<std::string, std::string>> storages;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor t = tensors[i].second.to(DType::F32).contiguous();
    const std::string key = std::to_string(i);
    p.str("dit." + tensors[i].first)
        .tensor("FloatStorage", key, t.numel(), 0, t.shape(), contiguous_strides(t.shape()));
    storages.push_back({key, test::bytes_of(t.to_vector())});
  }
  p.op('u').stop();
  const std::string bytes = test::write_torch_checkpoint(p.bytes, storages);
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

// A T5 encoder d_model wide (one layer, two heads) over pipe_sd3's T5 vocabulary.
void write_t5(const fs::path& dir, int64_t d_model) {
  fs::create_directories(dir);
  const int64_t vocab = 768, heads = 2, d_kv = 8, d_ff = 16, I = heads * d_kv;
  std::ofstream(dir / "config.json") << R"({"model_type": "t5", "d_model": )" << d_model
                                     << R"(, "d_kv": 8, "d_ff": 16, "num_layers": 1, "num_heads": 2,
      "vocab_size": 768, "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
      "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128})";
  const std::string b = "encoder.block.0.layer.";
  unsigned seed = 100;
  auto rnd = [&](const Shape& s, float scale) { return test::random_tensor(s, seed++, scale); };
  const float w = 1.0f / float(d_model);
  const std::vector<std::pair<std::string, Tensor>> t{
      {"shared.weight", rnd({vocab, d_model}, 1.0f)},
      {b + "0.layer_norm.weight", ops::full({d_model}, 1.0f)},
      {b + "0.SelfAttention.q.weight", rnd({I, d_model}, w * 8)},
      {b + "0.SelfAttention.k.weight", rnd({I, d_model}, w * 8)},
      {b + "0.SelfAttention.v.weight", rnd({I, d_model}, w * 8)},
      {b + "0.SelfAttention.o.weight", rnd({d_model, I}, 0.25f)},
      {b + "0.SelfAttention.relative_attention_bias.weight", rnd({32, heads}, 0.5f)},
      {b + "1.layer_norm.weight", ops::full({d_model}, 1.0f)},
      {b + "1.DenseReluDense.wi_0.weight", rnd({d_ff, d_model}, w * 8)},
      {b + "1.DenseReluDense.wi_1.weight", rnd({d_ff, d_model}, w * 8)},
      {b + "1.DenseReluDense.wo.weight", rnd({d_model, d_ff}, 0.25f)},
      {"encoder.final_layer_norm.weight", ops::full({d_model}, 1.0f)},
  };
  const Status st = save_safetensors((dir / "model.safetensors").string(), t);
  ASSERT_TRUE(st.ok()) << st.error().message;
}

class GenerateMotif : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string shared = test::shared_fixtures_dir();
    const fs::path sd3 = shared + "/pipe_sd3", dit = shared + "/motif_transformer";
    if (shared.empty() || !fs::exists(sd3 / "model_index.json") || !fs::exists(dit / "config.json")) return;
    root_ = test::scratch_dir("generate_motif");
    fs::remove_all(root_);
    const fs::path m = root_ / "motif";
    fs::create_directories(m / "checkpoints");
    fs::create_directories(m / "configs");
    for (const char* c : {"tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder", "text_encoder_2", "vae"})
      fs::copy(sd3 / c, m / c, fs::copy_options::recursive);
    write_t5(m / "text_encoder_3", MotifConfig::kTextDim);

    // motif_transformer's config and weights, the pooled text MLP taking CLIP-L ++ CLIP-G (16 + 16).
    auto cfg = load_json((dit / "config.json").string());
    ASSERT_TRUE(cfg.ok()) << cfg.error().message;
    Json c = *cfg;
    c["pooled_text_dim"] = 32;
    std::ofstream(m / "configs" / "motif_image.json") << c.dump(2);
    size_ = c["height"].get<int64_t>();
    const int64_t modulation = c["modulation_dim"].get<int64_t>();
    auto ck = Checkpoint::open((dit / "diffusion_pytorch_model.safetensors").string());
    ASSERT_TRUE(ck.ok()) << ck.error().message;
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& name : ck->names()) {
      if (name.rfind("time_emb.pooled_text_emb.", 0) == 0) continue;
      auto t = ck->get(name);
      ASSERT_TRUE(t.ok()) << t.error().message;
      tensors.push_back({name, t->to(DType::F32).contiguous()});
    }
    const std::string pm = "time_emb.pooled_text_emb.";
    tensors.push_back({pm + "linear_1.weight", test::random_tensor({128, 32}, 1, 0.2f)});
    tensors.push_back({pm + "linear_1.bias", test::random_tensor({128}, 2, 0.1f)});
    tensors.push_back({pm + "linear_2.weight", test::random_tensor({modulation, 128}, 3, 0.1f)});
    tensors.push_back({pm + "linear_2.bias", test::random_tensor({modulation}, 4, 0.1f)});
    write_dit_bin(m / "checkpoints" / "motif_image_preview.bin", tensors);
  }
  static void TearDownTestSuite() {
    if (!root_.empty()) fs::remove_all(root_);
  }
  void SetUp() override {
    if (root_.empty()) GTEST_SKIP() << "no shared fixtures (pipe_sd3, motif_transformer)";
  }
  static fs::path model() { return root_ / "motif"; }
  static std::string size() { return std::to_string(size_); }
  // generate on the folder at the DiT's size (width `width` when given) in `steps` steps, into root/<out>.
  static int generate(const std::string& out, const std::string& extra, std::string* log, int steps = 2,
                      int64_t width = 0) {
    return test::run_command(std::string(MESHDIT_CLI) + " generate --no-progress --model " + model().string() +
                                 " -p 'a cat' --seed 3 --steps " + std::to_string(steps) + " --width " +
                                 std::to_string(width ? width : size_) + " --height " + size() + " -o " +
                                 (root_ / out).string() + " " + extra,
                             log);
  }
  static std::vector<uint8_t> pixels(const std::string& out, int* w, int* h) {
    auto px = read_png((root_ / out).string(), w, h);
    EXPECT_TRUE(px.ok()) << px.error().message;
    return px.ok() ? *px : std::vector<uint8_t>{};
  }

  static inline fs::path root_;
  static inline int64_t size_ = 0;
};

TEST_F(GenerateMotif, ReleasedFolderGivesTheSameImageTwice) {
  std::string log;
  ASSERT_EQ(generate("a.png", "", &log), 0) << log;
  ASSERT_EQ(generate("b.png", "", &log), 0) << log;
  int w = 0, h = 0;
  const std::vector<uint8_t> px = pixels("a.png", &w, &h);
  EXPECT_EQ(w, size_);
  EXPECT_EQ(h, size_);
  EXPECT_EQ(px.size(), size_t(size_ * size_ * 3));
  EXPECT_EQ(read_bytes(root_ / "a.png"), read_bytes(root_ / "b.png"));
}

TEST_F(GenerateMotif, NegativePromptRunsAndChangesTheImage) {
  std::string log;
  ASSERT_EQ(generate("plain.png", "", &log), 0) << log;
  ASSERT_EQ(generate("neg.png", "--negative-prompt 'a dog'", &log), 0) << log;
  int w = 0, h = 0;
  EXPECT_NE(pixels("plain.png", &w, &h), pixels("neg.png", &w, &h));
}

// Motif has no pipeline fixture (tests/pipelines/cache_pipeline_test.cpp runs the others): its step caching
// through the CLI. Threshold 0 changes no pixel; a huge one skips every call after the warmup (its guidance
// is one batch of two, so one shared cache: 6 calls, 5 cached).
TEST_F(GenerateMotif, StepCachingSkipsAndThresholdZeroChangesNothing) {
  std::string log;
  ASSERT_EQ(generate("uncached.png", "", &log, 6), 0) << log;
  ASSERT_EQ(generate("zero.png", "--cache fbcache:threshold=0,warmup=0", &log, 6), 0) << log;
  EXPECT_NE(log.find("cache: 0 of 6 model calls cached"), std::string::npos) << log;
  int w = 0, h = 0;
  EXPECT_EQ(pixels("uncached.png", &w, &h), pixels("zero.png", &w, &h));
  for (const char* spec : {"fbcache:threshold=1e9,warmup=1", "dbcache+taylorseer:F1B0,threshold=1e9,warmup=1"}) {
    ASSERT_EQ(generate("skip.png", std::string("--cache ") + spec, &log, 6), 0) << log;
    EXPECT_NE(log.find("cache: 5 of 6 model calls cached (steps 1 2 3 4 5)"), std::string::npos) << spec << "\n" << log;
  }
}

TEST_F(GenerateMotif, OddStepsAndNonSquareSizesAreOneClearError) {
  std::string log;
  EXPECT_EQ(generate("odd.png", "", &log, 3), 1) << log;
  EXPECT_NE(log.find("even step count"), std::string::npos) << log;
  EXPECT_NE(log.find("got 3"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(root_ / "odd.png"));
  EXPECT_EQ(generate("wide.png", "", &log, 2, 2 * size_), 1) << log;
  EXPECT_NE(log.find("square images only"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(root_ / "wide.png"));
}

// Whether row l of x [1, L, D] is all zeros.
bool zero_row(const Tensor& x, int64_t l) {
  const std::vector<float> v = x.slice(1, l, l + 1).contiguous().to_vector();
  return std::all_of(v.begin(), v.end(), [](float f) { return f == 0.0f; });
}

// MotifImage.text_encoding's zero masking: T5 rows at padding; CLIP rows other than the text and the token at
// index (number of non-end tokens): CLIP-L pads with its end token, so every row after its first end token is
// zeroed; CLIP-G pads with "!", so only its end token's row is (the reference's arithmetic).
TEST_F(GenerateMotif, PromptEncodingZeroesAsTheReference) {
  auto p = MotifImagePipeline::load(model().string());
  ASSERT_TRUE(p.ok()) << p.error().message;
  auto e = p->encode_prompt({"a cat"}, 256);
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ(e->t5.shape(), (Shape{1, 256, MotifConfig::kTextDim}));
  EXPECT_EQ(e->clip_l.shape(), (Shape{1, 77, 16}));
  EXPECT_EQ(e->clip_g.shape(), (Shape{1, 77, 16}));
  EXPECT_EQ(e->pooled.shape(), (Shape{1, 32}));
  const int64_t t5_tokens = 3;  // "a", "cat", "</s>" in pipe_sd3's T5 vocabulary
  for (int64_t l = 0; l < 256; ++l) EXPECT_EQ(zero_row(e->t5, l), l >= t5_tokens) << "T5 row " << l;
  for (const char* tok : {"tokenizer", "tokenizer_2"}) {
    auto t = ClipTokenizer::load((model() / tok).string());
    ASSERT_TRUE(t.ok()) << t.error().message;
    auto ids = t->encode(std::vector<std::string>{"a cat"}, 77);
    ASSERT_TRUE(ids.ok()) << ids.error().message;
    const int64_t* id = ids->input_ids.data<int64_t>();
    int64_t kept = 0, first_end = -1;
    for (int64_t l = 0; l < 77; ++l) {
      kept += id[l] != t->eos_id();
      if (id[l] == t->eos_id() && first_end < 0) first_end = l;
    }
    ASSERT_GT(first_end, 0) << tok;
    const Tensor& x = std::string(tok) == "tokenizer" ? e->clip_l : e->clip_g;
    for (int64_t l = 0; l < 77; ++l)
      EXPECT_EQ(zero_row(x, l), id[l] == t->eos_id() && l != kept) << tok << " row " << l;
    if (std::string(tok) == "tokenizer")
      EXPECT_EQ(kept, first_end) << "CLIP-L pads with its end token";
    else
      EXPECT_EQ(kept, 76) << "CLIP-G pads with '!'";
  }
}

// The DiT's text width is fixed (4096): a T5 of another width is refused, naming both, before the DiT loads.
TEST_F(GenerateMotif, NarrowT5IsOneClearError) {
  const fs::path copy = root_ / "narrow";
  fs::copy(model(), copy, fs::copy_options::recursive);
  fs::remove_all(copy / "text_encoder_3");
  fs::copy(test::shared_fixtures_dir() + "/pipe_sd3/text_encoder_3", copy / "text_encoder_3");
  std::string log;
  EXPECT_EQ(test::run_command(std::string(MESHDIT_CLI) + " generate --no-progress --model " + copy.string() +
                                  " -p 'a cat' --steps 2 -o " + (root_ / "narrow.png").string(),
                              &log),
            1)
      << log;
  EXPECT_NE(log.find("text_encoder_3 (T5) is 80 wide"), std::string::npos) << log;
  EXPECT_NE(log.find("takes 4096"), std::string::npos) << log;
  fs::remove_all(copy);
}

TEST_F(GenerateMotif, PlanReadsTheFolder) {
  std::string log;
  ASSERT_EQ(test::run_command(std::string(MESHDIT_CLI) + " plan --model " + model().string() + " --mesh 2", &log), 0)
      << log;
  EXPECT_NE(log.find("Motif: 2 dual-stream blocks"), std::string::npos) << log;
}

// CFG parallel: each of two ranks runs one half of the guidance batch; the image is the one-process one.
TEST_F(GenerateMotif, CfgParallelOnTwoRanksGivesTheOneRankImage) {
  if (std::string(MESHDIT_MPIEXEC).empty()) GTEST_SKIP() << "built without MPI: no mpirun";
  std::string log;
  ASSERT_EQ(generate("one.png", "", &log), 0) << log;
  const std::string mpirun = std::string("ASAN_OPTIONS=detect_leaks=0 OMPI_MCA_btl=self,vader MESHDIT_THREADS=1 ") +
                             MESHDIT_MPIEXEC + " --allow-run-as-root --oversubscribe --bind-to none -np 2 ";
  ASSERT_EQ(test::run_command(mpirun + MESHDIT_CLI + " generate --no-progress --model " + model().string() +
                                  " -p 'a cat' --seed 3 --steps 2 --width " + size() + " --height " + size() +
                                  " --mesh 1x2 --parallel cfg=2 -o " + (root_ / "two.png").string(),
                              &log),
            0)
      << log;
  EXPECT_NE(log.find("cfg=2"), std::string::npos) << log;
  int w = 0, h = 0;
  const auto a = pixels("one.png", &w, &h), b = pixels("two.png", &w, &h);
  ASSERT_EQ(a.size(), b.size());
  int worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(int(a[i]) - int(b[i])));
  EXPECT_LE(worst, 1) << "8-bit pixels differ by more than one level";
}

}  // namespace
