#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "encoders/t5.h"
#include "encoders/tokenizers/t5_tokenizer.h"
#include "models/transformers/wan.h"
#include "models/vae/autoencoder_kl_wan.h"
#include "parallel/mesh.h"
#include "pipelines/pipeline.h"
#include "schedulers/unipc.h"

namespace meshdit {

// diffusers WanPipeline (Wan2.1, and Wan2.2-T2V-A14B with its two experts): cleaned prompts through UMT5,
// each row cut to its tokens and zero-padded again; noise [B, 16, 1 + (F - 1) / 4, H/8, W/8]; UniPC with flow
// sigmas; classifier-free guidance as two calls (prompt, then negative prompt) with the expert of the
// timestep (transformer above boundary_ratio * 1000, transformer_2 below, each with its own scale); the
// causal 3-D VAE over every frame. Returns video frames [B, F, H, W, 3] in [0, 1].
class WanPipeline final : public Pipeline {
 public:
  // On a mesh each rank loads its shards of both experts and of UMT5 (TP) and works on its part of each step:
  // its video-token shard (SP), its branch of the guidance (CFG), its band of the VAE decode. Every rank
  // returns the whole video.
  static Result<WanPipeline> load(const std::string& dir, const Mesh& mesh = Mesh::single(),
                                  const LoadOptions& from = {});
  static Result<ModelTraits> traits(const std::string& dir, const GenerateOptions& options,
                                    const LoadOptions& from = {});
  std::string name() const override { return "WanPipeline"; }
  // Wan2.2-T2V-A14B's recommended call (1280x720, 81 frames, 40 steps, guidance 4.0 / 3.0) for a two-expert
  // folder; diffusers' __call__ defaults (832x480, 81 frames, 50 steps, guidance 5.0) for one expert.
  GenerateOptions with_defaults(GenerateOptions o) const override;
  Status validate(const GenerateOptions& o) const override;
  // Records transformer.call<i> / transformer_2.call<i> .{hidden_states, timestep, encoder_hidden_states,
  // sample} (i counts the calls of both experts) and latents.step<i>.
  Result<Tensor> generate(const GenerateOptions& options, TensorMap* record = nullptr,
                          const StepCallback& on_step = nullptr) const override;

  // WanPipeline._get_t5_prompt_embeds: [B, max_sequence_length, d_model], padding rows zero.
  Result<Tensor> encode_prompt(const std::vector<std::string>& prompts, int64_t max_sequence_length) const;

 private:
  bool two_experts() const { return transformer_2_ != nullptr; }
  // Whether a generation with `o` fits in this machine's available memory (an error naming the size and the
  // estimate when not).
  Status check_memory(const GenerateOptions& o) const;
  std::shared_ptr<T5Tokenizer> tokenizer_;
  std::shared_ptr<T5Encoder> text_encoder_;
  std::shared_ptr<WanTransformer> transformer_, transformer_2_;
  // The experts' memory-mapped weights (two-expert folders): when one takes over, the other's resident pages
  // are dropped, so a run holds one expert's weights at a time (as plan counts it).
  std::shared_ptr<Checkpoint> expert_ck_[2];
  std::shared_ptr<AutoencoderKLWan> vae_;
  UniPCConfig scheduler_config_;
  std::optional<double> boundary_ratio_;
  Mesh mesh_ = Mesh::single();
  Device device_ = Device::CPU;  // where the components' weights are (LoadOptions::device)
};

// diffusers' prompt_clean: ftfy's fix_text (its deterministic part: encoders/tokenizers/fix_text.h), HTML
// entities unescaped (twice, as html.unescape(html.unescape(.))), runs of whitespace collapsed to one space,
// ends trimmed.
std::string wan_prompt_clean(const std::string& text);

// The registry's entry for "WanPipeline" (pipelines/pipeline.cpp lists it).
PipelineEntry wan_pipeline_entry();

}  // namespace meshdit
