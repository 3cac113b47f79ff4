// The KL autoencoder of latent diffusion (Rombach et al., "High-Resolution Image Synthesis with Latent
// Diffusion Models", 2022), as diffusers' AutoencoderKL computes it; SD3 and Flux use it with 16 latent
// channels and without the quant convs.
//
//   encode:  h = conv_in(x)                                         [B, c0, H, W]
//            for each level: resnets, then a stride-2 conv         (all but the last level)
//            h = mid(h) = resnet, self-attention over positions, resnet
//            moments = [quant_conv](conv_out(SiLU(GroupNorm(h))))    [B, 2 latent, H/f, W/f]
//            mean, logvar = split(moments); logvar clamped to [-30, 20]
//   decode:  h = mid(conv_in([post_quant_conv](z)))
//            for each level (widest first): resnets, then nearest 2x + conv (all but the last)
//            x = conv_out(SiLU(GroupNorm(h)))
//
// Every norm is GroupNorm(norm_num_groups, eps 1e-6) and every activation SiLU; f = 2^(levels - 1).
#include "models/vae/autoencoder_kl.h"

#include <cmath>
#include <utility>

#include "backend/model_ops.h"
#include "io/json_config.h"
#include "layers/spatial_split.h"

namespace meshdit {

// ---- config ------------------------------------------------------------------------------------------

Result<AutoencoderKLConfig> AutoencoderKLConfig::from_json(const std::string& path) {
  MD_TRY(std::string text, read_text_file(path));
  return from_json_text(text, path);
}

namespace {

// A list of strings under `key`, when present and not null.
void read_strings(const Json& j, ConfigReader& r, const char* key, std::vector<std::string>& out) {
  if (!r.has(key)) return;
  const Json& v = j[key];
  bool ok = v.is_array();
  if (ok)
    for (const auto& e : v) ok = ok && e.is_string();
  if (!ok) {
    r.fail(key, "should be a list of strings, got " + json_brief(v));
    return;
  }
  out.clear();
  for (const auto& e : v) out.push_back(e.get<std::string>());
}

}  // namespace

Result<AutoencoderKLConfig> AutoencoderKLConfig::from_json_text(const std::string& text, const std::string& name) {
  MD_TRY(Json j, parse_json(text, name));
  AutoencoderKLConfig c;
  ConfigReader r(j, name);
  r.get("in_channels", c.in_channels);
  r.get("out_channels", c.out_channels);
  read_strings(j, r, "down_block_types", c.down_block_types);
  read_strings(j, r, "up_block_types", c.up_block_types);
  r.get("block_out_channels", c.block_out_channels);
  r.get("layers_per_block", c.layers_per_block);
  r.get("act_fn", c.act_fn);
  r.get("latent_channels", c.latent_channels);
  r.get("norm_num_groups", c.norm_num_groups);
  if (r.has("sample_size") && j["sample_size"].is_array()) {  // [h, w]: diffusers tiles with the first
    std::vector<int> sizes;
    r.get("sample_size", sizes);
    if (!sizes.empty()) c.sample_size = sizes[0];
  } else {
    r.get("sample_size", c.sample_size);
  }
  r.get("scaling_factor", c.scaling_factor);
  r.get("shift_factor", c.shift_factor);
  r.get("use_quant_conv", c.use_quant_conv);
  r.get("use_post_quant_conv", c.use_post_quant_conv);
  r.get("mid_block_add_attention", c.mid_block_add_attention);

  // What is implemented: the Encoder/Decoder of vae.py with plain (non-attention) blocks, SiLU.
  if (c.act_fn != "silu" && c.act_fn != "swish") r.fail("act_fn", "'" + c.act_fn + "' is not supported (silu)");
  for (const auto& t : c.down_block_types)
    if (t != "DownEncoderBlock2D") r.fail("down_block_types", "'" + t + "' is not supported (DownEncoderBlock2D)");
  for (const auto& t : c.up_block_types)
    if (t != "UpDecoderBlock2D") r.fail("up_block_types", "'" + t + "' is not supported (UpDecoderBlock2D)");
  constexpr int64_t kMaxLevels = 8, kMaxSize = 1 << 15;
  const int64_t levels = int64_t(c.block_out_channels.size());
  if (levels < 1 || levels > kMaxLevels)
    r.fail("block_out_channels",
           "must list 1 to " + std::to_string(kMaxLevels) + " levels, got " + std::to_string(levels));
  if (int64_t(c.down_block_types.size()) != levels)
    r.fail("down_block_types", "has " + std::to_string(c.down_block_types.size()) + " entries for " +
                                   std::to_string(levels) + " block_out_channels");
  if (int64_t(c.up_block_types.size()) != levels)
    r.fail("up_block_types", "has " + std::to_string(c.up_block_types.size()) + " entries for " +
                                 std::to_string(levels) + " block_out_channels");
  const std::pair<const char*, int64_t> sizes[] = {{"in_channels", c.in_channels},
                                                   {"out_channels", c.out_channels},
                                                   {"layers_per_block", c.layers_per_block},
                                                   {"latent_channels", c.latent_channels},
                                                   {"norm_num_groups", c.norm_num_groups}};
  for (const auto& [key, v] : sizes)
    if (v < 1 || v > kMaxSize)
      r.fail(key, "must be between 1 and " + std::to_string(kMaxSize) + ", got " + std::to_string(v));
  for (int ch : c.block_out_channels) {
    if (ch < 1 || ch > kMaxSize) {
      r.fail("block_out_channels",
             "entries must be between 1 and " + std::to_string(kMaxSize) + ", got " + std::to_string(ch));
    } else if (c.norm_num_groups >= 1 && ch % c.norm_num_groups != 0) {
      r.fail("block_out_channels", std::to_string(ch) + " channels are not divisible by norm_num_groups " +
                                       std::to_string(c.norm_num_groups));
    }
  }
  if (c.sample_size < 1) r.fail("sample_size", "must be positive, got " + std::to_string(c.sample_size));
  if (!(c.scaling_factor != 0.0f)) r.fail("scaling_factor", "must not be zero");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

namespace vae {

// ---- blocks ------------------------------------------------------------------------------------------

constexpr float kEps = 1e-6f;  // every GroupNorm of the Encoder and Decoder

Result<ResnetBlock2D> ResnetBlock2D::load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                          int64_t groups) {
  ResnetBlock2D r;
  MD_TRY(r.norm1, GroupNorm::load(ck, prefix + ".norm1", groups, in, kEps));
  MD_TRY(r.conv1, Conv2d::load(ck, prefix + ".conv1", in, out, 3, 1, 1));
  MD_TRY(r.norm2, GroupNorm::load(ck, prefix + ".norm2", groups, out, kEps));
  MD_TRY(r.conv2, Conv2d::load(ck, prefix + ".conv2", out, out, 3, 1, 1));
  if (in != out) {
    MD_TRY(r.conv_shortcut, Conv2d::load(ck, prefix + ".conv_shortcut", in, out, 1));
  }
  return r;
}

Tensor ResnetBlock2D::operator()(const Tensor& x) const {
  Tensor h = conv1(norm1(x, Act::SiLU));
  h = conv2(norm2(h, Act::SiLU));
  ops::add_(h, conv_shortcut ? (*conv_shortcut)(x) : x);
  return h;
}

Result<SpatialSelfAttention> SpatialSelfAttention::load(const Checkpoint& ck, const std::string& prefix,
                                                        int64_t channels, int64_t head_dim, int64_t groups) {
  SpatialSelfAttention a;
  a.heads = channels / head_dim;
  MD_TRY(a.group_norm, GroupNorm::load(ck, prefix + ".group_norm", groups, channels, kEps));
  MD_TRY(a.to_q, Linear::load(ck, prefix + ".to_q", channels, channels));
  MD_TRY(a.to_k, Linear::load(ck, prefix + ".to_k", channels, channels));
  MD_TRY(a.to_v, Linear::load(ck, prefix + ".to_v", channels, channels));
  MD_TRY(a.to_out, Linear::load(ck, prefix + ".to_out.0", channels, channels));
  return a;
}

Tensor SpatialSelfAttention::operator()(const Tensor& x) const {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), L = H * W, D = C / heads;
  // [B, C, H, W] -> tokens [B, HW, C]; GroupNorm commutes with the transpose, so it runs on the map.
  Tensor tokens = group_norm(x).reshape({B, C, L}).permute({0, 2, 1}).contiguous();
  Tensor q = to_q(tokens).reshape({B, L, heads, D});
  Tensor k = to_k(tokens).reshape({B, L, heads, D});
  Tensor v = to_v(tokens).reshape({B, L, heads, D});
  tokens = Tensor();
  Tensor o = to_out(ops::attention(q, k, v, 1.0f / std::sqrt(float(D))).reshape({B, L, C}));
  Tensor out = o.permute({0, 2, 1}).contiguous().reshape({B, C, H, W});
  ops::add_(out, x);  // residual_connection; rescale_output_factor is 1
  return out;
}

Result<MidBlock2D> MidBlock2D::load(const Checkpoint& ck, const std::string& prefix, int64_t channels, int64_t groups,
                                    bool add_attention) {
  MidBlock2D m;
  MD_TRY(m.resnet_0, ResnetBlock2D::load(ck, prefix + ".resnets.0", channels, channels, groups));
  if (add_attention) {
    // attention_head_dim = channels: a single head.
    MD_TRY(m.attention, SpatialSelfAttention::load(ck, prefix + ".attentions.0", channels, channels, groups));
  }
  MD_TRY(m.resnet_1, ResnetBlock2D::load(ck, prefix + ".resnets.1", channels, channels, groups));
  return m;
}

Tensor MidBlock2D::operator()(const Tensor& x) const {
  Tensor h = resnet_0(x);
  if (attention) h = (*attention)(h);
  return resnet_1(h);
}

Tensor DownEncoderBlock2D::operator()(Tensor x) const {
  for (const auto& r : resnets) x = r(x);
  return downsample ? (*downsample)(x) : x;
}

Tensor UpDecoderBlock2D::operator()(Tensor x) const {
  for (const auto& r : resnets) x = r(x);
  if (!upsample_conv) return x;
  Tensor up = ops::upsample_nearest2x(x);
  x = Tensor();  // at full resolution every live copy counts
  return (*upsample_conv)(up);
}

Result<Encoder> Encoder::load(const Checkpoint& ck, const std::string& prefix, const AutoencoderKLConfig& cfg) {
  Encoder e;
  const auto& ch = cfg.block_out_channels;
  const int64_t groups = cfg.norm_num_groups, levels = int64_t(ch.size());
  MD_TRY(e.conv_in, Conv2d::load(ck, prefix + ".conv_in", cfg.in_channels, ch[0], 3, 1, 1));
  int64_t out = ch[0];
  for (int64_t i = 0; i < levels; ++i) {
    const int64_t in = out;
    out = ch[size_t(i)];
    const std::string p = prefix + ".down_blocks." + std::to_string(i);
    DownEncoderBlock2D block;
    for (int64_t l = 0; l < cfg.layers_per_block; ++l) {
      MD_TRY(auto r, ResnetBlock2D::load(ck, p + ".resnets." + std::to_string(l), l == 0 ? in : out, out, groups));
      block.resnets.push_back(std::move(r));
    }
    if (i != levels - 1) {
      // Downsample2D(padding=0): F.pad(x, (0, 1, 0, 1)) then a stride-2 conv without padding of its own.
      MD_TRY(block.downsample, Conv2d::load(ck, p + ".downsamplers.0.conv", out, out, 3, 2, 0));
      block.downsample->params.pad_bottom = block.downsample->params.pad_right = 1;
    }
    e.down_blocks.push_back(std::move(block));
  }
  MD_TRY(e.mid_block, MidBlock2D::load(ck, prefix + ".mid_block", ch.back(), groups, cfg.mid_block_add_attention));
  MD_TRY(e.conv_norm_out, GroupNorm::load(ck, prefix + ".conv_norm_out", groups, ch.back(), kEps));
  MD_TRY(e.conv_out, Conv2d::load(ck, prefix + ".conv_out", ch.back(), 2 * cfg.latent_channels, 3, 1, 1));
  return e;
}

Tensor Encoder::operator()(const Tensor& x, const Hooks* hooks) const {
  Tensor h = conv_in(x);
  for (const auto& block : down_blocks) h = block(std::move(h));
  h = mid_block(h);
  report(hooks, "hook.encoder.mid_block", h);
  return conv_out(conv_norm_out(h, Act::SiLU));
}

Result<Decoder> Decoder::load(const Checkpoint& ck, const std::string& prefix, const AutoencoderKLConfig& cfg) {
  Decoder d;
  const auto& ch = cfg.block_out_channels;
  const int64_t groups = cfg.norm_num_groups, levels = int64_t(ch.size());
  MD_TRY(d.conv_in, Conv2d::load(ck, prefix + ".conv_in", cfg.latent_channels, ch.back(), 3, 1, 1));
  MD_TRY(d.mid_block, MidBlock2D::load(ck, prefix + ".mid_block", ch.back(), groups, cfg.mid_block_add_attention));
  int64_t out = ch.back();
  for (int64_t i = 0; i < levels; ++i) {
    const int64_t in = out;
    out = ch[size_t(levels - 1 - i)];
    const std::string p = prefix + ".up_blocks." + std::to_string(i);
    UpDecoderBlock2D block;
    for (int64_t l = 0; l < cfg.layers_per_block + 1; ++l) {
      MD_TRY(auto r, ResnetBlock2D::load(ck, p + ".resnets." + std::to_string(l), l == 0 ? in : out, out, groups));
      block.resnets.push_back(std::move(r));
    }
    if (i != levels - 1) {
      MD_TRY(block.upsample_conv, Conv2d::load(ck, p + ".upsamplers.0.conv", out, out, 3, 1, 1));
    }
    d.up_blocks.push_back(std::move(block));
  }
  MD_TRY(d.conv_norm_out, GroupNorm::load(ck, prefix + ".conv_norm_out", groups, ch[0], kEps));
  MD_TRY(d.conv_out, Conv2d::load(ck, prefix + ".conv_out", ch[0], cfg.out_channels, 3, 1, 1));
  return d;
}

Tensor Decoder::operator()(const Tensor& z, const Hooks* hooks) const {
  Tensor h = conv_in(z);
  report(hooks, "hook.decoder.conv_in", h);
  h = mid_block(h);
  report(hooks, "hook.decoder.mid_block", h);
  for (size_t i = 0; i < up_blocks.size(); ++i) {
    h = up_blocks[i](std::move(h));
    report(hooks, "hook.decoder.up_blocks." + std::to_string(i), h);
  }
  return conv_out(conv_norm_out(h, Act::SiLU));
}

}  // namespace vae

// ---- tiling ------------------------------------------------------------------------------------------

Result<Tensor> tiled_decode(const Tensor& z, int64_t tile, int64_t overlap, int64_t scale,
                            const TileDecoder& decode_tile) {
  if (z.dim() != 4) return make_error("tiled decode: latents " + shape_str(z.shape()) + " must be [B, C, h, w]");
  if (tile < 1 || overlap < 0 || overlap >= tile)
    return make_error("tiled decode: need 0 <= overlap < tile, got tile " + std::to_string(tile) + ", overlap " +
                      std::to_string(overlap));
  const int64_t H = z.size(2), W = z.size(3), stride = tile - overlap;
  const int64_t blend = overlap * scale, limit = stride * scale;
  Tensor out;
  std::vector<Tensor> above;  // the previous row of decoded tiles, blended
  for (int64_t i = 0; i < H; i += stride) {
    std::vector<Tensor> row;
    for (int64_t j = 0, col = 0; j < W; j += stride, ++col) {
      const int64_t th = std::min(tile, H - i), tw = std::min(tile, W - j);
      MD_TRY(Tensor d, decode_tile(z.slice(2, i, i + th).slice(3, j, j + tw).contiguous()));
      if (d.dim() != 4 || d.size(0) != z.size(0) || d.size(2) != th * scale || d.size(3) != tw * scale)
        return make_error("tiled decode: a latent tile " + shape_str({z.size(0), z.size(1), th, tw}) + " decoded to " +
                          shape_str(d.shape()) + ", not " + std::to_string(scale) + "x larger");
      d = d.to(DType::F32).contiguous();
      if (!out.defined()) out = Tensor::empty({z.size(0), d.size(1), H * scale, W * scale}, DType::F32, z.device());
      if (i > 0) ops::blend_(above[size_t(col)], d, blend, 2);
      if (j > 0) ops::blend_(row.back(), d, blend, 3);
      const int64_t oh = std::min(limit, d.size(2)), ow = std::min(limit, d.size(3));
      Tensor dst = out.slice(2, i * scale, i * scale + oh).slice(3, j * scale, j * scale + ow);
      copy_into(d.slice(2, 0, oh).slice(3, 0, ow), dst);
      row.push_back(std::move(d));
    }
    above = std::move(row);
  }
  return out;
}

// ---- row-split decode ----------------------------------------------------------------------------------
//
// Rank r of a group of P holds latent rows shard_range(h, P, r) and, at every resolution, those rows times
// the upsampling done so far: a band of every activation (a BandSplit along axis 2). What crosses bands:
//   3x3 conv    one halo row from each neighbour (zero padding stays only at the image's top and bottom)
//   GroupNorm   per (batch, group) sums, reduced over the group twice (mean, then squared deviations)
//   attention   keys and values of every band (each rank keeps its own queries)
//   the end     the image's bands, gathered so that every rank returns all of it
// Everything else (1x1 convs, SiLU, residuals, nearest upsampling) is per pixel or per column and local.

namespace vae {
namespace {

Tensor resnet_rows(const ResnetBlock2D& r, const Tensor& x, const BandSplit& rows) {
  Tensor h = conv2d_split(r.conv1, group_norm_split(r.norm1, x, Act::SiLU, rows), rows);
  h = conv2d_split(r.conv2, group_norm_split(r.norm2, h, Act::SiLU, rows), rows);
  ops::add_(h, r.conv_shortcut ? (*r.conv_shortcut)(x) : x);
  return h;
}

// The band's positions are its queries; the keys and values are every band's, in rank order, which is the
// image's token order.
Tensor attention_rows(const SpatialSelfAttention& a, const Tensor& x, const BandSplit& rows) {
  const int64_t B = x.size(0), C = x.size(1), h = x.size(2), W = x.size(3), L = h * W, D = C / a.heads;
  Tensor tokens = group_norm_split(a.group_norm, x, Act::None, rows).reshape({B, C, L}).permute({0, 2, 1}).contiguous();
  auto heads = [&](const Linear& proj) { return proj(tokens).reshape({B, L, a.heads, D}); };
  Tensor q = heads(a.to_q), k = heads(a.to_k), v = heads(a.to_v);
  tokens = Tensor();
  Tensor o = attention_split(q, k, v, 1.0f / std::sqrt(float(D)), rows, /*tokens_per_entry=*/W);
  Tensor out = a.to_out(o.reshape({B, L, C})).permute({0, 2, 1}).contiguous().reshape({B, C, h, W});
  ops::add_(out, x);
  return out;
}

Tensor mid_rows(const MidBlock2D& m, const Tensor& x, const BandSplit& rows) {
  Tensor h = resnet_rows(m.resnet_0, x, rows);
  if (m.attention) h = attention_rows(*m.attention, h, rows);
  return resnet_rows(m.resnet_1, h, rows);
}

Tensor up_rows(const UpDecoderBlock2D& b, Tensor x, BandSplit& rows) {
  for (const auto& r : b.resnets) x = resnet_rows(r, x, rows);
  if (!b.upsample_conv) return x;
  Tensor up = ops::upsample_nearest2x(x);
  x = Tensor();
  rows.upsampled(2);
  return conv2d_split(*b.upsample_conv, up, rows);
}

// Decoder::operator() on a band of the latent rows -> the band of the image.
Tensor decode_rows(const Decoder& d, const Tensor& z, BandSplit& rows, const Hooks* hooks) {
  Tensor h = conv2d_split(d.conv_in, z, rows);
  report_split(hooks, "hook.decoder.conv_in", h, rows);
  h = mid_rows(d.mid_block, h, rows);
  report_split(hooks, "hook.decoder.mid_block", h, rows);
  for (size_t i = 0; i < d.up_blocks.size(); ++i) {
    h = up_rows(d.up_blocks[i], std::move(h), rows);
    report_split(hooks, "hook.decoder.up_blocks." + std::to_string(i), h, rows);
  }
  return conv2d_split(d.conv_out, group_norm_split(d.conv_norm_out, h, Act::SiLU, rows), rows);
}

}  // namespace
}  // namespace vae

// ---- model -------------------------------------------------------------------------------------------

Result<AutoencoderKL> AutoencoderKL::load(const Checkpoint& ck, const AutoencoderKLConfig& cfg) {
  AutoencoderKL m;
  m.cfg_ = cfg;
  MD_TRY(m.encoder_, vae::Encoder::load(ck, "encoder", cfg));
  MD_TRY(m.decoder_, vae::Decoder::load(ck, "decoder", cfg));
  const int64_t lc = cfg.latent_channels;
  if (cfg.use_quant_conv) {
    MD_TRY(m.quant_conv_, Conv2d::load(ck, "quant_conv", 2 * lc, 2 * lc, 1));
  }
  if (cfg.use_post_quant_conv) {
    MD_TRY(m.post_quant_conv_, Conv2d::load(ck, "post_quant_conv", lc, lc, 1));
  }
  return m;
}

Status AutoencoderKL::check_latents(const Tensor& z) const {
  if (z.dim() != 4 || z.size(1) != cfg_.latent_channels || z.size(0) < 1 || z.size(2) < 1 || z.size(3) < 1)
    return make_error("AutoencoderKL decode: latents " + shape_str(z.shape()) + " must be [B, " +
                      std::to_string(cfg_.latent_channels) + ", h, w]");
  if (z.dtype() != DType::F32 && z.dtype() != DType::BF16 && z.dtype() != DType::F16)
    return make_error(std::string("AutoencoderKL decode: latents must be float, got ") + dtype_name(z.dtype()));
  return ok_status();
}

Tensor AutoencoderKL::decode_unchecked(const Tensor& z, const Hooks* hooks) const {
  Tensor h = z.to(DType::F32);
  if (post_quant_conv_) h = (*post_quant_conv_)(h);
  return decoder_(h, hooks);
}

Result<Tensor> AutoencoderKL::decode(const Tensor& z, const Hooks* hooks) const {
  MD_RETURN_IF_ERROR(check_latents(z));
  return decode_unchecked(z, hooks);
}

Result<Tensor> AutoencoderKL::decode_parallel(const Tensor& z, Communicator& comm, const Hooks* hooks) const {
  MD_RETURN_IF_ERROR(check_latents(z));
  const int P = comm.size();
  if (P == 1) return decode_unchecked(z, hooks);
  const int64_t h = z.size(2);
  if (h < P)
    return make_error("AutoencoderKL decode: latents " + shape_str(z.shape()) + " have " + std::to_string(h) +
                      " rows for " + std::to_string(P) + " ranks of group '" + comm.name() +
                      "'; a row-split decode needs at least one latent row per rank (use fewer VAE ranks)");
  BandSplit rows(comm, /*axis=*/2, h);
  Tensor band = rows.local(z).to(DType::F32).contiguous();
  if (post_quant_conv_) band = (*post_quant_conv_)(band);  // 1x1: per pixel
  Tensor image = vae::decode_rows(decoder_, band, rows, hooks);
  return rows.gather(image);
}

Result<Tensor> AutoencoderKL::decode_tiled(const Tensor& z, int64_t tile, int64_t overlap) const {
  MD_RETURN_IF_ERROR(check_latents(z));
  return tiled_decode(z, tile, overlap, cfg_.spatial_scale(),
                      [this](const Tensor& t) -> Result<Tensor> { return decode_unchecked(t, nullptr); });
}

Result<DiagonalGaussian> AutoencoderKL::encode(const Tensor& image, const Hooks* hooks) const {
  const int64_t f = cfg_.spatial_scale();
  if (image.dim() != 4 || image.size(1) != cfg_.in_channels || image.size(0) < 1 || image.size(2) < f ||
      image.size(3) < f)
    return make_error("AutoencoderKL encode: image " + shape_str(image.shape()) + " must be [B, " +
                      std::to_string(cfg_.in_channels) + ", H, W] with H, W >= " + std::to_string(f));
  if (image.dtype() != DType::F32 && image.dtype() != DType::BF16 && image.dtype() != DType::F16)
    return make_error(std::string("AutoencoderKL encode: image must be float, got ") + dtype_name(image.dtype()));
  Tensor moments = encoder_(image.to(DType::F32), hooks);
  if (quant_conv_) moments = (*quant_conv_)(moments);
  auto parts = moments.chunk(2, 1);  // mean, logvar
  DiagonalGaussian post{parts[0].contiguous(), parts[1].contiguous()};
  ops::clamp_(post.logvar, -30.0f, 20.0f);  // torch.clamp: NaN stays NaN
  return post;
}

}  // namespace meshdit
