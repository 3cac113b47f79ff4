// Motif-Image 6B's MM-DiT (Motif Technologies, MotifDiT in modeling_dit.py), as its PyTorch reference computes
// it:
//
//   c   = text_cond([pad(CLIP-L ++ CLIP-G, 4096) ; T5])                text tokens     [B, Lc + L5, dim]
//   e_t = TimestepEmbedding(sinusoid(t)) + TimestepEmbedding(pooled)    conditioning    [B, modulation_dim]
//   x   = patching(latent) + fixed 2-D sin-cos positions               image tokens    [B, N, dim]
//   x   = [register tokens ; x],  c = [c ; t_token_proj(e_t)]          4 registers, 1 time token
//   for each block: (x, c) = MotifBlock(x, c, e_t)                     joint attention over [x ; c]
//   out = unpatchify(final_linear((1 + scale) x + shift)),  (scale, shift) = final_modulation(e_t), registers dropped
//
// Inside the model the registers sit after the image tokens ([patches ; registers]): attention has no mask and
// no positions, so the order of keys is immaterial, and this way the registers and the text form one block of
// tokens that every sequence-parallel rank holds whole (the layout joint attention takes). Hooks report the
// reference's order.
#include "models/transformers/motif.h"

#include <cstdio>

#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/json_config.h"
#include "io/single_file.h"
#include "layers/block_cache.h"
#include "models/registry.h"

namespace meshdit {

Result<MotifConfig> MotifConfig::from_json(const std::string& path) {
  MD_TRY(std::string text, read_text_file(path));
  return from_json_text(text, path);
}

Result<MotifConfig> MotifConfig::from_json_text(const std::string& text, const std::string& name) {
  MD_TRY(Json j, parse_json(text, name));
  MotifConfig c;
  ConfigReader r(j, name);
  r.get("num_layers", c.num_layers);
  r.get("hidden_dim", c.hidden_dim);
  r.get("patch_size", c.patch_size);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("mlp_hidden_dim", c.mlp_hidden_dim);
  r.get("time_embed_dim", c.time_embed_dim);
  r.get("modulation_dim", c.modulation_dim);
  r.get("pooled_text_dim", c.pooled_text_dim);
  r.get("register_token_num", c.register_token_num);
  r.get("height", c.height);
  r.get("width", c.width);
  r.get("vae_compression", c.vae_compression);
  c.pos_emb_size = 0;
  r.get("pos_emb_size", c.pos_emb_size);
  r.get("use_final_layer_norm", c.use_final_layer_norm);
  r.get("use_time_token_in_attn", c.use_time_token_in_attn);
  int64_t additional = 0, skip = 0;
  bool conv_header = false;
  std::string attn_mode = "flash";
  r.get("additional_register_token_num", additional);
  r.get("skip_register_token_num", skip);
  r.get("conv_header", conv_header);
  r.get("attn_mode", attn_mode);
  if (additional != 0) r.fail("additional_register_token_num", "high-resolution register tokens are not supported");
  if (skip != 0) r.fail("skip_register_token_num", "dropping the registers before the last block is not supported");
  if (conv_header) r.fail("conv_header", "the convolution header after unpatching is not supported");
  if (attn_mode != "flash" && attn_mode != "sdpa") r.fail("attn_mode", "'" + attn_mode + "' is not flash or sdpa");
  // Without pos_emb_size the reference picks the table's base grid by resolution.
  if (c.pos_emb_size <= 0) c.pos_emb_size = c.height > 512 ? 64 : 16;
  constexpr int64_t kMaxSize = 1 << 16;  // keeps products of sizes far from int64 overflow
  const std::pair<const char*, int64_t> sizes[] = {{"num_layers", c.num_layers},
                                                   {"hidden_dim", c.hidden_dim},
                                                   {"patch_size", c.patch_size},
                                                   {"num_attention_heads", c.num_attention_heads},
                                                   {"mlp_hidden_dim", c.mlp_hidden_dim},
                                                   {"time_embed_dim", c.time_embed_dim},
                                                   {"modulation_dim", c.modulation_dim},
                                                   {"pooled_text_dim", c.pooled_text_dim},
                                                   {"height", c.height},
                                                   {"width", c.width},
                                                   {"vae_compression", c.vae_compression}};
  for (const auto& [key, v] : sizes)
    if (v < 1 || v > kMaxSize)
      r.fail(key, "must be between 1 and " + std::to_string(kMaxSize) + ", got " + std::to_string(v));
  if (c.register_token_num < 0 || c.register_token_num > 1024)
    r.fail("register_token_num", "must be between 0 and 1024, got " + std::to_string(c.register_token_num));
  if (c.num_attention_heads > 0 && c.hidden_dim % c.num_attention_heads != 0)
    r.fail("num_attention_heads",
           std::to_string(c.num_attention_heads) + " does not divide hidden_dim " + std::to_string(c.hidden_dim));
  if (c.time_embed_dim % 2 != 0) r.fail("time_embed_dim", "must be even (a [cos, sin] sinusoid)");
  if (c.hidden_dim % 4 != 0) r.fail("hidden_dim", "must be a multiple of 4 (2-D sin-cos positions)");
  if (c.height != c.width)
    r.fail("width", "Motif's DiT is square-only (height " + std::to_string(c.height) + " != width " +
                        std::to_string(c.width) + ")");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

namespace {

constexpr float kLayerNormEps = 1e-5f;  // nn.LayerNorm's default
constexpr float kQkNormEps = 1e-6f;

// [B, n + R, ...] (patches, then registers) -> [B, R + n, ...] (the reference's order).
Tensor registers_first(const Tensor& x, int64_t registers) {
  if (registers == 0) return x;
  const int64_t n = x.size(1) - registers;
  return concat({x.slice(1, n, n + registers), x.slice(1, 0, n)}, 1);
}

}  // namespace

Result<MotifBlock> MotifBlock::load(const Checkpoint& ck, const std::string& prefix, const MotifConfig& c,
                                    const ParallelContext* par, int64_t padded_heads) {
  const int64_t dim = c.hidden_dim;
  MotifBlock b;
  MD_TRY(b.affine_x, ModulationLinear::load(ck, prefix + ".affine_params_x.projection", c.modulation_dim, 6, dim, par));
  MD_TRY(b.affine_c, ModulationLinear::load(ck, prefix + ".affine_params_c.projection", c.modulation_dim, 6, dim, par));
  b.norm = LayerNorm::plain(kLayerNormEps);
  MD_TRY(b.linear_1_x, Linear::load(ck, prefix + ".linear_1_x", dim, dim));
  MD_TRY(b.linear_1_c, Linear::load(ck, prefix + ".linear_1_c", dim, dim));
  JointAttention::Names names;
  names.img[0] = ".q_proj", names.img[1] = ".k_proj", names.img[2] = ".v_proj";
  names.img[3] = ".q_norm_x", names.img[4] = ".k_norm_x";
  names.txt[0] = ".add_q_proj", names.txt[1] = ".add_k_proj", names.txt[2] = ".add_v_proj";
  names.txt[3] = ".q_norm_c", names.txt[4] = ".k_norm_c";
  names.to_out = ".o_proj";
  names.to_add_out = ".add_o_proj";
  names.bias = false;
  names.txt_q_scale = ".q_scale";
  MD_TRY(b.attn, JointAttention::load(ck, prefix + ".attn", names, dim, c.num_attention_heads, c.head_dim(),
                                      /*qk_norm=*/true, /*context_pre_only=*/false, kQkNormEps, par, padded_heads));
  // Not gated: down_proj(SiLU(gate_proj(x))).
  MD_TRY(b.mlp_x, FeedForward::load_named(ck, prefix + ".mlp_3_x.gate_proj", prefix + ".mlp_3_x.down_proj", dim,
                                          c.mlp_hidden_dim, dim, Act::SiLU, par));
  MD_TRY(b.mlp_c, FeedForward::load_named(ck, prefix + ".mlp_3_c.gate_proj", prefix + ".mlp_3_c.down_proj", dim,
                                          c.mlp_hidden_dim, dim, Act::SiLU, par));
  return b;
}

void MotifBlock::operator()(Tensor& x, Tensor& c, const Tensor& silu_emb, const SeqLayout* seq, int64_t registers,
                            const Hooks* hooks, const std::string& name) const {
  const int64_t dim = x.size(2);
  const Tensor mx = affine_x(silu_emb),
               mc = affine_c(silu_emb);  // [B, 6 dim]: alpha, beta, gamma, delta, epsilon, zeta
  auto chunk = [&](const Tensor& m, int k) { return m.slice(1, k * dim, (k + 1) * dim); };
  if (hooks)
    for (int k = 0; k < 6; ++k) {
      report(hooks, "hook." + name + ".affine_params_x." + std::to_string(k), chunk(mx, k));
      report(hooks, "hook." + name + ".affine_params_c." + std::to_string(k), chunk(mc, k));
    }

  // h = linear_1((1 + alpha) LN(x) + beta), then joint attention.
  const Tensor hx = linear_1_x(norm.modulated(x, chunk(mx, 1), chunk(mx, 0)));
  const Tensor hc = linear_1_c(norm.modulated(c, chunk(mc, 1), chunk(mc, 0)));
  auto [ax, ac] = attn(hx, hc, JointAttention::Order::ImageFirst, nullptr, seq);
  if (hooks) {
    report(hooks, "hook." + name + ".attn.0", registers_first(ax, registers));
    report(hooks, "hook." + name + ".attn.1", ac);
  }

  // y = (1 + gamma) attn + x; out = zeta MLP(delta LN(y) + epsilon) + x. Delta has no +1 and the residual is
  // the block's input x, not y (as the reference writes it). modulate() computes (1 + s): s = delta - 1.
  auto stream = [&](Tensor& io, const Tensor& a, const Tensor& m, const FeedForward& mlp) {
    Tensor y = io.clone();
    ops::add_gated_(y, ops::affine(chunk(m, 2).contiguous(), 1.0f, 1.0f), a);
    const Tensor mlp_in = norm.modulated(y, chunk(m, 4), ops::affine(chunk(m, 3).contiguous(), 1.0f, -1.0f));
    ops::add_gated_(io, chunk(m, 5), mlp(mlp_in));
  };
  stream(x, ax, mx, mlp_x);
  stream(c, ac, mc, mlp_c);
}

Result<MotifTransformer> MotifTransformer::load(const Checkpoint& ck, const MotifConfig& cfg,
                                                const ParallelContext* par) {
  MotifTransformer m;
  m.cfg_ = cfg;
  if (par) m.par_ = *par;
  const int64_t dim = cfg.hidden_dim, p = cfg.patch_size;
  // 30 heads: TP pads them with zero heads to a multiple of tp (32 on tp=4 or 8); a zero head adds nothing.
  const int64_t padded_heads = padded_head_count(cfg.num_attention_heads, m.par_.tp_size());
  MD_TRY(m.text_cond_, Linear::load(ck, "text_cond.projection", MotifConfig::kTextDim, dim));
  MD_TRY(m.patching_, PatchEmbed::load_conv(ck, "patching.projection_SD3", MotifConfig::kLatentChannels, dim, int(p)));
  MD_TRY(m.time_mlp_, Mlp2::load(ck, "time_emb.time_emb", cfg.time_embed_dim, 4 * cfg.time_embed_dim,
                                 cfg.modulation_dim, Act::SiLU));
  MD_TRY(m.pooled_mlp_, Mlp2::load(ck, "time_emb.pooled_text_emb", cfg.pooled_text_dim, 4 * cfg.pooled_text_dim,
                                   cfg.modulation_dim, Act::SiLU));
  if (cfg.register_token_num > 0) {
    MD_TRY(m.register_tokens_, ck.get("register_tokens", {1, cfg.register_token_num, dim}));
  }
  if (cfg.use_time_token_in_attn) {
    MD_TRY(m.t_token_proj_, Linear::load(ck, "t_token_proj", cfg.modulation_dim, dim));
  }
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    MD_TRY(auto block, MotifBlock::load(ck, "mmdit_blocks." + std::to_string(i), cfg, par, padded_heads));
    m.blocks_.push_back(std::move(block));
  }
  if (cfg.use_final_layer_norm) {
    MD_TRY(m.final_norm_, LayerNorm::load(ck, "final_norm", dim, kLayerNormEps, /*affine=*/true));
  }
  MD_TRY(m.final_modulation_, Linear::load(ck, "final_modulation", cfg.modulation_dim, 2 * dim));
  MD_TRY(m.final_linear_, Linear::load(ck, "final_linear_SD3", dim, MotifConfig::kLatentChannels * p * p));
  // The checkpoint's pos_embed is ignored (the reference recomputes the table); a meta checkpoint (plan) skips it.
  if (!ck.is_meta()) m.pos_embed_ = sincos_pos_embed_2d(dim, cfg.grid(), cfg.grid(), double(cfg.pos_emb_size));
  return m;
}

Result<Tensor> MotifTransformer::forward(const Tensor& latent, const Tensor& t, const Tensor& text_emb_t5,
                                         const Tensor& text_emb_clip_l, const Tensor& text_emb_clip_g,
                                         const Tensor& pooled_text_embs, const Hooks* hooks) const {
  const int64_t p = cfg_.patch_size, dim = cfg_.hidden_dim, C = MotifConfig::kLatentChannels;
  const std::string who = "Motif transformer: ";
  if (!latent.defined() || latent.dim() != 4 || latent.size(1) != C || latent.size(2) % p || latent.size(3) % p ||
      latent.size(2) != latent.size(3))
    return make_error(who + "latent " + (latent.defined() ? shape_str(latent.shape()) : std::string("(missing)")) +
                      " must be [B, 16, H, H] (square) with H a multiple of " + std::to_string(p));
  const int64_t B = latent.size(0), h = latent.size(2) / p, w = latent.size(3) / p;
  auto shape_of = [](const Tensor& x) { return x.defined() ? shape_str(x.shape()) : std::string("(missing)"); };
  if (!t.defined() || t.shape() != Shape{B})
    return make_error(who + "t " + shape_of(t) + " must be [" + std::to_string(B) + "]");
  if (!text_emb_t5.defined() || text_emb_t5.dim() != 3 || text_emb_t5.size(0) != B ||
      text_emb_t5.size(2) != MotifConfig::kTextDim)
    return make_error(who + "text_emb_t5 " + shape_of(text_emb_t5) + " must be [B, L5, 4096]");
  if (!text_emb_clip_l.defined() || !text_emb_clip_g.defined() || text_emb_clip_l.dim() != 3 ||
      text_emb_clip_g.dim() != 3 || text_emb_clip_l.size(0) != B || text_emb_clip_g.size(0) != B ||
      text_emb_clip_l.size(1) != text_emb_clip_g.size(1) ||
      text_emb_clip_l.size(2) + text_emb_clip_g.size(2) > MotifConfig::kTextDim)
    return make_error(who + "text_emb_clip_l " + shape_of(text_emb_clip_l) + " / text_emb_clip_g " +
                      shape_of(text_emb_clip_g) +
                      " must be [B, Lc, 768] / [B, Lc, 1280] (widths summing to at most 4096)");
  if (!pooled_text_embs.defined() || pooled_text_embs.shape() != Shape{B, cfg_.pooled_text_dim})
    return make_error(who + "pooled_text_embs " + shape_of(pooled_text_embs) + " must be [" + std::to_string(B) + ", " +
                      std::to_string(cfg_.pooled_text_dim) + "]");
  const Device dev = latent.device();

  // 1. Conditions: the text tokens [CLIP (padded to T5's width) ; T5], the time + pooled-text embedding, and the
  // image tokens with their fixed positions.
  const int64_t Lc = text_emb_clip_l.size(1);
  std::vector<Tensor> clip{text_emb_clip_l.to(DType::F32), text_emb_clip_g.to(DType::F32)};
  const int64_t pad = MotifConfig::kTextDim - text_emb_clip_l.size(2) - text_emb_clip_g.size(2);
  if (pad > 0) clip.push_back(Tensor::zeros({B, Lc, pad}, DType::F32, dev));
  Tensor c = text_cond_(concat({concat(clip, 2), text_emb_t5.to(DType::F32)}, 1));
  report(hooks, "hook.text_cond", c);
  const Tensor sinusoid = ops::timestep_embedding(t.to(DType::F32), int(cfg_.time_embed_dim), true, 0);
  report(hooks, "hook.time_emb.time_proj", sinusoid);
  const Tensor time_emb = time_mlp_(sinusoid), pooled_emb = pooled_mlp_(pooled_text_embs.to(DType::F32));
  report(hooks, "hook.time_emb.time_emb", time_emb);
  report(hooks, "hook.time_emb.pooled_text_emb", pooled_emb);
  const Tensor emb_t = ops::add(time_emb, pooled_emb);
  report(hooks, "hook.time_emb", emb_t);

  Tensor x = patching_(latent.to(DType::F32));
  report(hooks, "hook.patching", x);
  // The table is built for the configured size; another grid gets the same formula's table for that grid.
  const Tensor pos = pos_embed_.defined() && pos_embed_.size(0) == h * w
                         ? pos_embed_
                         : sincos_pos_embed_2d(dim, h, w, double(cfg_.pos_emb_size));
  report(hooks, "pos_embed", pos);
  x = ops::add_broadcast(x, ops::to_device(pos, dev).reshape({1, h * w, dim}));
  report(hooks, "patch_embed_plus_pos", x);
  if (t_token_proj_) {
    const Tensor token = (*t_token_proj_)(emb_t);
    report(hooks, "hook.t_token_proj", token);
    c = concat({c, token.reshape({B, 1, dim})}, 1);
  }

  // 2. The blocks. Sequence parallel: this rank keeps its shard of the patches; the registers (after them) and
  // the text are whole on every rank.
  const int64_t R = cfg_.register_token_num;
  const SequenceShard shard(h * w, R + c.size(1), /*txt_first=*/false, par_);
  x = shard.local(x);
  const int64_t n = x.size(1);
  if (R > 0) x = concat({x, register_tokens_.to(DType::F32).expand({B, R, dim}).contiguous()}, 1);
  const Tensor silu_emb = ops::activation(emb_t, Act::SiLU);
  // x is [patches; registers]: the patches are the image rows step caching measures.
  MD_TRY(CachedBlocks cache,
         CachedBlocks::begin(current_step_cache(), {int64_t(blocks_.size())}, &par_, x.slice(1, 0, n)));
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const std::string name = "mmdit_blocks." + std::to_string(i);
    if (cache.run(int64_t(i))) {
      Span span("block", name);
      blocks_[i](x, c, silu_emb, shard.layout(), R, hooks, name);
    }
    cache.after(int64_t(i), {x, c}, x.slice(1, 0, n));
    if (hooks) {
      report(hooks, "hook." + name + ".0", registers_first(x, R));
      report(hooks, "hook." + name + ".1", c);
    }
  }
  x = x.slice(1, 0, n).contiguous();  // the registers end with the last block

  // 3. Final modulation: Linear(e_t) without SiLU and (by default) without a norm.
  const Tensor mod = final_modulation_(emb_t);  // [scale ; shift]
  report(hooks, "hook.final_modulation", mod);
  const Tensor shift = mod.slice(1, dim, 2 * dim), scale = mod.slice(1, 0, dim);
  Tensor y = final_linear_(final_norm_ ? final_norm_->modulated(x, shift, scale) : ops::modulate(x, shift, scale));
  report(hooks, "hook.final_linear_SD3", y);
  return ops::unpatchify(shard.gather(y), h, w, int(p), C);
}

// ---------------------------------------------------------------------------------------------------------
// What Motif is to the registry (models/registry.h): its config, loader, sizes and costs.

Result<MotifConfig> infer_motif_config(const Checkpoint& ck) {
  MotifConfig c;
  MD_TRY(Shape pe, ck.shape_of("patching.projection_SD3.weight"));
  if (pe.size() != 4 || pe[1] != MotifConfig::kLatentChannels || pe[2] != pe[3] || pe[2] < 1)
    return make_error(ck.origin() + ": tensor 'patching.projection_SD3.weight' has shape " + shape_str(pe) +
                      "; expected [dim, 16, patch, patch]");
  c.hidden_dim = pe[0];
  c.patch_size = int(pe[2]);
  c.num_layers = block_count(ck.names(), "mmdit_blocks.");
  if (c.num_layers < 1) return make_error(ck.origin() + ": no mmdit_blocks");
  const std::string qn = "mmdit_blocks.0.attn.q_norm_x.weight";
  MD_TRY(int64_t head_dim, vector_size(ck, qn));
  MD_TRY(c.num_attention_heads, head_count(ck, c.hidden_dim, head_dim, "the size of '" + qn + "'"));
  MD_TRY(Shape mlp, matrix_shape(ck, "mmdit_blocks.0.mlp_3_x.gate_proj.weight"));
  c.mlp_hidden_dim = mlp[0];
  MD_TRY(Shape fm, matrix_shape(ck, "final_modulation.weight"));
  c.modulation_dim = fm[1];
  MD_TRY(Shape te, matrix_shape(ck, "time_emb.time_emb.linear_1.weight"));
  c.time_embed_dim = te[1];
  MD_TRY(Shape pt, matrix_shape(ck, "time_emb.pooled_text_emb.linear_1.weight"));
  c.pooled_text_dim = pt[1];
  c.register_token_num = 0;
  if (ck.has("register_tokens")) {
    MD_TRY(Shape rt, ck.shape_of("register_tokens"));
    if (rt.size() != 3 || rt[0] != 1 || rt[2] != c.hidden_dim)
      return make_error(ck.origin() + ": tensor 'register_tokens' has shape " + shape_str(rt) + "; expected [1, R, " +
                        std::to_string(c.hidden_dim) + "]");
    c.register_token_num = rt[1];
  }
  c.use_time_token_in_attn = ck.has("t_token_proj.weight");
  c.use_final_layer_norm = ck.has("final_norm.weight");
  return c;
}

namespace {

class MotifModel final : public Transformer {
 public:
  explicit MotifModel(MotifTransformer m) : m_(std::move(m)) {}
  Result<Tensor> forward(const TensorMap& in, const Hooks* hooks) const override {
    auto get = [&](const char* n) { return input_of(in, n); };
    return m_.forward(get("latent"), get("t"), get("text_emb_t5"), get("text_emb_clip_l"), get("text_emb_clip_g"),
                      get("pooled_text_embs"), hooks);
  }

 private:
  MotifTransformer m_;
};

const MotifConfig& cfg_of(const std::any& a) { return std::any_cast<const MotifConfig&>(a); }

// Multiply-adds x 2 of one forward at batch 1: N image tokens, L text tokens as the blocks see them (the time
// token included).
double motif_flops(const MotifConfig& c, int64_t N, int64_t L) {
  const double D = double(c.hidden_dim), F = double(c.mlp_hidden_dim), M = double(c.modulation_dim);
  const double T = double(N + c.register_token_num + L);
  const double per = 2 * T * (D * D + 4 * D * D + 2 * D * F) + 4 * T * T * D + 2 * 2 * M * 6 * D;
  const double p2 = double(c.patch_size * c.patch_size), Ct = double(MotifConfig::kLatentChannels);
  const double embed = 2 * double(L) * double(MotifConfig::kTextDim) * D + 2 * double(N) * Ct * p2 * D;
  const double out = 2 * double(N) * D * Ct * p2 + 2 * M * 2 * D + 2 * M * D;
  return double(c.num_layers) * per + embed + out;
}

MotifConfig motif_image_6b() { return MotifConfig{}; }  // motif_image.json (pos_emb_size 64, 1024x1024)

}  // namespace

void register_motif() {
  TransformerArch a;
  a.name = "motif";
  a.pad_heads = true;  // 30 heads: padded to 32 for tp=4 or 8, as tt_dit does
  // Not a diffusers class: the case names Motif's PyTorch reference class in full.
  a.classes = {"motif_ref.motif.modeling_dit.MotifDiT"};
  a.presets = {{"motif", [] { return std::any(motif_image_6b()); }}};
  a.with_blocks = [](const std::any& c, int64_t blocks, int64_t) {
    MotifConfig m = cfg_of(c);
    m.num_layers = blocks;
    return std::any(m);
  };
  // CLIP 77 ++ T5 256 text tokens plus the time token, as the blocks see them.
  a.defaults = PlanDefaults{1024, 1024, 1, 77 + 256 + 1, /*cfg_batch=*/true};
  a.parse_config = [](const std::string& path) -> Result<std::any> {
    MD_TRY(MotifConfig c, MotifConfig::from_json(path));
    return std::any(c);
  };
  a.infer_config = [](const Checkpoint& ck) -> Result<std::any> {
    MD_TRY(MotifConfig c, infer_motif_config(ck));
    return std::any(c);
  };
  a.diffusers_detect = {"patching.projection_SD3."};
  a.diffusers_modules = {"text_cond",    "patching",         "time_emb",         "mmdit_blocks", "register_tokens",
                         "t_token_proj", "final_modulation", "final_linear_SD3", "pos_embed",    "final_norm"};
  a.case_variants = {{"sample_without_time_token", [](const std::any& c) {
                        MotifConfig m = cfg_of(c);
                        m.use_time_token_in_attn = false;
                        return std::any(m);
                      }}};
  a.load = [](const Checkpoint& ck, const std::any& c,
              const ParallelContext* par) -> Result<std::shared_ptr<Transformer>> {
    MD_TRY(MotifTransformer m, MotifTransformer::load(ck, cfg_of(c), par));
    return std::shared_ptr<Transformer>(std::make_shared<MotifModel>(std::move(m)));
  };
  a.inputs = {{"latent"}, {"t"}, {"text_emb_t5"}, {"text_emb_clip_l"}, {"text_emb_clip_g"}, {"pooled_text_embs"}};
  a.dims = [](const std::any& c) {
    const MotifConfig& m = cfg_of(c);
    return ModelDims{m.hidden_dim, m.num_attention_heads, m.head_dim(),
                     MotifConfig::kLatentChannels * m.patch_size * m.patch_size};
  };
  a.describe = [](const std::any& c) {
    const MotifConfig& m = cfg_of(c);
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "Motif: %lld dual-stream blocks, %lld heads x %lld, dim %lld, mlp %lld, %lld register tokens%s, "
                  "CFG batch",
                  (long long)m.num_layers, (long long)m.num_attention_heads, (long long)m.head_dim(),
                  (long long)m.hidden_dim, (long long)m.mlp_hidden_dim, (long long)m.register_token_num,
                  m.use_time_token_in_attn ? ", time token" : "");
    return std::string(buf);
  };
  a.image_tokens = [](const std::any& c, int64_t w, int64_t h, int64_t frames) -> Result<int64_t> {
    const MotifConfig& m = cfg_of(c);
    const int64_t step = m.vae_compression * m.patch_size;
    const std::string size = std::to_string(w) + "x" + std::to_string(h);
    if (w % step || h % step || w < step)
      return make_error("--width/--height " + size + ": Motif needs multiples of " + std::to_string(step));
    if (w != h) return make_error("--width/--height " + size + ": Motif's DiT makes square images only");
    if (frames != 1) return make_error("--frames: Motif is an image model");
    return (w / step) * (h / step);
  };
  a.tokens_of_inputs = [](const std::any& c, const TensorMap& in) {
    const int64_t p = cfg_of(c).patch_size;
    auto it = in.find("latent");
    return it == in.end() || it->second.dim() != 4 ? int64_t(0) : (it->second.size(2) / p) * (it->second.size(3) / p);
  };
  a.random_inputs = [](const std::any& c, int64_t width, int64_t height, int64_t /*frames*/, int64_t L) {
    const MotifConfig& m = cfg_of(c);
    // L counts the time token; the rest is CLIP (at most 77) then T5.
    const int64_t text = std::max<int64_t>(2, L - (m.use_time_token_in_attn ? 1 : 0));
    const int64_t Lc = std::min<int64_t>(77, text / 2), L5 = text - Lc;
    TensorMap in;
    in["latent"] =
        torch_randn({1, MotifConfig::kLatentChannels, height / m.vae_compression, width / m.vae_compression}, 1);
    in["t"] = Tensor::from_i64({1}, {500});
    in["text_emb_t5"] = torch_randn({1, L5, MotifConfig::kTextDim}, 2);
    in["text_emb_clip_l"] = torch_randn({1, Lc, 768}, 3);
    in["text_emb_clip_g"] = torch_randn({1, Lc, 1280}, 4);
    in["pooled_text_embs"] = torch_randn({1, m.pooled_text_dim}, 5);
    return in;
  };
  a.flops = [](const std::any& c, int64_t N, int64_t L) { return motif_flops(cfg_of(c), N, L); };
  a.rows_of = [](const std::string& w) {
    auto has = [&](const char* s) { return w.find(s) != std::string::npos; };
    if (starts_with(w, "time_emb.") || starts_with(w, "t_token_proj") || starts_with(w, "final_modulation") ||
        has(".affine_params_"))
      return Rows::One;
    if (w == "register_tokens" || w == "pos_embed" || has("_norm_") || has(".q_scale")) return Rows::None;
    if (starts_with(w, "text_cond") || has(".linear_1_c") || has(".attn.add_") || has(".mlp_3_c.")) return Rows::Text;
    return Rows::Image;
  };
  a.cost = [](const std::any& c, const RankShape& r) {
    const MotifConfig& m = cfg_of(c);
    const int64_t p = m.patch_size;
    // The registers are replicated on every SP rank like the text: they count as text tokens here.
    RankShape rr = r;
    rr.L += m.register_token_num;
    const MmditShape s{m.hidden_dim,
                       m.mlp_hidden_dim,
                       m.head_dim(),
                       MotifConfig::kLatentChannels * p * p,
                       MotifConfig::kTextDim,
                       m.num_layers,
                       0,
                       /*rope=*/false};
    ForwardCost k = mmdit_cost(s, rr);
    // Per block: o_proj, add_o_proj and both MLP down-projections are row-parallel; both streams' six
    // modulation chunks are gathered.
    k.tp_all_reduce_calls = 4 * m.num_layers;
    k.tp_all_reduce_elems = m.num_layers * 2 * (rr.n + rr.L) * m.hidden_dim;
    k.has_adaln_gather = true;
    k.adaln_gather_calls = 2 * m.num_layers;
    k.adaln_gather_elems = m.num_layers * 12 * m.hidden_dim;
    return k;
  };
  register_transformer(std::move(a));
}

}  // namespace meshdit
