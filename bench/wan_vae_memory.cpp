// Peak memory of the Wan / Qwen-Image causal 3-D VAE decode against the frame count (issue 10): the decoder
// runs one latent frame at a time with a two-frame cache per causal conv, so beyond the output video itself
// the peak should not grow with the frames. Real width (base_dim 96, z_dim 16) with random weights, at a
// reduced size; one decode per process, its peak the high-water mark (VmHWM) after setup:
//
//   wan_vae_memory LATENT_FRAMES [HEIGHT WIDTH]     (pixels; latent frames f decode to 1 + 4 (f - 1) frames)
//
// Prints the decoded frames, seconds, peak RSS, the output's bytes and the peak without them.
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/memory_info.h"
#include "core/torch_rng.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/vae/autoencoder_kl_wan.h"

using namespace meshdit;

namespace {

int fail(const std::string& msg) {
  std::fprintf(stderr, "wan_vae_memory: %s\n", msg.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return fail("usage: wan_vae_memory LATENT_FRAMES [HEIGHT WIDTH]");
  const int64_t f = std::atoll(argv[1]);
  const int64_t H = argc > 3 ? std::atoll(argv[2]) : 128, W = argc > 3 ? std::atoll(argv[3]) : 128;
  if (f < 1 || H < 8 || W < 8 || H % 8 || W % 8) return fail("need LATENT_FRAMES >= 1 and sizes multiple of 8");

  // Wan2.1's released config (base_dim 96, dim_mult 1,2,4,4, two res blocks, temporal downsample F,T,T).
  auto cfg = AutoencoderKLWanConfig::from_json_text(R"({"base_dim": 96, "z_dim": 16})", "Wan2.1 VAE");
  if (!cfg.ok()) return fail(cfg.error().message);

  // The weights the loader takes, random, through a temporary file (the loader reads a Checkpoint).
  Checkpoint meta = Checkpoint::meta(DType::F32);
  auto log = std::make_shared<WeightLog>();
  meta.record_into(log);
  if (auto m = AutoencoderKLWan::load(meta, *cfg); !m.ok()) return fail(m.error().message);
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t seed = 1;
  for (const auto& w : *log) {
    Tensor t = torch_randn(w.shape, seed++);
    // Scale like a trained net's weights so activations stay O(1) through 30 convs.
    const int64_t fan_in = w.shape.size() > 1 ? shape_numel(w.shape) / w.shape[0] : 1;
    std::vector<float> v = t.to_vector();
    const bool gamma = w.name.find("gamma") != std::string::npos;
    for (float& x : v) x = gamma ? 1.0f : x / std::sqrt(float(fan_in));
    tensors.push_back({w.name, Tensor::from_f32(w.shape, v)});
  }
  const std::string file =
      (std::filesystem::temp_directory_path() / ("wan_vae_memory_" + std::to_string(::getpid()) + ".safetensors"))
          .string();
  if (auto st = save_safetensors(file, tensors); !st.ok()) return fail(st.error().message);
  tensors.clear();
  auto ck = Checkpoint::open(file);
  if (!ck.ok()) return fail(ck.error().message);
  auto vae = AutoencoderKLWan::load(*ck, *cfg);
  std::filesystem::remove(file);  // the mapping stays valid
  if (!vae.ok()) return fail(vae.error().message);

  const Tensor z = torch_randn({1, 16, f, H / 8, W / 8}, 7);
  // Setting up the random weights peaked higher than a decode may: free what it left and reset the
  // high-water mark (writing 5 to clear_refs resets VmHWM, Linux >= 4.0), so the peak below is the decode's.
  malloc_trim(0);
  release_host_cache();
  reset_peak_memory();
  const double before = process_memory().peak_mb;
  const auto t0 = std::chrono::steady_clock::now();
  auto video = vae->decode(z);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!video.ok()) return fail(video.error().message);
  const double out_mb = double(video->nbytes()) / (1024.0 * 1024.0);
  const double peak = process_memory().peak_mb;
  std::printf(
      "latent_frames %lld frames %lld size %lldx%lld seconds %.2f peak_rss_mb %.1f before_decode_mb %.1f "
      "output_mb %.1f peak_without_output_mb %.1f\n",
      (long long)f, (long long)video->size(2), (long long)W, (long long)H, s, peak, before, out_mb, peak - out_mb);
  return 0;
}
