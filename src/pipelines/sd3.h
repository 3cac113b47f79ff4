#pragma once
#include <memory>
#include <string>
#include <vector>

#include "encoders/clip_text.h"
#include "encoders/t5.h"
#include "encoders/tokenizers/clip_tokenizer.h"
#include "encoders/tokenizers/t5_tokenizer.h"
#include "models/transformers/sd3.h"
#include "models/vae/autoencoder_kl.h"
#include "parallel/mesh.h"
#include "pipelines/pipeline.h"
#include "schedulers/flow_match.h"

namespace meshdit {

// diffusers StableDiffusion3Pipeline (SD3 / SD3.5): CLIP-L + CLIP-G penultimate states and T5 states as one
// joint sequence, both CLIP projections as the pooled vector, classifier-free guidance as a batch of two,
// flow-matching Euler steps with the scheduler's static shift, KL-VAE decode.
class StableDiffusion3Pipeline final : public Pipeline {
 public:
  // On a mesh each rank loads its shard of the transformer and of T5 (TP) and works on its part of each
  // step: its image-token shard (SP), its half of the guidance batch (CFG), its band of the VAE decode.
  // Every rank returns the whole image.
  static Result<StableDiffusion3Pipeline> load(const std::string& dir, const Mesh& mesh = Mesh::single(),
                                               const LoadOptions& from = {});
  // What the mesh's automatic configuration needs, read from the transformer's config.
  static Result<ModelTraits> traits(const std::string& dir, const GenerateOptions& options,
                                    const LoadOptions& from = {});
  const SD3Config& transformer_config() const { return transformer_->config(); }
  int64_t vae_scale_factor() const { return vae_->config().spatial_scale(); }
  std::string name() const override { return "StableDiffusion3Pipeline"; }
  // diffusers' StableDiffusion3Pipeline.__call__ defaults.
  GenerateOptions with_defaults(GenerateOptions o) const override;
  Status validate(const GenerateOptions& o) const override;
  // Records transformer.call<i>.{hidden_states, timestep, encoder_hidden_states, pooled_projections, sample},
  // one call per step on the batch [negative; positive] when guided.
  Result<Tensor> generate(const GenerateOptions& options, TensorMap* record = nullptr,
                          const StepCallback& on_step = nullptr) const override;

  struct PromptEmbeds {
    Tensor pooled, sequence;  // [B, 2 * projection_dim], [B, 77 + max_sequence_length, T5 d_model]
  };
  Result<PromptEmbeds> encode_prompt(const std::vector<std::string>& prompts, int64_t max_sequence_length) const;

 private:
  std::shared_ptr<ClipTokenizer> tokenizer_, tokenizer_2_;
  std::shared_ptr<T5Tokenizer> tokenizer_3_;
  std::shared_ptr<CLIPTextModel> text_encoder_, text_encoder_2_;
  std::shared_ptr<T5Encoder> text_encoder_3_;
  std::shared_ptr<SD3Transformer> transformer_;
  std::shared_ptr<AutoencoderKL> vae_;
  FlowMatchConfig scheduler_config_;
  Mesh mesh_ = Mesh::single();
  Device device_ = Device::CPU;  // where the components' weights are (LoadOptions::device)
};

// The registry's entry for "StableDiffusion3Pipeline" (pipelines/pipeline.cpp lists it).
PipelineEntry sd3_pipeline_entry();

}  // namespace meshdit
