#pragma once
#include <memory>
#include <string>
#include <vector>

#include "encoders/clip_text.h"
#include "encoders/t5.h"
#include "encoders/tokenizers/clip_tokenizer.h"
#include "encoders/tokenizers/t5_tokenizer.h"
#include "models/transformers/flux.h"
#include "models/vae/autoencoder_kl.h"
#include "parallel/mesh.h"
#include "pipelines/pipeline.h"
#include "schedulers/flow_match.h"

namespace meshdit {

// diffusers FluxPipeline: CLIP-L pooled + T5 sequence embeddings, 2x2-packed latents with (0, row, col)
// position ids, flow-matching Euler steps with a resolution-dependent shift, optional true CFG, KL-VAE
// decode.
class FluxPipeline final : public Pipeline {
 public:
  // On a mesh each rank loads its shard of the transformer (TP) and works on its part of each step: its
  // image-token shard (SP), its half of the true-CFG batch (CFG), its band of the VAE decode. Every rank
  // returns the whole image.
  static Result<FluxPipeline> load(const std::string& dir, const Mesh& mesh = Mesh::single(),
                                   const LoadOptions& from = {});
  // What the mesh's automatic configuration needs, read from the transformer's config.
  static Result<ModelTraits> traits(const std::string& dir, const GenerateOptions& options,
                                    const LoadOptions& from = {});
  const FluxConfig& transformer_config() const { return transformer_->config(); }
  int64_t vae_scale_factor() const { return vae_->config().spatial_scale(); }
  std::string name() const override { return "FluxPipeline"; }
  // diffusers' FluxPipeline.__call__ defaults.
  GenerateOptions with_defaults(GenerateOptions o) const override;
  Status validate(const GenerateOptions& o) const override;
  // Records transformer.call<i>.{hidden_states, timestep, guidance, pooled_projections,
  // encoder_hidden_states, txt_ids, img_ids, sample}: the positive prompt's call, then the negative one's.
  Result<Tensor> generate(const GenerateOptions& options, TensorMap* record = nullptr,
                          const StepCallback& on_step = nullptr) const override;

  struct PromptEmbeds {
    Tensor pooled, sequence, text_ids;  // [B, pooled_dim], [B, L, joint_dim], [L, 3]
  };
  Result<PromptEmbeds> encode_prompt(const std::vector<std::string>& prompts, int64_t max_sequence_length) const;

 private:
  std::string dir_;
  std::shared_ptr<ClipTokenizer> tokenizer_;
  std::shared_ptr<T5Tokenizer> tokenizer_2_;
  std::shared_ptr<CLIPTextModel> text_encoder_;
  std::shared_ptr<T5Encoder> text_encoder_2_;
  std::shared_ptr<FluxTransformer> transformer_;
  std::shared_ptr<AutoencoderKL> vae_;
  FlowMatchConfig scheduler_config_;
  Mesh mesh_ = Mesh::single();
  Device device_ = Device::CPU;  // where the components' weights are (LoadOptions::device)
};

// The registry's entry for "FluxPipeline" (pipelines/pipeline.cpp lists it).
PipelineEntry flux_pipeline_entry();

// [B, C, h, w] <-> [B, (h/2)(w/2), 4C] (FluxPipeline._pack_latents / _unpack_latents).
Tensor flux_pack_latents(const Tensor& latents);
Tensor flux_unpack_latents(const Tensor& packed, int64_t h, int64_t w);

// The packed initial noise both 2x2-packing pipelines (Flux, Qwen-Image) start from: o.latents as given (its
// shape checked by validate_packed_latents), else torch.randn([B, C, h, w], seed) packed.
Tensor packed_initial_latents(const GenerateOptions& o, int64_t B, int64_t C, int64_t h, int64_t w);
// validate_latents for packed latents [B, (H/patch)*(W/patch), channels] (patch: VAE scale x 2).
Status validate_packed_latents(const GenerateOptions& o, int64_t patch, int64_t channels);

}  // namespace meshdit
