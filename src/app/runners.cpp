// How each component class of the reference cases is built and called: one function per class, using
// the same loaders as the pipelines.
#include "app/runners.h"

#include "app/check.h"
#include "io/checkpoint.h"
#include "models/transformers/flux.h"
#include "models/transformers/sd3.h"

namespace meshdit {
namespace {

Hooks collect_into(TensorMap& out) {
  return [&out](const std::string& name, const Tensor& t) { out[name] = t.clone(); };
}

Result<TensorMap> run_sd3_transformer(const CaseContext& c) {
  MD_TRY(SD3Config cfg, SD3Config::from_json(c.dir + "/config.json"));
  MD_TRY(Checkpoint ck, Checkpoint::open(c.dir + "/diffusion_pytorch_model.safetensors"));
  MD_TRY(SD3Transformer model, SD3Transformer::load(ck, cfg));
  MD_TRY(Tensor x, c.input("hidden_states"));
  MD_TRY(Tensor ctx, c.input("encoder_hidden_states"));
  MD_TRY(Tensor pooled, c.input("pooled_projections"));
  MD_TRY(Tensor t, c.input("timestep"));
  TensorMap out;
  Hooks hooks = collect_into(out);
  MD_TRY(out["sample"], model.forward(x, ctx, pooled, t, &hooks));
  return out;
}

Result<TensorMap> run_flux_transformer(const CaseContext& c) {
  MD_TRY(FluxConfig cfg, FluxConfig::from_json(c.dir + "/config.json"));
  MD_TRY(Checkpoint ck, Checkpoint::open(c.dir + "/diffusion_pytorch_model.safetensors"));
  MD_TRY(FluxTransformer model, FluxTransformer::load(ck, cfg));
  MD_TRY(Tensor x, c.input("hidden_states"));
  MD_TRY(Tensor ctx, c.input("encoder_hidden_states"));
  MD_TRY(Tensor pooled, c.input("pooled_projections"));
  MD_TRY(Tensor t, c.input("timestep"));
  MD_TRY(Tensor img_ids, c.input("img_ids"));
  MD_TRY(Tensor txt_ids, c.input("txt_ids"));
  Tensor guidance;
  if (cfg.guidance_embeds) {
    MD_TRY(guidance, c.input("guidance"));
  }
  TensorMap out;
  Hooks hooks = collect_into(out);
  MD_TRY(out["sample"], model.forward(x, ctx, pooled, t, img_ids, txt_ids, guidance, &hooks));
  return out;
}

}  // namespace

void register_builtin_runners() {
  static bool done = false;
  if (done) return;
  done = true;
  register_transformer_runners();
  register_tokenizer_runners();
  register_scheduler_runners();
  register_vae_runners();
  register_encoder_runners();
  register_pipeline_runners();
}

void register_transformer_runners() {
  register_case_runner("diffusers.SD3Transformer2DModel", run_sd3_transformer);
  register_case_runner("diffusers.FluxTransformer2DModel", run_flux_transformer);
}

}  // namespace meshdit
