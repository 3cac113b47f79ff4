#pragma once
#include <memory>
#include <string>
#include <vector>

#include "encoders/clip_text.h"
#include "encoders/t5.h"
#include "encoders/tokenizers/clip_tokenizer.h"
#include "encoders/tokenizers/t5_tokenizer.h"
#include "models/transformers/motif.h"
#include "models/vae/autoencoder_kl.h"
#include "parallel/mesh.h"
#include "pipelines/pipeline.h"

namespace meshdit {

// Motif-Image (Motif Technologies' MotifImage.sample, as its run_inference.sh calls it): CLIP-L and CLIP-G last
// hidden states (zeroed after the first end token) and FLAN-T5-XXL states (zeroed at padding) as the text,
// both CLIP pooler outputs as the pooled vector; rectified-flow Euler steps on the linear-quadratic schedule
// (emulating 100 steps), the DiT timestep round(sigma * 1000); classifier-free guidance as a batch of two whose
// negative half, without a negative prompt, is the empty prompt's embedding while sigma >= 0.85 and zeros after;
// the SD3 VAE on latents / scaling_factor.
//
// The folder (no diffusers class exists; README.md documents it):
//   checkpoints/*.bin (the release, DiT weights under `dit.`) or transformer/ (safetensors, e.g. from `meshdit
//   convert`); the DiT config in config.json, configs/motif_image.json or transformer/config.json (else the
//   released model's); text_encoder/ + tokenizer/ (openai/clip-vit-large-patch14), text_encoder_2/ + tokenizer_2/
//   (laion/CLIP-ViT-bigG-14-laion2B-39B-b160k), text_encoder_3/ + tokenizer_3/ (google/flan-t5-xxl), vae/ (the
//   16-channel SD3 VAE). A model_index.json is not needed.
class MotifImagePipeline final : public Pipeline {
 public:
  static Result<MotifImagePipeline> load(const std::string& dir, const Mesh& mesh = Mesh::single(),
                                         const LoadOptions& from = {});
  static Result<ModelTraits> traits(const std::string& dir, const GenerateOptions& options,
                                    const LoadOptions& from = {});
  std::string name() const override { return "MotifImagePipeline"; }
  // run_inference.sh's call: the DiT's trained size (1024 x 1024), 50 steps, guidance 5.0, 256 T5 tokens.
  GenerateOptions with_defaults(GenerateOptions o) const override;
  Status validate(const GenerateOptions& o) const override;
  // Records transformer.call<i>.{latent, t, text_emb_t5, text_emb_clip_l, text_emb_clip_g, pooled_text_embs,
  // sample}, latents.step<i>, scheduler.timesteps.
  Result<Tensor> generate(const GenerateOptions& options, TensorMap* record = nullptr,
                          const StepCallback& on_step = nullptr) const override;

  // MotifImage.text_encoding with zero masking: T5 [B, L5, 4096], CLIP-L [B, 77, 768], CLIP-G [B, 77, 1280]
  // and pooled = CLIP-L ++ CLIP-G pooler outputs [B, 2048].
  struct PromptEmbeds {
    Tensor t5, clip_l, clip_g, pooled;
  };
  Result<PromptEmbeds> encode_prompt(const std::vector<std::string>& prompts, int64_t max_sequence_length) const;

 private:
  std::shared_ptr<ClipTokenizer> tokenizer_, tokenizer_2_;
  std::shared_ptr<T5Tokenizer> tokenizer_3_;
  std::shared_ptr<CLIPTextModel> text_encoder_, text_encoder_2_;
  std::shared_ptr<T5Encoder> text_encoder_3_;
  std::shared_ptr<MotifTransformer> transformer_;
  std::shared_ptr<AutoencoderKL> vae_;
  Mesh mesh_ = Mesh::single();
  Device device_ = Device::CPU;  // where the components' weights are (LoadOptions::device)
};

// Whether `dir` is laid out as a Motif-Image folder (a DiT checkpoint under checkpoints/ or transformer/ and
// no model_index.json): generate then loads it with MotifImagePipeline.
bool is_motif_folder(const std::string& dir);
// Its DiT config: the first of config.json, configs/motif_image.json, transformer/config.json that exists, else
// the released model's.
Result<MotifConfig> motif_folder_config(const std::string& dir);

// The registry's entry for "MotifImagePipeline" (pipelines/pipeline.cpp lists it).
PipelineEntry motif_pipeline_entry();

}  // namespace meshdit
