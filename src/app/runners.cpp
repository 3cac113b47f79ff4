// How each component class of the reference cases is built and called: one function per class, using
// the same loaders as the pipelines.
#include "app/runners.h"

#include "app/check.h"
#include "io/checkpoint.h"
#include "models/registry.h"
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

// Mesh for a transformer case; the intermediates (every output but the forward's results) are compared only
// where every rank holds them whole (pure TP), and skipped under SP or CFG splits.
Result<const Mesh*> transformer_mesh(const CaseContext& c, const TransformerArch& arch, int64_t heads, int64_t batch,
                                     int64_t image_tokens, BatchSplit* split) {
  const std::string name = arch.name + " transformer";
  const bool pad_heads = arch.pad_heads;
  // A batch of two or more can be split like a guidance batch; validate() refuses cfg=2 otherwise.
  ModelTraits traits{name, heads, /*cfg_batch=*/batch >= 2, image_tokens};
  traits.pad_heads = pad_heads;
  MD_TRY(const Mesh* mesh, c.mesh(traits));
  if (mesh->config().cfg > 1) {
    split->cfg = &mesh->cfg();
    split->batch = batch;
    split->mine = shard_range(batch, mesh->cfg().size(), mesh->cfg().rank());
  }
  if (mesh->config().sp > 1 || mesh->config().cfg > 1) {
    c.skip_outputs(
        [&arch](const std::string& n) {
          if (n == "sample") return false;
          for (const auto& v : arch.case_variants)
            if (v.first == n) return false;
          return true;
        },
        "an intermediate of a sequence/batch shard");
  }
  return mesh;
}

// Any registered transformer: its config.json and weights in the case folder, the forward's inputs by the
// names the entry lists, batched inputs split over the cfg group of a mesh.
CaseRunner transformer_runner(const TransformerArch& arch) {
  return [&arch](const CaseContext& c) -> Result<TensorMap> {
    MD_TRY(std::any cfg, arch.parse_config(c.dir + "/config.json"));
    if (arch.call_config && c.meta.contains("non_tensor_args")) {
      MD_TRY(cfg, arch.call_config(cfg, c.meta["non_tensor_args"]));
    }
    TensorMap in;
    for (const auto& i : arch.inputs) {
      if (i.optional && !c.inputs.count(i.name)) continue;
      MD_TRY(in[i.name], c.input(i.name));
    }
    const Tensor& x = in.at(arch.inputs.at(0).name);
    BatchSplit split;
    MD_TRY(const Mesh* mesh,
           transformer_mesh(c, arch, arch.dims(cfg).heads, x.size(0), arch.tokens_of_inputs(cfg, in), &split));
    const ParallelContext par = mesh->context();
    MD_TRY(Checkpoint ck, Checkpoint::open(c.dir + "/diffusion_pytorch_model.safetensors"));
    MD_TRY(std::shared_ptr<Transformer> model, arch.load(ck, cfg, &par));
    for (const auto& i : arch.inputs)
      if (i.batched && in.count(i.name)) in[i.name] = split.take(in[i.name]);
    TensorMap out;
    Hooks hooks = collect_into(out);
    MD_TRY(Tensor y, model->forward(in, &hooks));
    out["sample"] = split.gather(y);
    for (const auto& [name, variant] : arch.case_variants) {
      MD_TRY(std::shared_ptr<Transformer> other, arch.load(ck, variant(cfg), &par));
      MD_TRY(Tensor v, other->forward(in, nullptr));
      out[name] = split.gather(v);
    }
    return out;
  };
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
  for (const auto& arch : transformer_archs())
    if (arch.load)
      for (const auto& cls : arch.classes) register_case_runner(case_class_of(cls), transformer_runner(arch));
}

}  // namespace meshdit
