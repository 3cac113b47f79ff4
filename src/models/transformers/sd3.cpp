// Stable Diffusion 3 / 3.5 MM-DiT (Esser et al., "Scaling Rectified Flow Transformers", 2024), as
// diffusers' SD3Transformer2DModel computes it:
//
//   x = PatchEmbed(latents) + cropped 2-D sin-cos positions      image tokens   [B, N, dim]
//   c = context_embedder(text embeddings)                          text tokens    [B, L, dim]
//   y = TimestepEmbed(t) + PooledTextEmbed(pooled)                 conditioning   [B, dim]
//   for each MM-DiT block: (c, x) = Block(x, c, y)                 joint attention over [x; c]
//   out = unpatchify(proj_out(AdaLN(x, y)))
#include "models/transformers/sd3.h"

#include "core/trace.h"
#include "io/json_config.h"
#include "parallel/collectives.h"

namespace meshdit {

Result<SD3Config> SD3Config::from_json(const std::string& path) {
  MD_TRY(std::string text, read_text_file(path));
  return from_json_text(text, path);
}

Result<SD3Config> SD3Config::from_json_text(const std::string& text, const std::string& name) {
  MD_TRY(Json j, parse_json(text, name));
  SD3Config c;
  ConfigReader r(j, name);
  r.get("sample_size", c.sample_size);
  r.get("patch_size", c.patch_size);
  r.get("in_channels", c.in_channels);
  r.get("num_layers", c.num_layers);
  r.get("attention_head_dim", c.attention_head_dim);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("joint_attention_dim", c.joint_attention_dim);
  r.get("caption_projection_dim", c.caption_projection_dim);
  r.get("pooled_projection_dim", c.pooled_projection_dim);
  r.get("out_channels", c.out_channels);
  r.get("pos_embed_max_size", c.pos_embed_max_size);
  r.get("dual_attention_layers", c.dual_attention_layers);
  r.get("qk_norm", c.qk_norm);
  if (!c.qk_norm.empty() && c.qk_norm != "rms_norm")
    r.fail("qk_norm", "'" + c.qk_norm + "' is not supported (rms_norm or null)");
  if (!c.dual_attention_layers.empty())
    r.fail("dual_attention_layers", "is not empty: SD3.5-Medium's dual attention (MMDiT-X) is not supported yet");
  // The bound keeps products of sizes (inner_dim, the position table) far from int64 overflow.
  constexpr int64_t kMaxSize = 1 << 15;
  const std::pair<const char*, int64_t> sizes[] = {{"sample_size", c.sample_size},
                                                   {"patch_size", c.patch_size},
                                                   {"in_channels", c.in_channels},
                                                   {"num_layers", c.num_layers},
                                                   {"attention_head_dim", c.attention_head_dim},
                                                   {"num_attention_heads", c.num_attention_heads},
                                                   {"joint_attention_dim", c.joint_attention_dim},
                                                   {"caption_projection_dim", c.caption_projection_dim},
                                                   {"pooled_projection_dim", c.pooled_projection_dim},
                                                   {"out_channels", c.out_channels}};
  for (const auto& [key, v] : sizes)
    if (v < 1 || v > kMaxSize)
      r.fail(key, "must be between 1 and " + std::to_string(kMaxSize) + ", got " + std::to_string(v));
  if (c.pos_embed_max_size > kMaxSize)  // 0 or less: no position table
    r.fail("pos_embed_max_size", "must be at most " + std::to_string(kMaxSize));
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

Result<SD3Transformer> SD3Transformer::load(const Checkpoint& ck, const SD3Config& cfg, const ParallelContext* par) {
  SD3Transformer m;
  m.cfg_ = cfg;
  if (par) m.par_ = *par;
  if (cfg.num_attention_heads % m.par_.tp_size() != 0)
    return make_error("SD3 transformer: " + std::to_string(cfg.num_attention_heads) +
                      " attention heads are not divisible by tp=" + std::to_string(m.par_.tp_size()));
  const int64_t dim = cfg.inner_dim();
  MD_TRY(m.pos_embed_, PatchEmbed::load(ck, "pos_embed", cfg.in_channels, dim, cfg.patch_size, cfg.pos_embed_max_size));
  m.timestep_embedder_.channels = 256;
  m.timestep_embedder_.flip_sin_to_cos = true;
  m.timestep_embedder_.downscale_freq_shift = 0;
  MD_TRY(m.timestep_embedder_.mlp, Mlp2::load(ck, "time_text_embed.timestep_embedder", 256, dim, dim, Act::SiLU));
  MD_TRY(m.text_embedder_,
         Mlp2::load(ck, "time_text_embed.text_embedder", cfg.pooled_projection_dim, dim, dim, Act::SiLU));
  MD_TRY(m.context_embedder_,
         Linear::load(ck, "context_embedder", cfg.joint_attention_dim, cfg.caption_projection_dim));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    const bool last = i == cfg.num_layers - 1;
    MD_TRY(auto block,
           JointTransformerBlock::load(ck, "transformer_blocks." + std::to_string(i), dim, cfg.num_attention_heads,
                                       cfg.attention_head_dim, cfg.qk_norm == "rms_norm", last,
                                       JointAttention::Order::ImageFirst, par));
    m.transformer_blocks_.push_back(std::move(block));
  }
  MD_TRY(m.norm_out_, AdaLayerNormContinuous::load(ck, "norm_out", dim, dim));
  const int64_t p = cfg.patch_size;
  MD_TRY(m.proj_out_, Linear::load(ck, "proj_out", dim, p * p * cfg.out_channels));
  return m;
}

Result<Tensor> SD3Transformer::forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states,
                                       const Tensor& pooled_projections, const Tensor& timestep,
                                       const Hooks* hooks) const {
  const int64_t p = cfg_.patch_size;
  if (hidden_states.dim() != 4 || hidden_states.size(1) != cfg_.in_channels || hidden_states.size(2) % p ||
      hidden_states.size(3) % p)
    return make_error("SD3 transformer: latents " + shape_str(hidden_states.shape()) + " must be [B, " +
                      std::to_string(cfg_.in_channels) + ", H, W] with H, W multiples of " + std::to_string(p));
  const int64_t B = hidden_states.size(0), h = hidden_states.size(2) / p, w = hidden_states.size(3) / p;
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != B ||
      encoder_hidden_states.size(2) != cfg_.joint_attention_dim)
    return make_error("SD3 transformer: encoder_hidden_states " + shape_str(encoder_hidden_states.shape()) +
                      " must be [B, L, " + std::to_string(cfg_.joint_attention_dim) + "]");
  if (pooled_projections.shape() != Shape{B, cfg_.pooled_projection_dim} || timestep.shape() != Shape{B})
    return make_error("SD3 transformer: pooled_projections " + shape_str(pooled_projections.shape()) + " / timestep " +
                      shape_str(timestep.shape()) + " do not match batch " + std::to_string(B));
  MD_RETURN_IF_ERROR(pos_embed_.check_grid(h, w));

  Tensor x = pos_embed_(hidden_states.to(DType::F32));
  report(hooks, "hook.pos_embed", x);
  Tensor temb = ops::add(timestep_embedder_(timestep), text_embedder_(pooled_projections.to(DType::F32)));
  report(hooks, "hook.time_text_embed", temb);
  Tensor c = context_embedder_(encoder_hidden_states.to(DType::F32));
  report(hooks, "hook.context_embedder", c);

  // Sequence parallel: this rank keeps its shard of the image tokens; text tokens stay whole.
  const int sp = par_.sp_size();
  const int64_t N = x.size(1);
  const SeqLayout seq{c.size(1), /*txt_first=*/false, shard_sizes(N, sp)};
  if (sp > 1) {
    const Range mine = shard_range(N, sp, par_.sp_rank());
    x = x.slice(1, mine.begin, mine.end).contiguous();
  }
  const Tensor silu_temb = ops::activation(temb, Act::SiLU);
  for (size_t i = 0; i < transformer_blocks_.size(); ++i) {
    {
      Span span("block", "transformer_blocks." + std::to_string(i));
      transformer_blocks_[i](x, c, silu_temb, nullptr, sp > 1 ? &seq : nullptr);
    }
    if (c.defined()) report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".0", c);
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".1", x);
  }
  x = norm_out_(x, silu_temb);
  report(hooks, "hook.norm_out", x);
  Tensor out = proj_out_(x);
  if (sp > 1) out = all_gather_v(out, 1, *par_.sp, seq.img_sizes);
  return ops::unpatchify(out, h, w, int(p), cfg_.out_channels);
}

}  // namespace meshdit
