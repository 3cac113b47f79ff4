#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "encoders/clip_text.h"
#include "encoders/t5.h"
#include "encoders/tokenizers/clip_tokenizer.h"
#include "encoders/tokenizers/t5_tokenizer.h"
#include "models/transformers/flux.h"
#include "models/vae/autoencoder_kl.h"
#include "parallel/mesh.h"
#include "schedulers/flow_match.h"

namespace meshdit {

using TensorMap = std::map<std::string, Tensor>;

// What one call of a text-to-image pipeline needs; zero / unset fields take the pipeline's defaults.
struct GenerateOptions {
  std::vector<std::string> prompt;           // one entry per prompt
  std::vector<std::string> negative_prompt;  // empty, or one per prompt (true CFG when true_cfg_scale > 1)
  int64_t num_images_per_prompt = 1;
  int64_t height = 0, width = 0;
  int64_t steps = 0;
  std::optional<float> guidance_scale;
  float true_cfg_scale = 1.0f;
  uint64_t seed = 0;
  int64_t max_sequence_length = 0;
  Tensor latents;  // initial noise, packed as the pipeline packs it; undefined: torch.randn from seed
  bool vae_tiling = false;  // decode in overlapping tiles (bounded memory for large images)
};

// Called after every denoising step: (step index from 0, number of steps, seconds the step took).
using StepCallback = std::function<void(int64_t, int64_t, double)>;

// diffusers FluxPipeline: CLIP-L pooled + T5 sequence embeddings, 2x2-packed latents with (0, row, col)
// position ids, flow-matching Euler steps with a resolution-dependent shift, optional true CFG, KL-VAE
// decode.
class FluxPipeline {
 public:
  // On a mesh each rank loads its shard of the transformer (TP) and works on its part of each step: its
  // image-token shard (SP), its half of the true-CFG batch (CFG), its band of the VAE decode. Every rank
  // returns the whole image.
  static Result<FluxPipeline> load(const std::string& dir, const Mesh& mesh = Mesh::single());
  // What the mesh's automatic configuration needs, read from the folder's transformer/config.json.
  static Result<ModelTraits> traits(const std::string& dir, const GenerateOptions& options);
  const FluxConfig& transformer_config() const { return transformer_->config(); }
  int64_t vae_scale_factor() const { return vae_->config().spatial_scale(); }
  // The values used for unset options (diffusers' FluxPipeline.__call__ defaults).
  GenerateOptions with_defaults(GenerateOptions o) const;
  Status validate(const GenerateOptions& o) const;

  // -> images [B, H, W, 3] float32 in [0, 1] (diffusers output_type="np"). `record`, when given, receives
  // the intermediate tensors the reference cases name: latents.step<i>, transformer.call<i>.<input>,
  // scheduler.timesteps.
  Result<Tensor> generate(const GenerateOptions& options, TensorMap* record = nullptr,
                          const StepCallback& on_step = nullptr) const;

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
};

// [B, C, h, w] <-> [B, (h/2)(w/2), 4C] (FluxPipeline._pack_latents / _unpack_latents).
Tensor flux_pack_latents(const Tensor& latents);
Tensor flux_unpack_latents(const Tensor& packed, int64_t h, int64_t w);

}  // namespace meshdit
