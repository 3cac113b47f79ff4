// Qwen-Image's MMDiT (Qwen Team, "Qwen-Image Technical Report", 2025), as diffusers'
// QwenImageTransformer2DModel computes it:
//
//   x = img_in(packed latents)                                     image tokens   [B, N, dim]
//   c = txt_in(RMSNorm(Qwen2.5-VL hidden states))                  text tokens    [B, L, dim]
//   y = TimestepEmbedding(Timesteps(1000 sigma))                   conditioning   [B, dim]
//   for each block: (c, x) = Block(x, c, y)    joint attention over [c; x], padded text keys masked,
//                                              3-axis RoPE (frame, centred height, centred width)
//   out = proj_out(AdaLN(x, y))
#include "models/transformers/qwenimage.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "backend/model_ops.h"
#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/json_config.h"
#include "layers/block_cache.h"
#include "layers/sequence_shard.h"
#include "models/registry.h"

namespace meshdit {

Result<QwenImageConfig> QwenImageConfig::from_json(const std::string& path) {
  MD_TRY(std::string text, read_text_file(path));
  MD_TRY(Json j, parse_json(text, path));
  QwenImageConfig c;
  ConfigReader r(j, path);
  r.get("patch_size", c.patch_size);
  r.get("in_channels", c.in_channels);
  if (j.contains("out_channels") && j["out_channels"].is_null())
    c.out_channels = c.in_channels;
  else
    r.get("out_channels", c.out_channels);
  r.get("num_layers", c.num_layers);
  r.get("attention_head_dim", c.attention_head_dim);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("joint_attention_dim", c.joint_attention_dim);
  r.get("axes_dims_rope", c.axes_dims_rope);
  for (const char* flag : {"guidance_embeds", "zero_cond_t", "use_additional_t_cond", "use_layer3d_rope"}) {
    bool on = false;
    r.get(flag, on);
    if (on) r.fail(flag, "is true: that Qwen-Image variant is not supported yet");
  }
  constexpr int64_t kMaxSize = 1 << 15;
  const std::pair<const char*, int64_t> sizes[] = {{"patch_size", c.patch_size},
                                                   {"in_channels", c.in_channels},
                                                   {"out_channels", c.out_channels},
                                                   {"num_layers", c.num_layers},
                                                   {"attention_head_dim", c.attention_head_dim},
                                                   {"num_attention_heads", c.num_attention_heads},
                                                   {"joint_attention_dim", c.joint_attention_dim}};
  for (const auto& [key, v] : sizes)
    if (v < 1 || v > kMaxSize)
      r.fail(key, "must be between 1 and " + std::to_string(kMaxSize) + ", got " + std::to_string(v));
  int64_t rope_dim = 0;
  for (int d : c.axes_dims_rope) rope_dim += d;
  if (c.axes_dims_rope.size() != 3 ||
      std::any_of(c.axes_dims_rope.begin(), c.axes_dims_rope.end(), [](int d) { return d < 2 || d % 2; }) ||
      rope_dim != c.attention_head_dim)
    r.fail("axes_dims_rope", "must be three even sizes summing to attention_head_dim");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

RopeTables qwenimage_rope(const std::vector<int>& axes_dims, int64_t frames, int64_t h, int64_t w, int64_t L) {
  int64_t D = 0;
  for (int d : axes_dims) D += d;
  const int64_t N = frames * h * w;
  std::vector<float> cos(size_t((L + N) * D)), sin(cos.size());
  // Row `row` at positions pos[a] per axis. The reference's tables are complex64 polar(1, index * inv_freq), so
  // the angle is a float32 product and must not be formed in double.
  auto fill = [&](int64_t row, const int64_t pos[3]) {
    int64_t col = 0;
    for (size_t a = 0; a < 3; ++a) {
      const int dim = axes_dims[a];
      for (int j = 0; j < dim / 2; ++j, col += 2) {
        const float inv = 1.0f / std::pow(10000.0f, float(2 * j) / float(dim));
        const float ang = float(pos[a]) * inv;
        const float c = std::cos(ang), s = std::sin(ang);
        cos[size_t(row * D + col)] = cos[size_t(row * D + col + 1)] = c;
        sin[size_t(row * D + col)] = sin[size_t(row * D + col + 1)] = s;
      }
    }
  };
  // scale_rope centres the grid: rows -(h - h/2) .. h/2 - 1, likewise columns; text continues on the diagonal
  // after the largest image index.
  const int64_t txt0 = std::max(h / 2, w / 2);
  for (int64_t t = 0; t < L; ++t) {
    const int64_t p[3] = {txt0 + t, txt0 + t, txt0 + t};
    fill(t, p);
  }
  for (int64_t f = 0; f < frames; ++f)
    for (int64_t i = 0; i < h; ++i)
      for (int64_t k = 0; k < w; ++k) {
        const int64_t p[3] = {f, i - (h - h / 2), k - (w - w / 2)};
        fill(L + (f * h + i) * w + k, p);
      }
  return {Tensor::from_f32({L + N, D}, cos), Tensor::from_f32({L + N, D}, sin)};
}

Result<QwenImageBlock> QwenImageBlock::load(const Checkpoint& ck, const std::string& prefix, const QwenImageConfig& c,
                                            const ParallelContext* par) {
  const float eps = 1e-6f;
  const int64_t dim = c.inner_dim();
  QwenImageBlock b;
  // img_mod / txt_mod are nn.Sequential(SiLU, Linear): chunks (shift, scale, gate) for attention then MLP, the
  // order AdaLayerNormZero splits in.
  MD_TRY(b.img_mod.linear, ModulationLinear::load(ck, prefix + ".img_mod.1", dim, 6, dim, par));
  MD_TRY(b.txt_mod.linear, ModulationLinear::load(ck, prefix + ".txt_mod.1", dim, 6, dim, par));
  b.img_mod.norm = b.txt_mod.norm = b.img_norm2 = b.txt_norm2 = LayerNorm::plain(eps);
  MD_TRY(b.attn, JointAttention::load(ck, prefix + ".attn", dim, c.num_attention_heads, c.attention_head_dim,
                                      /*qk_norm=*/true, /*context_pre_only=*/false, eps, par));
  MD_TRY(b.img_mlp, FeedForward::load(ck, prefix + ".img_mlp", dim, 4 * dim, dim, Act::GeluTanh, par));
  MD_TRY(b.txt_mlp, FeedForward::load(ck, prefix + ".txt_mlp", dim, 4 * dim, dim, Act::GeluTanh, par));
  return b;
}

void QwenImageBlock::operator()(Tensor& img, Tensor& txt, const Tensor& silu_temb, const RopeTables& rope,
                                const SeqLayout* seq, const Tensor* txt_bias) const {
  const AdaLayerNormZero::Out x = img_mod(img, silu_temb), c = txt_mod(txt, silu_temb);
  auto [attn_img, attn_txt] = attn(x.x, c.x, JointAttention::Order::TextFirst, &rope, seq, txt_bias);
  ops::add_gated_(img, x.gate_msa, attn_img);
  ops::add_gated_(txt, c.gate_msa, attn_txt);
  ops::add_gated_(img, x.gate_mlp, img_mlp(img_norm2.modulated(img, x.shift_mlp, x.scale_mlp)));
  ops::add_gated_(txt, c.gate_mlp, txt_mlp(txt_norm2.modulated(txt, c.shift_mlp, c.scale_mlp)));
}

Result<QwenImageTransformer> QwenImageTransformer::load(const Checkpoint& ck, const QwenImageConfig& cfg,
                                                        const ParallelContext* par) {
  QwenImageTransformer m;
  m.cfg_ = cfg;
  if (par) m.par_ = *par;
  if (cfg.num_attention_heads % m.par_.tp_size() != 0)
    return make_error("Qwen-Image transformer: " + std::to_string(cfg.num_attention_heads) +
                      " attention heads are not divisible by tp=" + std::to_string(m.par_.tp_size()));
  const int64_t dim = cfg.inner_dim();
  m.time_text_embed_.channels = 256;
  m.time_text_embed_.flip_sin_to_cos = true;
  m.time_text_embed_.downscale_freq_shift = 0;
  m.time_text_embed_.scale = 1000;
  MD_TRY(m.time_text_embed_.mlp, Mlp2::load(ck, "time_text_embed.timestep_embedder", 256, dim, dim, Act::SiLU));
  MD_TRY(m.txt_norm_, RMSNorm::load(ck, "txt_norm", cfg.joint_attention_dim, 1e-6f));
  MD_TRY(m.img_in_, Linear::load(ck, "img_in", cfg.in_channels, dim));
  MD_TRY(m.txt_in_, Linear::load(ck, "txt_in", cfg.joint_attention_dim, dim));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    MD_TRY(auto block, QwenImageBlock::load(ck, "transformer_blocks." + std::to_string(i), cfg, par));
    m.transformer_blocks_.push_back(std::move(block));
  }
  MD_TRY(m.norm_out_, AdaLayerNormContinuous::load(ck, "norm_out", dim, dim));
  const int64_t p = cfg.patch_size;
  MD_TRY(m.proj_out_, Linear::load(ck, "proj_out", dim, p * p * cfg.out_channels));
  return m;
}

Result<Tensor> QwenImageTransformer::forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states,
                                             const Tensor& encoder_hidden_states_mask, const Tensor& timestep,
                                             const Hooks* hooks, std::array<int64_t, 3> img_shape) const {
  if (hidden_states.dim() != 3 || hidden_states.size(2) != cfg_.in_channels)
    return make_error("Qwen-Image transformer: hidden_states " + shape_str(hidden_states.shape()) + " must be [B, N, " +
                      std::to_string(cfg_.in_channels) + "]");
  const int64_t B = hidden_states.size(0), N = hidden_states.size(1);
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != B ||
      encoder_hidden_states.size(2) != cfg_.joint_attention_dim)
    return make_error("Qwen-Image transformer: encoder_hidden_states " + shape_str(encoder_hidden_states.shape()) +
                      " must be [B, L, " + std::to_string(cfg_.joint_attention_dim) + "]");
  const int64_t L = encoder_hidden_states.size(1);
  if (timestep.shape() != Shape{B})
    return make_error("Qwen-Image transformer: timestep " + shape_str(timestep.shape()) + " does not match batch " +
                      std::to_string(B));
  if (encoder_hidden_states_mask.defined() && encoder_hidden_states_mask.shape() != Shape{B, L})
    return make_error("Qwen-Image transformer: encoder_hidden_states_mask " +
                      shape_str(encoder_hidden_states_mask.shape()) + " must be [B, L] = " + shape_str({B, L}));
  if (img_shape[0] == 0) img_shape = cfg_.img_shape;
  int64_t frames = img_shape[0], h = img_shape[1], w = img_shape[2];
  if (frames == 0) {
    frames = 1;
    h = w = int64_t(std::llround(std::sqrt(double(N))));
  }
  if (frames * h * w != N)
    return make_error("Qwen-Image transformer: " + std::to_string(N) + " image tokens are not a " +
                      (img_shape[0] ? std::to_string(frames) + "x" + std::to_string(h) + "x" + std::to_string(w)
                                    : std::string("square")) +
                      " grid (img_shapes)");

  Tensor x = img_in_(hidden_states.to(DType::F32));
  report(hooks, "hook.img_in", x);
  Tensor c = txt_norm_(encoder_hidden_states.to(DType::F32));
  report(hooks, "hook.txt_norm", c);
  c = txt_in_(c);
  report(hooks, "hook.txt_in", c);
  const Tensor temb = time_text_embed_(timestep.to(DType::F32));
  report(hooks, "hook.time_text_embed", temb);
  // Padded text tokens are hidden as keys only: their own rows are still computed (and reported).
  Tensor txt_bias;
  if (encoder_hidden_states_mask.defined()) txt_bias = ops::mask_to_bias(encoder_hidden_states_mask);
  const RopeTables whole = qwenimage_rope(cfg_.axes_dims_rope, frames, h, w, L);
  const Device dev = x.device();

  const SequenceShard shard(N, L, /*txt_first=*/true, par_);
  x = shard.local(x);
  const RopeTables rope = shard.local(RopeTables{ops::to_device(whole.cos, dev), ops::to_device(whole.sin, dev)});
  const Tensor silu_temb = ops::activation(temb, Act::SiLU);
  MD_TRY(CachedBlocks blocks,
         CachedBlocks::begin(current_step_cache(), {int64_t(transformer_blocks_.size())}, &par_, x));
  for (size_t i = 0; i < transformer_blocks_.size(); ++i) {
    if (blocks.run(int64_t(i))) {
      Span span("block", "transformer_blocks." + std::to_string(i));
      transformer_blocks_[i](x, c, silu_temb, rope, shard.layout(), txt_bias.defined() ? &txt_bias : nullptr);
    }
    blocks.after(int64_t(i), {x, c}, x);
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".0", c);
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".1", x);
  }
  x = norm_out_(x, silu_temb);
  report(hooks, "hook.norm_out", x);
  return shard.gather(proj_out_(x));
}

// ---------------------------------------------------------------------------------------------------------
// What Qwen-Image is to the registry (models/registry.h).

namespace {

class QwenImageModel final : public Transformer {
 public:
  explicit QwenImageModel(QwenImageTransformer m) : m_(std::move(m)) {}
  Result<Tensor> forward(const TensorMap& in, const Hooks* hooks) const override {
    auto get = [&](const char* n) { return input_of(in, n); };
    return m_.forward(get("hidden_states"), get("encoder_hidden_states"), get("encoder_hidden_states_mask"),
                      get("timestep"), hooks);
  }

 private:
  QwenImageTransformer m_;
};

const QwenImageConfig& cfg_of(const std::any& a) { return std::any_cast<const QwenImageConfig&>(a); }

// Multiply-adds x 2 of every linear and attention of one forward: per token q/k/v, out and a 4x MLP in each
// stream, per sample the two 6 x dim modulations.
double qwenimage_flops(const QwenImageConfig& c, int64_t N, int64_t L) {
  const double D = double(c.inner_dim()), T = double(N + L);
  const double per = 2 * T * (3 * D * D + D * D + 8 * D * D) + 4 * T * T * D + 2 * 2 * 6 * D * D;
  return double(c.num_layers) * per;
}

QwenImageConfig qwen_image() { return QwenImageConfig{}; }  // Qwen/Qwen-Image's config.json = the defaults

// A config from the tensors of a file without config.json (ComfyUI's qwen_image_*.safetensors keep diffusers'
// names). The RoPE axes are not in the weights: the released model's (16, 56, 56) when they fit the heads.
Result<QwenImageConfig> infer_qwenimage_config(const Checkpoint& ck) {
  QwenImageConfig c;
  c.num_layers = block_count(ck.names(), "transformer_blocks.");
  if (c.num_layers < 1) return make_error(ck.origin() + ": no transformer_blocks");
  MD_TRY(Shape img_in, matrix_shape(ck, "img_in.weight"));
  const int64_t hidden = img_in[0];
  c.in_channels = img_in[1];
  const std::string qn = "transformer_blocks.0.attn.norm_q.weight";
  MD_TRY(c.attention_head_dim, vector_size(ck, qn));
  MD_TRY(c.num_attention_heads, head_count(ck, hidden, c.attention_head_dim, "the size of '" + qn + "'"));
  MD_TRY(Shape txt_in, matrix_shape(ck, "txt_in.weight"));
  c.joint_attention_dim = txt_in[1];
  MD_TRY(Shape out, matrix_shape(ck, "proj_out.weight"));
  if (out[0] % (c.patch_size * c.patch_size) != 0)
    return make_error(ck.origin() + ": tensor 'proj_out.weight' has " + std::to_string(out[0]) +
                      " rows, not a whole number of 2x2 patches");
  c.out_channels = out[0] / (c.patch_size * c.patch_size);
  int64_t axes = 0;
  for (int a : c.axes_dims_rope) axes += a;
  if (axes != c.attention_head_dim)
    return make_error(ck.origin() + ": head_dim " + std::to_string(c.attention_head_dim) +
                      " is not Qwen-Image's RoPE axes (16, 56, 56); give a config.json beside the file");
  return c;
}

}  // namespace

void register_qwenimage() {
  TransformerArch a;
  a.name = "qwenimage";
  a.classes = {"QwenImageTransformer2DModel"};
  a.presets = {{"qwen-image", [] { return std::any(qwen_image()); }}};
  a.with_blocks = [](const std::any& c, int64_t blocks, int64_t) {
    QwenImageConfig q = cfg_of(c);
    q.num_layers = blocks;
    return std::any(q);
  };
  // QwenImagePipeline: 1024 x 1024 by default (calculate_dimensions of 1024^2), prompts of up to 1024 tokens
  // (the template's prefix dropped), true CFG as a second batch.
  a.defaults = PlanDefaults{1024, 1024, 1, 1024, /*cfg_batch=*/true};
  a.parse_config = [](const std::string& path) -> Result<std::any> {
    MD_TRY(QwenImageConfig c, QwenImageConfig::from_json(path));
    return std::any(c);
  };
  a.infer_config = [](const Checkpoint& ck) -> Result<std::any> {
    MD_TRY(QwenImageConfig c, infer_qwenimage_config(ck));
    return std::any(c);
  };
  a.call_config = [](const std::any& c, const Json& args) -> Result<std::any> {
    QwenImageConfig q = cfg_of(c);
    if (!args.contains("img_shapes")) return std::any(q);
    // [[(frame, height, width), ...] per sample]: the reference builds RoPE from the first sample's first shape.
    const Json& s = args["img_shapes"];
    if (!s.is_array() || s.empty() || !s[0].is_array() || s[0].empty() || !s[0][0].is_array() || s[0][0].size() != 3 ||
        !s[0][0][0].is_number_integer() || !s[0][0][1].is_number_integer() || !s[0][0][2].is_number_integer())
      return make_error("non_tensor_args.img_shapes: expected [[[frame, height, width]], ...], got " + s.dump());
    if (s[0].size() != 1) return make_error("non_tensor_args.img_shapes: several images per sample are not supported");
    for (int i = 0; i < 3; ++i) {
      q.img_shape[size_t(i)] = s[0][0][size_t(i)].get<int64_t>();
      if (q.img_shape[size_t(i)] < 1 || q.img_shape[size_t(i)] > (1 << 12))
        return make_error("non_tensor_args.img_shapes: " + s[0][0].dump() + " is out of range");
    }
    return std::any(q);
  };
  // img_in / txt_in are names of Flux's BFL layout too: only txt_norm says Qwen-Image.
  a.gguf_architectures = {"qwen_image"};
  a.gguf_keep_float = {"img_in.", "txt_in.", "txt_norm.", "time_text_embed.", "norm_out.", "proj_out."};
  a.diffusers_detect = {"txt_norm."};
  a.diffusers_modules = {"img_in",   "txt_norm", "txt_in", "time_text_embed", "transformer_blocks",
                         "norm_out", "proj_out"};
  a.load = [](const Checkpoint& ck, const std::any& c,
              const ParallelContext* par) -> Result<std::shared_ptr<Transformer>> {
    MD_TRY(QwenImageTransformer m, QwenImageTransformer::load(ck, cfg_of(c), par));
    return std::shared_ptr<Transformer>(std::make_shared<QwenImageModel>(std::move(m)));
  };
  a.inputs = {{"hidden_states"}, {"encoder_hidden_states"}, {"encoder_hidden_states_mask", true, true}, {"timestep"}};
  a.dims = [](const std::any& c) {
    const QwenImageConfig& q = cfg_of(c);
    return ModelDims{q.inner_dim(), q.num_attention_heads, q.attention_head_dim,
                     q.out_channels * q.patch_size * q.patch_size};
  };
  a.describe = [](const std::any& c) {
    const QwenImageConfig& q = cfg_of(c);
    char buf[256];
    std::snprintf(buf, sizeof buf, "Qwen-Image: %lld dual-stream blocks, %lld heads x %lld, dim %lld, true CFG batch",
                  (long long)q.num_layers, (long long)q.num_attention_heads, (long long)q.attention_head_dim,
                  (long long)q.inner_dim());
    return std::string(buf);
  };
  a.image_tokens = [](const std::any&, int64_t w, int64_t h, int64_t frames) -> Result<int64_t> {
    if (w % 16 || h % 16)
      return make_error("--width/--height " + std::to_string(w) + "x" + std::to_string(h) +
                        ": Qwen-Image needs multiples of 16");
    if (frames != 1) return make_error("--frames: Qwen-Image is an image model");
    return (w / 16) * (h / 16);  // 8x VAE, 2x2 packing
  };
  a.tokens_of_inputs = [](const std::any&, const TensorMap& in) {
    auto it = in.find("hidden_states");
    return it == in.end() || it->second.dim() < 2 ? int64_t(0) : it->second.size(1);
  };
  a.random_inputs = [](const std::any& c, int64_t width, int64_t height, int64_t /*frames*/, int64_t L) {
    const QwenImageConfig& q = cfg_of(c);
    const int64_t N = (height / 16) * (width / 16);
    TensorMap m;
    m["hidden_states"] = torch_randn({1, N, q.in_channels}, 1);
    m["encoder_hidden_states"] = torch_randn({1, L, q.joint_attention_dim}, 2);
    m["timestep"] = Tensor::from_f32({1}, {0.5f});
    return m;
  };
  a.flops = [](const std::any& c, int64_t N, int64_t L) { return qwenimage_flops(cfg_of(c), N, L); };
  a.rows_of = [](const std::string& w) {
    if (starts_with(w, "time_text_embed.") || starts_with(w, "norm_out.") || w.find("_mod.") != std::string::npos)
      return Rows::One;
    if (w.find("norm") != std::string::npos) return Rows::None;  // txt_norm and the q/k norms
    if (starts_with(w, "txt_in") || w.find(".add_") != std::string::npos ||
        w.find(".to_add_out") != std::string::npos || w.find(".txt_mlp.") != std::string::npos)
      return Rows::Text;
    return Rows::Image;
  };
  a.cost = [](const std::any& c, const RankShape& r) {
    const QwenImageConfig& q = cfg_of(c);
    const MmditShape s{
        q.inner_dim(), 4 * q.inner_dim(), q.attention_head_dim, q.in_channels, q.joint_attention_dim, q.num_layers, 0,
        /*rope=*/true};
    ForwardCost k = mmdit_cost(s, r);
    // Per block: all-reduces of both attention outputs and both MLPs; the two 6 x dim modulations gathered.
    const int64_t n = r.n, L = r.L, D = s.dim;
    k.tp_all_reduce_calls = 4 * q.num_layers;
    k.tp_all_reduce_elems = q.num_layers * 2 * (n + L) * D;
    k.has_adaln_gather = true;
    k.adaln_gather_calls = 2 * q.num_layers;
    k.adaln_gather_elems = q.num_layers * 12 * D;
    return k;
  };
  register_transformer(std::move(a));
}

}  // namespace meshdit
