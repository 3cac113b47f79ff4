// What every pipeline file needs around its model-specific code: loading a diffusers component folder (and the
// transformer, which may come from a single file instead), repeating prompt embeddings per image, and the option
// checks all text-to-image pipelines share.
#pragma once
#include <any>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/tensor.h"
#include "io/checkpoint.h"
#include "pipelines/pipeline.h"

namespace meshdit {

// Places ck's weights on dev (Checkpoint::place_on) once they fit: on a device, the bytes they take there
// (Checkpoint::placed_bytes) against what the device has free now (Backend::free_memory), so a model too large
// for the GPU is one error naming `what` and both sizes before any weight is copied, not an out-of-memory
// abort halfway through the copies. The host is not checked. There, `denoiser` weights (the transformer a
// denoising loop runs at every step) are copied into memory when copy_weights_into_memory says so; the others
// (text encoders and VAE, run once per generation) stay memory-mapped.
Status place_checked(Checkpoint& ck, Device dev, const std::string& what, bool denoiser = false);
// Whether weights of this many bytes are copied into memory on the CPU (Checkpoint::copy_into_memory):
// MESHDIT_WEIGHTS=map never, =memory always; otherwise (auto) when they take at most half the memory available
// (MemAvailable) and this process is the only rank mpirun started on its host.
bool copy_weights_into_memory(uint64_t weight_bytes);

// A diffusers component folder: config.json and the (possibly sharded) weights beside it, placed on `dev`.
template <class Model, class Config, class... Extra>
Result<std::shared_ptr<Model>> load_component_on(Device dev, const std::string& dir, Extra... extra) {
  MD_TRY(Config cfg, Config::from_json(dir + "/config.json"));
  MD_TRY(Checkpoint ck, Checkpoint::open_dir(dir));
  MD_RETURN_IF_ERROR(place_checked(ck, dev, dir));
  MD_TRY(Model m, Model::load(ck, cfg, extra...));
  return std::make_shared<Model>(std::move(m));
}
template <class Model, class Config, class... Extra>
Result<std::shared_ptr<Model>> load_component(const std::string& dir, Extra... extra) {
  return load_component_on<Model, Config>(Device::CPU, dir, extra...);
}

// A transformer given apart from its pipeline folder (LoadOptions::transformer_file), opened in whichever
// registered layout it has. It must be the architecture that dir/model_index.json's transformer class names;
// otherwise the error names the file's architecture and the folder's pipeline. Its config: the config.json
// beside it, else dir/transformer/config.json, else inferred from its tensors.
struct TransformerSource {
  Checkpoint ck;
  std::any config;  // the model's own config type (FluxConfig, SD3Config, ...)
  std::string file;
};
Result<TransformerSource> open_transformer_file(const std::string& dir, const std::string& file);

template <class Config>
Result<Config> transformer_config_of(const TransformerSource& t) {
  if (const Config* c = std::any_cast<Config>(&t.config)) return *c;
  return make_error(t.file + ": its transformer config is not the kind this pipeline's transformer takes");
}

// The transformer's config for a pipeline's traits(): dir/transformer/config.json, or the config of
// `from.transformer_file` as load_transformer will load it.
template <class Config>
Result<Config> load_transformer_config(const std::string& dir, const LoadOptions& from) {
  if (from.transformer_file.empty()) return Config::from_json(dir + "/transformer/config.json");
  MD_TRY(TransformerSource t, open_transformer_file(dir, from.transformer_file));
  return transformer_config_of<Config>(t);
}

// The pipeline's transformer: the component folder dir/transformer, or `from.transformer_file`. Every pipeline
// loads its transformer through this, so --transformer works for each without code of its own.
template <class Model, class Config, class... Extra>
Result<std::shared_ptr<Model>> load_transformer(const std::string& dir, const LoadOptions& from, Extra... extra) {
  if (from.transformer_file.empty()) {
    const std::string folder = dir + "/transformer";
    MD_TRY(Config cfg, Config::from_json(folder + "/config.json"));
    MD_TRY(Checkpoint ck, Checkpoint::open_dir(folder));
    MD_RETURN_IF_ERROR(place_checked(ck, from.device, folder, /*denoiser=*/true));
    MD_TRY(Model m, Model::load(ck, cfg, extra...));
    return std::make_shared<Model>(std::move(m));
  }
  MD_TRY(TransformerSource t, open_transformer_file(dir, from.transformer_file));
  MD_RETURN_IF_ERROR(place_checked(t.ck, from.device, t.file, /*denoiser=*/true));
  MD_TRY(Config cfg, transformer_config_of<Config>(t));
  MD_TRY(Model m, Model::load(t.ck, cfg, extra...));
  return std::make_shared<Model>(std::move(m));
}

// Repeats each row n times (num_images_per_prompt): [P, ...] -> [P * n, ...].
Tensor repeat_rows(const Tensor& t, int64_t n);

// The checks every image pipeline makes on its (defaulted) options: a prompt, a size that is a positive
// multiple of `size_multiple`, steps and batch >= 1, max_sequence_length in [1, max_sequence], one negative
// prompt per prompt, and no option of a video or two-expert pipeline. `name` names the pipeline in messages.
Status validate_image_options(const GenerateOptions& o, const std::string& name, int64_t size_multiple,
                              int64_t max_sequence);
// The part of those checks every pipeline, image or video, makes: prompt, size, steps, batch,
// max_sequence_length and the negative prompt count.
Status validate_generation_options(const GenerateOptions& o, int64_t size_multiple, int64_t max_sequence);

// GenerateOptions::latents, when given, must have shape `expect` (`layout` spells it out, e.g.
// "[B, 16, H/8, W/8]"); the error gives both shapes and what B, H and W are, so a user with a latents file
// sees which of prompts, batch or size it does not fit.
Status validate_latents(const GenerateOptions& o, const Shape& expect, const std::string& layout);

}  // namespace meshdit

namespace meshdit {

// A long video is tens of thousands of tokens a step: a video pipeline estimates what a generation needs on
// this rank before any work and refuses with the figures, instead of failing an allocation minutes in.
struct VideoMemoryNeed {
  double transformer = 0;  // peak activations of one forward on this rank (the registry's cost model)
  double vae = 0;          // the decode's largest live chunk on this rank
  double video = 0;        // the decoded video, then its [0, 1] frames
  double total() const { return transformer + vae + video; }
};
// Peak activation bytes (float32) of one forward of the registered transformer `class_name` with `config` on
// a rank of `pc`, for N video tokens, L text tokens and batch b (0 when the model has no cost model).
double transformer_activation_bytes(const std::string& class_name, const std::any& config, const ParallelConfig& pc,
                                    int64_t N, int64_t L, int64_t b);
// ok when `need` fits in MemAvailable (or it is unknown); otherwise an error naming the size, frame count,
// tokens, each part of the estimate and what to do.
Status check_video_memory(const GenerateOptions& o, int64_t tokens, const VideoMemoryNeed& need);

}  // namespace meshdit
