#include "app/serve_preview.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "io/png.h"

namespace meshdit {
namespace {

// ComfyUI's Flux.latent_rgb_factors: channel c's contribution to R, G, B.
constexpr float kFluxLatentRgb[16][3] = {
    {-0.0346f, 0.0244f, 0.0681f},  {0.0034f, 0.0210f, 0.0687f},    {0.0275f, -0.0668f, -0.0433f},
    {-0.0174f, 0.0160f, 0.0617f},  {0.0859f, 0.0721f, 0.0329f},    {0.0004f, 0.0383f, 0.0115f},
    {0.0405f, 0.0861f, 0.0915f},   {-0.0236f, -0.0185f, -0.0259f}, {-0.0245f, 0.0250f, 0.1180f},
    {0.1008f, 0.0755f, -0.0421f},  {-0.0515f, 0.0201f, 0.0011f},   {0.0428f, -0.0012f, -0.0036f},
    {0.0817f, 0.0765f, 0.0749f},   {-0.1264f, -0.0522f, -0.1103f}, {-0.0280f, -0.0881f, -0.0499f},
    {-0.1262f, -0.0982f, -0.0778f}};
constexpr int64_t kChannels = 16;

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

}  // namespace

Result<std::vector<uint8_t>> latent_preview_rgb(const Tensor& latents, int64_t width, int64_t height, int* out_w,
                                                int* out_h) {
  // A video's latents [B, 16, F, h, w]: its first latent frame.
  if (latents.dim() == 5 && latents.size(1) == kChannels)
    return latent_preview_rgb(latents.select(2, 0), width, height, out_w, out_h);
  const int64_t h = height / 8, w = width / 8;
  const bool packed = latents.dim() == 3 && latents.size(2) == kChannels * 4 && h % 2 == 0 && w % 2 == 0 &&
                      latents.size(1) == (h / 2) * (w / 2);
  const bool planar =
      latents.dim() == 4 && latents.size(1) == kChannels && latents.size(2) == h && latents.size(3) == w;
  if ((!packed && !planar) || latents.size(0) < 1)
    return make_error("no preview for latents of shape " + shape_str(latents) + " at " + std::to_string(width) + "x" +
                      std::to_string(height) + " (16-channel latents only)");
  const std::vector<float> v = latents.select(0, 0).to_vector();
  // Channel c of latent pixel (y, x): packed as token (y/2)*(w/2) + x/2, feature c*4 + (y%2)*2 + x%2.
  auto at = [&](int64_t c, int64_t y, int64_t x) -> float {
    if (planar) return v[size_t((c * h + y) * w + x)];
    const int64_t token = (y / 2) * (w / 2) + x / 2;
    return v[size_t(token * kChannels * 4 + c * 4 + (y % 2) * 2 + x % 2)];
  };
  std::vector<uint8_t> rgb(size_t(h * w * 3));
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int k = 0; k < 3; ++k) {
        float s = 0;
        for (int64_t c = 0; c < kChannels; ++c) s += at(c, y, x) * kFluxLatentRgb[c][k];
        // [-1, 1] -> [0, 255], as the decoded image is mapped.
        const float u = std::clamp((s + 1.0f) * 0.5f, 0.0f, 1.0f);
        rgb[size_t((y * w + x) * 3 + k)] = uint8_t(std::lround(u * 255.0f));
      }
  *out_w = int(w);
  *out_h = int(h);
  return rgb;
}

Result<std::vector<uint8_t>> latent_preview_png(const Tensor& latents, int64_t width, int64_t height) {
  int w = 0, h = 0;
  MD_TRY(std::vector<uint8_t> rgb, latent_preview_rgb(latents, width, height, &w, &h));
  return encode_png(rgb.data(), w, h);
}

}  // namespace meshdit
