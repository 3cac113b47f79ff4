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
#include <cstdio>

#include "backend/model_ops.h"
#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/json_config.h"
#include "io/single_file.h"
#include "layers/block_cache.h"
#include "layers/sequence_shard.h"
#include "models/registry.h"

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

Tensor flux_image_ids(int64_t h, int64_t w) {
  std::vector<float> ids(size_t((h / 2) * (w / 2) * 3), 0.0f);
  for (int64_t r = 0; r < h / 2; ++r)
    for (int64_t c = 0; c < w / 2; ++c) {
      ids[size_t((r * (w / 2) + c) * 3 + 1)] = float(r);
      ids[size_t((r * (w / 2) + c) * 3 + 2)] = float(c);
    }
  return Tensor::from_f32({(h / 2) * (w / 2), 3}, ids);
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
  // Each activation is dropped as soon as it is consumed: the block's peak is then [attention, mlp] with its
  // two parts (the 4x-wide MLP dominates), not that plus the normalized input and the q/k/v heads.
  auto [x, gate] = norm(tokens, silu_temb);
  Tensor attn;
  {
    QKV::Heads h = qkv(x, heads);
    ops::rope_(h.q, rope.cos, rope.sin);
    ops::rope_(h.k, rope.cos, rope.sin);
    const float scale = 1.0f / std::sqrt(float(h.q.size(3)));
    attn = merge_heads(seq ? joint_attention(h.q, h.k, h.v, scale, *seq, &par) : ops::attention(h.q, h.k, h.v, scale));
  }
  Tensor mlp = proj_mlp(x, Act::GeluTanh);
  x = Tensor();
  Tensor attn_mlp = concat({attn, mlp}, 2);
  attn = mlp = Tensor();
  ops::add_gated_(tokens, gate, proj_out(attn_mlp));
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

  // Sequence parallel: this rank keeps its shard of the image tokens and their RoPE rows.
  const SequenceShard shard(N, L, /*txt_first=*/true, par_);
  x = shard.local(x);
  rope = shard.local(rope);
  const int64_t n = shard.local_tokens();

  const Tensor silu_temb = ops::activation(temb, Act::SiLU);
  // Step caching (layers/block_cache.h) sees the double- then the single-stream blocks as two stacks.
  const int64_t D = int64_t(transformer_blocks_.size()), S = int64_t(single_transformer_blocks_.size());
  MD_TRY(CachedBlocks blocks, CachedBlocks::begin(current_step_cache(), {D, S}, &par_, x));
  for (int64_t i = 0; i < D; ++i) {
    if (blocks.run(i)) {
      Span span("block", "transformer_blocks." + std::to_string(i));
      transformer_blocks_[size_t(i)](x, c, silu_temb, &rope, shard.layout());
    }
    blocks.after(i, {x, c}, x);
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".0", c);
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".1", x);
  }
  Tensor tokens = concat({c, x}, 1);
  for (int64_t i = 0; i < S; ++i) {
    if (blocks.run(D + i)) {
      Span span("block", "single_transformer_blocks." + std::to_string(i));
      single_transformer_blocks_[size_t(i)](tokens, silu_temb, rope, shard.layout());
    }
    const Tensor image = tokens.slice(1, L, L + n);
    blocks.after(D + i, {image, tokens.slice(1, 0, L)}, image);
    if (hooks) {
      report(hooks, "hook.single_transformer_blocks." + std::to_string(i) + ".0", tokens.slice(1, 0, L));
      report(hooks, "hook.single_transformer_blocks." + std::to_string(i) + ".1", tokens.slice(1, L, L + n));
    }
  }
  x = norm_out_(tokens.slice(1, L, L + n), silu_temb);
  report(hooks, "hook.norm_out", x);
  return shard.gather(proj_out_(x));
}

// ---------------------------------------------------------------------------------------------------------
// What Flux is to the registry (models/registry.h): its configs, single-file layout, loader, sizes and costs.

Result<FluxConfig> infer_flux_config(const Checkpoint& ck, const std::vector<int>* axes_dims_rope) {
  const std::vector<std::string> names = ck.names();
  FluxConfig c;
  MD_TRY(Shape x, matrix_shape(ck, "x_embedder.weight"));
  const int64_t hidden = x[0];
  c.in_channels = x[1];
  c.num_layers = block_count(names, "transformer_blocks.");
  c.num_single_layers = block_count(names, "single_transformer_blocks.");
  const std::string qn =
      c.num_layers > 0 ? "transformer_blocks.0.attn.norm_q.weight" : "single_transformer_blocks.0.attn.norm_q.weight";
  MD_TRY(c.attention_head_dim, vector_size(ck, qn));
  MD_TRY(c.num_attention_heads, head_count(ck, hidden, c.attention_head_dim, "the size of '" + qn + "'"));
  MD_TRY(Shape ctx, matrix_shape(ck, "context_embedder.weight"));
  c.joint_attention_dim = ctx[1];
  MD_TRY(Shape pooled, matrix_shape(ck, "time_text_embed.text_embedder.linear_1.weight"));
  c.pooled_projection_dim = pooled[1];
  c.guidance_embeds = ck.has("time_text_embed.guidance_embedder.linear_1.weight");
  MD_TRY(Shape out, matrix_shape(ck, "proj_out.weight"));
  c.out_channels = out[0] == c.in_channels ? 0 : out[0];  // diffusers' null: same as in_channels
  if (axes_dims_rope) {
    c.axes_dims_rope = *axes_dims_rope;
  } else if (c.attention_head_dim == 128) {
    c.axes_dims_rope = {16, 56, 56};  // FLUX.1
  } else {
    return make_error(ck.origin() +
                      ": cannot infer the RoPE axes (axes_dims_rope) of a Flux model with attention "
                      "head size " +
                      std::to_string(c.attention_head_dim) +
                      " (only FLUX.1's 128 -> [16, 56, 56] is known); put the model's config.json beside the "
                      "checkpoint");
  }
  int64_t rope = 0;
  for (int a : c.axes_dims_rope) {
    if (a <= 0 || a % 2) return make_error(ck.origin() + ": axes_dims_rope entries must be positive and even");
    rope += a;
  }
  if (rope != c.attention_head_dim)
    return make_error(ck.origin() + ": axes_dims_rope sum to " + std::to_string(rope) +
                      ", not the attention head size " + std::to_string(c.attention_head_dim));
  return c;
}

Result<FluxConfig> flux_config_for(const std::string& path_or_dir, const Checkpoint& ck) {
  const std::string cfg = config_json_beside(path_or_dir);
  if (path_exists(cfg)) return FluxConfig::from_json(cfg);
  return infer_flux_config(ck);
}

namespace {

// Black Forest Labs' names (flux1-dev.safetensors) against diffusers': the key map of diffusers'
// convert_flux_transformer_checkpoint_to_diffusers, in the order BFL's model lists its modules.
Result<KeyRules> flux_bfl_keys(const LayoutNames& n) {
  KeyRules m;
  m.linear("img_in", "x_embedder");
  m.linear("txt_in", "context_embedder");
  m.linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1");
  m.linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2");
  m.linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1");
  m.linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2");
  if (n.has("guidance_in.in_layer.weight", "time_text_embed.guidance_embedder.linear_1.weight")) {  // dev, not schnell
    m.linear("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1");
    m.linear("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2");
  }
  for (int64_t i = 0, N = n.blocks("double_blocks.", "transformer_blocks."); i < N; ++i) {
    const std::string s = "double_blocks." + std::to_string(i) + ".";
    const std::string d = "transformer_blocks." + std::to_string(i) + ".";
    m.linear(s + "img_mod.lin", d + "norm1.linear");
    m.qkv(s + "img_attn.qkv", d + "attn.to_q", d + "attn.to_k", d + "attn.to_v");
    m.whole(s + "img_attn.norm.query_norm.scale", d + "attn.norm_q.weight");
    m.whole(s + "img_attn.norm.key_norm.scale", d + "attn.norm_k.weight");
    m.linear(s + "img_attn.proj", d + "attn.to_out.0");
    m.linear(s + "img_mlp.0", d + "ff.net.0.proj");
    m.linear(s + "img_mlp.2", d + "ff.net.2");
    m.linear(s + "txt_mod.lin", d + "norm1_context.linear");
    m.qkv(s + "txt_attn.qkv", d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj");
    m.whole(s + "txt_attn.norm.query_norm.scale", d + "attn.norm_added_q.weight");
    m.whole(s + "txt_attn.norm.key_norm.scale", d + "attn.norm_added_k.weight");
    m.linear(s + "txt_attn.proj", d + "attn.to_add_out");
    m.linear(s + "txt_mlp.0", d + "ff_context.net.0.proj");
    m.linear(s + "txt_mlp.2", d + "ff_context.net.2");
  }
  for (int64_t i = 0, N = n.blocks("single_blocks.", "single_transformer_blocks."); i < N; ++i) {
    const std::string s = "single_blocks." + std::to_string(i) + ".";
    const std::string d = "single_transformer_blocks." + std::to_string(i) + ".";
    m.qkv_mlp(s + "linear1", d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp");
    m.linear(s + "linear2", d + "proj_out");
    m.whole(s + "norm.query_norm.scale", d + "attn.norm_q.weight");
    m.whole(s + "norm.key_norm.scale", d + "attn.norm_k.weight");
    m.linear(s + "modulation.lin", d + "norm.linear");
  }
  m.linear("final_layer.linear", "proj_out");
  m.swap_scale_shift("final_layer.adaLN_modulation.1", "norm_out.linear");
  return m;
}

class FluxModel final : public Transformer {
 public:
  explicit FluxModel(FluxTransformer m) : m_(std::move(m)) {}
  Result<Tensor> forward(const TensorMap& in, const Hooks* hooks) const override {
    auto get = [&](const char* n) { return input_of(in, n); };
    return m_.forward(get("hidden_states"), get("encoder_hidden_states"), get("pooled_projections"), get("timestep"),
                      get("img_ids"), get("txt_ids"), get("guidance"), hooks);
  }

 private:
  FluxTransformer m_;
};

const FluxConfig& cfg_of(const std::any& a) { return std::any_cast<const FluxConfig&>(a); }

// Multiply-adds x 2 of every linear and attention of one forward.
double flux_flops(const FluxConfig& c, int64_t N, int64_t L) {
  const double D = double(c.inner_dim()), M = 4 * D, T = double(N + L);
  // Per token: q/k/v, out and the MLP; per sample (not per token): the adaLN modulation linears.
  const double dbl = 2 * T * (3 * D * D + D * D + 2 * D * M) + 4 * T * T * D + 2 * 2 * 6 * D * D;
  const double sgl = 2 * T * ((3 * D + M) * D + (D + M) * D) + 4 * T * T * D + 2 * 3 * D * D;
  return double(c.num_layers) * dbl + double(c.num_single_layers) * sgl;
}

}  // namespace

void register_flux() {
  TransformerArch a;
  a.name = "flux";
  a.classes = {"FluxTransformer2DModel"};
  auto preset = [](bool dev) {
    return [dev] {
      FluxConfig c;  // diffusers' defaults are FLUX.1's
      c.guidance_embeds = dev;
      return std::any(c);
    };
  };
  a.presets = {{"flux-dev", preset(true)}, {"flux-schnell", preset(false)}};
  a.with_blocks = [](const std::any& c, int64_t blocks, int64_t singles) {
    FluxConfig f = cfg_of(c);
    f.num_layers = blocks;
    f.num_single_layers = singles;
    return std::any(f);
  };
  a.defaults = PlanDefaults{1024, 1024, 1, 512, /*cfg_batch=*/false};  // guidance distilled: one batch per step
  a.parse_config = [](const std::string& path) -> Result<std::any> {
    MD_TRY(FluxConfig c, FluxConfig::from_json(path));
    return std::any(c);
  };
  a.infer_config = [](const Checkpoint& ck) -> Result<std::any> {
    MD_TRY(FluxConfig c, infer_flux_config(ck));
    return std::any(c);
  };
  // Black Forest Labs' flux1-dev / flux1-schnell.safetensors.
  a.layouts = {SingleFileLayout{
      "flux-bfl",
      {"double_blocks.", "single_blocks."},
      {"img_in", "txt_in", "time_in", "vector_in", "guidance_in", "double_blocks", "single_blocks", "final_layer"},
      flux_bfl_keys}};
  a.gguf_architectures = {"flux"};
  a.gguf_keep_float = {"img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer."};
  a.diffusers_detect = {"x_embedder.weight", "single_transformer_blocks."};
  a.diffusers_modules = {
      "x_embedder", "context_embedder", "time_text_embed", "transformer_blocks", "single_transformer_blocks",
      "norm_out",   "proj_out"};
  a.load = [](const Checkpoint& ck, const std::any& c,
              const ParallelContext* par) -> Result<std::shared_ptr<Transformer>> {
    MD_TRY(FluxTransformer m, FluxTransformer::load(ck, cfg_of(c), par));
    return std::shared_ptr<Transformer>(std::make_shared<FluxModel>(std::move(m)));
  };
  a.inputs = {{"hidden_states"},  {"encoder_hidden_states"}, {"pooled_projections"},  {"timestep"},
              {"img_ids", false}, {"txt_ids", false},        {"guidance", true, true}};
  a.dims = [](const std::any& c) {
    const FluxConfig& f = cfg_of(c);
    return ModelDims{f.inner_dim(), f.num_attention_heads, f.attention_head_dim, f.out_dim()};
  };
  a.describe = [](const std::any& c) {
    const FluxConfig& f = cfg_of(c);
    char buf[256];
    std::snprintf(buf, sizeof buf, "Flux: %lld double + %lld single blocks, %lld heads x %lld, dim %lld%s",
                  (long long)f.num_layers, (long long)f.num_single_layers, (long long)f.num_attention_heads,
                  (long long)f.attention_head_dim, (long long)f.inner_dim(),
                  f.guidance_embeds ? ", guidance distilled (no CFG batch)" : ", no CFG batch");
    return std::string(buf);
  };
  a.image_tokens = [](const std::any&, int64_t w, int64_t h, int64_t frames) -> Result<int64_t> {
    if (w % 16 || h % 16)
      return make_error("--width/--height " + std::to_string(w) + "x" + std::to_string(h) +
                        ": Flux needs multiples of 16");
    if (frames != 1) return make_error("--frames: Flux is an image model");
    return (w / 16) * (h / 16);  // 8x VAE, 2x2 packing
  };
  a.tokens_of_inputs = [](const std::any&, const TensorMap& in) {
    auto it = in.find("hidden_states");
    return it == in.end() || it->second.dim() < 2 ? int64_t(0) : it->second.size(1);
  };
  a.random_inputs = [](const std::any& c, int64_t width, int64_t height, int64_t /*frames*/, int64_t L) {
    const FluxConfig& f = cfg_of(c);
    const int64_t h = height / 8, w = width / 8, N = (h / 2) * (w / 2);
    TensorMap m;
    m["hidden_states"] = torch_randn({1, N, f.in_channels}, 1);
    m["encoder_hidden_states"] = torch_randn({1, L, f.joint_attention_dim}, 2);
    m["pooled_projections"] = torch_randn({1, f.pooled_projection_dim}, 3);
    m["timestep"] = Tensor::from_f32({1}, {0.5f});
    if (f.guidance_embeds) m["guidance"] = Tensor::from_f32({1}, {3.5f});
    m["img_ids"] = flux_image_ids(h, w);
    m["txt_ids"] = Tensor::zeros({L, 3});
    return m;
  };
  a.flops = [](const std::any& c, int64_t N, int64_t L) { return flux_flops(cfg_of(c), N, L); };
  a.rows_of = [](const std::string& w) {
    if (starts_with(w, "single_transformer_blocks."))
      return w.find(".norm.linear") != std::string::npos ? Rows::One : Rows::Joint;
    if (starts_with(w, "time_text_embed.") || starts_with(w, "norm_out.") || w.find(".norm1") != std::string::npos)
      return Rows::One;
    if (starts_with(w, "context_embedder") || w.find(".add_") != std::string::npos ||
        w.find(".to_add_out") != std::string::npos || w.find(".ff_context.") != std::string::npos)
      return Rows::Text;
    if (w.find("norm_") != std::string::npos) return Rows::None;
    return Rows::Image;
  };
  a.cost = [](const std::any& c, const RankShape& r) {
    const FluxConfig& f = cfg_of(c);
    const MmditShape s{f.inner_dim(),         4 * f.inner_dim(), f.attention_head_dim, f.in_channels,
                       f.joint_attention_dim, f.num_layers,      f.num_single_layers,  /*rope=*/true};
    ForwardCost k = mmdit_cost(s, r);
    // All-reduces: per double block the image and text attention outputs and feed-forwards, one per single
    // block (proj_out over both halves). Modulation: 2 x 6 dim per double block, 3 dim per single block.
    const int64_t n = r.n, L = r.L, D = s.dim;
    k.tp_all_reduce_calls = 4 * f.num_layers + f.num_single_layers;
    k.tp_all_reduce_elems = f.num_layers * 2 * (n + L) * D + f.num_single_layers * (n + L) * D;
    k.has_adaln_gather = true;
    k.adaln_gather_calls = 2 * f.num_layers + f.num_single_layers;
    k.adaln_gather_elems = f.num_layers * 12 * D + f.num_single_layers * 3 * D;
    return k;
  };
  register_transformer(std::move(a));
}

}  // namespace meshdit
