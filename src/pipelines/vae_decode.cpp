#include "pipelines/vae_decode.h"

#include "backend/ops.h"
#include "core/trace.h"

namespace meshdit {

Result<Tensor> decode_images(const AutoencoderKL& vae, const Tensor& latents, Communicator& vae_group, bool tiling) {
  Span span("stage", "vae decode");
  const AutoencoderKLConfig& cfg = vae.config();
  const Tensor z = ops::div_add(latents, cfg.scaling_factor, cfg.shift_factor);
  Tensor image;
  if (tiling) {
    const int64_t tile = vae.default_tile();
    MD_TRY(image, vae.decode_tiled(z, tile, tile / 4));
  } else if (vae_group.size() > 1) {
    MD_TRY(image, vae.decode_parallel(z, vae_group));
  } else {
    MD_TRY(image, vae.decode(z));
  }
  Tensor out = ops::affine(image.permute({0, 2, 3, 1}), 0.5f, 0.5f);
  ops::clamp_(out, 0.0f, 1.0f);
  return out;
}

}  // namespace meshdit
