// What every pipeline file needs around its model-specific code: loading a diffusers component folder,
// repeating prompt embeddings per image, and the option checks all text-to-image pipelines share.
#pragma once
#include <memory>
#include <string>

#include "core/error.h"
#include "core/tensor.h"
#include "io/checkpoint.h"
#include "pipelines/pipeline.h"

namespace meshdit {

// A diffusers component folder: config.json and the (possibly sharded) weights beside it.
template <class Model, class Config, class... Extra>
Result<std::shared_ptr<Model>> load_component(const std::string& dir, Extra... extra) {
  MD_TRY(Config cfg, Config::from_json(dir + "/config.json"));
  MD_TRY(Checkpoint ck, Checkpoint::open_dir(dir));
  MD_TRY(Model m, Model::load(ck, cfg, extra...));
  return std::make_shared<Model>(std::move(m));
}

// Repeats each row n times (num_images_per_prompt): [P, ...] -> [P * n, ...].
Tensor repeat_rows(const Tensor& t, int64_t n);

// The checks every image pipeline makes on its (defaulted) options: a prompt, a size that is a positive
// multiple of `size_multiple`, steps and batch >= 1, max_sequence_length in [1, max_sequence], one negative
// prompt per prompt, and no option of a video or two-expert pipeline. `name` names the pipeline in messages.
Status validate_image_options(const GenerateOptions& o, const std::string& name, int64_t size_multiple,
                              int64_t max_sequence);

}  // namespace meshdit
