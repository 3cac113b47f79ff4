#include "pipelines/vae_decode.h"

#include "backend/ops.h"
#include "core/trace.h"

namespace meshdit {

Result<Tensor> decode_latents(const AutoencoderKL& vae, const Tensor& z, Communicator& vae_group, bool tiling) {
  if (tiling) {
    const int64_t tile = vae.default_tile();
    return vae.decode_tiled(z, tile, tile / 4);
  }
  if (vae_group.size() > 1) return vae.decode_parallel(z, vae_group);
  return vae.decode(z);
}

Result<Tensor> decode_images(const AutoencoderKL& vae, const Tensor& latents, Communicator& vae_group, bool tiling) {
  Span span("stage", "vae decode");
  const AutoencoderKLConfig& cfg = vae.config();
  MD_TRY(Tensor image,
         decode_latents(vae, ops::div_add(latents, cfg.scaling_factor, cfg.shift_factor), vae_group, tiling));
  return postprocess_images(image);
}

namespace {

// [-1, 1] -> [0, 1] (VaeImageProcessor: (x / 2 + 0.5).clamp(0, 1)), of a channels-last view.
Tensor to_unit_range(const Tensor& channels_last) {
  Tensor out = ops::affine(channels_last, 0.5f, 0.5f);
  ops::clamp_(out, 0.0f, 1.0f);
  return out;
}

}  // namespace

Tensor postprocess_images(const Tensor& decoded) { return to_unit_range(decoded.permute({0, 2, 3, 1})); }

Tensor postprocess_video(const Tensor& decoded) { return to_unit_range(decoded.permute({0, 2, 3, 4, 1})); }

namespace {

// latents [B, z_dim, f, h, w] -> the decoder's output [B, 3, F, H, W] in [-1, 1].
Result<Tensor> wan_decode(const AutoencoderKLWan& vae, const Tensor& latents, Communicator& vae_group) {
  const AutoencoderKLWanConfig& cfg = vae.config();
  const int64_t C = latents.size(1);
  if (latents.dim() != 5 || C != cfg.z_dim || int64_t(cfg.latents_mean.size()) != C ||
      int64_t(cfg.latents_std.size()) != C)
    return make_error("VAE decode: latents " + shape_str(latents.shape()) + " must be [B, " +
                      std::to_string(cfg.z_dim) + ", F, h, w] with latents_mean and latents_std of that many channels");
  // diffusers divides by 1 / std (both float32) rather than multiplying by std: the same rounding here.
  std::vector<Tensor> channels;
  for (int64_t c = 0; c < C; ++c)
    channels.push_back(
        ops::div_add(latents.slice(1, c, c + 1), 1.0f / cfg.latents_std[size_t(c)], cfg.latents_mean[size_t(c)]));
  const Tensor z = concat(channels, 1);
  if (vae_group.size() > 1) return vae.decode_parallel(z, vae_group);
  return vae.decode(z);
}

}  // namespace

Result<Tensor> decode_wan_images(const AutoencoderKLWan& vae, const Tensor& latents, Communicator& vae_group) {
  Span span("stage", "vae decode");
  MD_TRY(Tensor video, wan_decode(vae, latents, vae_group));
  return postprocess_images(video.slice(2, 0, 1).reshape({video.size(0), video.size(1), video.size(3), video.size(4)}));
}

Result<Tensor> decode_wan_video(const AutoencoderKLWan& vae, const Tensor& latents, Communicator& vae_group) {
  Span span("stage", "vae decode");
  MD_TRY(Tensor video, wan_decode(vae, latents, vae_group));
  return postprocess_video(video);
}

}  // namespace meshdit
