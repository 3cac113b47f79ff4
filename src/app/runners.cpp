// How each component class of the reference cases is built and called: one function per class, using
// the same loaders as the pipelines.
#include "app/runners.h"

#include "app/check.h"
#include "io/checkpoint.h"
#include "models/transformers/flux.h"
#include "models/transformers/sd3.h"
#include "parallel/collectives.h"

namespace meshdit {
namespace {

Hooks collect_into(TensorMap& out) {
  return [&out](const std::string& name, const Tensor& t) { out[name] = t.clone(); };
}

// The case's batch split over the mesh's CFG group (the way conditional and unconditional halves of a
// guidance batch run on two halves of the mesh), and the outputs gathered back.
struct BatchSplit {
  Communicator* cfg = nullptr;
  int64_t batch = 0;
  Range mine;
  Tensor take(const Tensor& t) const { return cfg ? t.slice(0, mine.begin, mine.end).contiguous() : t; }
  Tensor gather(const Tensor& out) const {
    return cfg ? all_gather_v(out, 0, *cfg, shard_sizes(batch, cfg->size())) : out;
  }
};

// Mesh for a transformer case; the intermediate hooks are compared only where every rank holds them whole
// (pure TP), and skipped under SP or CFG splits.
Result<const Mesh*> transformer_mesh(const CaseContext& c, const std::string& name, int64_t heads, int64_t batch,
                                     int64_t image_tokens, BatchSplit* split) {
  // A batch of two or more can be split like a guidance batch; validate() refuses cfg=2 otherwise.
  ModelTraits traits{name, heads, /*cfg_batch=*/batch >= 2, image_tokens};
  MD_TRY(const Mesh* mesh, c.mesh(traits));
  if (mesh->config().cfg > 1) {
    split->cfg = &mesh->cfg();
    split->batch = batch;
    split->mine = shard_range(batch, mesh->cfg().size(), mesh->cfg().rank());
  }
  if (mesh->config().sp > 1 || mesh->config().cfg > 1) {
    c.skip_outputs([](const std::string& n) { return n.rfind("hook.", 0) == 0; },
                   "an intermediate of a sequence/batch shard");
  }
  return mesh;
}

Result<TensorMap> run_sd3_transformer(const CaseContext& c) {
  MD_TRY(SD3Config cfg, SD3Config::from_json(c.dir + "/config.json"));
  MD_TRY(Tensor x, c.input("hidden_states"));
  MD_TRY(Tensor ctx, c.input("encoder_hidden_states"));
  MD_TRY(Tensor pooled, c.input("pooled_projections"));
  MD_TRY(Tensor t, c.input("timestep"));
  const int64_t p = cfg.patch_size;
  BatchSplit split;
  MD_TRY(const Mesh* mesh, transformer_mesh(c, "SD3 transformer", cfg.num_attention_heads, x.size(0),
                                            x.dim() == 4 ? (x.size(2) / p) * (x.size(3) / p) : 0, &split));
  const ParallelContext par = mesh->context();
  MD_TRY(Checkpoint ck, Checkpoint::open(c.dir + "/diffusion_pytorch_model.safetensors"));
  MD_TRY(SD3Transformer model, SD3Transformer::load(ck, cfg, &par));
  TensorMap out;
  Hooks hooks = collect_into(out);
  MD_TRY(Tensor y, model.forward(split.take(x), split.take(ctx), split.take(pooled), split.take(t), &hooks));
  out["sample"] = split.gather(y);
  return out;
}

Result<TensorMap> run_flux_transformer(const CaseContext& c) {
  MD_TRY(FluxConfig cfg, FluxConfig::from_json(c.dir + "/config.json"));
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
  BatchSplit split;
  MD_TRY(const Mesh* mesh,
         transformer_mesh(c, "Flux transformer", cfg.num_attention_heads, x.size(0), x.size(1), &split));
  const ParallelContext par = mesh->context();
  MD_TRY(Checkpoint ck, Checkpoint::open(c.dir + "/diffusion_pytorch_model.safetensors"));
  MD_TRY(FluxTransformer model, FluxTransformer::load(ck, cfg, &par));
  TensorMap out;
  Hooks hooks = collect_into(out);
  MD_TRY(Tensor y, model.forward(split.take(x), split.take(ctx), split.take(pooled), split.take(t), img_ids, txt_ids,
                                 guidance.defined() ? split.take(guidance) : guidance, &hooks));
  out["sample"] = split.gather(y);
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
