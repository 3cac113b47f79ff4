#include "layers/embeddings.h"

#include <cmath>

namespace meshdit {

Result<PatchEmbed> PatchEmbed::load(const Checkpoint& ck, const std::string& prefix, int64_t in_channels, int64_t dim,
                                    int patch, int64_t pos_max) {
  PatchEmbed p;
  p.patch = patch;
  p.pos_max = pos_max;
  MD_TRY(Tensor w, ck.get(prefix + ".proj.weight", {dim, in_channels, patch, patch}));
  p.proj.weight = w.reshape({dim, in_channels * patch * patch});
  MD_TRY(p.proj.bias, ck.get(prefix + ".proj.bias", {dim}));
  if (pos_max > 0) {
    MD_TRY(p.pos_embed, ck.get(prefix + ".pos_embed", {1, pos_max * pos_max, dim}));
  }
  return p;
}

Result<PatchEmbed> PatchEmbed::load_conv(const Checkpoint& ck, const std::string& conv, int64_t in_channels,
                                         int64_t dim, int patch) {
  PatchEmbed p;
  p.patch = patch;
  MD_TRY(Tensor w, ck.get(conv + ".weight", {dim, in_channels, patch, patch}));
  p.proj.weight = w.reshape({dim, in_channels * patch * patch});
  MD_TRY(p.proj.bias, ck.get(conv + ".bias", {dim}));
  return p;
}

Tensor sincos_pos_embed_2d(int64_t dim, int64_t gh, int64_t gw, double base_size) {
  const int64_t quarter = dim / 4;
  std::vector<double> omega(static_cast<size_t>(quarter));
  for (int64_t k = 0; k < quarter; ++k) omega[size_t(k)] = 1.0 / std::pow(10000.0, double(k) / (double(dim / 2) / 2.0));
  // numpy: float32 arange, scaled in place by a Python float (NEP 50: the product stays float32).
  auto positions = [&](int64_t g) {
    std::vector<float> p(static_cast<size_t>(g));
    const float stretch = base_size > 0 ? float(base_size / double(g)) : 1.0f;
    for (int64_t i = 0; i < g; ++i) p[size_t(i)] = base_size > 0 ? float(i) * stretch : float(i);
    return p;
  };
  const std::vector<float> col = positions(gw), row = positions(gh);
  std::vector<float> out(static_cast<size_t>(gh * gw * dim));
  for (int64_t i = 0; i < gh; ++i)
    for (int64_t j = 0; j < gw; ++j) {
      float* o = out.data() + (i * gw + j) * dim;
      const double pos[2] = {double(col[size_t(j)]), double(row[size_t(i)])};  // meshgrid(w, h): the column first
      for (int half = 0; half < 2; ++half)
        for (int64_t k = 0; k < quarter; ++k) {
          const double a = pos[half] * omega[size_t(k)];
          o[half * 2 * quarter + k] = float(std::sin(a));
          o[half * 2 * quarter + quarter + k] = float(std::cos(a));
        }
    }
  return Tensor::from_f32({gh * gw, dim}, out);
}

Status PatchEmbed::check_grid(int64_t h, int64_t w) const {
  if (pos_embed.defined() && (h > pos_max || w > pos_max))
    return make_error("latent grid " + std::to_string(h) + "x" + std::to_string(w) + " patches exceeds the model's " +
                      std::to_string(pos_max) + "x" + std::to_string(pos_max) + " position table (image too large)");
  return ok_status();
}

Tensor PatchEmbed::operator()(const Tensor& x) const {
  const int64_t h = x.size(2) / patch, w = x.size(3) / patch;
  Tensor tokens = proj(ops::patchify(x, patch));  // [B, h*w, dim]
  if (!pos_embed.defined()) return tokens;
  const int64_t dim = tokens.size(2);
  const int64_t top = (pos_max - h) / 2, left = (pos_max - w) / 2;
  Tensor table = pos_embed.reshape({pos_max, pos_max, dim}).slice(0, top, top + h).slice(1, left, left + w);
  Tensor pos = table.contiguous().to(DType::F32).reshape({1, h * w, dim});
  for (int64_t b = 0; b < tokens.size(0); ++b) {
    Tensor tb = tokens.slice(0, b, b + 1);
    ops::add_(tb, pos);
  }
  return tokens;
}

}  // namespace meshdit
