// `meshdit bench cache` and `meshdit compare`: what step caching buys (time, blocks run) and costs (PSNR and
// SSIM against the uncached image of the same seed), with the pipeline loaded once for every mode.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace meshdit {

struct BenchCacheCommand {
  std::string model;        // "" = built-in model
  std::string transformer;  // a transformer checkpoint used instead of <model>/transformer
  std::string prompt = "a large red circle in the center on a blue background";
  int64_t width = 0, height = 0, steps = 0, frames = 0;
  uint64_t seed = 42;
  std::vector<std::string> modes;  // --cache specs; empty: the default sweep
  std::string save_dir;            // when set, every mode's image as <dir>/<i>.png
};

// Runs the uncached generation, then each mode; prints a Markdown table (mode, s/image, speed-up, cached
// calls, blocks run, PSNR, SSIM). Returns the exit status.
int run_bench_cache(const BenchCacheCommand& cmd);
// The sweep run without --mode: fbcache, dbcache F8B0 and dbcache+taylorseer at several thresholds.
std::vector<std::string> default_cache_sweep();

// Prints PSNR and SSIM of two PNGs of one size; exit status 1 when they cannot be compared.
int run_compare(const std::string& a, const std::string& b);

}  // namespace meshdit
