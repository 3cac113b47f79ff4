#pragma once
#include <memory>
#include <string>
#include <vector>

#include "encoders/t5.h"
#include "encoders/tokenizers/t5_tokenizer.h"
#include "models/transformers/mochi.h"
#include "models/vae/autoencoder_kl_mochi.h"
#include "parallel/mesh.h"
#include "pipelines/pipeline.h"
#include "schedulers/flow_match.h"

namespace meshdit {

// diffusers MochiPipeline (Genmo's Mochi-1): T5-XXL embeddings with their attention mask (the transformer
// attends to each sample's real tokens only), noise [B, 12, 1 + (F - 1) / 6, H/8, W/8], flow-matching Euler
// steps on the linear-quadratic schedule with inverted sigmas, classifier-free guidance as one call on the
// batch [negative; prompt], latents de-normalised with the VAE's latents_mean / latents_std, the Mochi VAE
// decoder over every frame. Returns video frames [B, F, H, W, 3] in [0, 1].
class MochiPipeline final : public Pipeline {
 public:
  // On a mesh each rank loads its shards of the transformer and of T5 (TP) and works on its part of each
  // step: its video-token shard (SP), its half of the guidance batch (CFG), its band of the VAE decode. Every
  // rank returns the whole video.
  static Result<MochiPipeline> load(const std::string& dir, const Mesh& mesh = Mesh::single(),
                                    const LoadOptions& from = {});
  static Result<ModelTraits> traits(const std::string& dir, const GenerateOptions& options,
                                    const LoadOptions& from = {});
  std::string name() const override { return "MochiPipeline"; }
  // genmo/mochi-1-preview's recommended call: 848x480, 163 frames, 64 steps, guidance 4.5, 256 tokens.
  GenerateOptions with_defaults(GenerateOptions o) const override;
  Status validate(const GenerateOptions& o) const override;
  // Records transformer.call<i>.{hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, sample}
  // (the guidance batch [negative; prompt] in one call), latents.step<i>, scheduler.timesteps.
  Result<Tensor> generate(const GenerateOptions& options, TensorMap* record = nullptr,
                          const StepCallback& on_step = nullptr) const override;

  // MochiPipeline._get_t5_prompt_embeds: T5's last hidden state [B, L, d_model] and the tokens' mask [B, L]
  // (int64 0/1). diffusers' force_zeros_for_empty_prompt (model_index.json; false in genmo's release) would
  // mask every token of an empty last prompt, which the caption pooler cannot take: an error here.
  struct PromptEmbeds {
    Tensor sequence, mask;
  };
  Result<PromptEmbeds> encode_prompt(const std::vector<std::string>& prompts, int64_t max_sequence_length) const;

 private:
  Status check_memory(const GenerateOptions& o) const;
  std::shared_ptr<T5Tokenizer> tokenizer_;
  std::shared_ptr<T5Encoder> text_encoder_;
  std::shared_ptr<MochiTransformer> transformer_;
  std::shared_ptr<AutoencoderKLMochi> vae_;
  FlowMatchConfig scheduler_config_;
  bool force_zeros_for_empty_prompt_ = false;
  Mesh mesh_ = Mesh::single();
  Device device_ = Device::CPU;  // where the components' weights are (LoadOptions::device)
};

// The registry's entry for "MochiPipeline" (pipelines/pipeline.cpp lists it).
PipelineEntry mochi_pipeline_entry();

}  // namespace meshdit
