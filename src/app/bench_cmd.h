#pragma once
#include <cstdint>
#include <string>

namespace meshdit {

struct BenchTransformerCommand {
  std::string path;  // checkpoint file or folder (diffusers or single-file layout)
  int64_t width = 256, height = 256, text_tokens = 256, steps = 3;
  int threads = 0;
  std::string mesh, parallel;  // run on a mesh under mpirun (see `meshdit generate --mesh`)
};

// Times `steps` forwards; prints each step and, last, "s_per_step <median of steps 2..N>". On a mesh every
// rank runs the forward; rank 0 prints, plus each rank's resident memory after loading (its weights) and
// after the steps.
int run_bench_transformer(const BenchTransformerCommand& cmd);
// Writes a random bf16 checkpoint at real width in a single-file layout (flux-dev, flux-schnell: BFL;
// sd35-large: Stability), with `doubles` double/joint blocks and `singles` single blocks.
int run_make_random_checkpoint(const std::string& arch, int64_t doubles, int64_t singles, const std::string& out);

}  // namespace meshdit
