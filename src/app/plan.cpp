#include "app/plan.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "io/checkpoint.h"
#include "io/json_config.h"
#include "models/transformers/flux.h"
#include "models/transformers/sd3.h"

namespace meshdit {

int64_t PlanWeight::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t PlanWeight::local_numel(int tp) const {
  if (shard == PlanShard::Replicated || tp == 1 || shape.empty()) return numel();
  const size_t dim = shard == PlanShard::Column ? 0 : 1;
  if (dim >= shape.size()) return numel();
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) n *= i == dim ? (shape[i] + tp - 1) / tp : shape[i];
  return n;
}

int64_t PlanRank::sent_bytes() const {
  int64_t s = 0;
  for (const auto& c : comm) s += c.sent_bytes;
  return s;
}

double PlanRank::comm_s() const {
  double s = 0;
  for (const auto& c : comm) s += c.seconds;
  return s;
}

namespace {

enum class Arch { Flux, SD3, Wan };

// diffusers WanTransformer3DModel (text-to-video: no image embedder, no added K/V).
struct WanConfig {
  int64_t num_layers = 40, num_attention_heads = 40, attention_head_dim = 128, ffn_dim = 13824;
  int64_t text_dim = 4096, freq_dim = 256, in_channels = 16, out_channels = 16;
  std::vector<int> patch_size = {1, 2, 2};
  bool cross_attn_norm = true;
  std::string qk_norm = "rms_norm_across_heads";
  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
};

struct Model {
  Arch arch = Arch::Flux;
  std::string name, description;
  FluxConfig flux;
  SD3Config sd3;
  WanConfig wan;
  bool cfg_batch = false;
  int64_t width = 1024, height = 1024, frames = 1, text_tokens = 512;
};

Model builtin_flux(bool dev) {
  Model m;
  m.arch = Arch::Flux;
  m.name = dev ? "flux-dev" : "flux-schnell";
  m.flux.guidance_embeds = dev;  // the rest: diffusers' defaults are FLUX.1's
  m.cfg_batch = false;           // guidance distilled (dev) or no guidance (schnell): one batch per step
  return m;
}

Model builtin_sd35_large() {
  Model m;
  m.arch = Arch::SD3;
  m.name = "sd35-large";
  SD3Config& c = m.sd3;
  c.sample_size = 128;
  c.patch_size = 2;
  c.in_channels = 16;
  c.num_layers = 38;
  c.attention_head_dim = 64;
  c.num_attention_heads = 38;
  c.joint_attention_dim = 4096;
  c.caption_projection_dim = 2432;
  c.pooled_projection_dim = 2048;
  c.out_channels = 16;
  c.pos_embed_max_size = 192;
  c.qk_norm = "rms_norm";
  m.cfg_batch = true;
  m.text_tokens = 77 + 256;  // CLIP 77 ++ T5 256
  return m;
}

Model builtin_wan22() {
  Model m;
  m.arch = Arch::Wan;
  m.name = "wan22-t2v-a14b";
  m.cfg_batch = true;
  m.width = 1280;
  m.height = 720;
  m.frames = 81;
  m.text_tokens = 512;
  return m;
}

Result<WanConfig> wan_from_json(const std::string& path) {
  MD_TRY(Json j, load_json(path));
  WanConfig c;
  ConfigReader r(j, path);
  r.get("num_layers", c.num_layers);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("attention_head_dim", c.attention_head_dim);
  r.get("ffn_dim", c.ffn_dim);
  r.get("text_dim", c.text_dim);
  r.get("freq_dim", c.freq_dim);
  r.get("in_channels", c.in_channels);
  r.get("out_channels", c.out_channels);
  r.get("patch_size", c.patch_size);
  r.get("cross_attn_norm", c.cross_attn_norm);
  r.get("qk_norm", c.qk_norm);
  if (c.patch_size.size() != 3 || c.patch_size[0] < 1 || c.patch_size[1] < 1 || c.patch_size[2] < 1)
    r.fail("patch_size", "must be three positive integers (t, h, w)");
  if (r.has("image_dim") || r.has("added_kv_proj_dim"))
    r.fail("image_dim/added_kv_proj_dim", "image-to-video transformers are not modelled by `plan`");
  if (c.num_layers < 0 || c.num_attention_heads < 1 || c.attention_head_dim < 1 || c.ffn_dim < 1)
    r.fail("num_layers/num_attention_heads/attention_head_dim/ffn_dim", "out of range");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

std::string join_names() {
  std::string s;
  for (const auto& n : plan_model_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// A built-in name, or a diffusers pipeline folder (transformer/config.json) or transformer folder.
Result<Model> resolve_model(const std::string& spec) {
  if (spec == "flux-dev") return builtin_flux(true);
  if (spec == "flux-schnell") return builtin_flux(false);
  if (spec == "sd35-large") return builtin_sd35_large();
  if (spec == "wan22-t2v-a14b") return builtin_wan22();
  if (!is_directory(spec))
    return make_error("--model " + spec + ": not a built-in model (" + join_names() + ") and not a folder");
  std::string cfg_path = spec + "/config.json";
  if (path_exists(spec + "/model_index.json")) cfg_path = spec + "/transformer/config.json";
  if (!path_exists(cfg_path))
    return make_error("--model " + spec + ": no " + cfg_path +
                      " (expected a diffusers pipeline folder or its transformer folder)");
  MD_TRY(Json j, load_json(cfg_path));
  const std::string cls = j.is_object() && j.contains("_class_name") && j["_class_name"].is_string()
                              ? j["_class_name"].get<std::string>()
                              : "";
  Model m;
  m.name = spec;
  if (cls == "FluxTransformer2DModel") {
    m.arch = Arch::Flux;
    MD_TRY(m.flux, FluxConfig::from_json(cfg_path));
    m.cfg_batch = false;
  } else if (cls == "SD3Transformer2DModel") {
    m.arch = Arch::SD3;
    MD_TRY(m.sd3, SD3Config::from_json(cfg_path));
    if (!m.sd3.dual_attention_layers.empty())
      return make_error(cfg_path +
                        ": dual_attention_layers (SD3.5-Medium's MMDiT-X blocks) are not modelled by `plan`");
    m.cfg_batch = true;
    m.text_tokens = 77 + 256;
  } else if (cls == "WanTransformer3DModel") {
    m.arch = Arch::Wan;
    MD_TRY(m.wan, wan_from_json(cfg_path));
    m.cfg_batch = true;
    m.width = 1280;
    m.height = 720;
    m.frames = 81;
  } else {
    return make_error(cfg_path + ": _class_name '" + cls +
                      "' is not supported by `plan` (FluxTransformer2DModel, SD3Transformer2DModel, "
                      "WanTransformer3DModel)");
  }
  return m;
}

// ---------------------------------------------------------------------------------------------------------
// Weights: the diffusers tensors of each transformer.

class Layout {
 public:
  std::vector<PlanWeight> w;
  void tensor(const std::string& name, std::vector<int64_t> shape, PlanShard s = PlanShard::Replicated,
              PlanTokens t = PlanTokens::None) {
    w.push_back({name, std::move(shape), s, t});
  }
  // nn.Linear(in, out): weight [out, in], bias [out]. A column-parallel linear splits both; a row-parallel
  // one splits the weight's input columns and keeps the bias whole (added once, after the all-reduce).
  void linear(const std::string& name, int64_t out, int64_t in, PlanTokens t, PlanShard s = PlanShard::Replicated,
              bool bias = true) {
    tensor(name + ".weight", {out, in}, s, t);
    if (bias) tensor(name + ".bias", {out}, s == PlanShard::Column ? PlanShard::Column : PlanShard::Replicated);
  }
};

constexpr auto kRep = PlanShard::Replicated;
constexpr auto kCol = PlanShard::Column;
constexpr auto kRow = PlanShard::Row;

std::vector<PlanWeight> flux_weights(const FluxConfig& c) {
  const int64_t D = c.inner_dim(), hd = c.attention_head_dim, F = 4 * D;
  Layout l;
  l.linear("x_embedder", D, c.in_channels, PlanTokens::Image);
  l.linear("time_text_embed.timestep_embedder.linear_1", D, 256, PlanTokens::One);
  l.linear("time_text_embed.timestep_embedder.linear_2", D, D, PlanTokens::One);
  if (c.guidance_embeds) {
    l.linear("time_text_embed.guidance_embedder.linear_1", D, 256, PlanTokens::One);
    l.linear("time_text_embed.guidance_embedder.linear_2", D, D, PlanTokens::One);
  }
  l.linear("time_text_embed.text_embedder.linear_1", D, c.pooled_projection_dim, PlanTokens::One);
  l.linear("time_text_embed.text_embedder.linear_2", D, D, PlanTokens::One);
  l.linear("context_embedder", D, c.joint_attention_dim, PlanTokens::Text);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "transformer_blocks." + std::to_string(i) + ".";
    l.linear(p + "norm1.linear", 6 * D, D, PlanTokens::One, kCol);
    l.linear(p + "norm1_context.linear", 6 * D, D, PlanTokens::One, kCol);
    for (const char* n : {"to_q", "to_k", "to_v"}) l.linear(p + "attn." + n, D, D, PlanTokens::Image, kCol);
    for (const char* n : {"add_q_proj", "add_k_proj", "add_v_proj"})
      l.linear(p + "attn." + n, D, D, PlanTokens::Text, kCol);
    for (const char* n : {"norm_q", "norm_k", "norm_added_q", "norm_added_k"})
      l.tensor(p + "attn." + n + ".weight", {hd});
    l.linear(p + "attn.to_out.0", D, D, PlanTokens::Image, kRow);
    l.linear(p + "attn.to_add_out", D, D, PlanTokens::Text, kRow);
    l.linear(p + "ff.net.0.proj", F, D, PlanTokens::Image, kCol);
    l.linear(p + "ff.net.2", D, F, PlanTokens::Image, kRow);
    l.linear(p + "ff_context.net.0.proj", F, D, PlanTokens::Text, kCol);
    l.linear(p + "ff_context.net.2", D, F, PlanTokens::Text, kRow);
  }
  for (int64_t i = 0; i < c.num_single_layers; ++i) {
    const std::string p = "single_transformer_blocks." + std::to_string(i) + ".";
    l.linear(p + "norm.linear", 3 * D, D, PlanTokens::One, kCol);
    for (const char* n : {"to_q", "to_k", "to_v"}) l.linear(p + "attn." + n, D, D, PlanTokens::Joint, kCol);
    for (const char* n : {"norm_q", "norm_k"}) l.tensor(p + "attn." + n + ".weight", {hd});
    l.linear(p + "proj_mlp", F, D, PlanTokens::Joint, kCol);
    l.linear(p + "proj_out", D, D + F, PlanTokens::Joint, kRow);  // [attn | mlp] input, both sharded
  }
  l.linear("norm_out.linear", 2 * D, D, PlanTokens::One);
  l.linear("proj_out", c.patch_size * c.patch_size * c.out_dim(), D, PlanTokens::Image);
  return l.w;
}

std::vector<PlanWeight> sd3_weights(const SD3Config& c) {
  const int64_t D = c.inner_dim(), hd = c.attention_head_dim, F = 4 * D, p = c.patch_size;
  Layout l;
  l.tensor("pos_embed.proj.weight", {D, c.in_channels, p, p}, kRep, PlanTokens::Image);
  l.tensor("pos_embed.proj.bias", {D});
  l.tensor("pos_embed.pos_embed", {1, c.pos_embed_max_size * c.pos_embed_max_size, D});
  l.linear("time_text_embed.timestep_embedder.linear_1", D, 256, PlanTokens::One);
  l.linear("time_text_embed.timestep_embedder.linear_2", D, D, PlanTokens::One);
  l.linear("time_text_embed.text_embedder.linear_1", D, c.pooled_projection_dim, PlanTokens::One);
  l.linear("time_text_embed.text_embedder.linear_2", D, D, PlanTokens::One);
  l.linear("context_embedder", c.caption_projection_dim, c.joint_attention_dim, PlanTokens::Text);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "transformer_blocks." + std::to_string(i) + ".";
    const bool pre_only = i == c.num_layers - 1;  // the last block only feeds the image stream
    l.linear(b + "norm1.linear", 6 * D, D, PlanTokens::One, kCol);
    l.linear(b + "norm1_context.linear", (pre_only ? 2 : 6) * D, D, PlanTokens::One, kCol);
    for (const char* n : {"to_q", "to_k", "to_v"}) l.linear(b + "attn." + n, D, D, PlanTokens::Image, kCol);
    for (const char* n : {"add_q_proj", "add_k_proj", "add_v_proj"})
      l.linear(b + "attn." + n, D, D, PlanTokens::Text, kCol);
    if (!c.qk_norm.empty())
      for (const char* n : {"norm_q", "norm_k", "norm_added_q", "norm_added_k"})
        l.tensor(b + "attn." + n + ".weight", {hd});
    l.linear(b + "attn.to_out.0", D, D, PlanTokens::Image, kRow);
    if (!pre_only) l.linear(b + "attn.to_add_out", D, D, PlanTokens::Text, kRow);
    l.linear(b + "ff.net.0.proj", F, D, PlanTokens::Image, kCol);
    l.linear(b + "ff.net.2", D, F, PlanTokens::Image, kRow);
    if (!pre_only) {
      l.linear(b + "ff_context.net.0.proj", F, D, PlanTokens::Text, kCol);
      l.linear(b + "ff_context.net.2", D, F, PlanTokens::Text, kRow);
    }
  }
  l.linear("norm_out.linear", 2 * D, D, PlanTokens::One);
  l.linear("proj_out", p * p * c.out_channels, D, PlanTokens::Image);
  return l.w;
}

std::vector<PlanWeight> wan_weights(const WanConfig& c) {
  const int64_t D = c.inner_dim(), F = c.ffn_dim;
  const int64_t pt = c.patch_size[0], ph = c.patch_size[1], pw = c.patch_size[2];
  Layout l;
  l.tensor("patch_embedding.weight", {D, c.in_channels, pt, ph, pw}, kRep, PlanTokens::Image);
  l.tensor("patch_embedding.bias", {D});
  l.linear("condition_embedder.time_embedder.linear_1", D, c.freq_dim, PlanTokens::One);
  l.linear("condition_embedder.time_embedder.linear_2", D, D, PlanTokens::One);
  // The one modulation projection of the model (blocks add a learned table): an embedder, replicated.
  l.linear("condition_embedder.time_proj", 6 * D, D, PlanTokens::One);
  l.linear("condition_embedder.text_embedder.linear_1", D, c.text_dim, PlanTokens::Text);
  l.linear("condition_embedder.text_embedder.linear_2", D, D, PlanTokens::Text);
  const bool across_heads = c.qk_norm == "rms_norm_across_heads";
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    for (const char* a : {"attn1.", "attn2."}) {
      const bool cross = a[4] == '2';
      l.linear(b + a + "to_q", D, D, PlanTokens::Image, kCol);
      for (const char* n : {"to_k", "to_v"})
        l.linear(b + a + n, D, D, cross ? PlanTokens::Text : PlanTokens::Image, kCol);
      if (!c.qk_norm.empty())  // across heads: a [dim] scale, sliced with the heads
        for (const char* n : {"norm_q", "norm_k"})
          l.tensor(b + a + n + ".weight", {across_heads ? D : c.attention_head_dim}, across_heads ? kCol : kRep);
      l.linear(b + a + "to_out.0", D, D, PlanTokens::Image, kRow);
    }
    if (c.cross_attn_norm) {
      l.tensor(b + "norm2.weight", {D});
      l.tensor(b + "norm2.bias", {D});
    }
    l.linear(b + "ffn.net.0.proj", F, D, PlanTokens::Image, kCol);
    l.linear(b + "ffn.net.2", D, F, PlanTokens::Image, kRow);
    l.tensor(b + "scale_shift_table", {1, 6, D});
  }
  l.linear("proj_out", c.out_channels * pt * ph * pw, D, PlanTokens::Image);
  l.tensor("scale_shift_table", {1, 2, D});
  return l.w;
}

// ---------------------------------------------------------------------------------------------------------
// Per-rank costs.

struct Shapes {
  Arch arch;
  int64_t N = 0, L = 0;                 // image tokens (whole), text tokens
  int64_t D = 0, H = 0, hd = 0, F = 0;  // hidden, heads, head dim, feed-forward hidden
  int64_t text_in = 0;                  // width of the text embeddings the transformer is given
  int64_t in_tok = 0, out_tok = 0;      // latent values per token in and out
  int64_t doubles = 0, singles = 0;     // Flux: double + single; SD3: joint blocks; Wan: blocks
  bool rope = false;
  int64_t batch = 1;  // forward batch per step over the mesh
};

int64_t shard_size(int64_t N, int sp, int i) { return N / sp + (i < N % sp ? 1 : 0); }

struct Cost {
  double linear_flops = 0;
  // Per attention over the image tokens (the ones SP collectives serve), and how many there are.
  double attn_flops = 0;        // one such attention (Flux: double and single have the same shape)
  double other_attn_flops = 0;  // attentions without SP traffic (Wan's cross-attention), all of them
  int64_t attentions = 0;
  int64_t act_elems = 0;
};

// Peak activation elements of one forward on a rank, with b = its batch, n = its image tokens. The model:
// live at the peak are the forward's inputs (latent tokens, text embeddings), RoPE tables, and the largest
// of the block's phases; each phase holds the residual streams (text + local image tokens, full dim: TP
// replicates hidden states) plus:
//   attention:  the modulated/normed input (dim), q/k/v and the attention output for heads/tp, and the SP
//               buffers: ring - the K/V shard being used and the one arriving (2 x 2 x n x dim/tp);
//               Ulysses - q/k/v and output re-laid as all tokens x heads/(tp sp).
//               Attention itself runs blockwise (flash-style): no L x L score matrix, only per-thread tiles.
//   projection: the attention output (dim/tp) and the out-projection's full-width partial sum.
//   feed-forward (one stream at a time, the larger): normed input, hidden ff/tp, output (dim).
// Modulation vectors (a few x dim per sample) are negligible and not counted.
int64_t peak_elems(const Shapes& s, const ParallelConfig& pc, int64_t b, int64_t n) {
  const int tp = pc.tp, sp = pc.sp;
  const int64_t D = s.D, Dt = s.D / tp, Ft = (s.F + tp - 1) / tp, L = s.L, N = s.N;
  auto sp_extra = [&](int64_t joint_text) -> int64_t {
    if (sp == 1) return 0;
    if (pc.sp_mode == SpMode::Ring) return 4 * n * Dt;
    return 4 * (N + joint_text) * (Dt / sp);
  };
  int64_t block = 0;
  if (s.arch == Arch::Wan) {
    const int64_t resid = n * D + L * D;
    const int64_t self = resid + n * D + 3 * n * Dt + n * Dt + sp_extra(0);
    const int64_t cross = resid + n * D + n * Dt + 2 * L * Dt + n * Dt;
    const int64_t proj = resid + n * Dt + n * D;
    const int64_t ff = resid + n * D + n * Ft + n * D;
    block = std::max({self, cross, proj, ff});
  } else {
    const int64_t T = L + n, S = std::max(n, L);
    const int64_t resid = T * D;
    const int64_t attn = resid + T * D + 3 * T * Dt + T * Dt + sp_extra(L);
    const int64_t proj = resid + T * Dt + T * D;
    const int64_t ff = resid + S * D + S * Ft + S * D;
    block = std::max({attn, proj, ff});
    if (s.arch == Arch::Flux && s.singles > 0) {
      // Single block: attention and MLP from one normed input; [attn | mlp] concatenated into proj_out.
      const int64_t a = resid + T * D + 3 * T * Dt + T * Ft + T * Dt + sp_extra(L);
      const int64_t p = resid + T * Ft + T * Dt + T * (Dt + Ft) + T * D;
      block = std::max({block, a, p});
    }
  }
  const int64_t inputs = n * s.in_tok + L * s.text_in;
  const int64_t rope = s.rope ? 2 * (s.arch == Arch::Wan ? n : L + n) * s.hd : 0;
  return b * (inputs + block) + rope;
}

Cost rank_cost(const Shapes& s, const std::vector<PlanWeight>& weights, const ParallelConfig& pc, int64_t b,
               int64_t n) {
  Cost c;
  const int tp = pc.tp, sp = pc.sp;
  for (const auto& w : weights) {
    if (w.tokens == PlanTokens::None || w.shape.size() < 2) continue;
    int64_t rows = 1;
    switch (w.tokens) {
      case PlanTokens::Image:
        rows = n;
        break;
      case PlanTokens::Text:
        rows = s.L;
        break;
      case PlanTokens::Joint:
        rows = s.L + n;
        break;
      default:
        rows = 1;
    }
    c.linear_flops += 2.0 * double(b) * double(rows) * double(w.local_numel(tp));
  }
  const double Dt = double(s.D) / tp, N = double(s.N), L = double(s.L), nn = double(n), bb = double(b);
  const bool uly = sp > 1 && pc.sp_mode == SpMode::Ulysses;
  if (s.arch == Arch::Wan) {
    // Self-attention over the video tokens; cross-attention of local queries to the (replicated) text.
    c.attn_flops = uly ? 4 * bb * N * N * Dt / sp : 4 * bb * nn * N * Dt;
    c.other_attn_flops = double(s.doubles) * 4 * bb * nn * L * Dt;
    c.attentions = s.doubles;
  } else {
    // Joint attention over text ++ image. Ring: local text + image queries against all keys (text queries
    // are recomputed on every SP rank); Ulysses: all queries for heads/(tp sp).
    c.attn_flops = uly ? 4 * bb * (N + L) * (N + L) * Dt / sp : 4 * bb * (nn + L) * (N + L) * Dt;
    c.attentions = s.doubles + s.singles;
  }
  c.act_elems = peak_elems(s, pc, b, n);
  return c;
}

// Collectives of one rank per step. b = the rank's batch, n_i = shard sizes of the SP group.
std::vector<PlanComm> rank_comm(const Shapes& s, const ParallelConfig& pc, int64_t b, int sp_i, int ab,
                                double bytes_per_s) {
  const int tp = pc.tp, sp = pc.sp, cf = pc.cfg;
  const int64_t n = shard_size(s.N, sp, sp_i), D = s.D, Dt = s.D / tp, L = s.L;
  std::vector<PlanComm> out;
  // Every kind is listed; one that this config does not use (group of 1, or the other SP mode) has 0 calls.
  auto add = [&](const char* kind, const char* group, int size, int64_t calls, int64_t payload, double factor,
                 bool overlapped = false, bool used = true) {
    PlanComm c;
    c.kind = kind;
    c.group = group;
    c.group_size = size;
    if (size > 1 && used) {
      c.calls = calls;
      c.payload_bytes = payload;
      c.factor = factor;
      c.sent_bytes = int64_t(double(payload) * factor + 0.5);
      c.seconds = double(c.sent_bytes) / bytes_per_s;
      c.overlapped = overlapped;
    }
    out.push_back(c);
  };
  const double ar = 2.0 * (tp - 1) / tp, ag_tp = double(tp - 1) / tp, ag_sp = double(sp - 1) / sp;
  // TP all-reduces of the row-parallel outputs: per stream, after the attention out-projection and after
  // the feed-forward; Flux single blocks: one, after proj_out; Wan: self-attn, cross-attn and FF out.
  int64_t calls = 0, elems = 0;
  if (s.arch == Arch::Flux) {
    calls = 4 * s.doubles + s.singles;
    elems = s.doubles * 2 * (n + L) * D + s.singles * (n + L) * D;
  } else if (s.arch == Arch::SD3) {
    const int64_t full = std::max<int64_t>(s.doubles - 1, 0), last = s.doubles > 0 ? 1 : 0;
    calls = 4 * full + 2 * last;  // the last block (context_pre_only) has no text out-projection or FF
    elems = full * 2 * (n + L) * D + last * 2 * n * D;
  } else {
    calls = 3 * s.doubles;
    elems = s.doubles * 3 * n * D;
  }
  add("tp_all_reduce", "tp", tp, calls, b * elems * ab, ar);
  if (s.arch == Arch::Wan) {
    // RMSNorm across heads with sharded heads: the sums of squares (f32) of q and k, per token.
    add("tp_qk_norm_all_reduce", "tp", tp, 4 * s.doubles, b * s.doubles * (3 * n + L) * 4, ar);
  }
  // adaLN: the sharded modulation linears' outputs gathered to full width (Wan has none per block).
  if (s.arch == Arch::Flux) {
    add("adaln_all_gather", "tp", tp, 2 * s.doubles + s.singles, b * (s.doubles * 12 * D + s.singles * 3 * D) * ab,
        ag_tp);
  } else if (s.arch == Arch::SD3) {
    const int64_t last = s.doubles > 0 ? 1 : 0;
    add("adaln_all_gather", "tp", tp, 2 * s.doubles, b * ((s.doubles - last) * 12 * D + last * 8 * D) * ab, ag_tp);
  }
  const int64_t att = s.arch == Arch::Flux ? s.doubles + s.singles : s.doubles;
  const bool ring = pc.sp_mode == SpMode::Ring;
  // Ring: sp-1 passes per attention; rank i sends shards i, i-1, ..., i-sp+2: all but shard i+1.
  const int64_t passed = s.N - (sp > 1 ? shard_size(s.N, sp, (sp_i + 1) % sp) : s.N);
  add("sp_ring_kv", "sp", sp, att * (sp - 1), b * att * 2 * passed * Dt * ab, 1.0, true, ring);
  // Ulysses: q, k, v to head shards and the output back: 4 all-to-alls of the local [n, dim/tp] per attention.
  add("sp_ulysses_all_to_all", "sp", sp, 4 * att, b * att * 4 * n * Dt * ab, ag_sp, false, !ring);
  add("sp_final_gather", "sp", sp, 1, b * s.N * s.out_tok * ab, ag_sp);
  add("cfg_combine_all_gather", "cfg", cf, 1, s.batch * s.N * s.out_tok * ab, double(cf - 1) / cf);
  return out;
}

Shapes shapes_of(const Model& m) {
  Shapes s;
  s.arch = m.arch;
  if (m.arch == Arch::Flux) {
    const auto& c = m.flux;
    s.D = c.inner_dim();
    s.H = c.num_attention_heads;
    s.hd = c.attention_head_dim;
    s.F = 4 * s.D;
    s.text_in = c.joint_attention_dim;
    s.in_tok = c.in_channels;
    s.out_tok = c.out_dim();
    s.doubles = c.num_layers;
    s.singles = c.num_single_layers;
    s.rope = true;
  } else if (m.arch == Arch::SD3) {
    const auto& c = m.sd3;
    s.D = c.inner_dim();
    s.H = c.num_attention_heads;
    s.hd = c.attention_head_dim;
    s.F = 4 * s.D;
    s.text_in = c.joint_attention_dim;
    s.in_tok = c.in_channels * c.patch_size * c.patch_size;
    s.out_tok = c.out_channels * c.patch_size * c.patch_size;
    s.doubles = c.num_layers;
  } else {
    const auto& c = m.wan;
    const int64_t pv = int64_t(c.patch_size[0]) * c.patch_size[1] * c.patch_size[2];
    s.D = c.inner_dim();
    s.H = c.num_attention_heads;
    s.hd = c.attention_head_dim;
    s.F = c.ffn_dim;
    s.text_in = c.text_dim;
    s.in_tok = c.in_channels * pv;
    s.out_tok = c.out_channels * pv;
    s.doubles = c.num_layers;
    s.rope = true;
  }
  return s;
}

std::string describe(const Model& m) {
  char buf[256];
  if (m.arch == Arch::Flux) {
    const auto& c = m.flux;
    std::snprintf(buf, sizeof buf, "Flux: %lld double + %lld single blocks, %lld heads x %lld, dim %lld%s",
                  (long long)c.num_layers, (long long)c.num_single_layers, (long long)c.num_attention_heads,
                  (long long)c.attention_head_dim, (long long)c.inner_dim(),
                  c.guidance_embeds ? ", guidance distilled (no CFG batch)" : ", no CFG batch");
  } else if (m.arch == Arch::SD3) {
    const auto& c = m.sd3;
    std::snprintf(buf, sizeof buf,
                  "SD3: %lld joint blocks (last context_pre_only), %lld heads x %lld, dim %lld, CFG batch",
                  (long long)c.num_layers, (long long)c.num_attention_heads, (long long)c.attention_head_dim,
                  (long long)c.inner_dim());
  } else {
    const auto& c = m.wan;
    std::snprintf(buf, sizeof buf,
                  "Wan: %lld blocks (self + cross attention), %lld heads x %lld, dim %lld, ffn %lld, CFG batch; "
                  "one expert resident",
                  (long long)c.num_layers, (long long)c.num_attention_heads, (long long)c.attention_head_dim,
                  (long long)c.inner_dim(), (long long)c.ffn_dim);
  }
  return buf;
}

// Every rank of `mesh` under `pc`; returns the slowest step.
double plan_ranks(const Shapes& s, const std::vector<PlanWeight>& weights, const MeshShape& mesh,
                  const ParallelConfig& pc, const PlanRequest& req, std::vector<PlanRank>* out) {
  const double flops_per_s = req.tflops * 1e12, bytes_per_s = req.link_gbps * 1e9;
  const int64_t b = s.batch / pc.cfg;  // cfg=2: each half runs one sample
  int64_t wbytes = 0;
  for (const auto& w : weights) wbytes += w.local_numel(pc.tp) * req.dtype_bytes;
  double worst = 0;
  for (int r = 0; r < mesh.size(); ++r) {
    PlanRank pr;
    pr.rank = r;
    pr.row = r / mesh.cols;
    pr.col = r % mesh.cols;
    pr.tp_index = r % pc.tp;
    pr.sp_index = (r / pc.tp) % pc.sp;
    pr.cfg_index = r / (pc.tp * pc.sp);
    pr.image_tokens = shard_size(s.N, pc.sp, pr.sp_index);
    pr.weight_bytes = wbytes;
    const Cost c = rank_cost(s, weights, pc, b, pr.image_tokens);
    pr.activation_bytes = c.act_elems * req.act_bytes;
    pr.flops = c.linear_flops + double(c.attentions) * c.attn_flops + c.other_attn_flops;
    pr.compute_s = pr.flops / flops_per_s;
    pr.comm = rank_comm(s, pc, b, pr.sp_index, req.act_bytes, bytes_per_s);
    for (const auto& k : pr.comm) {
      if (!k.overlapped) {
        pr.comm_serial_s += k.seconds;
      } else if (c.attentions > 0) {
        // Each attention: max(its compute, its K/V passes) = compute + what the passes exceed it by.
        const double per_att = k.seconds / double(c.attentions), att_s = c.attn_flops / flops_per_s;
        pr.comm_exposed_s += double(c.attentions) * std::max(0.0, per_att - att_s);
      }
    }
    pr.step_s = pr.compute_s + pr.comm_serial_s + pr.comm_exposed_s;
    worst = std::max(worst, pr.step_s);
    if (out) out->push_back(std::move(pr));
  }
  return worst;
}

std::string fmt_bytes(double b) {
  char buf[64];
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", b, unit[u]);
  return buf;
}

std::string fmt_s(double s) {
  char buf[64];
  if (s == 0) return "0";
  if (s < 1e-3)
    std::snprintf(buf, sizeof buf, "%.1f us", s * 1e6);
  else if (s < 1)
    std::snprintf(buf, sizeof buf, "%.1f ms", s * 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
}

std::string ranges(const std::vector<int>& r) {
  std::string s;
  for (size_t i = 0; i < r.size();) {
    size_t j = i;
    while (j + 1 < r.size() && r[j + 1] == r[j] + 1) ++j;
    if (!s.empty()) s += ',';
    s += std::to_string(r[i]);
    if (j > i) {
      s += '-';
      s += std::to_string(r[j]);
    }
    i = j + 1;
  }
  return s;
}

}  // namespace

std::vector<std::string> plan_model_names() { return {"flux-dev", "flux-schnell", "sd35-large", "wan22-t2v-a14b"}; }

Result<Plan> make_plan(const PlanRequest& req) {
  if (!(req.tflops > 0)) return make_error("--tflops must be positive");
  if (!(req.link_gbps > 0)) return make_error("--link-gbps must be positive");
  for (int b : {req.dtype_bytes, req.act_bytes})
    if (b != 1 && b != 2 && b != 4 && b != 8) return make_error("--dtype-bytes/--act-bytes must be 1, 2, 4 or 8");
  if (req.width < 0 || req.height < 0 || req.frames < 0 || req.text_tokens < 0)
    return make_error("--width, --height, --frames and --text-tokens must be positive");
  MD_TRY(Model m, resolve_model(req.model));
  MD_TRY(MeshShape mesh, MeshShape::parse(req.mesh));

  Plan p;
  p.request = req;
  p.model = m.name;
  p.description = describe(m);
  p.arch = m.arch == Arch::Flux ? "flux" : m.arch == Arch::SD3 ? "sd3" : "wan";
  p.width = req.width ? req.width : m.width;
  p.height = req.height ? req.height : m.height;
  p.frames = req.frames ? req.frames : m.frames;
  p.text_tokens = req.text_tokens ? req.text_tokens : m.text_tokens;
  const std::string size = std::to_string(p.width) + "x" + std::to_string(p.height);
  if (m.arch == Arch::Flux) {
    if (p.width % 16 || p.height % 16) return make_error("--width/--height " + size + ": Flux needs multiples of 16");
    if (p.frames != 1) return make_error("--frames: " + m.name + " is an image model");
    p.image_tokens = (p.width / 16) * (p.height / 16);  // 8x VAE, 2x2 packing
  } else if (m.arch == Arch::SD3) {
    const int64_t step = 8 * m.sd3.patch_size, gw = p.width / step, gh = p.height / step;
    if (p.width % step || p.height % step)
      return make_error("--width/--height " + size + ": SD3 needs multiples of " + std::to_string(step));
    if (p.frames != 1) return make_error("--frames: " + m.name + " is an image model");
    if (gw > m.sd3.pos_embed_max_size || gh > m.sd3.pos_embed_max_size)
      return make_error("--width/--height " + size + ": " + std::to_string(gw) + "x" + std::to_string(gh) +
                        " patches exceed pos_embed_max_size " + std::to_string(m.sd3.pos_embed_max_size));
    p.image_tokens = gw * gh;
  } else {
    const auto& ps = m.wan.patch_size;
    const int64_t sh = 8 * ps[1], sw = 8 * ps[2];
    if (p.width % sw || p.height % sh)
      return make_error("--width/--height " + size + ": Wan needs multiples of " + std::to_string(sw) + " x " +
                        std::to_string(sh));
    if ((p.frames - 1) % 4 != 0)
      return make_error("--frames " + std::to_string(p.frames) + ": Wan needs 4k+1 frames (VAE stride 4 in time)");
    const int64_t lt = (p.frames - 1) / 4 + 1;
    if (lt % ps[0]) return make_error("--frames: latent frames not divisible by the temporal patch");
    p.image_tokens = (lt / ps[0]) * (p.height / sh) * (p.width / sw);
  }
  if (p.text_tokens < 1) return make_error("--text-tokens must be positive");

  Shapes s = shapes_of(m);
  s.N = p.image_tokens;
  s.L = p.text_tokens;
  s.batch = m.cfg_batch ? 2 : 1;
  p.batch = s.batch;
  p.dim = s.D;
  p.heads = s.H;
  p.head_dim = s.hd;
  p.attentions = m.arch == Arch::Flux ? s.doubles + s.singles : s.doubles;
  p.weights = m.arch == Arch::Flux  ? flux_weights(m.flux)
              : m.arch == Arch::SD3 ? sd3_weights(m.sd3)
                                    : wan_weights(m.wan);
  for (const auto& w : p.weights) p.params += w.numel();
  p.total_weight_bytes = p.params * req.dtype_bytes;

  // The same traits a run builds, so the same errors.
  ModelTraits traits{m.name, s.H, m.cfg_batch, s.N};
  MD_TRY(ParallelConfig pc, resolve_parallel_config(mesh, req.parallel, traits));
  if (s.D % pc.tp != 0)
    return make_error("parallel config " + pc.str() + ": dim " + std::to_string(s.D) + " not divisible by tp");
  p.mesh = mesh;
  p.parallel = pc;
  p.automatic = req.parallel.empty();
  p.step_s = plan_ranks(s, p.weights, mesh, pc, req, &p.ranks);
  std::vector<PlanRank> one;
  p.single_device_step_s = plan_ranks(s, p.weights, MeshShape{1, 1}, ParallelConfig{}, req, &one);
  p.single_device_activation_bytes = one[0].activation_bytes;
  return p;
}

std::string Plan::table(bool per_rank) const {
  std::ostringstream o;
  char buf[512];
  o << "meshdit plan: " << model << " (" << description << ")\n";
  std::snprintf(buf, sizeof buf, "  %lldx%lld%s: %lld image tokens + %lld text tokens, batch %lld per step\n",
                (long long)width, (long long)height,
                frames > 1 ? (", " + std::to_string(frames) + " frames").c_str() : "", (long long)image_tokens,
                (long long)text_tokens, (long long)batch);
  o << buf;
  o << "  weights " << fmt_bytes(double(total_weight_bytes)) << " (" << params / 1000000 << " M params x "
    << request.dtype_bytes << " B)\n";
  o << "mesh " << mesh.str() << " (" << mesh.size() << (mesh.size() == 1 ? " rank), " : " ranks), ")
    << (automatic ? "automatic" : "overridden") << " config " << parallel.str() << "\n";
  std::snprintf(buf, sizeof buf,
                "assumes %.3g TFLOP/s per rank%s, links %.3g GB/s, activations/messages %d B, weights %d B;\n"
                "  collectives serial (ring all-reduce 2(n-1)/n, gathers/all-to-all (n-1)/n), ring K/V passes "
                "overlap their attention (max), no latency\n",
                request.tflops, request.tflops == 0.2 ? " (default: measured CPU, 2 cores, bench/README.md)" : "",
                request.link_gbps, request.act_bytes, request.dtype_bytes);
  o << buf;

  // Ranks, identical ones grouped.
  struct Row {
    std::vector<int> ranks;
    const PlanRank* r;
  };
  std::vector<Row> rows;
  auto same = [](const PlanRank& a, const PlanRank& b) {
    return a.image_tokens == b.image_tokens && a.weight_bytes == b.weight_bytes &&
           a.activation_bytes == b.activation_bytes && a.sent_bytes() == b.sent_bytes() && a.flops == b.flops &&
           a.step_s == b.step_s;
  };
  for (const auto& r : ranks) {
    bool placed = false;
    if (!per_rank)
      for (auto& row : rows)
        if (same(*row.r, r)) {
          row.ranks.push_back(r.rank);
          placed = true;
          break;
        }
    if (!placed) rows.push_back({{r.rank}, &r});
  }
  std::snprintf(buf, sizeof buf, "\n%-12s %8s %11s %11s %11s %9s %9s %9s %9s %9s\n", "ranks", "img tok", "weights",
                "act peak", "sent/step", "TFLOP", "compute", "comm", "exposed", "step");
  o << buf;
  for (const auto& row : rows) {
    const PlanRank& r = *row.r;
    std::snprintf(buf, sizeof buf, "%-12s %8lld %11s %11s %11s %9.2f %9s %9s %9s %9s\n", ranges(row.ranks).c_str(),
                  (long long)r.image_tokens, fmt_bytes(double(r.weight_bytes)).c_str(),
                  fmt_bytes(double(r.activation_bytes)).c_str(), fmt_bytes(double(r.sent_bytes())).c_str(),
                  r.flops / 1e12, fmt_s(r.compute_s).c_str(), fmt_s(r.comm_s()).c_str(),
                  fmt_s(r.comm_serial_s + r.comm_exposed_s).c_str(), fmt_s(r.step_s).c_str());
    o << buf;
  }
  o << "  (comm: all collective time; exposed: what adds to compute, i.e. serial collectives + ring passes "
       "beyond their attention)\n";

  if (mesh.size() > 1) {
    o << "\nlayout (rank = (cfg*sp + sp_i)*tp + tp_i, mesh position r/C, r%C): cell = rank cfg.sp.tp\n";
    for (int i = 0; i < mesh.rows; ++i) {
      o << "  ";
      for (int j = 0; j < mesh.cols; ++j) {
        const PlanRank& r = ranks[size_t(i * mesh.cols + j)];
        std::snprintf(buf, sizeof buf, "%3d %d.%d.%d  ", r.rank, r.cfg_index, r.sp_index, r.tp_index);
        o << buf;
      }
      o << "\n";
    }
  }

  const PlanRank* worst = &ranks[0];
  for (const auto& r : ranks)
    if (r.step_s > worst->step_s) worst = &r;
  o << "\ncollectives per step (rank " << worst->rank << "):\n";
  bool any = false;
  for (const auto& c : worst->comm) {
    if (c.calls == 0) continue;
    if (!any) {
      std::snprintf(buf, sizeof buf, "  %-24s %-6s %6s %11s %7s %11s %9s\n", "kind", "group", "calls", "payload",
                    "factor", "sent", "time");
      o << buf;
    }
    any = true;
    const std::string grp = c.group + "=" + std::to_string(c.group_size);
    std::snprintf(buf, sizeof buf, "  %-24s %-6s %6lld %11s %7.3f %11s %9s%s\n", c.kind.c_str(), grp.c_str(),
                  (long long)c.calls, fmt_bytes(double(c.payload_bytes)).c_str(), c.factor,
                  fmt_bytes(double(c.sent_bytes)).c_str(), fmt_s(c.seconds).c_str(),
                  c.overlapped ? "  (overlaps attention)" : "");
    o << buf;
  }
  if (!any) o << "  none\n";
  std::snprintf(buf, sizeof buf,
                "\npredicted step: %s (compute %s + collectives %s + ring exposed %s); 1x1: %s -> speedup %.2fx on "
                "%d rank%s\n",
                fmt_s(step_s).c_str(), fmt_s(worst->compute_s).c_str(), fmt_s(worst->comm_serial_s).c_str(),
                fmt_s(worst->comm_exposed_s).c_str(), fmt_s(single_device_step_s).c_str(),
                step_s > 0 ? single_device_step_s / step_s : 0.0, mesh.size(), mesh.size() == 1 ? "" : "s");
  o << buf;
  return o.str();
}

std::string Plan::json() const {
  Json j;
  j["model"] = model;
  j["arch"] = arch;
  j["description"] = description;
  j["width"] = width;
  j["height"] = height;
  j["frames"] = frames;
  j["image_tokens"] = image_tokens;
  j["text_tokens"] = text_tokens;
  j["batch"] = batch;
  j["dim"] = dim;
  j["heads"] = heads;
  j["head_dim"] = head_dim;
  j["params"] = params;
  j["total_weight_bytes"] = total_weight_bytes;
  j["mesh"] = mesh.str();
  j["parallel"] = {{"cfg", parallel.cfg},  {"sp", parallel.sp},
                   {"tp", parallel.tp},    {"sp_mode", sp_mode_name(parallel.sp_mode)},
                   {"vae", parallel.vae},  {"automatic", automatic},
                   {"str", parallel.str()}};
  j["assumptions"] = {{"tflops_per_rank", request.tflops},
                      {"link_gbytes_per_s", request.link_gbps},
                      {"weight_bytes_per_element", request.dtype_bytes},
                      {"activation_bytes_per_element", request.act_bytes},
                      {"overlap", "ring K/V passes overlap their attention (max); other collectives serial"}};
  Json rs = Json::array();
  for (const auto& r : ranks) {
    Json jr;
    jr["rank"] = r.rank;
    jr["row"] = r.row;
    jr["col"] = r.col;
    jr["cfg_index"] = r.cfg_index;
    jr["sp_index"] = r.sp_index;
    jr["tp_index"] = r.tp_index;
    jr["image_tokens"] = r.image_tokens;
    jr["weight_bytes"] = r.weight_bytes;
    jr["activation_bytes"] = r.activation_bytes;
    jr["sent_bytes"] = r.sent_bytes();
    jr["flops"] = r.flops;
    jr["compute_s"] = r.compute_s;
    jr["comm_s"] = r.comm_s();
    jr["comm_serial_s"] = r.comm_serial_s;
    jr["comm_exposed_s"] = r.comm_exposed_s;
    jr["step_s"] = r.step_s;
    Json cs = Json::array();
    for (const auto& c : r.comm)
      cs.push_back({{"kind", c.kind},
                    {"group", c.group},
                    {"group_size", c.group_size},
                    {"calls", c.calls},
                    {"payload_bytes", c.payload_bytes},
                    {"factor", c.factor},
                    {"sent_bytes", c.sent_bytes},
                    {"seconds", c.seconds},
                    {"overlapped", c.overlapped}});
    jr["comm"] = cs;
    rs.push_back(jr);
  }
  j["ranks"] = rs;
  j["step_s"] = step_s;
  j["single_device_step_s"] = single_device_step_s;
  j["single_device_activation_bytes"] = single_device_activation_bytes;
  j["speedup"] = step_s > 0 ? single_device_step_s / step_s : 0.0;
  return j.dump(2) + "\n";
}

}  // namespace meshdit
