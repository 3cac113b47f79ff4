// How each component class of the reference cases is built and called: one function per class, using
// the same loaders as the pipelines.
#include "app/runners.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>

#include "app/check.h"
#include "app/convert_cmd.h"
#include "io/checkpoint.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "models/registry.h"
#include "parallel/collectives.h"

namespace fs = std::filesystem;

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

// "12 of 40 tensors quantized" for a GGUF file: what the conversion's rules left in float matters to the figures.
Result<std::string> gguf_quantized_count(const std::string& path) {
  MD_TRY(auto map, MappedFile::open(path));
  MD_TRY(GgufFile g, parse_gguf(map->data(), map->size(), path));
  size_t blocks = 0;
  for (const auto& t : g.tensors) blocks += quant_is_block(t.type);
  return std::to_string(blocks) + " of " + std::to_string(g.tensors.size()) + " tensors quantized";
}

// The weights of a transformer case. With `check --quantize TYPE` they go through a GGUF file written by
// `meshdit convert --type TYPE`'s code and opened the way a user's --transformer FILE.gguf is (layout, GGUF
// architecture), so the figures are those of the loading path a real quantized file takes. The file is removed
// once opened: the checkpoint holds its mapping.
Result<Checkpoint> case_weights(const CaseContext& c, const TransformerArch& arch) {
  const std::string weights = c.dir + "/diffusion_pytorch_model.safetensors";
  if (c.quantize.empty()) return Checkpoint::open(weights);
  static std::atomic<int> serial{0};
  const fs::path dir =
      fs::temp_directory_path() / ("meshdit-check-" + std::to_string(::getpid()) + "-" + std::to_string(serial++));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(dir.string() + ": cannot create the folder for the quantized weights: " + ec.message());
  struct Remove {
    fs::path p;
    ~Remove() {
      std::error_code e;
      fs::remove_all(p, e);
    }
  } remove{dir};
  ConvertCommand cv;
  cv.source = weights;
  cv.output = (dir / (fs::path(c.dir).filename().string() + "-" + c.quantize + ".gguf")).string();
  cv.type = c.quantize;
  cv.progress = false;
  MD_RETURN_IF_ERROR(convert_checkpoint(cv, nullptr));
  std::string layout;
  MD_TRY(Checkpoint ck, open_transformer_checkpoint(cv.output, &layout));
  if (transformer_arch_of(ck, layout) != &arch)
    return make_error(cv.output + ": its tensors (" + layout + " layout) are not a " + arch.name + " transformer's");
  MD_RETURN_IF_ERROR(check_gguf_architecture(ck, arch, layout));
  MD_TRY(std::string count, gguf_quantized_count(cv.output));
  c.quantized = c.quantize + ", " + count + ", " + layout + " names";
  return ck;
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
      MD_TRY(in[i.name], c.device_input(i.name));
    }
    const Tensor& x = in.at(arch.inputs.at(0).name);
    BatchSplit split;
    MD_TRY(const Mesh* mesh,
           transformer_mesh(c, arch, arch.dims(cfg).heads, x.size(0), arch.tokens_of_inputs(cfg, in), &split));
    const ParallelContext par = mesh->context();
    MD_TRY(Checkpoint ck, case_weights(c, arch));
    c.place(ck);
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
