// The causal 3-D VAE of Wan2.1 (Wan Team, "Wan: Open and Advanced Large-Scale Video Generative Models",
// 2025), as diffusers' AutoencoderKLWan and AutoencoderKLQwenImage compute it.
//
//   encode:  frame 0 alone, then chunks of 4 frames, each through
//            conv_in, levels of resnets + downsampling (spatial 2x; temporal 2x on the levels asked),
//            mid (resnet, per-frame attention, resnet), RMS norm + SiLU, conv_out
//            moments = quant_conv(frames of every chunk)    [B, 2 z_dim, 1 + (T - 1) / 4, H / 8, W / 8]
//   decode:  x = post_quant_conv(z); each latent frame through
//            conv_in, mid, up blocks (resnets, then nearest 2x + conv; temporal 2x after the first frame),
//            RMS norm + SiLU, conv_out;                   clamp to [-1, 1]
//
// Every conv with a temporal extent is causal: it pads only in the past, with zeros before the first frame
// and with the last frames of the previous chunk (its cache) after. Running chunk by chunk therefore equals
// running the whole sequence at once; it only bounds the activations' memory by one chunk.
#include "models/vae/autoencoder_kl_wan.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "backend/model_ops.h"
#include "core/progress.h"
#include "core/trace.h"
#include "io/json_config.h"
#include "layers/spatial_split.h"

namespace meshdit {

// ---- config ------------------------------------------------------------------------------------------

int64_t AutoencoderKLWanConfig::temporal_scale() const {
  int64_t s = 1;
  for (bool t : temperal_downsample) s *= t ? 2 : 1;
  return s;
}

Result<AutoencoderKLWanConfig> AutoencoderKLWanConfig::from_json(const std::string& path) {
  MD_TRY(std::string text, read_text_file(path));
  return from_json_text(text, path);
}

namespace {

// The real Wan2.1 / Qwen-Image statistics: diffusers' defaults of both classes.
const std::vector<float> kDefaultMean{-0.7571f, -0.7089f, -0.9113f, 0.1075f,  -0.1745f, 0.9653f,  -0.1517f, 1.5508f,
                                      0.4134f,  -0.0715f, 0.5517f,  -0.3632f, -0.1922f, -0.9497f, 0.2503f,  -0.2921f};
const std::vector<float> kDefaultStd{2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
                                     3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f};

}  // namespace

Result<AutoencoderKLWanConfig> AutoencoderKLWanConfig::from_json_text(const std::string& text, const std::string& name) {
  MD_TRY(Json j, parse_json(text, name));
  AutoencoderKLWanConfig c;
  c.latents_mean = kDefaultMean;
  c.latents_std = kDefaultStd;
  ConfigReader r(j, name);
  r.get("base_dim", c.base_dim);
  r.get("decoder_base_dim", c.decoder_base_dim);
  r.get("z_dim", c.z_dim);
  r.get("dim_mult", c.dim_mult);
  r.get("num_res_blocks", c.num_res_blocks);
  r.get("temperal_downsample", c.temperal_downsample);
  r.get("in_channels", c.in_channels);
  r.get("out_channels", c.out_channels);
  if (r.has("input_channels")) {  // AutoencoderKLQwenImage: one count for both ends
    r.get("input_channels", c.in_channels);
    r.get("input_channels", c.out_channels);
  }
  r.get("latents_mean", c.latents_mean);
  r.get("latents_std", c.latents_std);

  // What is implemented: Wan2.1's plain blocks, no patching, no attention outside the mid blocks.
  bool is_residual = false;
  r.get("is_residual", is_residual);
  if (is_residual) r.fail("is_residual", "Wan2.2's residual up/down blocks are not supported");
  if (r.has("patch_size")) {
    int64_t patch = 1;
    r.get("patch_size", patch);
    if (patch != 1) r.fail("patch_size", "patching is not supported (null or 1), got " + std::to_string(patch));
  }
  if (r.has("attn_scales") && !(j["attn_scales"].is_array() && j["attn_scales"].empty()))
    r.fail("attn_scales", "attention inside the down/up blocks is not supported (an empty list), got " +
                              json_brief(j["attn_scales"]));

  constexpr int64_t kMaxLevels = 8, kMaxSize = 1 << 15;
  const int64_t levels = int64_t(c.dim_mult.size());
  if (levels < 1 || levels > kMaxLevels)
    r.fail("dim_mult", "must list 1 to " + std::to_string(kMaxLevels) + " levels, got " + std::to_string(levels));
  if (int64_t(c.temperal_downsample.size()) != std::max<int64_t>(levels - 1, 0))
    r.fail("temperal_downsample", "has " + std::to_string(c.temperal_downsample.size()) + " entries for " +
                                      std::to_string(levels) + " levels of dim_mult (needs one per downsampling)");
  for (int m : c.dim_mult)
    if (m < 1 || m > kMaxSize) r.fail("dim_mult", "entries must be between 1 and " + std::to_string(kMaxSize));
  const std::pair<const char*, int64_t> sizes[] = {{"base_dim", c.base_dim},
                                                   {"z_dim", c.z_dim},
                                                   {"num_res_blocks", c.num_res_blocks},
                                                   {"in_channels", c.in_channels},
                                                   {"out_channels", c.out_channels}};
  for (const auto& kv : sizes)
    if (kv.second < 1 || kv.second > kMaxSize)
      r.fail(kv.first, "must be between 1 and " + std::to_string(kMaxSize) + ", got " + std::to_string(kv.second));
  if (c.decoder_base_dim < 0 || c.decoder_base_dim > kMaxSize)
    r.fail("decoder_base_dim", "must be null or between 1 and " + std::to_string(kMaxSize));
  // Every up block but the last (the one of dim_mult[0]) ends in an upsampler halving its channels.
  for (int64_t i = 1; i < levels; ++i)
    if ((c.decoder_dim() * c.dim_mult[size_t(i)]) % 2 != 0)
      r.fail("dim_mult", "decoder channels " + std::to_string(c.decoder_dim() * c.dim_mult[size_t(i)]) +
                             " are odd; the upsampler after them halves them");
  if (int64_t(c.latents_mean.size()) != c.z_dim)
    r.fail("latents_mean", "has " + std::to_string(c.latents_mean.size()) + " entries for z_dim " +
                               std::to_string(c.z_dim));
  if (int64_t(c.latents_std.size()) != c.z_dim)
    r.fail("latents_std", "has " + std::to_string(c.latents_std.size()) + " entries for z_dim " +
                              std::to_string(c.z_dim));
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

namespace wan {

// ---- layers ------------------------------------------------------------------------------------------

namespace {

Tensor conv_images(const Conv2d& conv, const Tensor& images, const BandSplit* rows) {
  return rows ? conv2d_split(conv, images, *rows) : conv(images);
}

// F.normalize's clamp of the norm at 1e-12, as a floor under the mean square: an all-zero position stays zero.
constexpr float kNormEps = 1e-24f;

}  // namespace

Result<ChannelRMSNorm> ChannelRMSNorm::load(const Checkpoint& ck, const std::string& prefix, int64_t channels,
                                            bool images) {
  const Shape shape = images ? Shape{channels, 1, 1} : Shape{channels, 1, 1, 1};
  MD_TRY(Tensor gamma, ck.get(prefix + ".gamma", shape));
  ChannelRMSNorm n;
  n.weight = gamma.reshape({channels});  // x / rms(x) is already F.normalize(x) * sqrt(C)
  return n;
}

Tensor ChannelRMSNorm::channels_last(const Tensor& x) const { return ops::rms_norm(x, &weight, kNormEps); }

Tensor ChannelRMSNorm::operator()(const Tensor& x, bool silu) const {
  Tensor y = channels_last(x.permute({0, 2, 3, 1}).contiguous());
  if (silu) y = ops::activation(y, Act::SiLU);
  return y.permute({0, 3, 1, 2}).contiguous();
}

namespace {

// A [T, B, C, H, W] activation through a per-position norm.
Tensor norm_frames(const ChannelRMSNorm& n, const Tensor& x, bool silu) {
  return as_frames(n(as_images(x), silu), x.size(0));
}

}  // namespace

Result<ResidualBlock> ResidualBlock::load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out) {
  ResidualBlock r;
  MD_TRY(r.norm1, ChannelRMSNorm::load(ck, prefix + ".norm1", in, false));
  MD_TRY(r.conv1, CausalConv3d::load(ck, prefix + ".conv1", in, out, 3, 3, 1, 1));
  MD_TRY(r.norm2, ChannelRMSNorm::load(ck, prefix + ".norm2", out, false));
  MD_TRY(r.conv2, CausalConv3d::load(ck, prefix + ".conv2", out, out, 3, 3, 1, 1));
  if (in != out) {
    MD_TRY(r.conv_shortcut, CausalConv3d::load(ck, prefix + ".conv_shortcut", in, out, 1, 1, 0, 0));
  }
  return r;
}

Tensor ResidualBlock::operator()(const Tensor& x, FeatureCache& cache, const BandSplit* rows) const {
  Tensor h = conv1.cached(norm_frames(norm1, x, true), cache.take(), rows);
  h = conv2.cached(norm_frames(norm2, h, true), cache.take(), rows);
  ops::add_(h, conv_shortcut ? (*conv_shortcut)(x) : x);
  return h;
}

Result<AttentionBlock> AttentionBlock::load(const Checkpoint& ck, const std::string& prefix, int64_t channels) {
  const int64_t C = channels;
  AttentionBlock a;
  MD_TRY(a.norm, ChannelRMSNorm::load(ck, prefix + ".norm", C, true));
  MD_TRY(Tensor qkv, ck.get(prefix + ".to_qkv.weight", {3 * C, C, 1, 1}));
  MD_TRY(a.qkv_bias, ck.get(prefix + ".to_qkv.bias", {3 * C}));
  MD_TRY(Tensor proj, ck.get(prefix + ".proj.weight", {C, C, 1, 1}));
  MD_TRY(a.proj_bias, ck.get(prefix + ".proj.bias", {C}));
  a.qkv_weight = qkv.reshape({3 * C, C});  // a 1x1 conv is a linear over channels
  a.proj_weight = proj.reshape({C, C});
  return a;
}

// Each frame's positions are the tokens, its channels the features of one head. With rows set the band's
// positions are the queries and every band's are the keys and values, in rank order (the frame's row order).
Tensor AttentionBlock::operator()(const Tensor& x, const BandSplit* rows) const {
  const Tensor images = as_images(x);
  const int64_t N = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3), L = H * W;
  Tensor tokens = norm.channels_last(images.permute({0, 2, 3, 1}).contiguous().reshape({N, L, C}));
  const Tensor qkv = ops::linear(tokens, qkv_weight, &qkv_bias);  // [N, L, 3C]: q, k, v along channels
  tokens = Tensor();
  auto part = [&](int64_t i) { return qkv.slice(2, i * C, (i + 1) * C).contiguous().reshape({N, L, 1, C}); };
  const Tensor q = part(0), k = part(1), v = part(2);
  const float scale = 1.0f / std::sqrt(float(C));
  Tensor o = rows ? attention_split(q, k, v, scale, *rows, W) : ops::attention(q, k, v, scale);
  o = ops::linear(o.reshape({N, L, C}), proj_weight, &proj_bias);
  Tensor out = o.reshape({N, H, W, C}).permute({0, 3, 1, 2}).contiguous();
  ops::add_(out, images);
  return as_frames(out, x.size(0));
}

Result<MidBlock> MidBlock::load(const Checkpoint& ck, const std::string& prefix, int64_t channels) {
  MidBlock m;
  MD_TRY(m.resnet_0, ResidualBlock::load(ck, prefix + ".resnets.0", channels, channels));
  MD_TRY(m.attention, AttentionBlock::load(ck, prefix + ".attentions.0", channels));
  MD_TRY(m.resnet_1, ResidualBlock::load(ck, prefix + ".resnets.1", channels, channels));
  return m;
}

Tensor MidBlock::operator()(const Tensor& x, FeatureCache& cache, const BandSplit* rows) const {
  Tensor h = resnet_0(x, cache, rows);
  h = attention(h, rows);
  return resnet_1(h, cache, rows);
}

Tensor Upsample::operator()(const Tensor& x, FeatureCache& cache, BandSplit* rows) const {
  Tensor h = x;
  if (time_conv) {
    // The first chunk passes single (diffusers' "Rep"); the temporal conv then runs causally over the
    // frames after it, each output's 2C channels being two frames (first C channels first).
    CacheSlot& slot = cache.take();
    if (!slot.seen) {
      slot.seen = true;
    } else {
      const int64_t T = x.size(0), B = x.size(1), C = x.size(2), H = x.size(3), W = x.size(4);
      const Tensor pairs = time_conv->cached(x, slot, rows);  // [T, B, 2C, H, W]
      h = pairs.reshape({T, B, 2, C, H, W}).permute({0, 2, 1, 3, 4, 5}).contiguous().reshape({2 * T, B, C, H, W});
    }
  }
  const int64_t T = h.size(0);
  Tensor up = ops::upsample_nearest2x(as_images(h));  // "nearest-exact" at 2x picks the same pixels
  h = Tensor();
  if (rows) rows->upsampled(2);
  return as_frames(conv_images(conv, up, rows), T);
}

Tensor Downsample::operator()(const Tensor& x, FeatureCache& cache) const {
  Tensor h = as_frames(conv(as_images(x)), x.size(0));
  if (!time_conv) return h;
  // The first chunk's frames pass as they are; later chunks are strided over together with the frame
  // before them, so windows (0, 1, 2), (2, 3, 4), ... of the whole sequence.
  CacheSlot& slot = cache.take();
  const int64_t T = h.size(0);
  Tensor last = h.slice(0, T - 1, T).clone();
  if (!slot.seen) {
    slot.seen = true;
    slot.frames = std::move(last);
    return h;
  }
  Tensor out = (*time_conv)(concat({slot.frames, h}, 0));
  slot.frames = std::move(last);
  return out;
}

Result<Encoder> Encoder::load(const Checkpoint& ck, const std::string& prefix, const AutoencoderKLWanConfig& cfg) {
  Encoder e;
  std::vector<int64_t> dims{cfg.base_dim};
  for (int m : cfg.dim_mult) dims.push_back(cfg.base_dim * m);
  const size_t levels = cfg.dim_mult.size();
  MD_TRY(e.conv_in, CausalConv3d::load(ck, prefix + ".conv_in", cfg.in_channels, dims[0], 3, 3, 1, 1));
  int64_t index = 0;  // diffusers' down_blocks is one flat list: resnets and resamplers
  auto next = [&] { return prefix + ".down_blocks." + std::to_string(index++); };
  for (size_t i = 0; i < levels; ++i) {
    EncoderLevel level;
    int64_t in = dims[i];
    const int64_t out = dims[i + 1];
    for (int64_t r = 0; r < cfg.num_res_blocks; ++r) {
      MD_TRY(auto block, ResidualBlock::load(ck, next(), in, out));
      level.resnets.push_back(std::move(block));
      in = out;
    }
    if (i + 1 != levels) {
      const std::string p = next();
      Downsample d;
      MD_TRY(d.conv, Conv2d::load(ck, p + ".resample.1", out, out, 3, 2, 0));
      d.conv.params.pad_bottom = d.conv.params.pad_right = 1;  // nn.ZeroPad2d((0, 1, 0, 1))
      if (cfg.temperal_downsample[i]) {
        MD_TRY(d.time_conv, CausalConv3d::load(ck, p + ".time_conv", out, out, 3, 1, 0, 0, 2));
      }
      level.downsample = std::move(d);
    }
    e.levels.push_back(std::move(level));
  }
  MD_TRY(e.mid_block, MidBlock::load(ck, prefix + ".mid_block", dims.back()));
  MD_TRY(e.norm_out, ChannelRMSNorm::load(ck, prefix + ".norm_out", dims.back(), false));
  MD_TRY(e.conv_out, CausalConv3d::load(ck, prefix + ".conv_out", dims.back(), 2 * cfg.z_dim, 3, 3, 1, 1));
  return e;
}

Tensor Encoder::operator()(const Tensor& x, FeatureCache& cache) const {
  Tensor h = conv_in.cached(x, cache.take(), nullptr);
  for (const auto& level : levels) {
    for (const auto& r : level.resnets) h = r(h, cache, nullptr);
    if (level.downsample) h = (*level.downsample)(h, cache);
  }
  h = mid_block(h, cache, nullptr);
  return conv_out.cached(norm_frames(norm_out, h, true), cache.take(), nullptr);
}

Result<Decoder> Decoder::load(const Checkpoint& ck, const std::string& prefix, const AutoencoderKLWanConfig& cfg) {
  Decoder d;
  const int64_t base = cfg.decoder_dim();
  const size_t levels = cfg.dim_mult.size();
  std::vector<int64_t> dims{base * cfg.dim_mult.back()};
  for (size_t i = levels; i-- > 0;) dims.push_back(base * cfg.dim_mult[i]);
  MD_TRY(d.conv_in, CausalConv3d::load(ck, prefix + ".conv_in", cfg.z_dim, dims[0], 3, 3, 1, 1));
  MD_TRY(d.mid_block, MidBlock::load(ck, prefix + ".mid_block", dims[0]));
  for (size_t i = 0; i < levels; ++i) {
    const std::string p = prefix + ".up_blocks." + std::to_string(i);
    int64_t in = i > 0 ? dims[i] / 2 : dims[i];  // the upsampler before halved the channels
    const int64_t out = dims[i + 1];
    UpBlock block;
    for (int64_t r = 0; r <= cfg.num_res_blocks; ++r) {
      MD_TRY(auto res, ResidualBlock::load(ck, p + ".resnets." + std::to_string(r), in, out));
      block.resnets.push_back(std::move(res));
      in = out;
    }
    if (i + 1 != levels) {
      Upsample u;
      MD_TRY(u.conv, Conv2d::load(ck, p + ".upsamplers.0.resample.1", out, out / 2, 3, 1, 1));
      if (cfg.temperal_downsample[levels - 2 - i]) {  // temperal_upsample is the reverse
        MD_TRY(u.time_conv, CausalConv3d::load(ck, p + ".upsamplers.0.time_conv", out, 2 * out, 3, 1, 1, 0));
      }
      block.upsample = std::move(u);
    }
    d.up_blocks.push_back(std::move(block));
  }
  MD_TRY(d.norm_out, ChannelRMSNorm::load(ck, prefix + ".norm_out", dims.back(), false));
  MD_TRY(d.conv_out, CausalConv3d::load(ck, prefix + ".conv_out", dims.back(), cfg.out_channels, 3, 3, 1, 1));
  return d;
}

Tensor Decoder::operator()(const Tensor& z, FeatureCache& cache, BandSplit* rows, Tensor* mid) const {
  Tensor h = conv_in.cached(z, cache.take(), rows);
  h = mid_block(h, cache, rows);
  if (mid) *mid = h;
  for (const auto& block : up_blocks) {
    for (const auto& r : block.resnets) h = r(h, cache, rows);
    if (block.upsample) h = (*block.upsample)(h, cache, rows);
  }
  return conv_out.cached(norm_frames(norm_out, h, true), cache.take(), rows);
}

}  // namespace wan

// ---- model -------------------------------------------------------------------------------------------

Result<AutoencoderKLWan> AutoencoderKLWan::load(const Checkpoint& ck, const AutoencoderKLWanConfig& cfg) {
  AutoencoderKLWan m;
  m.cfg_ = cfg;
  MD_TRY(m.encoder_, wan::Encoder::load(ck, "encoder", cfg));
  MD_TRY(m.decoder_, wan::Decoder::load(ck, "decoder", cfg));
  const int64_t z = cfg.z_dim;
  MD_TRY(m.quant_conv_, wan::CausalConv3d::load(ck, "quant_conv", 2 * z, 2 * z, 1, 1, 0, 0));
  MD_TRY(m.post_quant_conv_, wan::CausalConv3d::load(ck, "post_quant_conv", z, z, 1, 1, 0, 0));
  return m;
}

Status AutoencoderKLWan::check_latents(const Tensor& z) const {
  if (z.dim() != 5 || z.size(1) != cfg_.z_dim || z.size(0) < 1 || z.size(2) < 1 || z.size(3) < 1 || z.size(4) < 1)
    return make_error("AutoencoderKLWan decode: latents " + shape_str(z.shape()) + " must be [B, " +
                      std::to_string(cfg_.z_dim) + ", F, h, w]");
  if (z.dtype() != DType::F32 && z.dtype() != DType::BF16 && z.dtype() != DType::F16)
    return make_error(std::string("AutoencoderKLWan decode: latents must be float, got ") + dtype_name(z.dtype()));
  return ok_status();
}

Result<Tensor> AutoencoderKLWan::decode(const Tensor& z, const Hooks* hooks) const {
  return decode_impl(z, nullptr, hooks);
}

Result<Tensor> AutoencoderKLWan::decode_parallel(const Tensor& z, Communicator& comm, const Hooks* hooks) const {
  return decode_impl(z, comm.size() > 1 ? &comm : nullptr, hooks);
}

// Rank r of a split decode holds latent rows shard_range(h, P, r) of every frame and, at every resolution,
// those rows times the upsampling so far (a BandSplit of the [T B, C, H, W] images along axis 2, rebuilt for
// every chunk since each chunk starts at the latent resolution). What crosses bands: one halo row around
// every 3x3 conv, the mid-block attention's keys and values, the image at the end. The temporal cache holds
// this rank's band only: time never crosses ranks.
Result<Tensor> AutoencoderKLWan::decode_impl(const Tensor& z, Communicator* comm, const Hooks* hooks) const {
  MD_RETURN_IF_ERROR(check_latents(z));
  const int P = comm ? comm->size() : 1;
  const int64_t F = z.size(2), h = z.size(3);
  if (h < P)
    return make_error("AutoencoderKLWan decode: latents " + shape_str(z.shape()) + " have " + std::to_string(h) +
                      " rows for " + std::to_string(P) + " ranks of group '" + comm->name() +
                      "'; a row-split decode needs at least one latent row per rank (use fewer VAE ranks)");
  Tensor x = z.to(DType::F32).permute({2, 0, 1, 3, 4});  // frame-major
  if (comm) {
    const Range band = shard_range(h, P, comm->rank());
    x = x.slice(3, band.begin, band.end);
  }
  x = post_quant_conv_(x.contiguous());  // 1x1x1: per position
  const bool listening = hooks && *hooks;
  wan::FeatureCache cache;
  std::vector<Tensor> frames, mids;
  report_progress("vae decode", 0, F);
  for (int64_t i = 0; i < F; ++i) {
    Span chunk("vae_chunk", "decode latent frame");
    cache.begin_chunk();
    std::optional<BandSplit> rows;
    if (comm) rows.emplace(*comm, /*axis=*/2, h);
    Tensor mid;
    frames.push_back(decoder_(x.slice(0, i, i + 1), cache, rows ? &*rows : nullptr, listening ? &mid : nullptr));
    if (listening) mids.push_back(std::move(mid));
    report_progress("vae decode", i + 1, F);
  }
  x = Tensor();
  Tensor out = frames.size() == 1 ? frames[0] : concat(frames, 0);  // [F', B, C, H, W]
  frames.clear();
  // A band split's whole tensor, on every rank.
  auto whole = [&](const Tensor& band, int64_t scale) {
    if (!comm) return band;
    BandSplit split(*comm, 2, h);
    split.upsampled(scale);
    return as_frames(split.gather(as_images(band)), band.size(0));
  };
  if (listening) {
    const Tensor mid = whole(mids.size() == 1 ? mids[0] : concat(mids, 0), 1);
    report(hooks, "hook.decoder.mid_block", mid.permute({1, 2, 0, 3, 4}).contiguous());
  }
  out = whole(out, cfg_.spatial_scale());
  ops::clamp_(out, -1.0f, 1.0f);
  return out.permute({1, 2, 0, 3, 4}).contiguous();
}

Result<DiagonalGaussian> AutoencoderKLWan::encode(const Tensor& video) const {
  const int64_t s = cfg_.spatial_scale();
  if (video.dim() != 5 || video.size(1) != cfg_.in_channels || video.size(0) < 1 || video.size(2) < 1 ||
      video.size(3) < s || video.size(4) < s || video.size(3) % s != 0 || video.size(4) % s != 0)
    return make_error("AutoencoderKLWan encode: video " + shape_str(video.shape()) + " must be [B, " +
                      std::to_string(cfg_.in_channels) + ", T, H, W] with H and W multiples of " + std::to_string(s));
  if (video.dtype() != DType::F32 && video.dtype() != DType::BF16 && video.dtype() != DType::F16)
    return make_error(std::string("AutoencoderKLWan encode: video must be float, got ") + dtype_name(video.dtype()));
  const Tensor x = video.to(DType::F32).permute({2, 0, 1, 3, 4}).contiguous();
  const int64_t chunks = 1 + (x.size(0) - 1) / 4;
  wan::FeatureCache cache;
  std::vector<Tensor> moments;
  for (int64_t i = 0; i < chunks; ++i) {
    cache.begin_chunk();
    const Tensor chunk = i == 0 ? x.slice(0, 0, 1) : x.slice(0, 1 + 4 * (i - 1), 1 + 4 * i);
    moments.push_back(encoder_(chunk, cache));
  }
  Tensor m = quant_conv_(moments.size() == 1 ? moments[0] : concat(moments, 0));
  m = m.permute({1, 2, 0, 3, 4}).contiguous();  // [B, 2 z_dim, T', h, w]
  auto parts = m.chunk(2, 1);                    // mean, logvar
  DiagonalGaussian post{parts[0].contiguous(), parts[1].contiguous()};
  ops::clamp_(post.logvar, -30.0f, 20.0f);
  return post;
}

}  // namespace meshdit
