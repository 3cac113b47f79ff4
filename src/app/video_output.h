// What `meshdit generate` does with a video pipeline's frames, apart from generating them: which classes make
// video (and at what frame rate), the checks of -o / --frames / --frames-dir made before any model loads,
// and the writing of the .mp4 files and PNG frame folders.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

// A pipeline class that returns frames [B, F, H, W, 3] rather than images. Neither Pipeline nor PipelineEntry
// says which kind a class makes (nor its frame rate, which no diffusers config holds), so until one of them
// does the app keeps this table: WanPipeline 16 fps, MochiPipeline 30 fps, as their reference pipelines'
// examples export them.
struct VideoPipelineInfo {
  std::string class_name;
  double fps = 16;
  // Frame counts the VAE decodes: 1 + frame_step * k (its temporal compression; Wan 4, Mochi 6).
  int64_t frame_step = 1;
};

// The entry for a class, or null for a class that makes images.
const VideoPipelineInfo* video_pipeline_info(const std::string& class_name);
// Adds (or replaces) a class of the table: a pipeline registered outside the built-ins, and tests.
void register_video_pipeline_info(VideoPipelineInfo info);

bool is_mp4_path(const std::string& path);
// The i-th of n outputs: out.png -> out-3.png (n == 1: the path itself).
std::string numbered_path(const std::string& path, size_t i, size_t n);

// Before loading: whether -o `output`, --frames-dir `frames_dir` and --frames `num_frames` (0: unset) suit
// the class. An image pipeline given an .mp4, --frames or --frames-dir, a video pipeline given another
// output, and a frame count the VAE does not make are each one error naming the class and the flag.
Status check_generate_output(const std::string& class_name, const std::string& output, const std::string& frames_dir,
                             int64_t num_frames);

// Writes a video pipeline's output: frames [F, H, W, 3] (one video) or [B, F, H, W, 3], float in [0, 1].
// `path` (must end in .mp4; "" for none) becomes NAME-0.mp4, NAME-1.mp4, ... when B > 1; `frames_dir`
// ("" for none) gets frame-0000.png, ... (DIR-0, DIR-1, ... when B > 1). Returns what it wrote (files and
// frame folders), in order.
Result<std::vector<std::string>> write_video_output(const std::string& path, const Tensor& frames, double fps,
                                                    const std::string& frames_dir = "");

}  // namespace meshdit
