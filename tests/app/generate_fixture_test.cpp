// `meshdit generate` on the shared pipeline fixtures, run as a user runs it: the fixture's prompts, size, steps
// and guidance as flags, its initial noise through --latents, and the PNGs compared with diffusers' own image
// quantised as diffusers does ((image * 255).round()). Then the same with the transformer given as a single file
// (--transformer) in its model's released layout, which must give the same PNGs; and the errors of both flags.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "../test_util.h"
#include "app/video_output.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "io/single_file.h"
#include "io/video.h"
#include "models/registry.h"

namespace fs = std::filesystem;
using namespace meshdit;

// Built without FFmpeg (io/video_none.cpp) there is no MP4 to check; meshdit_none_tests checks that build's errors.
#define SKIP_WITHOUT_FFMPEG() \
  if (video_library().empty()) GTEST_SKIP() << "built without FFmpeg"
namespace {

std::string cli() { return MESHDIT_CLI; }

// A pipeline fixture generate serves, and the single-file layout its transformer is released in ("": the
// diffusers names in one file). One line per pipeline.
struct PipelineFixture {
  std::string name, layout;
  // Video: the least luma PSNR of its MP4 frames against the PNG frames (H.264 at crf 17 on each tiny random
  // model's output; Mochi's 48x32 frames are nearly per-pixel noise, which costs H.264 more).
  double min_psnr = 0;
};
const PipelineFixture kFlux{"pipe_flux1_dev", "flux-bfl"}, kSD3{"pipe_sd3", "sd3-stability"},
    kQwen{"pipe_qwenimage", ""},     // ComfyUI's Qwen-Image files keep diffusers' names
    kWan{"pipe_wan22", "", 35.0},    // video: its frames through --frames-dir; two experts, so no --transformer
    kMochi{"pipe_mochi", "", 28.0};  // video; diffusers' names are the only layout registered for Mochi
const PipelineFixture kFixtures[] = {kFlux, kSD3, kQwen, kWan, kMochi};
// The video pipelines among them (-o NAME.mp4), and those with one transformer (a file can replace it).
const PipelineFixture kVideoFixtures[] = {kWan, kMochi};
const PipelineFixture kOneTransformerFixtures[] = {kFlux, kSD3, kQwen, kMochi};

// Every differing value is at most this far off (one uint8 level: a float32 image within the fixture's 1e-4
// tolerance can still round the other way at a .5 boundary) ...
constexpr int kMaxLevelDiff = 1;
// ... and at most this fraction of the values differ at all.
constexpr double kMaxDifferingFraction = 0.001;

std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::vector<std::string> strings_of(const Json& j) {
  if (j.is_string()) return {j.get<std::string>()};
  std::vector<std::string> v;
  for (const auto& e : j) v.push_back(e.get<std::string>());
  return v;
}

// The generate flags that make the call meta.json's non_tensor_args describe; an argument with no flag fails the
// test rather than being dropped.
std::string flags_for(const Json& args) {
  std::string f;
  for (const auto& [key, value] : args.items()) {
    if (key == "prompt") {
      for (const auto& p : strings_of(value)) f += " -p " + quoted(p);
    } else if (key == "negative_prompt") {
      for (const auto& p : strings_of(value)) f += " --negative-prompt " + quoted(p);
    } else if (key == "true_cfg_scale") {
      f += " --true-cfg " + std::to_string(value.get<double>());
    } else if (key == "guidance_scale") {
      f += " --guidance " + std::to_string(value.get<double>());
    } else if (key == "guidance_scale_2") {
      f += " --guidance-2 " + std::to_string(value.get<double>());
    } else if (key == "num_frames") {
      f += " --frames " + std::to_string(value.get<int64_t>());
    } else if (key == "height" || key == "width") {
      f += " --" + key + " " + std::to_string(value.get<int64_t>());
    } else if (key == "num_inference_steps") {
      f += " --steps " + std::to_string(value.get<int64_t>());
    } else if (key == "max_sequence_length") {
      f += " --max-sequence-length " + std::to_string(value.get<int64_t>());
    } else if (key == "num_images_per_prompt") {
      f += " --batch " + std::to_string(value.get<int64_t>());
    } else if (key == "output_type" || key == "latents") {
      // PNGs, and the noise comes through --latents.
    } else {
      ADD_FAILURE() << "non_tensor_args \"" << key << "\" has no generate flag";
    }
  }
  return f;
}

std::string image_path(const fs::path& dir, int64_t b, int64_t n) {
  return (dir / (n == 1 ? std::string("img.png") : "img-" + std::to_string(b) + ".png")).string();
}

class GenerateFixture : public ::testing::TestWithParam<PipelineFixture> {
 protected:
  void SetUp() override {
    const std::string shared = test::shared_fixtures_dir();
    dir_ = shared.empty() ? "" : shared + "/" + GetParam().name;
    if (dir_.empty() || !fs::exists(dir_ + "/model_index.json"))
      GTEST_SKIP() << "no shared fixture " << GetParam().name << " (it is only in ../shared/fixtures)";
    auto meta = load_json(dir_ + "/meta.json");
    ASSERT_TRUE(meta.ok()) << meta.error().message;
    meta_ = *meta;
    auto ref = SafetensorsFile::open(dir_ + "/outputs.safetensors");
    ASSERT_TRUE(ref.ok()) << ref.error().message;
    // A video [1, F, H, W, 3] is compared as F images, its frames as --frames-dir writes them.
    video_ = (*ref)->has("video");
    auto image = (*ref)->get(video_ ? "video" : "image");
    ASSERT_TRUE(image.ok()) << image.error().message;
    ref_ = image->clone();  // owned: the file is closed when SetUp returns
    if (video_) {
      ASSERT_EQ(ref_.dim(), 5);
      ASSERT_EQ(ref_.size(0), 1) << "one video per fixture";
      ref_ = ref_.reshape({ref_.size(1), ref_.size(2), ref_.size(3), ref_.size(4)});
    }
    ASSERT_EQ(ref_.dim(), 4);
  }
  // Wan2.2 has two experts, which one --transformer file cannot replace.
  bool single_transformer() const { return !fs::exists(dir_ + "/transformer_2"); }

  // Runs generate on the fixture (or a copy of its folder, `model`) with `extra` flags, writing into `out`; -> the
  // images' RGB bytes. In f32: the byte comparisons below are f32's, whatever precision this CPU defaults to
  // (bf16 has its own tolerances in fixtures_test.cpp).
  std::vector<std::vector<uint8_t>> generate(const fs::path& out, const std::string& extra,
                                             const std::string& model = "") const {
    std::string log;
    const std::string m = model.empty() ? dir_ : model;
    const int rc = test::run_command(
        cli() + " generate --no-progress --model " + quoted(m) + " --latents " + quoted(dir_ + "/inputs.safetensors") +
            flags_for(meta_["non_tensor_args"]) + " --precision f32" +
            (video_ ? " --frames-dir " + (out / "frames").string() : " -o " + (out / "img.png").string()) + extra,
        &log);
    EXPECT_EQ(rc, 0) << log;
    std::vector<std::vector<uint8_t>> images;
    if (rc != 0) return images;
    const int64_t B = ref_.size(0);
    for (int64_t b = 0; b < B; ++b) {
      int w = 0, h = 0;
      char frame[32];
      std::snprintf(frame, sizeof frame, "frame-%04lld.png", static_cast<long long>(b));
      auto px = read_png(video_ ? (out / "frames" / frame).string() : image_path(out, b, B), &w, &h);
      EXPECT_TRUE(px.ok()) << px.error().message;
      if (!px.ok()) return {};
      EXPECT_EQ(h, ref_.size(1));
      EXPECT_EQ(w, ref_.size(2));
      images.push_back(*px);
    }
    return images;
  }

  // The fixture's transformer in its released layout, written to `file`; -> its tensors (empty on failure).
  NamedTensors write_transformer_file(const std::string& file) const {
    auto ck = Checkpoint::open_dir(dir_ + "/transformer");
    EXPECT_TRUE(ck.ok()) << ck.error().message;
    if (!ck.ok()) return {};
    NamedTensors tensors;
    for (const auto& n : ck->names()) tensors.emplace_back(n, ck->get(n).value());
    if (!GetParam().layout.empty()) {
      const SingleFileLayout* layout = nullptr;
      for (const auto& a : transformer_archs())
        for (const auto& l : a.layouts)
          if (l.name == GetParam().layout) layout = &l;
      EXPECT_NE(layout, nullptr) << "no layout " << GetParam().layout;
      if (!layout) return {};
      auto stored = single_file_tensors(*layout, tensors);
      EXPECT_TRUE(stored.ok()) << stored.error().message;
      if (!stored.ok()) return {};
      tensors = *stored;
    }
    const Status st = save_safetensors(file, tensors);
    EXPECT_TRUE(st.ok()) << st.error().message;
    return st.ok() ? tensors : NamedTensors{};
  }

  std::string dir_;
  Json meta_;
  bool video_ = false;
  Tensor ref_;  // diffusers' [B, H, W, 3] float images (a video's frames)
};

TEST_P(GenerateFixture, LatentsFileGivesDiffusersImage) {
  const test::TempDir out;
  const auto images = generate(out.path(), "");
  ASSERT_EQ(int64_t(images.size()), ref_.size(0));
  const std::vector<float> ref = ref_.to_vector();
  const size_t per_image = ref.size() / images.size();
  int worst = 0;
  size_t differing = 0;
  for (size_t b = 0; b < images.size(); ++b) {
    ASSERT_EQ(images[b].size(), per_image);
    for (size_t i = 0; i < per_image; ++i) {
      // numpy's round: half to even, which nearbyint does in the default rounding mode.
      const int want = int(std::nearbyint(ref[b * per_image + i] * 255.0f));
      const int diff = std::abs(int(images[b][i]) - want);
      worst = std::max(worst, diff);
      differing += diff != 0;
    }
  }
  const double fraction = double(differing) / double(ref.size());
  std::cout << GetParam().name << ": max |diff| " << worst << " level(s), " << differing << " of " << ref.size()
            << " values differ\n";
  EXPECT_LE(worst, kMaxLevelDiff);
  EXPECT_LE(fraction, kMaxDifferingFraction) << differing << " of " << ref.size() << " values differ";
}

// The fixture's transformer written as one file in its released layout (and again under ComfyUI's
// "model.diffusion_model." prefix), with no config.json beside it: the folder's transformer/config.json is used,
// and the images must be byte for byte those of the folder's own transformer.
TEST_P(GenerateFixture, TransformerFileGivesTheSameImages) {
  if (!single_transformer()) {  // one file cannot stand for both experts: refused, naming both
    const test::TempDir files("files");
    const std::string file = (files.path() / "transformer.safetensors").string();
    ASSERT_FALSE(write_transformer_file(file).empty());
    std::string log;
    const std::string model = dir_;  // (a non-const string would pick std::quoted by ADL)
    const int rc = test::run_command(cli() + " generate --no-progress --model " + quoted(model) + " --transformer " +
                                         quoted(file) + flags_for(meta_["non_tensor_args"]) + " --frames-dir " +
                                         (files.path() / "frames").string(),
                                     &log);
    EXPECT_EQ(rc, 1) << log;
    EXPECT_NE(log.find("has two experts (transformer, transformer_2)"), std::string::npos) << log;
    return;
  }
  const test::TempDir files("files"), plain("plain"), single("single"), comfy("comfy");
  const std::string file = (files.path() / "transformer.safetensors").string();
  const NamedTensors tensors = write_transformer_file(file);
  ASSERT_FALSE(tensors.empty());
  NamedTensors prefixed = tensors;
  for (auto& kv : prefixed) kv.first = "model.diffusion_model." + kv.first;
  const std::string comfy_file = (files.path() / "all_in_one.safetensors").string();
  ASSERT_TRUE(save_safetensors(comfy_file, prefixed).ok());

  const auto want = generate(plain.path(), "");
  ASSERT_FALSE(want.empty());
  EXPECT_EQ(generate(single.path(), " --transformer " + quoted(file)), want);
  EXPECT_EQ(generate(comfy.path(), " --transformer " + quoted(comfy_file)), want);
}

// A folder without transformer/ (the encoders, VAE and scheduler only) and a file with no config.json beside it:
// the config is inferred from the file's tensors. Where the architecture's inference cannot recover this tiny
// model's config, the run must fail with a message naming the file and asking for its config.json instead.
// A video pipeline's -o NAME.mp4: the file decodes (libavformat) to the frames --frames-dir wrote, as many, as
// large, at the pipeline's frame rate, each within H.264's loss: luma PSNR above the fixture's min_psnr. (Luma, because
// the tiny random model paints per-pixel colour noise, which yuv420p's one chroma sample per 2x2 pixels cannot carry
// whatever the quality: RGB PSNR is ~20 dB here; tests/io/video_test.cpp checks RGB on smooth frames.)
class GenerateVideoFixture : public GenerateFixture {};
TEST_P(GenerateVideoFixture, Mp4HoldsTheGeneratedFrames) {
  SKIP_WITHOUT_FFMPEG();
  ASSERT_TRUE(video_) << GetParam().name << " is listed as a video fixture";
  const test::TempDir out;
  const std::string mp4 = (out.path() / "v.mp4").string(), timings = (out.path() / "t.json").string();
  const auto frames = generate(out.path(), " -o " + mp4 + " --timings " + timings);
  ASSERT_EQ(int64_t(frames.size()), ref_.size(0));
  auto v = read_video(mp4);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->count(), int64_t(frames.size()));
  EXPECT_EQ(v->width, ref_.size(2));
  EXPECT_EQ(v->height, ref_.size(1));
  auto index = load_json(dir_ + "/model_index.json");
  ASSERT_TRUE(index.ok()) << index.error().message;
  const VideoPipelineInfo* info = video_pipeline_info((*index)["_class_name"].get<std::string>());
  ASSERT_NE(info, nullptr);
  EXPECT_DOUBLE_EQ(v->fps, info->fps);
  // --timings lists the decode's time per latent frame (the VAE decodes one latent frame per chunk).
  auto t = load_json(timings);
  ASSERT_TRUE(t.ok()) << t.error().message;
  auto latents = SafetensorsFile::open(dir_ + "/inputs.safetensors");
  ASSERT_TRUE(latents.ok()) << latents.error().message;
  EXPECT_EQ(int64_t((*t)["vae_chunks_s"].size()), (*latents)->get("latents").value().size(2));
  double worst = 1e9;
  for (size_t f = 0; f < frames.size() && f < size_t(v->count()); ++f) {
    double se = 0;
    const size_t pixels = frames[f].size() / 3;
    for (size_t i = 0; i < pixels; ++i) {
      auto luma = [i](const std::vector<uint8_t>& px) {
        return 0.2126 * px[3 * i] + 0.7152 * px[3 * i + 1] + 0.0722 * px[3 * i + 2];
      };
      const double d = luma(frames[f]) - luma(v->rgb[f]);
      se += d * d;
    }
    const double mse = se / double(pixels);
    worst = std::min(worst, mse == 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 / mse));
  }
  std::cout << GetParam().name << ": MP4 frames PSNR min " << worst << " dB\n";
  EXPECT_GT(worst, GetParam().min_psnr);
}

// (Two-expert folders: TransformerFileGivesTheSameImages checks that a file is refused.)
class GenerateOneTransformerFixture : public GenerateFixture {};
TEST_P(GenerateOneTransformerFixture, TransformerFileWithoutAnyConfigIsInferred) {
  ASSERT_TRUE(single_transformer()) << GetParam().name << " is listed as having one transformer";
  const test::TempDir files("files"), model("model"), plain("plain"), single("single");
  for (const auto& e : fs::directory_iterator(dir_))
    if (e.path().filename() != "transformer")
      fs::copy(e.path(), model.path() / e.path().filename(), fs::copy_options::recursive);
  const std::string file = (files.path() / "transformer.safetensors").string();
  ASSERT_FALSE(write_transformer_file(file).empty());

  std::string opened_layout;
  auto ck = open_transformer_checkpoint(file, &opened_layout);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  const TransformerArch* arch = transformer_arch_of(*ck, opened_layout);
  ASSERT_NE(arch, nullptr);
  if (arch->infer_config && arch->infer_config(*ck).ok()) {
    const auto want = generate(plain.path(), "");
    ASSERT_FALSE(want.empty());
    EXPECT_EQ(generate(single.path(), " --transformer " + quoted(file), model.str()), want);
  } else {
    std::string log;
    const int rc = test::run_command(cli() + " generate --no-progress --model " + model.str() + " --transformer " +
                                         file + " -p x --steps 1 -o " + (single.path() / "x.png").string(),
                                     &log);
    EXPECT_EQ(rc, 1) << log;
    EXPECT_NE(log.find(file + ": no config.json beside it"), std::string::npos) << log;
  }
}

INSTANTIATE_TEST_SUITE_P(Pipelines, GenerateFixture, ::testing::ValuesIn(kFixtures),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(Pipelines, GenerateVideoFixture, ::testing::ValuesIn(kVideoFixtures),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(Pipelines, GenerateOneTransformerFixture, ::testing::ValuesIn(kOneTransformerFixtures),
                         [](const auto& info) { return info.param.name; });

// --- Errors of --latents and --transformer: one message naming the file (and tensor or architecture), exit 1 ---

// Runs generate on the built-in model (a FluxPipeline, present everywhere), small and in one step.
int generate_builtin(const fs::path& dir, const std::string& args, std::string* out) {
  return test::run_command(cli() + " generate --no-progress -p x -p y --width 32 --height 32 --steps 1 -o " +
                               (dir / "x.png").string() + " " + args,
                           out);
}

void expect_error(int rc, const std::string& out, const std::vector<std::string>& expect) {
  EXPECT_EQ(rc, 1) << out;
  for (const auto& e : expect) EXPECT_NE(out.find(e), std::string::npos) << "expected '" << e << "' in:\n" << out;
  EXPECT_EQ(out.find("internal error"), std::string::npos) << out;
}

// Two prompts at 32 x 32 on the built-in Flux model: packed [2, (32/16)*(32/16), 64].
const Shape kBuiltinLatents{2, 4, 64};

TEST(GenerateLatents, NamedTensorIsUsed) {
  const test::TempDir dir;
  const std::string file = (dir.path() / "noise.safetensors").string();
  ASSERT_TRUE(save_safetensors(file, {{"noise", test::random_tensor(kBuiltinLatents, 1)}}).ok());
  std::string out;
  EXPECT_EQ(generate_builtin(dir.path(), "--latents " + file + ":noise", &out), 0) << out;
}

// The status line names the precision the products run in; the timings JSON records it.
TEST(GeneratePrecision, StatusLineAndTimingsNameIt) {
  const test::TempDir dir;
  const std::string timings = (dir.path() / "t.json").string();
  for (const std::string p : {"f32", "bf16"}) {
    std::string out;
    ASSERT_EQ(generate_builtin(dir.path(), "--precision " + p + " --timings " + timings, &out), 0) << out;
    EXPECT_NE(out.find("precision " + p), std::string::npos) << out;
    auto j = load_json(timings);
    ASSERT_TRUE(j.ok()) << j.error().message;
    EXPECT_EQ((*j)["precision"], p);
  }
  std::string out;
  EXPECT_NE(generate_builtin(dir.path(), "--precision fp8", &out), 0) << out;
  EXPECT_NE(out.find("--precision"), std::string::npos) << out;
}

TEST(GenerateLatents, MissingFileIsNamed) {
  const test::TempDir dir;
  std::string out;
  const int rc = generate_builtin(dir.path(), "--latents /nonexistent/noise.safetensors", &out);
  expect_error(rc, out, {"--latents", "/nonexistent/noise.safetensors"});
}

TEST(GenerateLatents, MissingTensorIsNamedWithTheOnesThere) {
  const test::TempDir dir;
  const std::string file = (dir.path() / "noise.safetensors").string();
  ASSERT_TRUE(save_safetensors(file, {{"noise", test::random_tensor(kBuiltinLatents, 1)}}).ok());
  std::string out;
  int rc = generate_builtin(dir.path(), "--latents " + file, &out);
  expect_error(rc, out, {file, "no tensor 'latents'", "noise"});
  rc = generate_builtin(dir.path(), "--latents " + file + ":other", &out);
  expect_error(rc, out, {file, "no tensor 'other'"});
}

TEST(GenerateLatents, ShapeThatDoesNotFitGivesTheExpectedOne) {
  const test::TempDir dir;
  const std::string file = (dir.path() / "noise.safetensors").string();
  ASSERT_TRUE(save_safetensors(file, {{"latents", test::random_tensor({1, 4, 64}, 1)}}).ok());
  std::string out;
  const int rc = generate_builtin(dir.path(), "--latents " + file, &out);
  expect_error(rc, out, {file + ":latents", "[1, 4, 64]", "expected [2, 4, 64]", "2 prompt(s)"});
}

TEST(GenerateTransformer, MissingFileIsNamed) {
  const test::TempDir dir;
  std::string out;
  const int rc = generate_builtin(dir.path(), "--transformer /nonexistent/flux1-dev.safetensors", &out);
  expect_error(rc, out, {"--transformer /nonexistent/flux1-dev.safetensors"});
}

TEST(GenerateTransformer, FileOfNoTransformerIsRefused) {
  const test::TempDir dir;
  const std::string file = (dir.path() / "noise.safetensors").string();
  ASSERT_TRUE(save_safetensors(file, {{"latents", test::random_tensor(kBuiltinLatents, 1)}}).ok());
  std::string out;
  const int rc = generate_builtin(dir.path(), "--transformer " + file, &out);
  expect_error(rc, out, {file});
}

// A Flux transformer (the built-in model's, in BFL's layout) for an SD3 folder: the error names both.
TEST(GenerateTransformer, OtherArchitectureNamesBoth) {
  const std::string shared = test::shared_fixtures_dir();
  const std::string sd3 = shared.empty() ? "" : shared + "/pipe_sd3";
  if (sd3.empty() || !fs::exists(sd3 + "/model_index.json")) GTEST_SKIP() << "no shared fixture pipe_sd3";
  const test::TempDir dir;
  auto ck = Checkpoint::open_dir(test::repo_dir() + "/models/tiny-shapes/transformer");
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  NamedTensors tensors;
  for (const auto& n : ck->names()) tensors.emplace_back(n, ck->get(n).value());
  const std::string file = (dir.path() / "flux1-dev.safetensors").string();
  ASSERT_TRUE(save_safetensors(file, tensors).ok());
  std::string out;
  const int rc = test::run_command(cli() + " generate --no-progress --model " + sd3 + " --transformer " + file +
                                       " -p x --width 32 --height 32 --steps 1 -o " + (dir.path() / "x.png").string(),
                                   &out);
  expect_error(rc, out, {file, "flux", "StableDiffusion3Pipeline", "SD3Transformer2DModel"});
}

}  // namespace
