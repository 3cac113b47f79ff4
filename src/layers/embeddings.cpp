#include "layers/embeddings.h"

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
