// Stable Diffusion 3 / 3.5 MM-DiT (Esser et al., "Scaling Rectified Flow Transformers", 2024), as
// diffusers' SD3Transformer2DModel computes it:
//
//   x = PatchEmbed(latents) + cropped 2-D sin-cos positions      image tokens   [B, N, dim]
//   c = context_embedder(text embeddings)                          text tokens    [B, L, dim]
//   y = TimestepEmbed(t) + PooledTextEmbed(pooled)                 conditioning   [B, dim]
//   for each MM-DiT block: (c, x) = Block(x, c, y)                 joint attention over [x; c]
//   out = unpatchify(proj_out(AdaLN(x, y)))
#include "models/transformers/sd3.h"

#include <algorithm>
#include <cstdio>

#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/json_config.h"
#include "io/single_file.h"
#include "layers/block_cache.h"
#include "layers/sequence_shard.h"
#include "models/registry.h"

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
  // SD3.5-Large has 38 heads: rather than limit TP to 2, the heads are padded with zero heads up to a
  // multiple of tp (40 for tp=4 or 8, as TT-DiT does); a zero head adds exactly nothing to the output.
  const int64_t padded_heads = padded_head_count(cfg.num_attention_heads, m.par_.tp_size());
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
                                       JointAttention::Order::ImageFirst, par, padded_heads));
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

  // Sequence parallel: this rank keeps its shard of the image tokens.
  const SequenceShard shard(x.size(1), c.size(1), /*txt_first=*/false, par_);
  x = shard.local(x);
  const Tensor silu_temb = ops::activation(temb, Act::SiLU);
  MD_TRY(CachedBlocks blocks,
         CachedBlocks::begin(current_step_cache(), {int64_t(transformer_blocks_.size())}, &par_, x));
  for (size_t i = 0; i < transformer_blocks_.size(); ++i) {
    if (blocks.run(int64_t(i))) {
      Span span("block", "transformer_blocks." + std::to_string(i));
      transformer_blocks_[i](x, c, silu_temb, nullptr, shard.layout());
    }
    blocks.after(int64_t(i), {x, c}, x);  // c: undefined after SD3.5's last (context_pre_only) block
    if (c.defined()) report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".0", c);
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".1", x);
  }
  x = norm_out_(x, silu_temb);
  report(hooks, "hook.norm_out", x);
  return ops::unpatchify(shard.gather(proj_out_(x)), h, w, int(p), cfg_.out_channels);
}

// ---------------------------------------------------------------------------------------------------------
// What SD3 is to the registry (models/registry.h): its configs, single-file layout, loader, sizes and costs.

Result<SD3Config> infer_sd3_config(const Checkpoint& ck) {
  const std::vector<std::string> names = ck.names();
  for (const auto& n : names)
    if (n.find(".attn2.") != std::string::npos)
      return make_error(ck.origin() + ": tensor '" + n +
                        "': SD3.5-Medium's dual attention (MMDiT-X) is not supported yet");
  SD3Config c;
  MD_TRY(Shape pe, ck.shape_of("pos_embed.proj.weight"));
  if (pe.size() != 4 || pe[2] != pe[3] || pe[2] < 1)
    return make_error(ck.origin() + ": tensor 'pos_embed.proj.weight' has shape " + shape_str(pe) +
                      "; expected [dim, channels, patch, patch]");
  const int64_t hidden = pe[0];
  c.in_channels = pe[1];
  c.patch_size = int(pe[2]);
  c.num_layers = block_count(names, "transformer_blocks.");
  if (c.num_layers < 1) return make_error(ck.origin() + ": no transformer_blocks");
  const std::string qn = "transformer_blocks.0.attn.norm_q.weight";
  if (ck.has(qn)) {
    c.qk_norm = "rms_norm";
    MD_TRY(c.attention_head_dim, vector_size(ck, qn));
  } else {
    c.qk_norm = "";
    c.attention_head_dim = 64;
  }
  MD_TRY(c.num_attention_heads, head_count(ck, hidden, c.attention_head_dim,
                                           ck.has(qn) ? "the size of '" + qn + "'" : "SD3's 64 without qk norm"));
  MD_TRY(Shape pos, ck.shape_of("pos_embed.pos_embed"));
  if (pos.size() != 3 || pos[0] != 1 || pos[2] != hidden)
    return make_error(ck.origin() + ": tensor 'pos_embed.pos_embed' has shape " + shape_str(pos) +
                      "; expected [1, n, " + std::to_string(hidden) + "]");
  int64_t side = 0;
  while ((side + 1) * (side + 1) <= pos[1]) ++side;
  if (side * side != pos[1])
    return make_error(ck.origin() + ": tensor 'pos_embed.pos_embed' has " + std::to_string(pos[1]) +
                      " positions, not a square grid");
  c.pos_embed_max_size = side;
  MD_TRY(Shape ctx, matrix_shape(ck, "context_embedder.weight"));
  c.caption_projection_dim = ctx[0];
  c.joint_attention_dim = ctx[1];
  MD_TRY(Shape pooled, matrix_shape(ck, "time_text_embed.text_embedder.linear_1.weight"));
  c.pooled_projection_dim = pooled[1];
  MD_TRY(Shape out, matrix_shape(ck, "proj_out.weight"));
  const int64_t pp = int64_t(c.patch_size) * c.patch_size;
  if (out[0] % pp != 0)
    return make_error(ck.origin() + ": tensor 'proj_out.weight' has " + std::to_string(out[0]) +
                      " rows, not a multiple of patch_size^2 = " + std::to_string(pp));
  c.out_channels = out[0] / pp;
  return c;
}

Result<SD3Config> sd3_config_for(const std::string& path_or_dir, const Checkpoint& ck) {
  const std::string cfg = config_json_beside(path_or_dir);
  if (path_exists(cfg)) return SD3Config::from_json(cfg);
  return infer_sd3_config(ck);
}

namespace {

// Stability's names (sd3.5_large.safetensors) against diffusers': the key map of diffusers'
// convert_sd3_transformer_checkpoint_to_diffusers (without MMDiT-X's attn2, which the model lacks), in the order
// Stability's model lists its modules.
Result<KeyRules> sd3_stability_keys(const LayoutNames& n) {
  if (const std::string t = n.find(".attn2.", ".attn2."); !t.empty())
    return n.reject(t, "SD3.5-Medium's dual attention (MMDiT-X) is not supported yet");
  KeyRules m;
  m.linear("x_embedder.proj", "pos_embed.proj");
  m.whole("pos_embed", "pos_embed.pos_embed");
  m.linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1");
  m.linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2");
  m.linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1");
  m.linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2");
  m.linear("context_embedder", "context_embedder");
  const bool qk_norm = !n.find("ln_q", "norm_q").empty();
  for (int64_t i = 0, N = n.blocks("joint_blocks.", "transformer_blocks."); i < N; ++i) {
    const bool last = i == N - 1;  // its context block is pre-only: no output projection, no MLP
    const std::string x = "joint_blocks." + std::to_string(i) + ".x_block.";
    const std::string c = "joint_blocks." + std::to_string(i) + ".context_block.";
    const std::string d = "transformer_blocks." + std::to_string(i) + ".";
    m.linear(x + "adaLN_modulation.1", d + "norm1.linear");
    m.qkv(x + "attn.qkv", d + "attn.to_q", d + "attn.to_k", d + "attn.to_v");
    if (qk_norm) {
      m.whole(x + "attn.ln_q.weight", d + "attn.norm_q.weight");
      m.whole(x + "attn.ln_k.weight", d + "attn.norm_k.weight");
    }
    m.linear(x + "attn.proj", d + "attn.to_out.0");
    m.linear(x + "mlp.fc1", d + "ff.net.0.proj");
    m.linear(x + "mlp.fc2", d + "ff.net.2");
    if (last) {
      m.swap_scale_shift(c + "adaLN_modulation.1", d + "norm1_context.linear");  // AdaLayerNormContinuous
    } else {
      m.linear(c + "adaLN_modulation.1", d + "norm1_context.linear");
    }
    m.qkv(c + "attn.qkv", d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj");
    if (qk_norm) {
      m.whole(c + "attn.ln_q.weight", d + "attn.norm_added_q.weight");
      m.whole(c + "attn.ln_k.weight", d + "attn.norm_added_k.weight");
    }
    if (!last) {
      m.linear(c + "attn.proj", d + "attn.to_add_out");
      m.linear(c + "mlp.fc1", d + "ff_context.net.0.proj");
      m.linear(c + "mlp.fc2", d + "ff_context.net.2");
    }
  }
  m.linear("final_layer.linear", "proj_out");
  m.swap_scale_shift("final_layer.adaLN_modulation.1", "norm_out.linear");
  return m;
}

class SD3Model final : public Transformer {
 public:
  explicit SD3Model(SD3Transformer m) : m_(std::move(m)) {}
  Result<Tensor> forward(const TensorMap& in, const Hooks* hooks) const override {
    auto get = [&](const char* n) { return input_of(in, n); };
    return m_.forward(get("hidden_states"), get("encoder_hidden_states"), get("pooled_projections"), get("timestep"),
                      hooks);
  }

 private:
  SD3Transformer m_;
};

const SD3Config& cfg_of(const std::any& a) { return std::any_cast<const SD3Config&>(a); }

double sd3_flops(const SD3Config& c, int64_t N, int64_t L) {
  const double D = double(c.inner_dim()), T = double(N + L);
  const double per = 2 * T * (3 * D * D + D * D + 8 * D * D) + 4 * T * T * D + 2 * 2 * 6 * D * D;
  return double(c.num_layers) * per;
}

SD3Config sd35_large() {
  SD3Config c;
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
  return c;
}

}  // namespace

void register_sd3() {
  TransformerArch a;
  a.name = "sd3";
  a.pad_heads = true;  // 38 heads (SD3.5-Large): SD3Transformer::load pads them to a multiple of tp
  a.classes = {"SD3Transformer2DModel"};
  a.presets = {{"sd35-large", [] { return std::any(sd35_large()); }}};
  a.with_blocks = [](const std::any& c, int64_t blocks, int64_t) {
    SD3Config s = cfg_of(c);
    s.num_layers = blocks;
    return std::any(s);
  };
  a.defaults = PlanDefaults{1024, 1024, 1, 77 + 256, /*cfg_batch=*/true};  // CLIP 77 ++ T5 256 text tokens
  a.parse_config = [](const std::string& path) -> Result<std::any> {
    MD_TRY(SD3Config c, SD3Config::from_json(path));
    return std::any(c);
  };
  a.infer_config = [](const Checkpoint& ck) -> Result<std::any> {
    MD_TRY(SD3Config c, infer_sd3_config(ck));
    return std::any(c);
  };
  // Stability's sd3.5_large.safetensors.
  a.layouts = {SingleFileLayout{
      "sd3-stability",
      {"joint_blocks.", "x_embedder.proj."},
      {"x_embedder", "t_embedder", "y_embedder", "context_embedder", "joint_blocks", "final_layer", "pos_embed"},
      sd3_stability_keys}};
  a.gguf_architectures = {"sd3"};
  a.gguf_keep_float = {"x_embedder.", "t_embedder.", "y_embedder.", "context_embedder.", "pos_embed", "final_layer."};
  a.diffusers_detect = {"pos_embed.proj."};
  a.diffusers_modules = {"pos_embed",          "context_embedder", "time_text_embed",
                         "transformer_blocks", "norm_out",         "proj_out"};
  a.load = [](const Checkpoint& ck, const std::any& c,
              const ParallelContext* par) -> Result<std::shared_ptr<Transformer>> {
    MD_TRY(SD3Transformer m, SD3Transformer::load(ck, cfg_of(c), par));
    return std::shared_ptr<Transformer>(std::make_shared<SD3Model>(std::move(m)));
  };
  a.inputs = {{"hidden_states"}, {"encoder_hidden_states"}, {"pooled_projections"}, {"timestep"}};
  a.dims = [](const std::any& c) {
    const SD3Config& s = cfg_of(c);
    return ModelDims{s.inner_dim(), s.num_attention_heads, s.attention_head_dim,
                     s.out_channels * s.patch_size * s.patch_size};
  };
  a.describe = [](const std::any& c) {
    const SD3Config& s = cfg_of(c);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "SD3: %lld joint blocks (last context_pre_only), %lld heads x %lld, dim %lld, CFG batch",
                  (long long)s.num_layers, (long long)s.num_attention_heads, (long long)s.attention_head_dim,
                  (long long)s.inner_dim());
    return std::string(buf);
  };
  a.image_tokens = [](const std::any& c, int64_t w, int64_t h, int64_t frames) -> Result<int64_t> {
    const SD3Config& s = cfg_of(c);
    const int64_t step = 8 * s.patch_size, gw = w / step, gh = h / step;
    const std::string size = std::to_string(w) + "x" + std::to_string(h);
    if (w % step || h % step)
      return make_error("--width/--height " + size + ": SD3 needs multiples of " + std::to_string(step));
    if (frames != 1) return make_error("--frames: SD3 is an image model");
    if (gw > s.pos_embed_max_size || gh > s.pos_embed_max_size)
      return make_error("--width/--height " + size + ": " + std::to_string(gw) + "x" + std::to_string(gh) +
                        " patches exceed pos_embed_max_size " + std::to_string(s.pos_embed_max_size));
    return gw * gh;
  };
  a.tokens_of_inputs = [](const std::any& c, const TensorMap& in) {
    const int64_t p = cfg_of(c).patch_size;
    auto it = in.find("hidden_states");
    return it == in.end() || it->second.dim() != 4 ? int64_t(0) : (it->second.size(2) / p) * (it->second.size(3) / p);
  };
  a.random_inputs = [](const std::any& c, int64_t width, int64_t height, int64_t /*frames*/, int64_t L) {
    const SD3Config& s = cfg_of(c);
    TensorMap m;
    m["hidden_states"] = torch_randn({1, s.in_channels, height / 8, width / 8}, 1);
    m["encoder_hidden_states"] = torch_randn({1, L, s.joint_attention_dim}, 2);
    m["pooled_projections"] = torch_randn({1, s.pooled_projection_dim}, 3);
    m["timestep"] = Tensor::from_f32({1}, {500.0f});
    return m;
  };
  a.flops = [](const std::any& c, int64_t N, int64_t L) { return sd3_flops(cfg_of(c), N, L); };
  a.rows_of = [](const std::string& w) {
    if (starts_with(w, "time_text_embed.") || starts_with(w, "norm_out.") || w.find(".norm1") != std::string::npos)
      return Rows::One;
    if (starts_with(w, "context_embedder") || w.find(".add_") != std::string::npos ||
        w.find(".to_add_out") != std::string::npos || w.find(".ff_context.") != std::string::npos)
      return Rows::Text;
    if (w == "pos_embed.pos_embed") return Rows::None;  // a table; the patch conv counts as a linear on image tokens
    return Rows::Image;
  };
  a.cost = [](const std::any& c, const RankShape& r) {
    const SD3Config& s = cfg_of(c);
    const int64_t p = s.patch_size;
    const MmditShape m{s.inner_dim(),
                       4 * s.inner_dim(),
                       s.attention_head_dim,
                       s.in_channels * p * p,
                       s.joint_attention_dim,
                       s.num_layers,
                       0,
                       /*rope=*/false};
    ForwardCost k = mmdit_cost(m, r);
    // The last block is context_pre_only: no text out-projection or feed-forward, and its text modulation has
    // 2 chunks instead of 6.
    const int64_t n = r.n, L = r.L, D = m.dim;
    const int64_t full = std::max<int64_t>(s.num_layers - 1, 0), last = s.num_layers > 0 ? 1 : 0;
    k.tp_all_reduce_calls = 4 * full + 2 * last;
    k.tp_all_reduce_elems = full * 2 * (n + L) * D + last * 2 * n * D;
    k.has_adaln_gather = true;
    k.adaln_gather_calls = 2 * s.num_layers;
    k.adaln_gather_elems = (s.num_layers - last) * 12 * D + last * 8 * D;
    return k;
  };
  register_transformer(std::move(a));
}

}  // namespace meshdit
