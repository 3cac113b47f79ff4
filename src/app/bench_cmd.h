#pragma once
#include <any>
#include <cstdint>
#include <string>

#include "models/registry.h"

namespace meshdit {

struct BenchTransformerCommand {
  std::string path;  // checkpoint file or folder (diffusers or single-file layout)
  int64_t width = 256, height = 256, text_tokens = 256, steps = 3;
  int64_t frames = 1;  // video transformers (Wan: 4k+1, Mochi: 6k+1); image ones take 1
  int threads = 0;
  std::string precision;       // "f32", "bf16" or "fp8"; "" = default_compute_precision()
  std::string mesh, parallel;  // run on a mesh under mpirun (see `meshdit generate --mesh`)
  bool profile = false;        // print where steps 2..N spent their time, per kernel
  std::string trace_path;      // Chrome trace of the run ("" = none)
  std::string device = "cpu";  // "cpu" or "cuda"
  // After the timed steps, one forward of the same inputs in this precision ("" = none) and the relative L2 error
  // of the steps' output against it (e.g. fp8 against bf16).
  std::string reference_precision;
};

// `bench attention`: one attention_accumulate call (ring attention's step: q against one K/V chunk, merged into a
// state) on random float32 inputs, timed over `iters` calls after a warm-up one; a device's queue is drained
// before the clock stops. Prints ms_per_call, TFLOP/s (4 B H Lq Lk D flops per call) and, on CUDA, the fraction
// of the H200's dense bf16 peak (790 TFLOP/s).
struct BenchAttentionCommand {
  std::string device = "cpu";  // "cpu" or "cuda"
  std::string precision;       // "f32" or "bf16"; "" = default_compute_precision()
  int64_t batch = 1, heads = 24, q_tokens = 4096, k_tokens = 0, head_dim = 128;  // k_tokens 0: q_tokens
  int64_t iters = 10;
  int threads = 0;
};
int run_bench_attention(const BenchAttentionCommand& cmd);

// `bench peak`: cpu::measure_peaks on `threads` threads (0: the pool's count), one line per instruction kind.
int run_bench_peak(int threads);

// Times `steps` forwards; prints each step and, last, "s_per_step <median of steps 2..N>". On a mesh every
// rank runs the forward; rank 0 prints, plus each rank's resident memory after loading (its weights) and
// after the steps.
int run_bench_transformer(const BenchTransformerCommand& cmd);
// A random checkpoint's model and tensors: a preset's config with other block counts, as its weight spec names
// it, in its model's first single-file layout (the names and shapes real files of that layout have), or with
// diffusers' names when the model has no other layout (ComfyUI's Qwen-Image files are named so).
struct RandomCheckpointSpec {
  const TransformerArch* arch = nullptr;
  std::any config;
  const SingleFileLayout* layout = nullptr;  // null: diffusers names
  std::string layout_name() const { return layout ? layout->name : "diffusers"; }
  NamedShapes tensors;
};
// config_json: a diffusers config.json of the preset's model used instead of the preset's config, block counts
// included (blocks and single_blocks are then not used): a checkpoint of any width or depth, e.g. a real-width
// transformer whose text width matches a small text encoder, written with diffusers' names for the folder that
// config belongs to (without it: the model's single-file layout, as released).
Result<RandomCheckpointSpec> random_checkpoint_spec(const std::string& preset, int64_t blocks, int64_t single_blocks,
                                                    const std::string& config_json = "");
// The presets it takes, with their layouts, for --help and messages.
std::string random_checkpoint_presets();
// Writes that checkpoint with random bf16 values (real widths, fewer blocks: for `bench transformer`).
int run_make_random_checkpoint(const std::string& preset, int64_t blocks, int64_t single_blocks, const std::string& out,
                               const std::string& config_json = "");

}  // namespace meshdit
