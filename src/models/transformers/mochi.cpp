// Mochi-1 (Genmo, 2024) text-to-video DiT as diffusers' MochiTransformer3DModel computes it:
//
//   x = patch_embed(each latent frame)                         2x2 patches -> visual tokens [B, F h w, dim]
//   temb = TimestepEmbedding(t) + AttentionPool(T5 tokens)     conditioning [B, dim]
//   c = caption_proj(T5 tokens)                                text tokens [B, L, pooled_projection_dim]
//   blocks: asymmetric joint attention over [visual, valid text] (learned 3-D RoPE on the visual tokens,
//           padded text dropped), SwiGLU feed-forwards, RMSNorm modulation with tanh gates; the last block
//           does not update the text
//   out = unpatchify(proj_out(AdaLN(x, temb)))
//
// The reference runs its norms and RoPE in float32 whatever the model dtype; every activation here is float32.
#include "models/transformers/mochi.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "backend/model_ops.h"
#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/json_config.h"
#include "layers/block_cache.h"
#include "models/registry.h"

namespace meshdit {

Result<MochiConfig> MochiConfig::from_json(const std::string& path) {
  MD_TRY(Json j, load_json(path));
  MochiConfig c;
  ConfigReader r(j, path);
  r.get("patch_size", c.patch_size);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("attention_head_dim", c.attention_head_dim);
  r.get("num_layers", c.num_layers);
  r.get("pooled_projection_dim", c.pooled_projection_dim);
  r.get("in_channels", c.in_channels);
  c.out_channels = c.in_channels;  // diffusers: out_channels or in_channels (null in the released config)
  r.get("out_channels", c.out_channels);
  r.get("text_embed_dim", c.text_embed_dim);
  r.get("time_embed_dim", c.time_embed_dim);
  r.get("max_sequence_length", c.max_sequence_length);
  r.get("qk_norm", c.qk_norm);
  r.get("activation_fn", c.activation_fn);
  // diffusers builds Mochi's attention with its own RMS norms and SwiGLU whatever these say; another value
  // would be a different model.
  if (c.qk_norm != "rms_norm") r.fail("qk_norm", "'" + c.qk_norm + "' is not supported (only 'rms_norm')");
  if (c.activation_fn != "swiglu")
    r.fail("activation_fn", "'" + c.activation_fn + "' is not supported (only 'swiglu')");
  constexpr int64_t kMaxSize = 1 << 16;
  const std::pair<const char*, int64_t> sizes[] = {{"patch_size", c.patch_size},
                                                   {"num_attention_heads", c.num_attention_heads},
                                                   {"attention_head_dim", c.attention_head_dim},
                                                   {"pooled_projection_dim", c.pooled_projection_dim},
                                                   {"in_channels", c.in_channels},
                                                   {"out_channels", c.out_channels},
                                                   {"text_embed_dim", c.text_embed_dim},
                                                   {"time_embed_dim", c.time_embed_dim},
                                                   {"max_sequence_length", c.max_sequence_length}};
  for (const auto& [key, v] : sizes)
    if (v < 1 || v > kMaxSize)
      r.fail(key, "must be between 1 and " + std::to_string(kMaxSize) + ", got " + std::to_string(v));
  if (c.num_layers < 1 || c.num_layers > 4096) r.fail("num_layers", "must be between 1 and 4096");
  if (c.attention_head_dim % 2) r.fail("attention_head_dim", "must be even (RoPE rotates pairs)");
  if (c.time_embed_dim % 2) r.fail("time_embed_dim", "must be even (sin and cos halves)");
  if (c.text_embed_dim % MochiAttentionPool::kHeads)
    r.fail("text_embed_dim", "must be divisible by the caption pooler's " + std::to_string(MochiAttentionPool::kHeads) +
                                 " heads, got " + std::to_string(c.text_embed_dim));
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

namespace {

// torch.linspace(start, stop, steps) in float32 as torch's CPU kernel computes it (from both ends).
std::vector<float> linspace_f32(float start, float stop, int64_t steps) {
  std::vector<float> v(static_cast<size_t>(steps));
  const float step = steps > 1 ? (stop - start) / float(steps - 1) : 0.0f;
  const int64_t half = steps / 2;
  for (int64_t i = 0; i < steps; ++i)
    v[size_t(i)] = i < half ? start + step * float(i) : stop - step * float(steps - i - 1);
  return v;
}

// MochiRoPE._centers: the midpoints of n equal cells spanning [-n s / 2, n s / 2].
std::vector<float> centres(int64_t n, double s) {
  const std::vector<float> e = linspace_f32(float(-double(n) * s / 2), float(double(n) * s / 2), n + 1);
  std::vector<float> c(static_cast<size_t>(n));
  for (size_t i = 0; i < c.size(); ++i) c[i] = (e[i] + e[i + 1]) / 2;
  return c;
}

}  // namespace

RopeTables mochi_rope(const Tensor& pos_frequencies, int64_t h, int64_t w, Range tokens, Range heads, int64_t n_txt,
                      Device dev) {
  const int64_t half = pos_frequencies.size(2), n = tokens.size(), Hl = heads.size();
  // Positions (t, y, x) of this rank's tokens; y and x are centred and scaled so the grid has a 192 x 192 area.
  const double scale = std::sqrt(192.0 * 192.0 / double(h * w));
  const std::vector<float> ys = centres(h, scale), xs = centres(w, scale);
  std::vector<float> pos(size_t(n * 3));
  for (int64_t t = tokens.begin; t < tokens.end; ++t) {
    const size_t at = size_t(3 * (t - tokens.begin));
    pos[at] = float(t / (h * w));
    pos[at + 1] = ys[size_t(t / w % h)];
    pos[at + 2] = xs[size_t(t % w)];
  }
  // Angles [n, heads x half] = pos . freqs (einsum "nd,dhf->nhf"), in float32 as the reference forces even under
  // autocast: element-wise products and sums, not a linear (which --precision bf16 would round to bf16).
  const int64_t K = Hl * half;
  const Tensor p = ops::to_device(Tensor::from_f32({n, 3}, pos), dev);
  const Tensor f = pos_frequencies.slice(1, heads.begin, heads.end).to(DType::F32).contiguous().reshape({3, K});
  Tensor angles;
  for (int64_t a = 0; a < 3; ++a) {
    const Tensor term = ops::mul(p.slice(1, a, a + 1).expand({n, K}), f.slice(0, a, a + 1).expand({n, K}));
    angles = a == 0 ? term : ops::add(angles, term);
  }
  // cos/sin of each angle written to both columns of its pair: rope_tables of a one-pair axis at theta 1
  // (angle x 1^0), evaluated in float64 and rounded, as torch's float32 cos/sin are accurate to the last bit.
  auto [cos, sin] = ops::rope_tables(angles.reshape({n * K, 1}), {2}, 1.0);
  const int64_t cols = 2 * K;
  if (n_txt == 0) return {cos.reshape({n, cols}), sin.reshape({n, cols})};
  return {concat({cos.reshape({n, cols}), ops::full({n_txt, cols}, 1.0f, dev)}, 0),
          concat({sin.reshape({n, cols}), ops::full({n_txt, cols}, 0.0f, dev)}, 0)};
}

Result<MochiAttentionPool> MochiAttentionPool::load(const Checkpoint& ck, const std::string& prefix, int64_t embed_dim,
                                                    int64_t out_dim) {
  MochiAttentionPool p;
  MD_TRY(p.to_kv, Linear::load(ck, prefix + ".to_kv", embed_dim, 2 * embed_dim));
  MD_TRY(p.to_q, Linear::load(ck, prefix + ".to_q", embed_dim, embed_dim));
  MD_TRY(p.to_out, Linear::load(ck, prefix + ".to_out", embed_dim, out_dim));
  return p;
}

Tensor MochiAttentionPool::operator()(const Tensor& x, const Tensor& key_bias) const {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), hd = D / kHeads;
  const Device dev = x.device();
  // The mean of the valid tokens: an attention whose zero queries weigh every visible key alike.
  AttentionMask text;
  text.bias = key_bias.reshape({B, 1, 1, L});
  const Tensor xh = x.reshape({B, L, kHeads, hd});
  const Tensor mean = ops::attention(ops::full({B, 1, kHeads, hd}, 0.0f, dev), xh, xh, 1.0f, &text).reshape({B, 1, D});
  // That mean is the one query; keys and values come from [mean, tokens], the mean always visible.
  const Tensor kv = to_kv(concat({mean, x}, 1));  // [B, 1 + L, 2 D]: keys, then values
  const Tensor k = kv.slice(2, 0, D).contiguous().reshape({B, 1 + L, kHeads, hd});
  const Tensor v = kv.slice(2, D, 2 * D).contiguous().reshape({B, 1 + L, kHeads, hd});
  const Tensor q = to_q(mean).reshape({B, 1, kHeads, hd});
  AttentionMask keys;
  keys.bias = concat({ops::full({B, 1}, 0.0f, dev), key_bias}, 1).reshape({B, 1, 1, 1 + L});
  const Tensor o = ops::attention(q, k, v, 1.0f / std::sqrt(float(hd)), &keys);
  return to_out(o.reshape({B, D}));
}

Result<MochiBlock> MochiBlock::load(const Checkpoint& ck, const std::string& prefix, const MochiConfig& c,
                                    bool context_pre_only, const ParallelContext* par) {
  MochiBlock b;
  const int64_t dim = c.inner_dim(), txt = c.pooled_projection_dim;
  b.context_pre_only = context_pre_only;
  MD_TRY(b.norm1, ModulationLinear::load(ck, prefix + ".norm1.linear", dim, 4, dim, par));
  if (context_pre_only) {
    MD_TRY(b.norm1_context, ModulationLinear::load(ck, prefix + ".norm1_context.linear_1", dim, 1, txt, par));
  } else {
    MD_TRY(b.norm1_context, ModulationLinear::load(ck, prefix + ".norm1_context.linear", dim, 4, txt, par));
  }
  JointAttention::Spec s;
  s.dim = dim;
  s.txt_dim = txt;
  s.heads = c.num_attention_heads;
  s.head_dim = c.attention_head_dim;
  s.context_pre_only = context_pre_only;
  s.qkv_bias = false;
  s.eps = 1e-5f;  // MochiAttention's q/k norms; the block's own norms use 1e-6
  MD_TRY(b.attn1, JointAttention::load(ck, prefix + ".attn1", s, par));
  b.norm.eps = 1e-6f;
  MD_TRY(b.ff, FeedForward::load_gated(ck, prefix + ".ff", dim, c.ff_inner_dim(), dim, Act::SiLU, false, par));
  if (!context_pre_only) {
    MD_TRY(b.ff_context, FeedForward::load_gated(ck, prefix + ".ff_context", txt, c.ff_context_inner_dim(), txt,
                                                 Act::SiLU, false, par));
  }
  return b;
}

void MochiBlock::operator()(Tensor& x, Tensor& context, const Tensor& silu_temb, const RopeTables& rope,
                            const SeqLayout* seq, const Tensor& txt_bias, const Tensor& txt_keep) const {
  const int64_t B = x.size(0);
  const Device dev = x.device();
  // Mochi's modulation scales without shifting: modulate() with a zero shift (an RMSNorm: no fused kernel).
  auto scaled = [&](const Tensor& t, const Tensor& scale) {
    return norm.modulated(t, ops::full({B, scale.size(1)}, 0.0f, dev), scale);
  };
  const std::vector<Tensor> m = norm1(silu_temb).chunk(4, 1);  // scale_msa, gate_msa, scale_mlp, gate_mlp
  const Tensor mc = norm1_context(silu_temb);
  const std::vector<Tensor> mctx = context_pre_only ? std::vector<Tensor>{mc} : mc.chunk(4, 1);

  auto [attn_x, attn_c] = attn1(scaled(x, m[0]), scaled(context, mctx[0]), JointAttention::Order::ImageFirst, &rope,
                                seq, &txt_bias, &txt_keep);
  // norm2 / norm4: the residual branch RMS-normalised, then scaled by tanh(gate).
  ops::add_gated_(x, ops::activation(m[1], Act::Tanh), norm(attn_x));
  ops::add_gated_(x, ops::activation(m[3], Act::Tanh), norm(ff(scaled(x, m[2]))));
  if (context_pre_only) return;
  ops::add_gated_(context, ops::activation(mctx[1], Act::Tanh), norm(attn_c));
  ops::add_gated_(context, ops::activation(mctx[3], Act::Tanh), norm((*ff_context)(scaled(context, mctx[2]))));
}

Result<MochiTransformer> MochiTransformer::load(const Checkpoint& ck, const MochiConfig& c,
                                                const ParallelContext* par) {
  MochiTransformer m;
  m.cfg_ = c;
  if (par) m.par_ = *par;
  if (c.num_attention_heads % m.par_.tp_size() != 0)
    return make_error("Mochi transformer: " + std::to_string(c.num_attention_heads) +
                      " attention heads are not divisible by tp=" + std::to_string(m.par_.tp_size()));
  const int64_t dim = c.inner_dim(), p = c.patch_size;
  MD_TRY(m.patch_embed_, PatchEmbed::load(ck, "patch_embed", c.in_channels, dim, int(p), /*pos_max=*/0));
  m.timestep_embedder_.channels = int(c.time_embed_dim);
  m.timestep_embedder_.flip_sin_to_cos = true;
  m.timestep_embedder_.downscale_freq_shift = 0;
  MD_TRY(m.timestep_embedder_.mlp,
         Mlp2::load(ck, "time_embed.timestep_embedder", c.time_embed_dim, dim, dim, Act::SiLU));
  MD_TRY(m.pooler_, MochiAttentionPool::load(ck, "time_embed.pooler", c.text_embed_dim, dim));
  MD_TRY(m.caption_proj_, Linear::load(ck, "time_embed.caption_proj", c.text_embed_dim, c.pooled_projection_dim));
  MD_TRY(m.pos_frequencies_, ck.get("pos_frequencies", {3, c.num_attention_heads, c.attention_head_dim / 2}));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    MD_TRY(MochiBlock b, MochiBlock::load(ck, "transformer_blocks." + std::to_string(i), c,
                                          /*context_pre_only=*/i == c.num_layers - 1, par));
    m.blocks_.push_back(std::move(b));
  }
  MD_TRY(m.norm_out_, AdaLayerNormContinuous::load(ck, "norm_out", dim, dim, 1e-6f, par));
  MD_TRY(m.proj_out_, Linear::load(ck, "proj_out", dim, p * p * c.out_channels));
  return m;
}

Result<Tensor> MochiTransformer::forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states,
                                         const Tensor& timestep, const Tensor& encoder_attention_mask,
                                         const Hooks* hooks) const {
  const MochiConfig& c = cfg_;
  const int64_t p = c.patch_size;
  if (hidden_states.dim() != 5 || hidden_states.size(1) != c.in_channels)
    return make_error("Mochi transformer: hidden_states " + shape_str(hidden_states.shape()) + " must be [B, " +
                      std::to_string(c.in_channels) + ", frames, height, width]");
  const int64_t B = hidden_states.size(0), F = hidden_states.size(2), H = hidden_states.size(3),
                W = hidden_states.size(4);
  if (H % p || W % p || F < 1 || H < 1 || W < 1)
    return make_error("Mochi transformer: hidden_states " + shape_str(hidden_states.shape()) +
                      ": height and width must be positive multiples of the patch size " + std::to_string(p));
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != B ||
      encoder_hidden_states.size(2) != c.text_embed_dim || encoder_hidden_states.size(1) < 1)
    return make_error("Mochi transformer: encoder_hidden_states " + shape_str(encoder_hidden_states.shape()) +
                      " must be [" + std::to_string(B) + ", L, " + std::to_string(c.text_embed_dim) + "]");
  const int64_t L = encoder_hidden_states.size(1);
  if (timestep.shape() != Shape{B})
    return make_error("Mochi transformer: timestep " + shape_str(timestep.shape()) + " must be [" + std::to_string(B) +
                      "]");
  if (!encoder_attention_mask.defined() || encoder_attention_mask.shape() != Shape{B, L})
    return make_error("Mochi transformer: encoder_attention_mask " +
                      (encoder_attention_mask.defined() ? shape_str(encoder_attention_mask.shape()) : "(missing)") +
                      " must be [B, L] = " + shape_str({B, L}));
  const int64_t h = H / p, w = W / p, N = F * h * w, dim = c.inner_dim();
  const Device dev = hidden_states.device();

  // Conditioning: timestep + attention-pooled caption; the caption's own tokens at the text width.
  const Tensor text = encoder_hidden_states.to(DType::F32);
  const Tensor txt_bias = ops::mask_to_bias(encoder_attention_mask);  // [B, L]: 0 valid, -inf padding
  const Tensor temb = ops::add(timestep_embedder_(timestep.to(DType::F32)), pooler_(text, txt_bias));
  report(hooks, "hook.time_embed.0", temb);
  Tensor context = caption_proj_(text);
  report(hooks, "hook.time_embed.1", context);

  // Every frame patchified alone: [B, C, F, H, W] -> [B F, C, H, W] -> [B F, h w, dim] -> [B, F h w, dim].
  const Tensor frames =
      hidden_states.to(DType::F32).permute({0, 2, 1, 3, 4}).contiguous().reshape({B * F, c.in_channels, H, W});
  Tensor x = patch_embed_(frames);
  report(hooks, "hook.patch_embed", x);
  x = x.reshape({B, N, dim});

  // SP splits the visual tokens; the text (with its mask) stays whole on every rank, after the visual tokens as
  // the reference appends it. Under TP a rank's RoPE and text-row mask cover its heads only.
  const SequenceShard shard(N, L, /*txt_first=*/false, par_);
  const Range heads = head_shard(c.num_attention_heads, &par_);
  const RopeTables rope = mochi_rope(pos_frequencies_, h, w, shard.range(), heads, L, dev);
  // Padded text rows leave the reference's attention with zeros: 1 on a valid row, 0 on padding.
  Tensor keep = encoder_attention_mask.dtype() == DType::F32 ? encoder_attention_mask.clone()
                                                             : encoder_attention_mask.to(DType::F32);
  ops::clamp_(keep, 0.0f, 1.0f);
  const Tensor txt_keep = keep.reshape({B, L, 1}).expand({B, L, heads.size() * c.attention_head_dim}).contiguous();

  x = shard.local(x);
  const Tensor silu_temb = ops::activation(temb, Act::SiLU);
  MD_TRY(CachedBlocks cache, CachedBlocks::begin(current_step_cache(), {int64_t(blocks_.size())}, &par_, x));
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (cache.run(int64_t(i))) {
      Span span("block", "transformer_blocks." + std::to_string(i));
      blocks_[i](x, context, silu_temb, rope, shard.layout(), txt_bias, txt_keep);
    }
    cache.after(int64_t(i), {x, context}, x);
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".0", x);
    report(hooks, "hook.transformer_blocks." + std::to_string(i) + ".1", context);
  }
  x = norm_out_(x, silu_temb);
  report(hooks, "hook.norm_out", x);
  // proj_out's (row, column, channel) patches back to frames, then [B, C, F, H, W].
  const Tensor y = shard.gather(proj_out_(x)).reshape({B * F, h * w, p * p * c.out_channels});
  return ops::unpatchify(y, h, w, int(p), c.out_channels)
      .reshape({B, F, c.out_channels, H, W})
      .permute({0, 2, 1, 3, 4})
      .contiguous();
}

// ---------------------------------------------------------------------------------------------------------
// What Mochi is to the registry (models/registry.h).

namespace {

class MochiModel final : public Transformer {
 public:
  explicit MochiModel(MochiTransformer m) : m_(std::move(m)) {}
  Result<Tensor> forward(const TensorMap& in, const Hooks* hooks) const override {
    auto get = [&](const char* n) { return input_of(in, n); };
    return m_.forward(get("hidden_states"), get("encoder_hidden_states"), get("timestep"),
                      get("encoder_attention_mask"), hooks);
  }

 private:
  MochiTransformer m_;
};

const MochiConfig& cfg_of(const std::any& a) { return std::any_cast<const MochiConfig&>(a); }

// Multiply-adds x 2 of every linear and attention of one forward at batch 1: N visual tokens, L text tokens.
double mochi_flops(const MochiConfig& c, int64_t N, int64_t L) {
  const double D = double(c.inner_dim()), P = double(c.pooled_projection_dim), T = double(c.text_embed_dim);
  const double n = double(N), l = double(L), Fi = double(c.ff_inner_dim()), Fc = double(c.ff_context_inner_dim());
  const double mod = 2 * D * (4 * D + 4 * P);
  const double qkv = 2 * n * D * 3 * D + 2 * l * P * 3 * D;
  const double attn = 4 * (n + l) * (n + l) * D;
  const double out = 2 * n * D * D + 2 * l * D * P;
  const double ff = 2 * n * 3 * D * Fi + 2 * l * 3 * P * Fc;
  const double pp = double(c.patch_size * c.patch_size);
  const double embed = 2 * n * double(c.in_channels) * pp * D + 2 * (double(c.time_embed_dim) + D) * D +
                       2 * (l + 1) * T * 2 * T + 2 * T * T + 2 * T * D + 2 * l * T * P;
  const double tail = 2 * D * 2 * D + 2 * n * D * pp * double(c.out_channels);
  return double(c.num_layers) * (mod + qkv + attn + out + ff) + embed + tail;
}

// A config from the tensors of a diffusers-named file without config.json: every size is in some weight.
Result<MochiConfig> infer_mochi_config(const Checkpoint& ck) {
  MochiConfig c;
  c.num_layers = block_count(ck.names(), "transformer_blocks.");
  if (c.num_layers < 1) return make_error(ck.origin() + ": no transformer_blocks");
  MD_TRY(Shape pe, ck.shape_of("patch_embed.proj.weight"));
  if (pe.size() != 4 || pe[2] != pe[3])
    return make_error(ck.origin() + ": tensor 'patch_embed.proj.weight' " + shape_str(pe) +
                      " is not a square Conv2d weight [dim, C, p, p]");
  const int64_t D = pe[0];
  c.in_channels = pe[1];
  c.patch_size = pe[2];
  MD_TRY(Shape pf, ck.shape_of("pos_frequencies"));
  if (pf.size() != 3 || pf[0] != 3 || pf[1] < 1 || D % pf[1] != 0 || D / pf[1] != 2 * pf[2])
    return make_error(ck.origin() + ": tensor 'pos_frequencies' " + shape_str(pf) +
                      " is not [3, heads, head_dim / 2] for the visual width " + std::to_string(D));
  c.num_attention_heads = pf[1];
  c.attention_head_dim = 2 * pf[2];
  MD_TRY(Shape t, matrix_shape(ck, "time_embed.timestep_embedder.linear_1.weight"));
  c.time_embed_dim = t[1];
  MD_TRY(Shape cap, matrix_shape(ck, "time_embed.caption_proj.weight"));
  c.pooled_projection_dim = cap[0];
  c.text_embed_dim = cap[1];
  MD_TRY(Shape out, matrix_shape(ck, "proj_out.weight"));
  if (out[0] % (c.patch_size * c.patch_size) != 0)
    return make_error(ck.origin() + ": tensor 'proj_out.weight' has " + std::to_string(out[0]) +
                      " rows, not a whole number of patches");
  c.out_channels = out[0] / (c.patch_size * c.patch_size);
  return c;
}

}  // namespace

void register_mochi() {
  TransformerArch a;
  a.name = "mochi";
  a.classes = {"MochiTransformer3DModel"};
  a.presets = {{"mochi", [] { return std::any(MochiConfig{}); }}};
  // MochiPipeline: 848 x 480, 163 frames (28 latent frames), prompts of 256 T5 tokens, CFG as a batch of two.
  a.defaults = PlanDefaults{848, 480, 163, 256, /*cfg_batch=*/true};
  a.parse_config = [](const std::string& path) -> Result<std::any> {
    MD_TRY(MochiConfig c, MochiConfig::from_json(path));
    return std::any(c);
  };
  a.diffusers_detect = {"pos_frequencies", "time_embed.pooler."};
  a.diffusers_modules = {"patch_embed", "time_embed", "pos_frequencies", "transformer_blocks", "norm_out", "proj_out"};
  a.infer_config = [](const Checkpoint& ck) -> Result<std::any> {
    MD_TRY(MochiConfig c, infer_mochi_config(ck));
    return std::any(c);
  };
  a.with_blocks = [](const std::any& c, int64_t blocks, int64_t) {
    MochiConfig m = cfg_of(c);
    m.num_layers = blocks;
    return std::any(m);
  };
  // text_lengths (each prompt's valid tokens) is what encoder_attention_mask says already.
  a.call_config = [](const std::any& c, const Json& args) -> Result<std::any> {
    if (!args.is_object()) return make_error("non_tensor_args: expected an object, got " + args.dump());
    for (auto it = args.begin(); it != args.end(); ++it)
      if (it.key() != "text_lengths")
        return make_error("non_tensor_args." + it.key() + ": not an argument the Mochi transformer takes");
    return c;
  };
  a.load = [](const Checkpoint& ck, const std::any& c,
              const ParallelContext* par) -> Result<std::shared_ptr<Transformer>> {
    MD_TRY(MochiTransformer m, MochiTransformer::load(ck, cfg_of(c), par));
    return std::shared_ptr<Transformer>(std::make_shared<MochiModel>(std::move(m)));
  };
  a.inputs = {{"hidden_states"}, {"encoder_hidden_states"}, {"timestep"}, {"encoder_attention_mask"}};
  a.dims = [](const std::any& c) {
    const MochiConfig& m = cfg_of(c);
    return ModelDims{m.inner_dim(), m.num_attention_heads, m.attention_head_dim,
                     m.out_channels * m.patch_size * m.patch_size};
  };
  a.describe = [](const std::any& c) {
    const MochiConfig& m = cfg_of(c);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "Mochi: %lld asymmetric joint blocks, %lld heads x %lld, dim %lld (text %lld), SwiGLU %lld, "
                  "CFG batch",
                  (long long)m.num_layers, (long long)m.num_attention_heads, (long long)m.attention_head_dim,
                  (long long)m.inner_dim(), (long long)m.pooled_projection_dim, (long long)m.ff_inner_dim());
    return std::string(buf);
  };
  a.image_tokens = [](const std::any& c, int64_t width, int64_t height, int64_t frames) -> Result<int64_t> {
    const int64_t s = 8 * cfg_of(c).patch_size;  // 8x VAE, then the patch
    if (width % s || height % s || width < s || height < s)
      return make_error("--width/--height " + std::to_string(width) + "x" + std::to_string(height) +
                        ": Mochi needs positive multiples of " + std::to_string(s));
    if (frames < 1 || (frames - 1) % 6 != 0)
      return make_error("--frames " + std::to_string(frames) + ": Mochi needs 6k+1 frames (VAE stride 6 in time)");
    return ((frames - 1) / 6 + 1) * (height / s) * (width / s);
  };
  a.tokens_of_inputs = [](const std::any& c, const TensorMap& in) {
    auto it = in.find("hidden_states");
    if (it == in.end() || it->second.dim() != 5) return int64_t(0);
    const int64_t p = cfg_of(c).patch_size;
    const Tensor& x = it->second;
    return x.size(2) * (x.size(3) / p) * (x.size(4) / p);
  };
  // frames video frames (6k+1: the VAE's stride 6 in time), width x height pixels, every text token valid.
  a.random_inputs = [](const std::any& c, int64_t width, int64_t height, int64_t frames, int64_t L) {
    const MochiConfig& m = cfg_of(c);
    TensorMap in;
    in["hidden_states"] = torch_randn({1, m.in_channels, (frames - 1) / 6 + 1, height / 8, width / 8}, 1);
    in["encoder_hidden_states"] = torch_randn({1, L, m.text_embed_dim}, 2);
    in["timestep"] = Tensor::from_f32({1}, {500.0f});
    in["encoder_attention_mask"] = Tensor::from_i64({1, L}, std::vector<int64_t>(size_t(L), 1));
    return in;
  };
  a.flops = [](const std::any& c, int64_t N, int64_t L) { return mochi_flops(cfg_of(c), N, L); };
  a.rows_of = [](const std::string& w) {
    if (starts_with(w, "time_embed.caption_proj.") || starts_with(w, "time_embed.pooler.to_kv.")) return Rows::Text;
    if (starts_with(w, "time_embed.") || starts_with(w, "norm_out.") || w.find(".norm1") != std::string::npos)
      return Rows::One;
    if (w == "pos_frequencies" || w.find("norm") != std::string::npos) return Rows::None;  // q/k norms
    if (w.find(".add_") != std::string::npos || w.find(".to_add_out") != std::string::npos ||
        w.find(".ff_context.") != std::string::npos)
      return Rows::Text;
    return Rows::Image;
  };
  a.cost = [](const std::any& cfg, const RankShape& r) {
    const MochiConfig& c = cfg_of(cfg);
    ForwardCost k;
    const int tp = r.pc.tp, sp = r.pc.sp;
    const int64_t D = c.inner_dim(), Dt = D / tp, P = c.pooled_projection_dim, L = r.L, N = r.N, n = r.n;
    const int64_t Ft = (c.ff_inner_dim() + tp - 1) / tp, blocks = c.num_layers, pp = c.patch_size * c.patch_size;
    // Peak: both residual streams plus the largest phase (joint attention with its normed inputs, q/k/v and
    // output of this rank's heads; the SwiGLU's doubled hidden and its product).
    const int64_t sp_extra = sp == 1 ? 0 : r.pc.sp_mode == SpMode::Ring ? 4 * n * Dt : 4 * (N + L) * (Dt / sp);
    const int64_t resid = n * D + L * P;
    const int64_t attn = resid + n * D + L * P + 3 * (n + L) * Dt + (n + L) * Dt + sp_extra;
    const int64_t ff = resid + n * D + 2 * n * Ft + n * Ft + n * D;
    const int64_t inputs = n * c.in_channels * pp + L * c.text_embed_dim;
    const int64_t rope = 2 * (n + L) * Dt;  // per-head tables of this rank's heads
    k.act_elems = r.b * (inputs + std::max(attn, ff)) + rope;
    // Joint attention over [visual, text] as in an MM-DiT.
    const double Dd = double(D) / tp, Nd = double(N), Ld = double(L), nn = double(n), bb = double(r.b);
    const bool uly = sp > 1 && r.pc.sp_mode == SpMode::Ulysses;
    k.attn_flops = uly ? 4 * bb * (Nd + Ld) * (Nd + Ld) * Dd / sp : 4 * bb * (nn + Ld) * (Nd + Ld) * Dd;
    k.sp_attentions = blocks;
    // All-reduces per block: to_out and ff (visual), to_add_out and ff_context (text, not in the last block).
    k.tp_all_reduce_calls = 4 * blocks - 2;
    k.tp_all_reduce_elems = blocks * 2 * (n * D + L * P) - 2 * L * P;
    // Modulations gathered: norm1 (4 dim) and norm1_context (4 text, 1 text in the last block), norm_out (2 dim).
    k.has_adaln_gather = true;
    k.adaln_gather_calls = 2 * blocks + 1;
    k.adaln_gather_elems = blocks * (4 * D + 4 * P) - 3 * P + 2 * D;
    return k;
  };
  register_transformer(std::move(a));
}

}  // namespace meshdit
