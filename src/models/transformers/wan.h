// Wan 2.1 / 2.2 text-to-video transformer (diffusers WanTransformer3DModel), as far as it has landed: its
// config and the weights its loader takes (so `plan` sizes it from the config). The forward comes with the
// Wan issue (#10); the loader below is the one it will use.
#pragma once
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "parallel/mesh.h"

namespace meshdit {

// diffusers WanTransformer3DModel config (text-to-video: no image embedder, no added K/V); defaults are
// Wan2.2-T2V-A14B's experts.
struct WanConfig {
  int64_t num_layers = 40, num_attention_heads = 40, attention_head_dim = 128, ffn_dim = 13824;
  int64_t text_dim = 4096, freq_dim = 256, in_channels = 16, out_channels = 16;
  std::vector<int> patch_size = {1, 2, 2};
  bool cross_attn_norm = true;
  std::string qk_norm = "rms_norm_across_heads";
  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  int64_t patch_volume() const { return int64_t(patch_size[0]) * patch_size[1] * patch_size[2]; }
  static Result<WanConfig> from_json(const std::string& path);
};

// Takes every weight of the model for this rank's shard (heads and feed-forward hidden split by TP; the
// q/k RMSNorm across heads is a [dim] scale sliced with the heads).
Status wan_load_weights(const Checkpoint& ck, const WanConfig& c, const ParallelContext* par);

}  // namespace meshdit
