// The Mochi-1 video VAE's decoder (Genmo, "Mochi 1", 2024), as diffusers' AutoencoderKLMochi computes it.
//
//   decode:  x = conv_in(z)                                   1x1x1, latent_channels -> C[-1]
//            block_in: resnets at C[-1]
//            up blocks i = 0, 1, 2: resnets, then linear to C[-i-2] st s s and depth-to-space
//                                   (st, s) = (3, 2), (2, 2), (1, 2): 6x the frames, 8x the pixels
//            block_out: resnets at C[0]; SiLU; linear proj_out to 3 channels
//            drop the first 5 frames (temporal_scale - 1): 6 F - 5 frames
//
// Every 3x3x3 conv is causal with replicate padding: copies of the first frame before it, copies of the
// edge rows and columns around. Everything else is per frame (the GroupNorms normalise each frame alone)
// or per position, and depth-to-space turns frame t into frames st t .. st t + st - 1, so running chunk by
// chunk with each conv's last two input frames carried over equals the whole sequence at once.
#include "models/vae/autoencoder_kl_mochi.h"

#include <chrono>
#include <cmath>
#include <optional>
#include <utility>

#include "core/progress.h"
#include "core/trace.h"
#include "io/json_config.h"
#include "layers/spatial_split.h"

namespace meshdit {

// ---- config ------------------------------------------------------------------------------------------

namespace {

// The released model's statistics: diffusers' defaults.
const std::vector<float> kDefaultMean{-0.06730895953510081f,  -0.038011381506090416f, -0.07477820912866141f,
                                      -0.05565264470995561f,  0.012767231469026969f,  -0.04703542746246419f,
                                      0.043896967884726704f,  -0.09346305707025976f,  -0.09918314763016893f,
                                      -0.008729793427399178f, -0.011931556316503654f, -0.0321993391887285f};
const std::vector<float> kDefaultStd{0.9263795028493863f, 0.9248894543193766f, 0.9393059390890617f,
                                     0.959253732819592f,  0.8244560132752793f, 0.917259975397747f,
                                     0.9294154431013696f, 1.3720942357788521f, 0.881393668867029f,
                                     0.9168315692124348f, 0.9185249279345552f, 0.9274757570805041f};

constexpr int64_t kGroups = 32;    // MochiChunkedGroupNorm3D's nn.GroupNorm(num_groups=32)
constexpr float kNormEps = 1e-5f;  // nn.GroupNorm's default
constexpr int64_t kMaxSize = 1 << 15;

int64_t product(const std::vector<int>& v) {
  int64_t p = 1;
  for (int x : v) p *= x;
  return p;
}

}  // namespace

int64_t AutoencoderKLMochiConfig::temporal_scale() const { return product(temporal_expansions); }
int64_t AutoencoderKLMochiConfig::spatial_scale() const { return product(spatial_expansions); }

Result<AutoencoderKLMochiConfig> AutoencoderKLMochiConfig::from_json(const std::string& path) {
  MD_TRY(std::string text, read_text_file(path));
  return from_json_text(text, path);
}

Result<AutoencoderKLMochiConfig> AutoencoderKLMochiConfig::from_json_text(const std::string& text,
                                                                          const std::string& name) {
  MD_TRY(Json j, parse_json(text, name));
  AutoencoderKLMochiConfig c;
  c.latents_mean = kDefaultMean;
  c.latents_std = kDefaultStd;
  ConfigReader r(j, name);
  r.get("in_channels", c.in_channels);
  r.get("out_channels", c.out_channels);
  r.get("encoder_block_out_channels", c.encoder_block_out_channels);
  r.get("decoder_block_out_channels", c.decoder_block_out_channels);
  r.get("latent_channels", c.latent_channels);
  r.get("layers_per_block", c.layers_per_block);
  r.get("temporal_expansions", c.temporal_expansions);
  r.get("spatial_expansions", c.spatial_expansions);
  r.get("add_attention_block", c.add_attention_block);
  r.get("latents_mean", c.latents_mean);
  r.get("latents_std", c.latents_std);
  r.get("scaling_factor", c.scaling_factor);
  std::string act = "silu";
  r.get("act_fn", act);
  if (act != "silu" && act != "swish") r.fail("act_fn", "must be \"silu\" (or \"swish\"), got \"" + act + "\"");

  const auto& ch = c.decoder_block_out_channels;
  const size_t blocks = ch.size();
  if (blocks < 1 || blocks > 8)
    r.fail("decoder_block_out_channels", "must list 1 to 8 blocks, got " + std::to_string(blocks));
  for (int v : ch)
    if (v < kGroups || v > kMaxSize || v % kGroups != 0)
      r.fail("decoder_block_out_channels", "entries must be multiples of " + std::to_string(kGroups) +
                                               " (the GroupNorm's groups) up to " + std::to_string(kMaxSize) +
                                               ", got " + std::to_string(v));
  if (c.layers_per_block.size() != blocks + 1)
    r.fail("layers_per_block", "has " + std::to_string(c.layers_per_block.size()) + " entries for " +
                                   std::to_string(blocks) +
                                   " decoder blocks (needs one more: block_in, the up "
                                   "blocks, block_out)");
  for (int v : c.layers_per_block)
    if (v < 0 || v > 64) r.fail("layers_per_block", "entries must be between 0 and 64, got " + std::to_string(v));
  const std::pair<const char*, const std::vector<int>*> expansions[] = {{"temporal_expansions", &c.temporal_expansions},
                                                                        {"spatial_expansions", &c.spatial_expansions}};
  for (const auto& e : expansions) {
    if (blocks >= 1 && e.second->size() != blocks - 1)
      r.fail(e.first, "has " + std::to_string(e.second->size()) + " entries for " + std::to_string(blocks) +
                          " decoder blocks (needs one per up block: " + std::to_string(blocks - 1) + ")");
    for (int v : *e.second)
      if (v < 1 || v > 16) r.fail(e.first, "entries must be between 1 and 16, got " + std::to_string(v));
  }
  const std::pair<const char*, int64_t> sizes[] = {
      {"in_channels", c.in_channels}, {"out_channels", c.out_channels}, {"latent_channels", c.latent_channels}};
  for (const auto& kv : sizes)
    if (kv.second < 1 || kv.second > kMaxSize)
      r.fail(kv.first, "must be between 1 and " + std::to_string(kMaxSize) + ", got " + std::to_string(kv.second));
  if (int64_t(c.latents_mean.size()) != c.latent_channels)
    r.fail("latents_mean", "has " + std::to_string(c.latents_mean.size()) + " entries for latent_channels " +
                               std::to_string(c.latent_channels));
  if (int64_t(c.latents_std.size()) != c.latent_channels)
    r.fail("latents_std", "has " + std::to_string(c.latents_std.size()) + " entries for latent_channels " +
                              std::to_string(c.latent_channels));
  if (!(c.scaling_factor > 0)) r.fail("scaling_factor", "must be positive, got " + std::to_string(c.scaling_factor));
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

namespace mochi {

// ---- layers ------------------------------------------------------------------------------------------

namespace {

// A per-frame GroupNorm and SiLU on [T, B, C, H, W]: each frame is one image of the batch, so its
// statistics are its own (on a row split, all-reduced over the rows of the same frame).
Tensor norm_silu(const GroupNorm& norm, const Tensor& x, const BandSplit* rows) {
  const Tensor images = as_images(x);
  return as_frames(rows ? group_norm_split(norm, images, Act::SiLU, *rows) : norm(images, Act::SiLU), x.size(0));
}

// A per-position linear on [T, B, C, H, W] -> channels last, [T, B, H, W, O].
Tensor linear_channels_last(const Linear& linear, const Tensor& x, Act act = Act::None) {
  return linear(x.permute({0, 1, 3, 4, 2}).contiguous(), act);
}

}  // namespace

Result<ResnetBlock3D> ResnetBlock3D::load(const Checkpoint& ck, const std::string& prefix, int64_t channels) {
  ResnetBlock3D r;
  MD_TRY(r.norm1, GroupNorm::load(ck, prefix + ".norm1.norm_layer", kGroups, channels, kNormEps));
  MD_TRY(r.conv1, CausalConv3d::load_replicate(ck, prefix + ".conv1.conv", channels, channels, 3, 3));
  MD_TRY(r.norm2, GroupNorm::load(ck, prefix + ".norm2.norm_layer", kGroups, channels, kNormEps));
  MD_TRY(r.conv2, CausalConv3d::load_replicate(ck, prefix + ".conv2.conv", channels, channels, 3, 3));
  return r;
}

Tensor ResnetBlock3D::operator()(const Tensor& x, CausalCache& cache, const BandSplit* rows) const {
  Tensor h = conv1.cached(norm_silu(norm1, x, rows), cache.take(), rows);
  h = conv2.cached(norm_silu(norm2, h, rows), cache.take(), rows);
  ops::add_(h, x);
  return h;
}

Result<MidBlock3D> MidBlock3D::load(const Checkpoint& ck, const std::string& prefix, int64_t channels, int64_t layers) {
  MidBlock3D m;
  for (int64_t i = 0; i < layers; ++i) {
    MD_TRY(auto r, ResnetBlock3D::load(ck, prefix + ".resnets." + std::to_string(i), channels));
    m.resnets.push_back(std::move(r));
  }
  return m;
}

Tensor MidBlock3D::operator()(const Tensor& x, CausalCache& cache, const BandSplit* rows) const {
  Tensor h = x;
  for (const auto& r : resnets) h = r(h, cache, rows);
  return h;
}

Result<UpBlock3D> UpBlock3D::load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                  int64_t layers, int64_t st, int64_t s) {
  UpBlock3D u;
  MD_TRY(MidBlock3D m, MidBlock3D::load(ck, prefix, in, layers));
  u.resnets = std::move(m.resnets);
  MD_TRY(u.proj, Linear::load(ck, prefix + ".proj", in, out * st * s * s));
  u.out_channels = out;
  u.st = st;
  u.s = s;
  return u;
}

Tensor UpBlock3D::operator()(const Tensor& x, CausalCache& cache, BandSplit* rows) const {
  Tensor h = x;
  for (const auto& r : resnets) h = r(h, cache, rows);
  const int64_t T = h.size(0), B = h.size(1), H = h.size(3), W = h.size(4);
  // proj's outputs are (channel, frame, row, column) with the channel slowest (diffusers' view(B, -1, st,
  // sh, sw, ...)): frame t's pixel (y, x) becomes frame st t + i's pixel (s y + a, s x + b).
  h = linear_channels_last(proj, h);  // [T, B, H, W, O st s s]
  h = h.reshape({T, B, H, W, out_channels, st, s, s}).permute({0, 5, 1, 4, 2, 6, 3, 7}).contiguous();
  if (rows) rows->upsampled(s);
  return h.reshape({T * st, B, out_channels, H * s, W * s});
}

Result<Decoder3D> Decoder3D::load(const Checkpoint& ck, const std::string& prefix,
                                  const AutoencoderKLMochiConfig& cfg) {
  Decoder3D d;
  const auto& ch = cfg.decoder_block_out_channels;
  const auto& layers = cfg.layers_per_block;
  const size_t n = ch.size();
  MD_TRY(d.conv_in, CausalConv3d::load(ck, prefix + ".conv_in", cfg.latent_channels, ch[n - 1], 1, 1, 0, 0));
  MD_TRY(d.block_in, MidBlock3D::load(ck, prefix + ".block_in", ch[n - 1], layers[n]));
  for (size_t i = 0; i + 1 < n; ++i) {
    MD_TRY(auto up,
           UpBlock3D::load(ck, prefix + ".up_blocks." + std::to_string(i), ch[n - 1 - i], ch[n - 2 - i],
                           layers[n - 1 - i], cfg.temporal_expansions[n - 2 - i], cfg.spatial_expansions[n - 2 - i]));
    d.up_blocks.push_back(std::move(up));
  }
  MD_TRY(d.block_out, MidBlock3D::load(ck, prefix + ".block_out", ch[0], layers[0]));
  MD_TRY(d.proj_out, Linear::load(ck, prefix + ".proj_out", ch[0], cfg.out_channels));
  return d;
}

Tensor Decoder3D::operator()(const Tensor& z, CausalCache& cache, BandSplit* rows) const {
  Tensor h = conv_in(z);  // 1x1x1: per position, no cache
  h = block_in(h, cache, rows);
  for (const auto& up : up_blocks) h = up(h, cache, rows);
  h = block_out(h, cache, rows);
  h = ops::activation(h, Act::SiLU);
  const Tensor out = linear_channels_last(proj_out, h);  // [T, B, H, W, out]
  return out.permute({0, 1, 4, 2, 3}).contiguous();
}

}  // namespace mochi

// ---- model -------------------------------------------------------------------------------------------

Result<AutoencoderKLMochi> AutoencoderKLMochi::load(const Checkpoint& ck, const AutoencoderKLMochiConfig& cfg) {
  AutoencoderKLMochi m;
  m.cfg_ = cfg;
  MD_TRY(m.decoder_, mochi::Decoder3D::load(ck, "decoder", cfg));
  return m;
}

Status AutoencoderKLMochi::check_latents(const Tensor& z, const MochiDecodeOptions& options) const {
  if (z.dim() != 5 || z.size(1) != cfg_.latent_channels || z.size(0) < 1 || z.size(2) < 1 || z.size(3) < 1 ||
      z.size(4) < 1)
    return make_error("AutoencoderKLMochi decode: latents " + shape_str(z.shape()) + " must be [B, " +
                      std::to_string(cfg_.latent_channels) + ", F, h, w]");
  if (z.dtype() != DType::F32 && z.dtype() != DType::BF16 && z.dtype() != DType::F16)
    return make_error(std::string("AutoencoderKLMochi decode: latents must be float, got ") + dtype_name(z.dtype()));
  if (options.chunk_frames < 1)
    return make_error("AutoencoderKLMochi decode: chunk_frames must be at least 1, got " +
                      std::to_string(options.chunk_frames));
  return ok_status();
}

Result<Tensor> AutoencoderKLMochi::decode(const Tensor& z, const MochiDecodeOptions& options) const {
  return decode_impl(z, nullptr, options);
}

Result<Tensor> AutoencoderKLMochi::decode_parallel(const Tensor& z, Communicator& comm,
                                                   const MochiDecodeOptions& options) const {
  return decode_impl(z, comm.size() > 1 ? &comm : nullptr, options);
}

// Rank r of a split decode holds latent rows shard_range(h, P, r) of every frame and, at every resolution,
// those rows times the upsampling so far (a BandSplit of the [T B, C, H, W] images along axis 2, rebuilt for
// every chunk since each chunk starts at the latent resolution). What crosses bands: one halo row around
// every 3x3x3 conv, the GroupNorm statistics, each chunk's frames at the end. The temporal cache holds this
// rank's band only: time never crosses ranks.
Result<Tensor> AutoencoderKLMochi::decode_impl(const Tensor& z, Communicator* comm,
                                               const MochiDecodeOptions& options) const {
  MD_RETURN_IF_ERROR(check_latents(z, options));
  const int P = comm ? comm->size() : 1;
  const int64_t B = z.size(0), F = z.size(2), h = z.size(3), w = z.size(4);
  if (h < P)
    return make_error("AutoencoderKLMochi decode: latents " + shape_str(z.shape()) + " have " + std::to_string(h) +
                      " rows for " + std::to_string(P) + " ranks of group '" + comm->name() +
                      "'; a row-split decode needs at least one latent row per rank (use fewer VAE ranks)");
  const int64_t ts = cfg_.temporal_scale(), ss = cfg_.spatial_scale();
  // diffusers' drop_last_temporal_frames: the first ts - 1 frames of the decoder's ts F go (it decodes a
  // latent's first frame to ts frames, of which only the last stands for it).
  const int64_t drop = ts - 1, frames = ts * F - drop;
  Tensor video = Tensor::empty({B, cfg_.out_channels, frames, h * ss, w * ss}, DType::F32, z.device());

  Tensor x = z.permute({2, 0, 1, 3, 4});  // frame-major
  if (comm) {
    const Range band = shard_range(h, P, comm->rank());
    x = x.slice(3, band.begin, band.end);
  }
  CausalCache cache;
  const int64_t chunks = (F + options.chunk_frames - 1) / options.chunk_frames;
  int64_t written = 0;
  report_progress("vae decode", 0, chunks);
  for (int64_t c = 0; c < chunks; ++c) {
    Span chunk_span("vae_chunk", "decode latent frames");
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t first = c * options.chunk_frames, last = std::min(F, first + options.chunk_frames);
    cache.begin_chunk();
    std::optional<BandSplit> rows;
    if (comm) rows.emplace(*comm, /*axis=*/2, h);
    Tensor out = decoder_(x.slice(0, first, last).to(DType::F32).contiguous(), cache, rows ? &*rows : nullptr);
    if (rows) out = as_frames(rows->gather(as_images(out)), out.size(0));  // [n ts, B, out, H, W], whole
    const int64_t skip = c == 0 ? std::min(drop, out.size(0)) : 0;
    const int64_t n = out.size(0) - skip;
    Tensor dst = video.slice(2, written, written + n);
    copy_into(out.slice(0, skip, out.size(0)).permute({1, 2, 0, 3, 4}), dst);
    written += n;
    if (options.on_chunk) {
      MochiDecodeProgress p;
      p.chunk = c;
      p.chunks = chunks;
      p.latent_frames_done = last;
      p.latent_frames = F;
      p.frames_done = written;
      p.frames = frames;
      p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      options.on_chunk(p);
    }
    report_progress("vae decode", c + 1, chunks);
  }
  return video;
}

}  // namespace meshdit
