#include "models/registry.h"

#include <algorithm>

namespace meshdit {
namespace {

std::vector<TransformerArch>& archs() {
  static std::vector<TransformerArch> a;
  return a;
}

}  // namespace

Tensor input_of(const TensorMap& inputs, const std::string& name) {
  auto it = inputs.find(name);
  return it == inputs.end() ? Tensor() : it->second;
}

void register_transformer(TransformerArch arch) { archs().push_back(std::move(arch)); }

// One line per model file (each defines its register function at its bottom).
void register_flux();
void register_sd3();
void register_qwenimage();
void register_wan();
void register_mochi();
void register_motif();

const std::vector<TransformerArch>& transformer_archs() {
  static const bool once = [] {
    register_flux();
    register_sd3();
    register_qwenimage();
    register_wan();
    register_mochi();
    register_motif();
    return true;
  }();
  (void)once;
  return archs();
}

const TransformerArch* find_transformer_arch(const std::string& class_name) {
  for (const auto& a : transformer_archs())
    if (std::find(a.classes.begin(), a.classes.end(), class_name) != a.classes.end()) return &a;
  return nullptr;
}

std::string case_class_of(const std::string& class_name) {
  return class_name.find('.') == std::string::npos ? "diffusers." + class_name : class_name;
}

const TransformerArch* find_transformer_arch_for_case(const std::string& case_class) {
  for (const auto& a : transformer_archs())
    for (const auto& c : a.classes)
      if (case_class_of(c) == case_class) return &a;
  return nullptr;
}

Result<WeightLog> loaded_weights(const TransformerArch& arch, const Checkpoint& checkpoint, const std::any& config,
                                 int tp, int tp_rank) {
  Checkpoint ck = checkpoint;
  auto log = std::make_shared<WeightLog>();
  ck.record_into(log);
  ShapeOnlyComm comm(tp, tp_rank);  // a loader only asks its place in the TP group
  LocalComm sp;
  const ParallelContext par{&comm, &sp, SpMode::Ring};
  if (arch.load) {
    MD_RETURN_IF_ERROR(arch.load(ck, config, &par));
  } else if (arch.declare_weights) {
    MD_RETURN_IF_ERROR(arch.declare_weights(ck, config, &par));
  } else {
    return make_error(arch.name + ": no loader and no weight declaration");
  }
  return *log;
}

Result<WeightLog> weight_spec(const TransformerArch& arch, const std::any& config, int tp, int tp_rank, DType dtype) {
  return loaded_weights(arch, Checkpoint::meta(dtype, arch.name + " weight spec"), config, tp, tp_rank);
}

ForwardCost mmdit_cost(const MmditShape& s, const RankShape& r) {
  ForwardCost c;
  const int tp = r.pc.tp, sp = r.pc.sp;
  const int64_t D = s.dim, Dt = s.dim / tp, Ft = (s.ffn + tp - 1) / tp, L = r.L, N = r.N, n = r.n;
  // Peak live elements: the residual streams (text + local image tokens, full width: TP replicates hidden
  // states) plus the largest phase of a block; app/plan.h lists what each phase holds.
  auto sp_extra = [&](int64_t joint_text) -> int64_t {
    if (sp == 1) return 0;
    if (r.pc.sp_mode == SpMode::Ring) return 4 * n * Dt;
    return 4 * (N + joint_text) * (Dt / sp);
  };
  const int64_t T = L + n, S = std::max(n, L);
  const int64_t resid = T * D;
  const int64_t attn = resid + T * D + 3 * T * Dt + T * Dt + sp_extra(L);
  const int64_t proj = resid + T * Dt + T * D;
  const int64_t ff = resid + S * D + S * Ft + S * D;
  int64_t block = std::max({attn, proj, ff});
  if (s.singles > 0) {
    // Single block: attention and MLP from one normed input; [attn | mlp] concatenated into proj_out.
    const int64_t a = resid + T * D + 3 * T * Dt + T * Ft + T * Dt + sp_extra(L);
    const int64_t p = resid + T * Ft + T * Dt + T * (Dt + Ft) + T * D;
    block = std::max({block, a, p});
  }
  const int64_t inputs = n * s.in_tok + L * s.text_in;
  const int64_t rope = s.rope ? 2 * (L + n) * s.head_dim : 0;
  c.act_elems = r.b * (inputs + block) + rope;
  // Joint attention over text ++ image. Ring: local text + image queries against all keys (text queries are
  // recomputed on every SP rank); Ulysses: all queries for heads/(tp sp).
  const double Dd = double(s.dim) / tp, Nd = double(N), Ld = double(L), nn = double(n), bb = double(r.b);
  const bool uly = sp > 1 && r.pc.sp_mode == SpMode::Ulysses;
  c.attn_flops = uly ? 4 * bb * (Nd + Ld) * (Nd + Ld) * Dd / sp : 4 * bb * (nn + Ld) * (Nd + Ld) * Dd;
  c.sp_attentions = s.doubles + s.singles;
  return c;
}

Result<Checkpoint> open_transformer_checkpoint(const std::string& path_or_dir, std::string* detected_layout) {
  std::vector<SingleFileLayout> layouts;
  std::vector<std::string> detect, modules;
  for (const auto& a : transformer_archs()) {
    layouts.insert(layouts.end(), a.layouts.begin(), a.layouts.end());
    detect.insert(detect.end(), a.diffusers_detect.begin(), a.diffusers_detect.end());
    modules.insert(modules.end(), a.diffusers_modules.begin(), a.diffusers_modules.end());
  }
  MD_TRY(Checkpoint ck, Checkpoint::open(path_or_dir));
  // A GGUF file names its architecture (city96's files do; stable-diffusion.cpp's do not, and are told by their
  // tensors alone): one no registered model reads is refused by name before its tensors are looked at.
  const std::string gguf_arch = ck.file_metadata("general.architecture");
  if (ck.has_gguf() && !gguf_arch.empty()) {
    std::string supported;
    bool known = false;
    for (const auto& a : transformer_archs())
      for (const auto& g : a.gguf_architectures) {
        supported += (supported.empty() ? "" : ", ") + g;
        known = known || g == gguf_arch;
      }
    if (!known)
      return make_error(ck.origin() + ": GGUF architecture '" + gguf_arch +
                        "' is not supported (supported: " + supported + ")");
  }
  return open_single_file(std::move(ck), layouts, detect, modules, detected_layout);
}

const TransformerArch* transformer_arch_of(const Checkpoint& ck, const std::string& layout) {
  for (const auto& a : transformer_archs())
    for (const auto& l : a.layouts)
      if (l.name == layout) return &a;
  if (layout != "diffusers") return nullptr;
  const std::vector<std::string> names = ck.names();
  for (const auto& a : transformer_archs())
    for (const auto& head : a.diffusers_detect)
      for (const auto& n : names)
        if (starts_with(n, head)) return &a;
  return nullptr;
}

Status check_gguf_architecture(const Checkpoint& ck, const TransformerArch& arch, const std::string& layout) {
  const std::string g = ck.file_metadata("general.architecture");
  if (!ck.has_gguf() || g.empty()) return ok_status();
  const auto& names = arch.gguf_architectures;
  if (std::find(names.begin(), names.end(), g) == names.end())
    return make_error(ck.origin() + ": GGUF architecture '" + g + "', but its tensors are a " + arch.name +
                      " transformer's (" + layout + " layout)");
  return ok_status();
}

Result<OpenedTransformer> open_transformer(const std::string& path_or_dir) {
  OpenedTransformer o;
  MD_TRY(o.ck, open_transformer_checkpoint(path_or_dir, &o.layout));
  o.arch = transformer_arch_of(o.ck, o.layout);
  if (!o.arch) return make_error(o.ck.origin() + ": no registered transformer matches its tensors");
  MD_RETURN_IF_ERROR(check_gguf_architecture(o.ck, *o.arch, o.layout));
  const std::string cfg = config_json_beside(path_or_dir);
  if (path_exists(cfg)) {
    MD_TRY(o.config, o.arch->parse_config(cfg));
  } else if (o.arch->infer_config) {
    MD_TRY(o.config, o.arch->infer_config(o.ck));
  } else {
    return make_error(o.ck.origin() + ": no config.json beside it, and a " + o.arch->name +
                      " config cannot be inferred from its tensors");
  }
  return o;
}

}  // namespace meshdit
