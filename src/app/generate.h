#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace meshdit {

struct GenerateCommand {
  std::string model;           // "" = built-in model
  std::string transformer;     // a transformer checkpoint used instead of <model>/transformer; "" = the folder's
  std::string device = "cpu";  // "cpu" or "cuda": where the components run (LoadOptions::device)
  std::string latents;         // initial noise: FILE (its tensor "latents") or FILE:NAME; "" = from the seed
  std::vector<std::string> prompts, negative_prompts;
  int64_t steps = 0, width = 0, height = 0, batch = 1, max_sequence_length = 0;
  float guidance = -1, guidance_2 = -1, true_cfg = -1;  // < 0: the model's default
  uint64_t seed = 0;
  std::string output;  // "" = out.png, or out.mp4 for a video pipeline
  std::string
      frames_dir;  // video pipelines: PNG frames into this folder as well as (or, without -o, instead of) an .mp4
  int64_t num_frames = 0;  // video pipelines; 0 = the model's
  std::string timings_path, trace_path;
  std::string precision;  // "f32" or "bf16"; "" = default_compute_precision()
  bool progress = true;
  bool vae_tiling = false;
  std::string cache = "none";  // --cache: step caching (layers/block_cache.h parse_cache_options)
  std::string mesh;            // "RxC"; "" = 1 x the number of ranks (1 without mpirun)
  std::string parallel;        // --parallel overrides of the automatic config
};

// Runs `meshdit generate`; prints its own messages; returns the process exit status. Under mpirun every
// rank runs it; rank 0 shows progress and writes the images (or videos), timings and the merged trace.
int run_generate(const GenerateCommand& cmd);

}  // namespace meshdit
