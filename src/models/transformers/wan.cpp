// Wan 2.x (Alibaba, 2025) text-to-video DiT as diffusers' WanTransformer3DModel lays out its weights:
//
//   x = patch_embedding(latent video)                         3-D patches (t, h, w) -> video tokens
//   t = time_embedder(sinusoid(t)); mod = time_proj(silu(t))  one modulation for the whole model
//   c = text_embedder(UMT5 embeddings)
//   blocks: self-attention over video tokens (3-D RoPE), cross-attention to c, feed-forward; each block adds
//           a learned scale_shift_table to the shared modulation
//   out = proj_out(norm_out(x) modulated by scale_shift_table)
#include "models/transformers/wan.h"

#include <algorithm>
#include <cstdio>

#include "io/json_config.h"
#include "layers/attention.h"
#include "layers/linear.h"
#include "models/registry.h"

namespace meshdit {

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
  r.get("out_channels", c.out_channels);
  r.get("patch_size", c.patch_size);
  r.get("cross_attn_norm", c.cross_attn_norm);
  r.get("qk_norm", c.qk_norm);
  if (c.patch_size.size() != 3 || c.patch_size[0] < 1 || c.patch_size[1] < 1 || c.patch_size[2] < 1)
    r.fail("patch_size", "must be three positive integers (t, h, w)");
  if (r.has("image_dim") || r.has("added_kv_proj_dim"))
    r.fail("image_dim/added_kv_proj_dim", "image-to-video transformers are not supported yet");
  if (c.num_layers < 0 || c.num_attention_heads < 1 || c.attention_head_dim < 1 || c.ffn_dim < 1)
    r.fail("num_layers/num_attention_heads/attention_head_dim/ffn_dim", "out of range");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

Status wan_load_weights(const Checkpoint& ck, const WanConfig& c, const ParallelContext* par) {
  const int64_t D = c.inner_dim(), F = c.ffn_dim, hd = c.attention_head_dim;
  const int tp = par ? par->tp_size() : 1, r = par ? par->tp_rank() : 0;
  if (c.num_attention_heads % tp != 0)
    return make_error("Wan transformer: " + std::to_string(c.num_attention_heads) +
                      " attention heads are not divisible by tp=" + std::to_string(tp));
  const Range h = head_shard(c.num_attention_heads, par);
  const std::vector<Range> head_rows{{h.begin * hd, h.end * hd}};
  const std::vector<Range> ff_rows{shard_range(F, tp, r)};
  Communicator* reduce = par ? par->tp : nullptr;
  const int64_t pt = c.patch_size[0], ph = c.patch_size[1], pw = c.patch_size[2];
  MD_RETURN_IF_ERROR(ck.get("patch_embedding.weight", {D, c.in_channels, pt, ph, pw}));
  MD_RETURN_IF_ERROR(ck.get("patch_embedding.bias", {D}));
  MD_RETURN_IF_ERROR(Linear::load(ck, "condition_embedder.time_embedder.linear_1", c.freq_dim, D));
  MD_RETURN_IF_ERROR(Linear::load(ck, "condition_embedder.time_embedder.linear_2", D, D));
  // The one modulation projection of the model (blocks add a learned table): small, replicated.
  MD_RETURN_IF_ERROR(Linear::load(ck, "condition_embedder.time_proj", D, 6 * D));
  MD_RETURN_IF_ERROR(Linear::load(ck, "condition_embedder.text_embedder.linear_1", c.text_dim, D));
  MD_RETURN_IF_ERROR(Linear::load(ck, "condition_embedder.text_embedder.linear_2", D, D));
  const bool across_heads = c.qk_norm == "rms_norm_across_heads";
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    for (const char* a : {"attn1.", "attn2."}) {
      for (const char* n : {"to_q", "to_k", "to_v"})
        MD_RETURN_IF_ERROR(Linear::load_rows(ck, b + a + n, D, D, head_rows));
      if (!c.qk_norm.empty())
        for (const char* n : {"norm_q", "norm_k"}) {
          const std::string name = b + a + n + ".weight";
          if (across_heads) {
            MD_RETURN_IF_ERROR(ck.get_sharded(name, {D}, Shard::Rows, {{head_rows[0].begin, head_rows[0].end}}));
          } else {
            MD_RETURN_IF_ERROR(ck.get(name, {hd}));
          }
        }
      MD_RETURN_IF_ERROR(Linear::load_cols(ck, b + a + "to_out.0", D, D, head_rows, reduce));
    }
    if (c.cross_attn_norm) {
      MD_RETURN_IF_ERROR(ck.get(b + "norm2.weight", {D}));
      MD_RETURN_IF_ERROR(ck.get(b + "norm2.bias", {D}));
    }
    MD_RETURN_IF_ERROR(Linear::load_rows(ck, b + "ffn.net.0.proj", D, F, ff_rows));
    MD_RETURN_IF_ERROR(Linear::load_cols(ck, b + "ffn.net.2", F, D, ff_rows, reduce));
    MD_RETURN_IF_ERROR(ck.get(b + "scale_shift_table", {1, 6, D}));
  }
  MD_RETURN_IF_ERROR(Linear::load(ck, "proj_out", D, c.out_channels * pt * ph * pw));
  MD_RETURN_IF_ERROR(ck.get("scale_shift_table", {1, 2, D}));
  return ok_status();
}

namespace {

const WanConfig& cfg_of(const std::any& a) { return std::any_cast<const WanConfig&>(a); }

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
  a.diffusers_detect = {"patch_embedding.", "condition_embedder."};
  a.diffusers_modules = {"patch_embedding", "condition_embedder", "blocks", "proj_out", "scale_shift_table"};
  a.declare_weights = [](const Checkpoint& ck, const std::any& c, const ParallelContext* par) {
    return wan_load_weights(ck, cfg_of(c), par);
  };
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
