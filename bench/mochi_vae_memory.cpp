// Peak memory of the Mochi-1 VAE decode against the frame count (issue 11): the decoder runs a chunk of
// latent frames at a time with a two-frame cache per causal conv, so beyond the output video itself the peak
// should not grow with the frames. The released config (channels 128, 256, 512, 768; 3, 3, 4, 6, 3 resnets)
// with random weights, at a reduced size; one decode per process, its peak the high-water mark (VmHWM) after
// setup:
//
//   mochi_vae_memory LATENT_FRAMES [HEIGHT WIDTH [CHUNK_FRAMES]]   (pixels; f latent frames decode to
//                                                                   6 (f - 1) + 1 frames)
//
// Prints the decoded frames, seconds (and per chunk), peak RSS, the output's bytes and the peak without them.
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
#include "core/torch_rng.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/vae/autoencoder_kl_mochi.h"

using namespace meshdit;

namespace {

// VmHWM (what ru_maxrss reports, but resettable through clear_refs).
double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string key;
  double kb = 0;
  while (f >> key)
    if (key == "VmHWM:" && f >> kb) return kb / 1024.0;
  return -1;
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "mochi_vae_memory: %s\n", msg.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return fail("usage: mochi_vae_memory LATENT_FRAMES [HEIGHT WIDTH [CHUNK_FRAMES]]");
  const int64_t f = std::atoll(argv[1]);
  const int64_t H = argc > 3 ? std::atoll(argv[2]) : 32, W = argc > 3 ? std::atoll(argv[3]) : 48;
  const int64_t chunk = argc > 4 ? std::atoll(argv[4]) : 1;
  if (f < 1 || H < 8 || W < 8 || H % 8 || W % 8 || chunk < 1)
    return fail("need LATENT_FRAMES >= 1, sizes multiple of 8 and CHUNK_FRAMES >= 1");

  auto cfg = AutoencoderKLMochiConfig::from_json_text("{}", "Mochi-1 VAE");  // the defaults: the real model
  if (!cfg.ok()) return fail(cfg.error().message);

  // The weights the loader takes, random, through a temporary file (the loader reads a Checkpoint).
  Checkpoint meta = Checkpoint::meta(DType::F32);
  auto log = std::make_shared<WeightLog>();
  meta.record_into(log);
  if (auto m = AutoencoderKLMochi::load(meta, *cfg); !m.ok()) return fail(m.error().message);
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t seed = 1;
  for (const auto& w : *log) {
    Tensor t = torch_randn(w.shape, seed++);
    // Scale like a trained net's weights so activations stay O(1) through 40 convs; norms' scales 1, biases 0.
    const int64_t fan_in = w.shape.size() > 1 ? shape_numel(w.shape) / w.shape[0] : 1;
    const bool norm = w.name.find("norm") != std::string::npos, bias = w.shape.size() == 1;
    std::vector<float> v = t.to_vector();
    for (float& x : v) x = norm && !bias ? 1.0f : bias ? 0.0f : x / std::sqrt(float(fan_in));
    tensors.push_back({w.name, Tensor::from_f32(w.shape, v)});
  }
  const std::string file =
      (std::filesystem::temp_directory_path() / ("mochi_vae_memory_" + std::to_string(::getpid()) + ".safetensors"))
          .string();
  if (auto st = save_safetensors(file, tensors); !st.ok()) return fail(st.error().message);
  tensors.clear();
  auto ck = Checkpoint::open(file);
  if (!ck.ok()) return fail(ck.error().message);
  auto vae = AutoencoderKLMochi::load(*ck, *cfg);
  std::filesystem::remove(file);  // the mapping stays valid
  if (!vae.ok()) return fail(vae.error().message);

  const Tensor z = torch_randn({1, 12, f, H / 8, W / 8}, 7);
  // Setting up the random weights peaked higher than a decode may: free what it left and reset the
  // high-water mark (writing 5 to clear_refs resets VmHWM, Linux >= 4.0), so the peak below is the decode's.
  malloc_trim(0);
  release_host_cache();
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  const double before = peak_rss_mb();
  MochiDecodeOptions options;
  options.chunk_frames = chunk;
  double slowest = 0;
  std::vector<double> peaks;  // the high-water mark after each chunk: flat once the chunks are alike
  options.on_chunk = [&](const MochiDecodeProgress& p) {
    slowest = std::max(slowest, p.seconds);
    peaks.push_back(peak_rss_mb());
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto video = vae->decode(z, options);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!video.ok()) return fail(video.error().message);
  const double out_mb = double(video->nbytes()) / (1024.0 * 1024.0);
  const double peak = peak_rss_mb();
  std::printf(
      "latent_frames %lld frames %lld size %lldx%lld chunk %lld seconds %.2f slowest_chunk_s %.2f "
      "peak_rss_mb %.1f before_decode_mb %.1f output_mb %.1f peak_without_output_mb %.1f\n",
      (long long)f, (long long)video->size(2), (long long)W, (long long)H, (long long)chunk, s, slowest, peak, before,
      out_mb, peak - out_mb);
  std::printf("peak_rss_mb after each chunk:");
  for (double p : peaks) std::printf(" %.0f", p);
  std::printf("\n");
  return 0;
}
