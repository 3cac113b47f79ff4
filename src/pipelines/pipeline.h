// What every text-to-image pipeline offers the CLI and `check`, and the registry that finds one by the
// `_class_name` of a diffusers folder's model_index.json. A pipeline file holds only what is specific to
// its model family (prompt encoding, latent packing, defaults); the denoising loop and the VAE decode are
// shared (pipelines/denoise.h).
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "layers/block_cache.h"
#include "parallel/mesh.h"

namespace meshdit {

using TensorMap = std::map<std::string, Tensor>;

// What one call of a text-to-image pipeline needs; zero / unset fields take the pipeline's defaults.
struct GenerateOptions {
  std::vector<std::string> prompt;           // one entry per prompt
  std::vector<std::string> negative_prompt;  // empty, or one per prompt (true CFG when true_cfg_scale > 1)
  int64_t num_images_per_prompt = 1;
  int64_t height = 0, width = 0;
  int64_t num_frames = 0;  // video pipelines
  int64_t steps = 0;
  std::optional<float> guidance_scale;
  std::optional<float> guidance_scale_2;  // Wan2.2: the low-noise expert's scale
  float guidance_rescale = 0.0f;          // phi of rescale_noise_cfg; 0: off
  std::optional<float> true_cfg_scale;    // Flux: 1 (off), Qwen-Image: 4; needs negative prompts
  uint64_t seed = 0;
  int64_t max_sequence_length = 0;
  Tensor latents;           // initial noise, packed as the pipeline packs it; undefined: torch.randn from seed
  bool vae_tiling = false;  // decode in overlapping tiles (bounded memory for large images)
  CacheOptions cache;       // step caching in the denoising loop (layers/block_cache.h); off by default
  CacheReport* cache_report = nullptr;  // when set, receives what the caching did
};

// Where a pipeline's components come from besides its folder; empty fields: the folder's own.
struct LoadOptions {
  // A transformer checkpoint used instead of <dir>/transformer: a single file in a registered layout (Stability's
  // sd3.5_large.safetensors, BFL's flux1-dev.safetensors, a ComfyUI all-in-one) or diffusers names. Its config is
  // the config.json beside it, else the folder's transformer/config.json, else inferred from its tensors.
  std::string transformer_file;
  // The device every component's weights go to (the tokenizers and the scheduler stay on the host); the
  // images come back to the host. Only pipelines whose entry says runs_on_device take another than the CPU.
  Device device = Device::CPU;
};

// Called after every denoising step: (step index from 0, number of steps, seconds the step took).
using StepCallback = std::function<void(int64_t, int64_t, double)>;

class Pipeline {
 public:
  virtual ~Pipeline() = default;
  // The model_index.json class it implements, e.g. "FluxPipeline".
  virtual std::string name() const = 0;
  // The values used for unset options (the reference pipeline's __call__ defaults).
  virtual GenerateOptions with_defaults(GenerateOptions o) const = 0;
  // Whether the (defaulted) options can run; the error names the option.
  virtual Status validate(const GenerateOptions& o) const = 0;
  // -> images [B, H, W, 3] float32 in [0, 1] (diffusers output_type="np"), the whole images on every rank
  // of the mesh the pipeline was loaded on. `record`, when given, receives the intermediates the reference
  // cases name: latents.step<i>, <transformer>.call<i>.<input>, scheduler.timesteps.
  virtual Result<Tensor> generate(const GenerateOptions& options, TensorMap* record = nullptr,
                                  const StepCallback& on_step = nullptr) const = 0;
};

// One registered pipeline class.
struct PipelineEntry {
  std::string class_name;  // model_index.json "_class_name"
  // What the mesh's automatic configuration needs for a generation with `options`, read from the configs alone
  // (before the weights are loaded, since the mesh decides which shards to load).
  std::function<Result<ModelTraits>(const std::string& dir, const GenerateOptions& options, const LoadOptions& from)>
      traits;
  // Loads the folder's components (the transformer from `from.transformer_file` when given), each rank its
  // shards of `mesh`.
  std::function<Result<std::unique_ptr<Pipeline>>(const std::string& dir, const Mesh& mesh, const LoadOptions& from)>
      load;
  // Whether it places its components on LoadOptions::device (else a device other than the CPU is refused).
  bool runs_on_device = false;
};

// Adds (or replaces) a class. The built-in pipelines are registered before the first lookup.
void register_pipeline(PipelineEntry entry);
// The registered class names, sorted.
std::vector<std::string> pipeline_classes();
// The entry for a class; an unknown one is an error listing the registered classes.
Result<const PipelineEntry*> find_pipeline(const std::string& class_name);
// The entry for the class named by dir/model_index.json.
Result<const PipelineEntry*> pipeline_for_folder(const std::string& dir);

}  // namespace meshdit
