#pragma once
#include <memory>
#include <string>
#include <vector>

#include "encoders/qwen25vl.h"
#include "encoders/tokenizers/qwen2_tokenizer.h"
#include "models/transformers/qwenimage.h"
#include "models/vae/autoencoder_kl_wan.h"
#include "parallel/mesh.h"
#include "pipelines/pipeline.h"
#include "schedulers/flow_match.h"

namespace meshdit {

// diffusers QwenImagePipeline: the prompt in a chat template through the Qwen2.5-VL language model (the
// template's first 34 tokens dropped, rows re-padded with a mask), 2x2-packed latents, flow-matching Euler
// steps with a resolution-dependent shift, true CFG against the negative prompt with the conditional
// prediction's norm kept, and the Qwen-Image (Wan-style causal 3-D) VAE on one frame.
class QwenImagePipeline final : public Pipeline {
 public:
  // On a mesh each rank loads its shard of the transformer and of the text encoder (TP) and works on its
  // part of each step: its image-token shard (SP), its branch of true CFG (CFG), its band of the VAE decode.
  // Every rank returns the whole image.
  // `from` may name a transformer file apart from the folder (diffusers names, as ComfyUI's files have them).
  static Result<QwenImagePipeline> load(const std::string& dir, const Mesh& mesh = Mesh::single(),
                                        const LoadOptions& from = {});
  // What the mesh's automatic configuration needs, read from the transformer's config.
  static Result<ModelTraits> traits(const std::string& dir, const GenerateOptions& options,
                                    const LoadOptions& from = {});
  // 2 ** len(temperal_downsample): 8 for the released VAE.
  int64_t vae_scale_factor() const { return int64_t(1) << vae_->config().temperal_downsample.size(); }
  std::string name() const override { return "QwenImagePipeline"; }
  // diffusers' QwenImagePipeline.__call__ defaults (1024 x 1024, 50 steps, true_cfg_scale 4, 512 tokens).
  GenerateOptions with_defaults(GenerateOptions o) const override;
  Status validate(const GenerateOptions& o) const override;
  // Records transformer.call<i>.{hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_mask,
  // sample}: the prompt's call, then the negative prompt's.
  Result<Tensor> generate(const GenerateOptions& options, TensorMap* record = nullptr,
                          const StepCallback& on_step = nullptr) const override;

  struct PromptEmbeds {
    Tensor sequence;  // [B, L, hidden_size], rows zero-padded to the longest
    Tensor mask;      // [B, L] int64, 1 for real tokens; undefined when every token is real
  };
  // The template's prompt tokens' last hidden states (diffusers _get_qwen_prompt_embeds), cut to
  // max_sequence_length.
  Result<PromptEmbeds> encode_prompt(const std::vector<std::string>& prompts, int64_t max_sequence_length) const;

  // The chat template the prompt is put in, and how many of its leading tokens (the system turn) are dropped.
  static constexpr const char* kPromptTemplate =
      "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
      "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>"
      "assistant\n";
  static constexpr int64_t kTemplateDrop = 34;
  static constexpr int64_t kTokenizerMaxLength = 1024;

 private:
  std::shared_ptr<Qwen2Tokenizer> tokenizer_;
  std::shared_ptr<Qwen25VLTextEncoder> text_encoder_;
  std::shared_ptr<QwenImageTransformer> transformer_;
  std::shared_ptr<AutoencoderKLWan> vae_;
  FlowMatchConfig scheduler_config_;
  Mesh mesh_ = Mesh::single();
  Device device_ = Device::CPU;  // where the components' weights are (LoadOptions::device)
};

// The registry's entry for "QwenImagePipeline" (pipelines/pipeline.cpp lists it).
PipelineEntry qwenimage_pipeline_entry();

}  // namespace meshdit
