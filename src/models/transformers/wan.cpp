// Wan 2.x (Alibaba, 2025) text-to-video DiT as diffusers' WanTransformer3DModel computes it:
//
//   x = patch_embedding(latent video)                           3-D patches (t, h, w) -> video tokens [B, N, dim]
//   temb = time_embedder(sinusoid(t)); mod = time_proj(silu(temb))   one 6 x dim modulation for the whole model
//   c = text_embedder(UMT5 embeddings)                          text tokens [B, L, dim]
//   blocks: self-attention over the video tokens (3-D RoPE), cross-attention to c, feed-forward; each block
//           adds its learned scale_shift_table to the shared modulation
//   out = unpatchify(proj_out(norm_out(x) modulated by scale_shift_table + temb))
//
// The reference keeps the norms, the modulation tables and the time embedder in float32 (FP32LayerNorm,
// _keep_in_fp32_modules); every activation here is float32 whatever the weights' storage dtype.
#include "models/transformers/wan.h"

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

std::vector<int> WanConfig::rope_axes() const {
  const int hd = int(attention_head_dim), hw = 2 * (hd / 6);
  return {hd - 2 * hw, hw, hw};
}

Result<WanConfig> WanConfig::from_json(const std::string& path) {
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
  c.out_channels = c.in_channels;  // diffusers: out_channels or in_channels
  r.get("out_channels", c.out_channels);
  r.get("patch_size", c.patch_size);
  r.get("cross_attn_norm", c.cross_attn_norm);
  r.get("qk_norm", c.qk_norm);
  r.get("eps", c.eps);
  r.get("rope_max_seq_len", c.rope_max_seq_len);
  if (c.patch_size.size() != 3 || c.patch_size[0] < 1 || c.patch_size[1] < 1 || c.patch_size[2] < 1)
    r.fail("patch_size", "must be three positive integers (t, h, w)");
  if (r.has("image_dim") || r.has("added_kv_proj_dim") || r.has("pos_embed_seq_len"))
    r.fail("image_dim/added_kv_proj_dim/pos_embed_seq_len", "image-to-video transformers are not supported yet");
  // diffusers' WanAttention normalises q and k over all heads whatever the string says; other values come from
  // older conversions whose weights would not match.
  if (c.qk_norm != "rms_norm_across_heads")
    r.fail("qk_norm", "'" + c.qk_norm + "' is not supported (only 'rms_norm_across_heads')");
  constexpr int64_t kMaxSize = 1 << 16;
  const std::pair<const char*, int64_t> sizes[] = {{"num_attention_heads", c.num_attention_heads},
                                                   {"attention_head_dim", c.attention_head_dim},
                                                   {"ffn_dim", c.ffn_dim},
                                                   {"text_dim", c.text_dim},
                                                   {"freq_dim", c.freq_dim},
                                                   {"in_channels", c.in_channels},
                                                   {"out_channels", c.out_channels},
                                                   {"rope_max_seq_len", c.rope_max_seq_len}};
  for (const auto& [key, v] : sizes)
    if (v < 1 || v > kMaxSize)
      r.fail(key, "must be between 1 and " + std::to_string(kMaxSize) + ", got " + std::to_string(v));
  if (c.num_layers < 0 || c.num_layers > 4096) r.fail("num_layers", "out of range");
  // WanRotaryPosEmbed splits head_dim into (t, h, w) parts of even sizes, h = w = 2 (head_dim / 6).
  if (c.attention_head_dim % 2 || c.attention_head_dim < 6)
    r.fail("attention_head_dim",
           "must be even and at least 6 (3-axis RoPE), got " + std::to_string(c.attention_head_dim));
  if (!(c.eps > 0) || c.eps > 1) r.fail("eps", "must be in (0, 1]");
  if (c.freq_dim % 2) r.fail("freq_dim", "must be even (sin and cos halves)");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

RopeTables wan_rope(const WanConfig& c, int64_t frames, int64_t h, int64_t w, Range tokens, Device dev) {
  if (tokens.end < 0) tokens = Range{0, frames * h * w};
  std::vector<float> pos(size_t(tokens.size() * 3));
  for (int64_t t = tokens.begin; t < tokens.end; ++t) {
    const size_t at = size_t(3 * (t - tokens.begin));
    pos[at] = float(t / (h * w));
    pos[at + 1] = float(t / w % h);
    pos[at + 2] = float(t % w);
  }
  const Tensor p = ops::to_device(Tensor::from_f32({tokens.size(), 3}, pos), dev);
  auto [cos, sin] = ops::rope_tables(p, c.rope_axes(), 10000.0);
  return {cos, sin};
}

Tensor wan_patchify(const Tensor& x, const std::vector<int>& patch) {
  const int64_t B = x.size(0), C = x.size(1), pt = patch[0], ph = patch[1], pw = patch[2];
  const int64_t f = x.size(2) / pt, h = x.size(3) / ph, w = x.size(4) / pw;
  return x.contiguous()
      .reshape({B, C, f, pt, h, ph, w, pw})
      .permute({0, 2, 4, 6, 1, 3, 5, 7})
      .contiguous()
      .reshape({B, f * h * w, C * pt * ph * pw});
}

Tensor wan_unpatchify(const Tensor& x, int64_t f, int64_t h, int64_t w, const std::vector<int>& patch) {
  const int64_t B = x.size(0), pt = patch[0], ph = patch[1], pw = patch[2];
  const int64_t C = x.size(2) / (pt * ph * pw);
  return x.contiguous()
      .reshape({B, f, h, w, pt, ph, pw, C})
      .permute({0, 7, 1, 4, 2, 5, 3, 6})
      .contiguous()
      .reshape({B, C, f * pt, h * ph, w * pw});
}

Result<WanAttention> WanAttention::load(const Checkpoint& ck, const std::string& prefix, const WanConfig& c,
                                        const ParallelContext* par) {
  WanAttention a;
  if (par) a.par = *par;
  const int64_t D = c.inner_dim(), hd = c.attention_head_dim;
  const Range h = head_shard(c.num_attention_heads, par);
  const Range ch{h.begin * hd, h.end * hd};
  a.heads = h.size();
  a.head_dim = hd;
  for (auto [lin, name] : {std::pair{&a.to_q, ".to_q"}, {&a.to_k, ".to_k"}, {&a.to_v, ".to_v"}}) {
    MD_TRY(*lin, Linear::load_rows(ck, prefix + name, D, D, {ch}));
  }
  MD_TRY(a.norm_q, RMSNormAcrossHeads::load(ck, prefix + ".norm_q", D, ch, c.eps, par));
  MD_TRY(a.norm_k, RMSNormAcrossHeads::load(ck, prefix + ".norm_k", D, ch, c.eps, par));
  MD_TRY(a.to_out, Linear::load_cols(ck, prefix + ".to_out.0", D, D, {ch}, a.par.tp));
  return a;
}

namespace {

Tensor split_heads(const Tensor& t, int64_t heads) {
  return t.reshape({t.size(0), t.size(1), heads, t.size(2) / heads});
}

}  // namespace

Tensor WanAttention::self_attention(const Tensor& x, const RopeTables& rope, const SeqLayout* seq) const {
  Tensor q = split_heads(norm_q(to_q(x)), heads), k = split_heads(norm_k(to_k(x)), heads);
  const Tensor v = split_heads(to_v(x), heads);
  ops::rope_(q, rope.cos, rope.sin);
  ops::rope_(k, rope.cos, rope.sin);
  const float scale = 1.0f / std::sqrt(float(head_dim));
  const Tensor o = seq ? joint_attention(q, k, v, scale, *seq, &par) : ops::attention(q, k, v, scale);
  return to_out(merge_heads(o));
}

Tensor WanAttention::cross_attention(const Tensor& x, const Tensor& context) const {
  const Tensor q = split_heads(norm_q(to_q(x)), heads), k = split_heads(norm_k(to_k(context)), heads);
  const Tensor v = split_heads(to_v(context), heads);
  return to_out(merge_heads(ops::attention(q, k, v, 1.0f / std::sqrt(float(head_dim)))));
}

Result<WanBlock> WanBlock::load(const Checkpoint& ck, const std::string& prefix, const WanConfig& c,
                                const ParallelContext* par) {
  WanBlock b;
  const int64_t D = c.inner_dim();
  b.norm1 = b.norm3 = LayerNorm::plain(c.eps);
  b.cross_attn_norm = c.cross_attn_norm;
  if (c.cross_attn_norm) {
    MD_TRY(b.norm2, LayerNorm::load(ck, prefix + ".norm2", D, c.eps, /*affine=*/true));
  }
  MD_TRY(b.attn1, WanAttention::load(ck, prefix + ".attn1", c, par));
  MD_TRY(b.attn2, WanAttention::load(ck, prefix + ".attn2", c, par));
  MD_TRY(b.ffn, FeedForward::load(ck, prefix + ".ffn", D, c.ffn_dim, D, Act::GeluTanh, par));
  MD_TRY(b.scale_shift_table, ck.get(prefix + ".scale_shift_table", {1, 6, D}));
  return b;
}

void WanBlock::operator()(Tensor& x, const Tensor& context, const Tensor& timestep_proj, const RopeTables& rope,
                          const SeqLayout* seq) const {
  // shift, scale, gate of the self-attention, then of the feed-forward: [B, dim] views of [B, 6, dim].
  const Tensor mod = ops::add_broadcast(scale_shift_table, timestep_proj);
  auto m = [&](int64_t i) { return mod.select(1, i); };
  ops::add_gated_(x, m(2), attn1.self_attention(norm1.modulated(x, m(0), m(1)), rope, seq));
  ops::add_(x, attn2.cross_attention(cross_attn_norm ? norm2(x) : x, context));
  ops::add_gated_(x, m(5), ffn(norm3.modulated(x, m(3), m(4))));
}

Result<WanTransformer> WanTransformer::load(const Checkpoint& ck, const WanConfig& c, const ParallelContext* par) {
  WanTransformer m;
  m.cfg_ = c;
  if (par) m.par_ = *par;
  if (c.num_attention_heads % m.par_.tp_size() != 0)
    return make_error("Wan transformer: " + std::to_string(c.num_attention_heads) +
                      " attention heads are not divisible by tp=" + std::to_string(m.par_.tp_size()));
  const int64_t D = c.inner_dim(), pt = c.patch_size[0], ph = c.patch_size[1], pw = c.patch_size[2];
  // Conv3d with kernel = stride = patch: a linear over each patch's C pt ph pw values.
  MD_TRY(Tensor pe, ck.get("patch_embedding.weight", {D, c.in_channels, pt, ph, pw}));
  m.patch_embedding_.weight = pe.reshape({D, c.in_channels * c.patch_volume()});
  MD_TRY(m.patch_embedding_.bias, ck.get("patch_embedding.bias", {D}));
  MD_TRY(m.time_embedder_, Mlp2::load(ck, "condition_embedder.time_embedder", c.freq_dim, D, D, Act::SiLU));
  // The one modulation projection of the model (blocks add a learned table): small, replicated.
  MD_TRY(m.time_proj_, Linear::load(ck, "condition_embedder.time_proj", D, 6 * D));
  MD_TRY(m.text_embedder_, Mlp2::load(ck, "condition_embedder.text_embedder", c.text_dim, D, D, Act::GeluTanh));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    MD_TRY(WanBlock b, WanBlock::load(ck, "blocks." + std::to_string(i), c, par));
    m.blocks_.push_back(std::move(b));
  }
  m.norm_out_ = LayerNorm::plain(c.eps);
  MD_TRY(m.proj_out_, Linear::load(ck, "proj_out", D, c.out_channels * c.patch_volume()));
  MD_TRY(m.scale_shift_table_, ck.get("scale_shift_table", {1, 2, D}));
  return m;
}

Result<Tensor> WanTransformer::forward(const Tensor& hidden_states, const Tensor& timestep,
                                       const Tensor& encoder_hidden_states, const Hooks* hooks) const {
  const WanConfig& c = cfg_;
  if (hidden_states.dim() != 5 || hidden_states.size(1) != c.in_channels)
    return make_error("Wan transformer: hidden_states " + shape_str(hidden_states.shape()) + " must be [B, " +
                      std::to_string(c.in_channels) + ", frames, height, width]");
  const int64_t B = hidden_states.size(0), pt = c.patch_size[0], ph = c.patch_size[1], pw = c.patch_size[2];
  if (hidden_states.size(2) % pt || hidden_states.size(3) % ph || hidden_states.size(4) % pw)
    return make_error("Wan transformer: hidden_states " + shape_str(hidden_states.shape()) +
                      ": frames, height and width must be multiples of the patch (" + std::to_string(pt) + ", " +
                      std::to_string(ph) + ", " + std::to_string(pw) + ")");
  const int64_t f = hidden_states.size(2) / pt, h = hidden_states.size(3) / ph, w = hidden_states.size(4) / pw;
  if (std::max({f, h, w}) > c.rope_max_seq_len)
    return make_error("Wan transformer: the patched grid " + std::to_string(f) + "x" + std::to_string(h) + "x" +
                      std::to_string(w) + " exceeds the RoPE table's " + std::to_string(c.rope_max_seq_len) +
                      " positions per axis (rope_max_seq_len)");
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != B ||
      encoder_hidden_states.size(2) != c.text_dim)
    return make_error("Wan transformer: encoder_hidden_states " + shape_str(encoder_hidden_states.shape()) +
                      " must be [" + std::to_string(B) + ", L, " + std::to_string(c.text_dim) + "]");
  if (timestep.shape() != Shape{B})
    return make_error("Wan transformer: timestep " + shape_str(timestep.shape()) + " must be [" + std::to_string(B) +
                      "] (per-token timesteps are not supported)");
  const int64_t N = f * h * w, D = c.inner_dim();
  const Device dev = hidden_states.device();

  // Sequence parallel over the video tokens only: the text is a cross-attention's keys, whole on every rank.
  // Each rank builds just its tokens' RoPE rows.
  const SequenceShard shard(N, /*n_txt=*/0, /*txt_first=*/true, par_);
  const RopeTables rope = wan_rope(c, f, h, w, shard.range(), dev);
  if (hooks) {
    report(hooks, "hook.rope.0", rope.cos.reshape({1, shard.local_tokens(), 1, c.attention_head_dim}));
    report(hooks, "hook.rope.1", rope.sin.reshape({1, shard.local_tokens(), 1, c.attention_head_dim}));
  }
  Tensor x = patch_embedding_(wan_patchify(hidden_states.to(DType::F32), c.patch_size));  // [B, N, dim]
  if (hooks) report(hooks, "hook.patch_embedding", x.reshape({B, f, h, w, D}).permute({0, 4, 1, 2, 3}).contiguous());

  const Tensor temb =
      time_embedder_(ops::timestep_embedding(timestep.to(DType::F32), int(c.freq_dim), /*flip_sin_to_cos=*/true, 0));
  report(hooks, "hook.condition_embedder.0", temb);
  const Tensor timestep_proj = time_proj_(ops::activation(temb, Act::SiLU));
  report(hooks, "hook.condition_embedder.1", timestep_proj);
  const Tensor context = text_embedder_(encoder_hidden_states.to(DType::F32));
  report(hooks, "hook.condition_embedder.2", context);
  const Tensor mod = timestep_proj.reshape({B, 6, D});

  x = shard.local(x);
  // Only the video tokens are a residual stream here: the text enters by cross-attention.
  MD_TRY(CachedBlocks cache, CachedBlocks::begin(current_step_cache(), {int64_t(blocks_.size())}, &par_, x));
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (cache.run(int64_t(i))) {
      Span span("block", "blocks." + std::to_string(i));
      blocks_[i](x, context, mod, rope, shard.layout());
    }
    cache.after(int64_t(i), {x}, x);
    report(hooks, "hook.blocks." + std::to_string(i), x);
  }
  // shift, scale = scale_shift_table + temb (not the 6-way projection).
  const Tensor out_mod = ops::add_broadcast(scale_shift_table_, temb.reshape({B, 1, D}));
  x = norm_out_.modulated(x, out_mod.select(1, 0), out_mod.select(1, 1));
  return wan_unpatchify(shard.gather(proj_out_(x)), f, h, w, c.patch_size);
}

// ---------------------------------------------------------------------------------------------------------
// What Wan is to the registry (models/registry.h).

namespace {

class WanModel final : public Transformer {
 public:
  explicit WanModel(WanTransformer m) : m_(std::move(m)) {}
  Result<Tensor> forward(const TensorMap& in, const Hooks* hooks) const override {
    return m_.forward(input_of(in, "hidden_states"), input_of(in, "timestep"), input_of(in, "encoder_hidden_states"),
                      hooks);
  }

 private:
  WanTransformer m_;
};

const WanConfig& cfg_of(const std::any& a) { return std::any_cast<const WanConfig&>(a); }

// Multiply-adds x 2 of every linear and attention of one forward at batch 1: N video tokens, L text tokens.
double wan_flops(const WanConfig& c, int64_t N, int64_t L) {
  const double D = double(c.inner_dim()), F = double(c.ffn_dim), n = double(N), l = double(L);
  const double self = 2 * n * 4 * D * D + 4 * n * n * D;
  const double cross = 2 * n * 2 * D * D + 2 * l * 2 * D * D + 4 * n * l * D;
  const double ff = 2 * n * 2 * D * F;
  const double embed = 2 * n * double(c.in_channels * c.patch_volume()) * D + 2 * l * (double(c.text_dim) + D) * D +
                       2 * (double(c.freq_dim) + D + 6 * D) * D;
  const double out = 2 * n * D * double(c.out_channels * c.patch_volume());
  return double(c.num_layers) * (self + cross + ff) + embed + out;
}

// A config from the tensors of a file without config.json (diffusers names: the original's are aliased). The head
// size is not in the weights (the q/k norms span all heads): Wan's 128.
Result<WanConfig> infer_wan_config(const Checkpoint& ck) {
  WanConfig c;
  c.num_layers = block_count(ck.names(), "blocks.");
  MD_TRY(Shape pe, ck.shape_of("patch_embedding.weight"));
  if (pe.size() != 5)
    return make_error(ck.origin() + ": tensor 'patch_embedding.weight' " + shape_str(pe) +
                      " is not a Conv3d weight [dim, C, pt, ph, pw]");
  const int64_t D = pe[0];
  c.in_channels = pe[1];
  c.patch_size = {int(pe[2]), int(pe[3]), int(pe[4])};
  c.attention_head_dim = 128;
  MD_TRY(c.num_attention_heads, head_count(ck, D, c.attention_head_dim, "the size of 'patch_embedding.weight'"));
  MD_TRY(Shape t, matrix_shape(ck, "condition_embedder.time_embedder.linear_1.weight"));
  c.freq_dim = t[1];
  MD_TRY(Shape x, matrix_shape(ck, "condition_embedder.text_embedder.linear_1.weight"));
  c.text_dim = x[1];
  if (c.num_layers > 0) {
    MD_TRY(Shape ff, matrix_shape(ck, "blocks.0.ffn.net.0.proj.weight"));
    c.ffn_dim = ff[0];
    c.cross_attn_norm = ck.has("blocks.0.norm2.weight");
  }
  MD_TRY(Shape out, matrix_shape(ck, "proj_out.weight"));
  if (out[0] % c.patch_volume() != 0)
    return make_error(ck.origin() + ": tensor 'proj_out.weight' has " + std::to_string(out[0]) +
                      " rows, not a whole number of patches");
  c.out_channels = out[0] / c.patch_volume();
  return c;
}

// Wan-AI's original names (Wan2.1/2.2 .safetensors, city96's and QuantStack's GGUFs) against diffusers': the
// key map of diffusers' scripts/convert_wan_to_diffusers.py. Every tensor keeps its shape: the Conv3d patch
// embedding is [dim, C, pt, ph, pw] in both, and the original's `modulation` parameters are diffusers'
// scale_shift_table ([1, 6, dim] per block, [1, 2, dim] in the head), chunked in the same (shift, scale, gate)
// order. The original calls its norms norm1 (self-attention, no weights), norm3 (before the cross-attention:
// affine when cross_attn_norm) and norm2 (before the FFN, no weights); diffusers orders them 1, 2, 3, so the
// original's norm3 is diffusers' norm2.
Result<KeyRules> wan_original_keys(const LayoutNames& n) {
  if (const std::string t = n.find("img_emb.", "condition_embedder.image_embedder."); !t.empty())
    return n.reject(t, "image-to-video Wan transformers (image embedder) are not supported yet");
  if (const std::string t = n.find("_img.", "add_k_proj."); !t.empty())
    return n.reject(t, "image-to-video Wan transformers (image cross-attention) are not supported yet");
  KeyRules m;
  m.linear("patch_embedding", "patch_embedding");
  m.linear("text_embedding.0", "condition_embedder.text_embedder.linear_1");
  m.linear("text_embedding.2", "condition_embedder.text_embedder.linear_2");
  m.linear("time_embedding.0", "condition_embedder.time_embedder.linear_1");
  m.linear("time_embedding.2", "condition_embedder.time_embedder.linear_2");
  m.linear("time_projection.1", "condition_embedder.time_proj");
  for (int64_t i = 0, N = n.blocks("blocks.", "blocks."); i < N; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    for (const auto& [s, d] : {std::pair{"self_attn.", "attn1."}, {"cross_attn.", "attn2."}}) {
      m.linear(b + s + "q", b + d + "to_q");
      m.linear(b + s + "k", b + d + "to_k");
      m.linear(b + s + "v", b + d + "to_v");
      m.linear(b + s + "o", b + d + "to_out.0");
      m.whole(b + s + "norm_q.weight", b + d + "norm_q.weight");
      m.whole(b + s + "norm_k.weight", b + d + "norm_k.weight");
    }
    if (n.has(b + "norm3.weight", b + "norm2.weight")) m.linear(b + "norm3", b + "norm2");  // cross_attn_norm
    m.linear(b + "ffn.0", b + "ffn.net.0.proj");
    m.linear(b + "ffn.2", b + "ffn.net.2");
    m.whole(b + "modulation", b + "scale_shift_table");
  }
  m.linear("head.head", "proj_out");
  m.whole("head.modulation", "scale_shift_table");
  return m;
}

}  // namespace

void register_wan() {
  TransformerArch a;
  a.name = "wan";
  a.classes = {"WanTransformer3DModel"};
  a.presets = {{"wan22-t2v-a14b", [] { return std::any(WanConfig{}); }}};
  a.defaults = PlanDefaults{1280, 720, 81, 512, /*cfg_batch=*/true};
  a.parse_config = [](const std::string& path) -> Result<std::any> {
    MD_TRY(WanConfig c, WanConfig::from_json(path));
    return std::any(c);
  };
  a.gguf_architectures = {"wan"};
  a.gguf_keep_float = {"patch_embedding.",  "text_embedding.", "time_embedding.", "time_projection.",
                       "img_emb.",          "head.",           "modulation",      "condition_embedder.",
                       "scale_shift_table", "proj_out."};
  a.layouts = {SingleFileLayout{
      "wan-original",
      {"text_embedding.", "time_embedding.", "time_projection.", "head.head."},
      {"patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks", "head", "img_emb"},
      wan_original_keys}};
  // Both namings have patch_embedding and blocks: the diffusers one is told by its condition embedder.
  a.diffusers_detect = {"condition_embedder."};
  a.diffusers_modules = {"patch_embedding", "condition_embedder", "blocks", "proj_out", "scale_shift_table"};
  a.infer_config = [](const Checkpoint& ck) -> Result<std::any> {
    MD_TRY(WanConfig c, infer_wan_config(ck));
    return std::any(c);
  };
  a.with_blocks = [](const std::any& c, int64_t blocks, int64_t) {
    WanConfig w = cfg_of(c);
    w.num_layers = blocks;
    return std::any(w);
  };
  // text_lengths (each prompt's valid tokens) is informational: the reference masks nothing, the padding is
  // zero embeddings. Any other argument would change the call.
  a.call_config = [](const std::any& c, const Json& args) -> Result<std::any> {
    if (!args.is_object()) return make_error("non_tensor_args: expected an object, got " + args.dump());
    for (auto it = args.begin(); it != args.end(); ++it)
      if (it.key() != "text_lengths")
        return make_error("non_tensor_args." + it.key() + ": not an argument the Wan transformer takes");
    return c;
  };
  a.load = [](const Checkpoint& ck, const std::any& c,
              const ParallelContext* par) -> Result<std::shared_ptr<Transformer>> {
    MD_TRY(WanTransformer m, WanTransformer::load(ck, cfg_of(c), par));
    return std::shared_ptr<Transformer>(std::make_shared<WanModel>(std::move(m)));
  };
  a.inputs = {{"hidden_states"}, {"timestep"}, {"encoder_hidden_states"}};
  a.dims = [](const std::any& c) {
    const WanConfig& w = cfg_of(c);
    return ModelDims{w.inner_dim(), w.num_attention_heads, w.attention_head_dim, w.out_channels * w.patch_volume()};
  };
  a.describe = [](const std::any& c) {
    const WanConfig& w = cfg_of(c);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "Wan: %lld blocks (self + cross attention), %lld heads x %lld, dim %lld, ffn %lld, CFG batch; "
                  "one expert resident",
                  (long long)w.num_layers, (long long)w.num_attention_heads, (long long)w.attention_head_dim,
                  (long long)w.inner_dim(), (long long)w.ffn_dim);
    return std::string(buf);
  };
  a.image_tokens = [](const std::any& c, int64_t width, int64_t height, int64_t frames) -> Result<int64_t> {
    const auto& ps = cfg_of(c).patch_size;
    const int64_t sh = 8 * ps[1], sw = 8 * ps[2];
    if (width % sw || height % sh)
      return make_error("--width/--height " + std::to_string(width) + "x" + std::to_string(height) +
                        ": Wan needs multiples of " + std::to_string(sw) + " x " + std::to_string(sh));
    if ((frames - 1) % 4 != 0)
      return make_error("--frames " + std::to_string(frames) + ": Wan needs 4k+1 frames (VAE stride 4 in time)");
    const int64_t lt = (frames - 1) / 4 + 1;
    if (lt % ps[0]) return make_error("--frames: latent frames not divisible by the temporal patch");
    return (lt / ps[0]) * (height / sh) * (width / sw);
  };
  a.tokens_of_inputs = [](const std::any& c, const TensorMap& in) {
    auto it = in.find("hidden_states");
    if (it == in.end() || it->second.dim() != 5) return int64_t(0);
    const auto& p = cfg_of(c).patch_size;
    const Tensor& x = it->second;
    return (x.size(2) / p[0]) * (x.size(3) / p[1]) * (x.size(4) / p[2]);
  };
  // frames video frames (4k+1: the VAE's stride 4 in time), width x height pixels.
  a.random_inputs = [](const std::any& c, int64_t width, int64_t height, int64_t frames, int64_t L) {
    const WanConfig& w = cfg_of(c);
    TensorMap m;
    m["hidden_states"] = torch_randn({1, w.in_channels, (frames - 1) / 4 + 1, height / 8, width / 8}, 1);
    m["encoder_hidden_states"] = torch_randn({1, L, w.text_dim}, 2);
    m["timestep"] = Tensor::from_i64({1}, {500});
    return m;
  };
  a.flops = [](const std::any& c, int64_t N, int64_t L) { return wan_flops(cfg_of(c), N, L); };
  a.rows_of = [](const std::string& w) {
    if (starts_with(w, "condition_embedder.text_embedder.")) return Rows::Text;
    if (starts_with(w, "condition_embedder.")) return Rows::One;
    if (w.find(".attn2.to_k") != std::string::npos || w.find(".attn2.to_v") != std::string::npos) return Rows::Text;
    if (w.find("scale_shift_table") != std::string::npos || w.find("norm") != std::string::npos) return Rows::None;
    return Rows::Image;
  };
  a.cost = [](const std::any& cfg, const RankShape& r) {
    const WanConfig& c = cfg_of(cfg);
    ForwardCost k;
    const int tp = r.pc.tp, sp = r.pc.sp;
    const int64_t D = c.inner_dim(), Dt = D / tp, Ft = (c.ffn_dim + tp - 1) / tp, L = r.L, N = r.N, n = r.n;
    const int64_t blocks = c.num_layers;
    // Peak: residual video tokens and text, plus the largest phase (self-attention, cross-attention to the
    // replicated text, projection, feed-forward).
    const int64_t sp_extra = sp == 1 ? 0 : r.pc.sp_mode == SpMode::Ring ? 4 * n * Dt : 4 * N * (Dt / sp);
    const int64_t resid = n * D + L * D;
    const int64_t self = resid + n * D + 3 * n * Dt + n * Dt + sp_extra;
    const int64_t cross = resid + n * D + n * Dt + 2 * L * Dt + n * Dt;
    const int64_t proj = resid + n * Dt + n * D;
    const int64_t ff = resid + n * D + n * Ft + n * D;
    const int64_t inputs = n * c.in_channels * c.patch_volume() + L * c.text_dim;
    const int64_t rope = 2 * n * c.attention_head_dim;
    k.act_elems = r.b * (inputs + std::max({self, cross, proj, ff})) + rope;
    // Self-attention over the video tokens; cross-attention of local queries to the (replicated) text.
    const double Dd = double(D) / tp, Nd = double(N), Ld = double(L), nn = double(n), bb = double(r.b);
    const bool uly = sp > 1 && r.pc.sp_mode == SpMode::Ulysses;
    k.attn_flops = uly ? 4 * bb * Nd * Nd * Dd / sp : 4 * bb * nn * Nd * Dd;
    k.other_attn_flops = double(blocks) * 4 * bb * nn * Ld * Dd;
    k.sp_attentions = blocks;
    // All-reduces after self-attention, cross-attention and feed-forward; RMSNorm across sharded heads sums
    // squares (f32) of q and k per token: self q, k over video tokens, cross q over video, k over text.
    k.tp_all_reduce_calls = 3 * blocks;
    k.tp_all_reduce_elems = blocks * 3 * n * D;
    k.has_qk_norm_all_reduce = true;
    k.qk_norm_all_reduce_calls = 4 * blocks;
    k.qk_norm_all_reduce_bytes = blocks * (3 * n + L) * 4;
    return k;
  };
  register_transformer(std::move(a));
}

}  // namespace meshdit
