// FLUX.1 (Black Forest Labs, 2024) as diffusers' FluxTransformer2DModel computes it:
//
//   x = x_embedder(packed latents)                               image tokens [B, N, dim]
//   c = context_embedder(T5 embeddings)                            text tokens  [B, L, dim]
//   y = TimestepEmbed(1000 t) [+ GuidanceEmbed(1000 g)] + PooledTextEmbed(CLIP pooled)
//   rope = 3-axis rotary tables over ids = [txt_ids; img_ids]
//   double-stream blocks: MM-DiT joint attention over [c; x]
//   single-stream blocks: one stream over [c; x], attention and MLP in parallel
//   out = proj_out(AdaLN(x, y))
#include "models/transformers/flux.h"

#include <cmath>

#include "backend/model_ops.h"
#include "core/trace.h"
#include "io/json_config.h"
#include "parallel/collectives.h"

namespace meshdit {

Result<FluxConfig> FluxConfig::from_json(const std::string& path) {
  MD_TRY(Json j, load_json(path));
  FluxConfig c;
  ConfigReader r(j, path);
  r.get("patch_size", c.patch_size);
  r.get("in_channels", c.in_channels);
  r.get("out_channels", c.out_channels);
  r.get("num_layers", c.num_layers);
  r.get("num_single_layers", c.num_single_layers);
  r.get("attention_head_dim", c.attention_head_dim);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("joint_attention_dim", c.joint_attention_dim);
  r.get("pooled_projection_dim", c.pooled_projection_dim);
  r.get("guidance_embeds", c.guidance_embeds);
  r.get("axes_dims_rope", c.axes_dims_rope);
  if (c.patch_size != 1) r.fail("patch_size", "must be 1 (Flux packs 2x2 latents itself)");
  int64_t rope_dim = 0;
  for (int a : c.axes_dims_rope) {
    if (a <= 0 || a % 2) r.fail("axes_dims_rope", "entries must be positive and even");
    rope_dim += a;
  }
  if (rope_dim != c.attention_head_dim)
    r.fail("axes_dims_rope", "must sum to attention_head_dim (" + std::to_string(c.attention_head_dim) + ")");
  if (c.num_layers < 0 || c.num_single_layers < 0 || c.num_attention_heads < 1 || c.attention_head_dim < 1)
    r.fail("num_layers/num_single_layers/num_attention_heads/attention_head_dim", "out of range");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

Result<FluxSingleTransformerBlock> FluxSingleTransformerBlock::load(const Checkpoint& ck, const std::string& prefix,
                                                                    int64_t dim, int64_t heads, int64_t head_dim,
                                                                    const ParallelContext* par) {
  static const char* const kNames[5] = {".attn.to_q", ".attn.to_k", ".attn.to_v", ".attn.norm_q", ".attn.norm_k"};
  FluxSingleTransformerBlock b;
  if (par) b.par = *par;
  const Range h = head_shard(heads, par);
  b.heads = h.size();
  const int64_t mlp = 4 * dim;
  const Range f = shard_range(mlp, b.par.tp_size(), b.par.tp_rank());
  MD_TRY(b.norm, AdaLayerNormZeroSingle::load(ck, prefix + ".norm", dim, 1e-6f, par));
  MD_TRY(b.qkv, QKV::load(ck, prefix, kNames, dim, heads, head_dim, /*qk_norm=*/true, 1e-6f, par));
  MD_TRY(b.proj_mlp, Linear::load_rows(ck, prefix + ".proj_mlp", dim, mlp, {f}));
  // proj_out's input is [attention (dim), mlp (4 dim)]: this rank's columns of each half.
  const std::vector<Range> cols{{h.begin * head_dim, h.end * head_dim}, {dim + f.begin, dim + f.end}};
  MD_TRY(b.proj_out, Linear::load_cols(ck, prefix + ".proj_out", dim + mlp, dim, cols, b.par.tp));
  return b;
}

void FluxSingleTransformerBlock::operator()(Tensor& tokens, const Tensor& silu_temb, const RopeTables& rope,
                                            const SeqLayout* seq) const {
  auto [x, gate] = norm(tokens, silu_temb);
  Tensor mlp = proj_mlp(x, Act::GeluTanh);
  QKV::Heads h = qkv(x, heads);
  ops::rope_(h.q, rope.cos, rope.sin);
  ops::rope_(h.k, rope.cos, rope.sin);
  const float scale = 1.0f / std::sqrt(float(h.q.size(3)));
  Tensor attn =
      merge_heads(seq ? joint_attention(h.q, h.k, h.v, scale, *seq, &par) : ops::attention(h.q, h.k, h.v, scale));
  ops::add_gated_(tokens, gate, proj_out(concat({attn, mlp}, 2)));
}

Result<FluxTransformer> FluxTransformer::load(const Checkpoint& ck, const FluxConfig& cfg, const ParallelContext* par) {
  FluxTransformer m;
  m.cfg_ = cfg;
  if (par) m.par_ = *par;
  if (cfg.num_attention_heads % m.par_.tp_size() != 0)
    return make_error("Flux transformer: " + std::to_string(cfg.num_attention_heads) +
                      " attention heads are not divisible by tp=" + std::to_string(m.par_.tp_size()));
  const int64_t dim = cfg.inner_dim();
  MD_TRY(m.x_embedder_, Linear::load(ck, "x_embedder", cfg.in_channels, dim));
  MD_TRY(m.context_embedder_, Linear::load(ck, "context_embedder", cfg.joint_attention_dim, dim));
  MD_TRY(m.timestep_embedder_.mlp, Mlp2::load(ck, "time_text_embed.timestep_embedder", 256, dim, dim, Act::SiLU));
  if (cfg.guidance_embeds) {
    TimestepEmbedder g;
    MD_TRY(g.mlp, Mlp2::load(ck, "time_text_embed.guidance_embedder", 256, dim, dim, Act::SiLU));
    m.guidance_embedder_ = g;
  }
  MD_TRY(m.text_embedder_,
         Mlp2::load(ck, "time_text_embed.text_embedder", cfg.pooled_projection_dim, dim, dim, Act::SiLU));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    MD_TRY(auto b, JointTransformerBlock::load(ck, "transformer_blocks." + std::to_string(i), dim,
                                               cfg.num_attention_heads, cfg.attention_head_dim, /*qk_norm=*/true,
                                               /*context_pre_only=*/false, JointAttention::Order::TextFirst, par));
    m.transformer_blocks_.push_back(std::move(b));
  }
  for (int64_t i = 0; i < cfg.num_single_layers; ++i) {
    MD_TRY(auto b, FluxSingleTransformerBlock::load(ck, "single_transformer_blocks." + std::to_string(i), dim,
                                                    cfg.num_attention_heads, cfg.attention_head_dim, par));
    m.single_transformer_blocks_.push_back(std::move(b));
  }
  MD_TRY(m.norm_out_, AdaLayerNormContinuous::load(ck, "norm_out", dim, dim));
  MD_TRY(m.proj_out_, Linear::load(ck, "proj_out", dim, int64_t(cfg.patch_size) * cfg.patch_size * cfg.out_dim()));
  return m;
}

RopeTables FluxTransformer::rope_tables(const Tensor& ids) const {
  // get_1d_rotary_pos_embed per axis with float64 frequencies, repeat_interleave(2), then float32.
  auto [cos, sin] = ops::rope_tables(ids, cfg_.axes_dims_rope, cfg_.rope_theta);
  return RopeTables{cos, sin};
}

Result<Tensor> FluxTransformer::forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states,
                                        const Tensor& pooled_projections, const Tensor& timestep, const Tensor& img_ids,
                                        const Tensor& txt_ids, const Tensor& guidance, const Hooks* hooks) const {
  if (hidden_states.dim() != 3 || hidden_states.size(2) != cfg_.in_channels)
    return make_error("Flux transformer: hidden_states " + shape_str(hidden_states.shape()) + " must be [B, N, " +
                      std::to_string(cfg_.in_channels) + "]");
  const int64_t B = hidden_states.size(0), N = hidden_states.size(1);
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != B ||
      encoder_hidden_states.size(2) != cfg_.joint_attention_dim)
    return make_error("Flux transformer: encoder_hidden_states " + shape_str(encoder_hidden_states.shape()) +
                      " must be [B, L, " + std::to_string(cfg_.joint_attention_dim) + "]");
  const int64_t L = encoder_hidden_states.size(1);
  const int64_t n_axes = int64_t(cfg_.axes_dims_rope.size());
  if (img_ids.shape() != Shape{N, n_axes} || txt_ids.shape() != Shape{L, n_axes})
    return make_error("Flux transformer: img_ids " + shape_str(img_ids.shape()) + " / txt_ids " +
                      shape_str(txt_ids.shape()) + " must be [N, " + std::to_string(n_axes) + "] / [L, " +
                      std::to_string(n_axes) + "]");
  if (pooled_projections.shape() != Shape{B, cfg_.pooled_projection_dim} || timestep.shape() != Shape{B})
    return make_error("Flux transformer: pooled_projections " + shape_str(pooled_projections.shape()) + " / timestep " +
                      shape_str(timestep.shape()) + " do not match batch " + std::to_string(B));
  if (cfg_.guidance_embeds && guidance.shape() != Shape{B})
    return make_error("Flux transformer: this model embeds guidance (FLUX.1-dev); guidance must be [B]");

  Tensor x = x_embedder_(hidden_states.to(DType::F32));
  report(hooks, "hook.x_embedder", x);

  // The model scales t (and guidance) by 1000 before the float32 sinusoid: one rounded float32 product.
  auto times_1000 = [](const Tensor& t) { return ops::scale(t, 1000.0f); };
  Tensor temb = timestep_embedder_(times_1000(timestep));
  if (guidance_embedder_) ops::add_(temb, (*guidance_embedder_)(times_1000(guidance)));
  ops::add_(temb, text_embedder_(pooled_projections.to(DType::F32)));
  report(hooks, "hook.time_text_embed", temb);

  Tensor c = context_embedder_(encoder_hidden_states.to(DType::F32));
  report(hooks, "hook.context_embedder", c);

  RopeTables rope = rope_tables(concat({txt_ids.to(DType::F32), img_ids.to(DType::F32)}, 0));
  report(hooks, "hook.pos_embed.0", rope.cos);
  report(hooks, "hook.pos_embed.1", rope.sin);

  // Sequence parallel: this rank keeps its shard of the image tokens and the matching RoPE rows; text
  // tokens stay whole on every rank.
  const int sp = par_.sp_size();
  SeqLayout seq{L, /*txt_first=*/true, shard_sizes(N, sp)};
  const Range mine = shard_range(N, sp, par_.sp_rank());
  if (sp > 1) {
    x = x.slice(1, mine.begin, mine.end).contiguous();
    auto local = [&](const Tensor& t) {
      return concat({t.slice(0, 0, L), t.slice(0, L + mine.begin, L + mine.end)}, 0);
    };
    rope = RopeTables{local(rope.cos), local(rope.sin)};
  }
  const SeqLayout* seq_ptr = sp > 1 ? &seq : nullptr;
  const int64_t n = mine.size();

  const Tensor silu_temb = ops::activation(temb, Act::SiLU);
  for (size_t i = 0; i < transformer_blocks_.size(); ++i) {
    {
      Span span("block", "transformer_blocks." + std::to_string(i));
      transformer_blocks_[i](x, c, silu_temb, &rope, seq_ptr);
    }
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".0", c);
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".1", x);
  }
  Tensor tokens = concat({c, x}, 1);
  for (size_t i = 0; i < single_transformer_blocks_.size(); ++i) {
    {
      Span span("block", "single_transformer_blocks." + std::to_string(i));
      single_transformer_blocks_[i](tokens, silu_temb, rope, seq_ptr);
    }
    if (hooks) {
      report(hooks, "hook.single_transformer_blocks." + std::to_string(i) + ".0", tokens.slice(1, 0, L));
      report(hooks, "hook.single_transformer_blocks." + std::to_string(i) + ".1", tokens.slice(1, L, L + n));
    }
  }
  x = norm_out_(tokens.slice(1, L, L + n), silu_temb);
  report(hooks, "hook.norm_out", x);
  Tensor out = proj_out_(x);
  return sp > 1 ? all_gather_v(out, 1, *par_.sp, seq.img_sizes) : out;
}

}  // namespace meshdit
