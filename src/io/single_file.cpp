#include "io/single_file.h"

#include <algorithm>
#include <filesystem>
#include <set>

namespace fs = std::filesystem;

namespace meshdit {
namespace {

const char* const kComfyPrefix = "model.diffusion_model.";
const char* const kFluxLayout = "flux-bfl";
const char* const kSD3Layout = "sd3-stability";

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// Block indices N of names "<head>N.<rest>"; an index of more than 6 digits is not one (such a name is left
// unmapped and reported as not fitting the layout).
std::set<int64_t> block_indices(const std::vector<std::string>& names, const std::string& head) {
  std::set<int64_t> out;
  for (const auto& n : names) {
    if (!starts_with(n, head)) continue;
    size_t i = head.size(), j = i;
    while (j < n.size() && j - i <= 6 && n[j] >= '0' && n[j] <= '9') ++j;
    if (j == i || j - i > 6 || j >= n.size() || n[j] != '.') continue;
    out.insert(std::stoll(n.substr(i, j - i)));
  }
  return out;
}

int64_t block_count(const std::vector<std::string>& names, const std::string& head) {
  const auto s = block_indices(names, head);
  return s.empty() ? 0 : *s.rbegin() + 1;
}

// Builds the aliases of one single-file layout: source names are relative to the prefix, every source used is
// recorded, and finish() rejects the first source tensor under the prefix that nothing used.
class Mapper {
 public:
  Mapper(Checkpoint& ck, std::string prefix, std::string layout)
      : ck_(ck), prefix_(std::move(prefix)), layout_(std::move(layout)) {}

  bool has(const std::string& src) const { return ck_.has_stored(prefix_ + src); }

  Result<Shape> shape(const std::string& src) const {
    if (!has(src)) return missing(src);
    return ck_.stored_shape(prefix_ + src);
  }

  Status whole(const std::string& src, const std::string& dst) {
    if (!has(src)) return missing(src);
    used_.insert(prefix_ + src);
    return ck_.add_alias(dst, prefix_ + src);
  }

  // src.weight / src.bias -> dst.weight / dst.bias
  Status linear(const std::string& src, const std::string& dst) {
    MD_RETURN_IF_ERROR(whole(src + ".weight", dst + ".weight"));
    return whole(src + ".bias", dst + ".bias");
  }

  // Rows of src.weight and src.bias split into consecutive ranges of `sizes` rows, one per dst (views).
  Status split(const std::string& src, const std::vector<std::string>& dst, const std::vector<int64_t>& sizes) {
    for (const char* part : {".weight", ".bias"}) {
      MD_TRY(Shape s, shape(src + part));
      int64_t total = 0;
      for (int64_t n : sizes) total += n;
      if (s.empty() || s[0] != total)
        return make_error(ck_.origin() + ": " + layout_ + " layout: tensor '" + prefix_ + src + part + "' has shape " +
                          shape_str(s) + ", expected " + std::to_string(total) + " rows");
      used_.insert(prefix_ + src + part);
      int64_t at = 0;
      for (size_t i = 0; i < dst.size(); ++i) {
        MD_RETURN_IF_ERROR(ck_.add_alias(dst[i] + part, prefix_ + src + part, at, at + sizes[i]));
        at += sizes[i];
      }
    }
    return ok_status();
  }

  // A fused [3 D, ...] q/k/v projection split into thirds.
  Status split_qkv(const std::string& src, const std::string& q, const std::string& k, const std::string& v) {
    MD_TRY(Shape s, shape(src + ".weight"));
    if (s.size() != 2 || s[0] % 3 != 0)
      return make_error(ck_.origin() + ": " + layout_ + " layout: fused q/k/v '" + prefix_ + src +
                        ".weight' has shape " + shape_str(s) + "; expected [3 * dim, dim]");
    const int64_t d = s[0] / 3;
    return split(src, {q, k, v}, {d, d, d});
  }

  // An AdaLayerNormContinuous projection stored as (shift, scale), which diffusers orders (scale, shift):
  // diffusers' swap_scale_shift, here a concatenation of the two row halves (a copy of this tensor only).
  Status swap_scale_shift(const std::string& src, const std::string& dst) {
    for (const char* part : {".weight", ".bias"}) {
      MD_TRY(Shape s, shape(src + part));
      if (s.empty() || s[0] % 2 != 0)
        return make_error(ck_.origin() + ": " + layout_ + " layout: tensor '" + prefix_ + src + part + "' has shape " +
                          shape_str(s) + "; expected an even number of rows (shift, scale)");
      const int64_t h = s[0] / 2;
      used_.insert(prefix_ + src + part);
      const std::string full = prefix_ + src + part;
      MD_RETURN_IF_ERROR(ck_.add_alias(dst + part, std::vector<Checkpoint::RowRange>{{full, h, 2 * h}, {full, 0, h}}));
    }
    return ok_status();
  }

  // Every stored tensor under the prefix must have been mapped; the stored names disappear from view.
  Status finish() {
    for (const auto& n : ck_.stored_names())
      if (starts_with(n, prefix_) && !used_.count(n))
        return make_error(ck_.origin() + ": tensor '" + n + "' does not fit the " + layout_ + " layout" +
                          (prefix_.empty() ? "" : " (under \"" + prefix_ + "\")"));
    ck_.hide_stored_names();
    return ok_status();
  }

 private:
  Error missing(const std::string& src) const {
    return make_error(ck_.origin() + ": " + layout_ + " layout: missing tensor '" + prefix_ + src + "'");
  }
  Checkpoint& ck_;
  std::string prefix_, layout_;
  std::set<std::string> used_;
};

// diffusers' convert_flux_transformer_checkpoint_to_diffusers.
Status map_flux(Checkpoint& ck, const std::string& prefix, const std::vector<std::string>& names) {
  Mapper m(ck, prefix, kFluxLayout);
  MD_RETURN_IF_ERROR(m.linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"));
  MD_RETURN_IF_ERROR(m.linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"));
  MD_RETURN_IF_ERROR(m.linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"));
  MD_RETURN_IF_ERROR(m.linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"));
  if (m.has("guidance_in.in_layer.weight")) {  // FLUX.1-dev; schnell has none
    MD_RETURN_IF_ERROR(m.linear("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"));
    MD_RETURN_IF_ERROR(m.linear("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"));
  }
  MD_RETURN_IF_ERROR(m.linear("txt_in", "context_embedder"));
  MD_RETURN_IF_ERROR(m.linear("img_in", "x_embedder"));

  const int64_t num_layers = block_count(names, "double_blocks.");
  for (int64_t i = 0; i < num_layers; ++i) {
    const std::string s = "double_blocks." + std::to_string(i) + ".";
    const std::string d = "transformer_blocks." + std::to_string(i) + ".";
    MD_RETURN_IF_ERROR(m.linear(s + "img_mod.lin", d + "norm1.linear"));
    MD_RETURN_IF_ERROR(m.linear(s + "txt_mod.lin", d + "norm1_context.linear"));
    MD_RETURN_IF_ERROR(m.split_qkv(s + "img_attn.qkv", d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"));
    MD_RETURN_IF_ERROR(
        m.split_qkv(s + "txt_attn.qkv", d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"));
    MD_RETURN_IF_ERROR(m.whole(s + "img_attn.norm.query_norm.scale", d + "attn.norm_q.weight"));
    MD_RETURN_IF_ERROR(m.whole(s + "img_attn.norm.key_norm.scale", d + "attn.norm_k.weight"));
    MD_RETURN_IF_ERROR(m.whole(s + "txt_attn.norm.query_norm.scale", d + "attn.norm_added_q.weight"));
    MD_RETURN_IF_ERROR(m.whole(s + "txt_attn.norm.key_norm.scale", d + "attn.norm_added_k.weight"));
    MD_RETURN_IF_ERROR(m.linear(s + "img_mlp.0", d + "ff.net.0.proj"));
    MD_RETURN_IF_ERROR(m.linear(s + "img_mlp.2", d + "ff.net.2"));
    MD_RETURN_IF_ERROR(m.linear(s + "txt_mlp.0", d + "ff_context.net.0.proj"));
    MD_RETURN_IF_ERROR(m.linear(s + "txt_mlp.2", d + "ff_context.net.2"));
    MD_RETURN_IF_ERROR(m.linear(s + "img_attn.proj", d + "attn.to_out.0"));
    MD_RETURN_IF_ERROR(m.linear(s + "txt_attn.proj", d + "attn.to_add_out"));
  }

  const int64_t num_single = block_count(names, "single_blocks.");
  for (int64_t i = 0; i < num_single; ++i) {
    const std::string s = "single_blocks." + std::to_string(i) + ".";
    const std::string d = "single_transformer_blocks." + std::to_string(i) + ".";
    MD_RETURN_IF_ERROR(m.linear(s + "modulation.lin", d + "norm.linear"));
    // linear1 rows: q, k, v (dim each), then the MLP's input projection (the rest; 4 dim in FLUX.1).
    MD_TRY(Shape l1, m.shape(s + "linear1.weight"));
    if (l1.size() != 2 || l1[0] <= 3 * l1[1])
      return make_error(ck.origin() + ": " + kFluxLayout + " layout: tensor '" + prefix + s +
                        "linear1.weight' has shape " + shape_str(l1) + "; expected [3 * dim + mlp, dim]");
    const int64_t dim = l1[1];
    MD_RETURN_IF_ERROR(m.split(s + "linear1", {d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"},
                               {dim, dim, dim, l1[0] - 3 * dim}));
    MD_RETURN_IF_ERROR(m.whole(s + "norm.query_norm.scale", d + "attn.norm_q.weight"));
    MD_RETURN_IF_ERROR(m.whole(s + "norm.key_norm.scale", d + "attn.norm_k.weight"));
    MD_RETURN_IF_ERROR(m.linear(s + "linear2", d + "proj_out"));
  }

  MD_RETURN_IF_ERROR(m.linear("final_layer.linear", "proj_out"));
  MD_RETURN_IF_ERROR(m.swap_scale_shift("final_layer.adaLN_modulation.1", "norm_out.linear"));
  return m.finish();
}

// diffusers' convert_sd3_transformer_checkpoint_to_diffusers (without MMDiT-X's attn2, which the model lacks).
Status map_sd3(Checkpoint& ck, const std::string& prefix, const std::vector<std::string>& names) {
  for (const auto& n : names)
    if (n.find(".attn2.") != std::string::npos)
      return make_error(ck.origin() + ": tensor '" + prefix + n +
                        "': SD3.5-Medium's dual attention (MMDiT-X) is not supported yet");
  Mapper m(ck, prefix, kSD3Layout);
  MD_RETURN_IF_ERROR(m.whole("pos_embed", "pos_embed.pos_embed"));
  MD_RETURN_IF_ERROR(m.linear("x_embedder.proj", "pos_embed.proj"));
  MD_RETURN_IF_ERROR(m.linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"));
  MD_RETURN_IF_ERROR(m.linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"));
  MD_RETURN_IF_ERROR(m.linear("context_embedder", "context_embedder"));
  MD_RETURN_IF_ERROR(m.linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"));
  MD_RETURN_IF_ERROR(m.linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"));

  const bool qk_norm =
      std::any_of(names.begin(), names.end(), [](const std::string& n) { return n.find("ln_q") != std::string::npos; });
  const int64_t num_layers = block_count(names, "joint_blocks.");
  for (int64_t i = 0; i < num_layers; ++i) {
    const bool last = i == num_layers - 1;  // its context block is pre-only: no output projection, no MLP
    const std::string x = "joint_blocks." + std::to_string(i) + ".x_block.";
    const std::string c = "joint_blocks." + std::to_string(i) + ".context_block.";
    const std::string d = "transformer_blocks." + std::to_string(i) + ".";
    MD_RETURN_IF_ERROR(m.split_qkv(x + "attn.qkv", d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"));
    MD_RETURN_IF_ERROR(
        m.split_qkv(c + "attn.qkv", d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"));
    if (qk_norm) {
      MD_RETURN_IF_ERROR(m.whole(x + "attn.ln_q.weight", d + "attn.norm_q.weight"));
      MD_RETURN_IF_ERROR(m.whole(x + "attn.ln_k.weight", d + "attn.norm_k.weight"));
      MD_RETURN_IF_ERROR(m.whole(c + "attn.ln_q.weight", d + "attn.norm_added_q.weight"));
      MD_RETURN_IF_ERROR(m.whole(c + "attn.ln_k.weight", d + "attn.norm_added_k.weight"));
    }
    MD_RETURN_IF_ERROR(m.linear(x + "attn.proj", d + "attn.to_out.0"));
    if (!last) MD_RETURN_IF_ERROR(m.linear(c + "attn.proj", d + "attn.to_add_out"));
    MD_RETURN_IF_ERROR(m.linear(x + "adaLN_modulation.1", d + "norm1.linear"));
    if (!last) {
      MD_RETURN_IF_ERROR(m.linear(c + "adaLN_modulation.1", d + "norm1_context.linear"));
    } else {
      MD_RETURN_IF_ERROR(m.swap_scale_shift(c + "adaLN_modulation.1", d + "norm1_context.linear"));
    }
    MD_RETURN_IF_ERROR(m.linear(x + "mlp.fc1", d + "ff.net.0.proj"));
    MD_RETURN_IF_ERROR(m.linear(x + "mlp.fc2", d + "ff.net.2"));
    if (!last) {
      MD_RETURN_IF_ERROR(m.linear(c + "mlp.fc1", d + "ff_context.net.0.proj"));
      MD_RETURN_IF_ERROR(m.linear(c + "mlp.fc2", d + "ff_context.net.2"));
    }
  }

  MD_RETURN_IF_ERROR(m.linear("final_layer.linear", "proj_out"));
  MD_RETURN_IF_ERROR(m.swap_scale_shift("final_layer.adaLN_modulation.1", "norm_out.linear"));
  return m.finish();
}

// Top-level modules of each layout, to name the first tensor that fits none.
bool fits_some_layout(const std::string& n) {
  static const char* const kHeads[] = {
      // flux-bfl
      "img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "double_blocks.", "single_blocks.",
      "final_layer.",
      // sd3-stability
      "x_embedder.", "t_embedder.", "y_embedder.", "context_embedder.", "joint_blocks.",
      // diffusers
      "time_text_embed.", "transformer_blocks.", "single_transformer_blocks.", "norm_out.", "proj_out.", "pos_embed."};
  if (n == "pos_embed") return true;
  for (const char* h : kHeads)
    if (starts_with(n, h)) return true;
  return false;
}

std::string config_json_beside(const std::string& path_or_dir) {
  const fs::path p(path_or_dir);
  return ((is_directory(path_or_dir) ? p : p.parent_path()) / "config.json").string();
}

Result<Shape> shape2(const Checkpoint& ck, const std::string& name) {
  MD_TRY(Shape s, ck.shape_of(name));
  if (s.size() != 2)
    return make_error(ck.origin() + ": tensor '" + name + "' has shape " + shape_str(s) +
                      "; expected a [out, in] weight");
  return s;
}

Result<int64_t> vector_size(const Checkpoint& ck, const std::string& name) {
  MD_TRY(Shape s, ck.shape_of(name));
  if (s.size() != 1 || s[0] < 1)
    return make_error(ck.origin() + ": tensor '" + name + "' has shape " + shape_str(s) + "; expected a vector");
  return s[0];
}

// heads = hidden / head_dim, which must divide.
Result<int64_t> head_count(const Checkpoint& ck, int64_t hidden, int64_t head_dim, const std::string& from) {
  if (head_dim < 1 || hidden % head_dim != 0)
    return make_error(ck.origin() + ": hidden size " + std::to_string(hidden) + " is not a multiple of the head size " +
                      std::to_string(head_dim) + " (" + from + ")");
  return hidden / head_dim;
}

}  // namespace

Result<Checkpoint> open_transformer_checkpoint(const std::string& path_or_dir, std::string* detected_layout) {
  MD_TRY(Checkpoint ck, Checkpoint::open(path_or_dir));
  const std::vector<std::string> stored = ck.stored_names();
  const bool prefixed =
      std::any_of(stored.begin(), stored.end(), [](const std::string& n) { return starts_with(n, kComfyPrefix); });
  const std::string prefix = prefixed ? kComfyPrefix : "";
  std::vector<std::string> names;  // relative to the prefix
  for (const auto& n : stored)
    if (starts_with(n, prefix)) names.push_back(n.substr(prefix.size()));
  auto any = [&names](const std::string& head) {
    return std::any_of(names.begin(), names.end(), [&head](const std::string& n) { return starts_with(n, head); });
  };
  const bool flux = any("double_blocks.") || any("single_blocks.") || any("img_in.");
  const bool sd3 = any("joint_blocks.") || any("x_embedder.proj.");
  const bool diffusers = any("transformer_blocks.") || any("single_transformer_blocks.") || any("x_embedder.weight") ||
                         any("pos_embed.proj.");
  if (flux + sd3 + diffusers > 1) {
    std::string found;
    for (const auto& [is, name] :
         {std::pair<bool, std::string>{flux, kFluxLayout}, {sd3, kSD3Layout}, {diffusers, "diffusers"}})
      if (is) found += (found.empty() ? "" : " and ") + name;
    return make_error(ck.origin() + ": mixes tensors of the " + found + " layouts");
  }
  std::string layout;
  if (flux) {
    layout = kFluxLayout;
    MD_RETURN_IF_ERROR(map_flux(ck, prefix, names));
  } else if (sd3) {
    layout = kSD3Layout;
    MD_RETURN_IF_ERROR(map_sd3(ck, prefix, names));
  } else if (diffusers) {
    layout = "diffusers";
    if (prefixed) {  // diffusers names under ComfyUI's prefix: strip it
      for (const auto& n : names) MD_RETURN_IF_ERROR(ck.add_alias(n, prefix + n));
      ck.hide_stored_names();
    }
  } else {
    for (const auto& n : names)
      if (!fits_some_layout(n))
        return make_error(ck.origin() + ": tensor '" + prefix + n +
                          "' fits no known transformer layout (flux-bfl, sd3-stability, diffusers)");
    return make_error(
        ck.origin() + ": not a Flux or SD3 transformer in a known layout (flux-bfl, sd3-stability, diffusers): " +
        (names.empty() ? std::string("no tensors") : "no blocks; its first tensor is '" + prefix + names[0] + "'"));
  }
  if (detected_layout) *detected_layout = layout;
  return ck;
}

Result<FluxConfig> infer_flux_config(const Checkpoint& ck, const std::vector<int>* axes_dims_rope) {
  const std::vector<std::string> names = ck.names();
  FluxConfig c;
  MD_TRY(Shape x, shape2(ck, "x_embedder.weight"));
  const int64_t hidden = x[0];
  c.in_channels = x[1];
  c.num_layers = block_count(names, "transformer_blocks.");
  c.num_single_layers = block_count(names, "single_transformer_blocks.");
  const std::string qn =
      c.num_layers > 0 ? "transformer_blocks.0.attn.norm_q.weight" : "single_transformer_blocks.0.attn.norm_q.weight";
  MD_TRY(c.attention_head_dim, vector_size(ck, qn));
  MD_TRY(c.num_attention_heads, head_count(ck, hidden, c.attention_head_dim, "the size of '" + qn + "'"));
  MD_TRY(Shape ctx, shape2(ck, "context_embedder.weight"));
  c.joint_attention_dim = ctx[1];
  MD_TRY(Shape pooled, shape2(ck, "time_text_embed.text_embedder.linear_1.weight"));
  c.pooled_projection_dim = pooled[1];
  c.guidance_embeds = ck.has("time_text_embed.guidance_embedder.linear_1.weight");
  MD_TRY(Shape out, shape2(ck, "proj_out.weight"));
  c.out_channels = out[0] == c.in_channels ? 0 : out[0];  // diffusers' null: same as in_channels
  if (axes_dims_rope) {
    c.axes_dims_rope = *axes_dims_rope;
  } else if (c.attention_head_dim == 128) {
    c.axes_dims_rope = {16, 56, 56};  // FLUX.1
  } else {
    return make_error(ck.origin() +
                      ": cannot infer the RoPE axes (axes_dims_rope) of a Flux model with attention "
                      "head size " +
                      std::to_string(c.attention_head_dim) +
                      " (only FLUX.1's 128 -> [16, 56, 56] is known); put the model's config.json beside the "
                      "checkpoint");
  }
  int64_t rope = 0;
  for (int a : c.axes_dims_rope) {
    if (a <= 0 || a % 2) return make_error(ck.origin() + ": axes_dims_rope entries must be positive and even");
    rope += a;
  }
  if (rope != c.attention_head_dim)
    return make_error(ck.origin() + ": axes_dims_rope sum to " + std::to_string(rope) +
                      ", not the attention head size " + std::to_string(c.attention_head_dim));
  return c;
}

Result<SD3Config> infer_sd3_config(const Checkpoint& ck) {
  const std::vector<std::string> names = ck.names();
  for (const auto& n : names)
    if (n.find(".attn2.") != std::string::npos)
      return make_error(ck.origin() + ": tensor '" + n +
                        "': SD3.5-Medium's dual attention (MMDiT-X) is not supported yet");
  SD3Config c;
  MD_TRY(Shape pe, ck.shape_of("pos_embed.proj.weight"));
  if (pe.size() != 4 || pe[2] != pe[3] || pe[2] < 1)
    return make_error(ck.origin() + ": tensor 'pos_embed.proj.weight' has shape " + shape_str(pe) +
                      "; expected [dim, channels, patch, patch]");
  const int64_t hidden = pe[0];
  c.in_channels = pe[1];
  c.patch_size = int(pe[2]);
  c.num_layers = block_count(names, "transformer_blocks.");
  if (c.num_layers < 1) return make_error(ck.origin() + ": no transformer_blocks");
  const std::string qn = "transformer_blocks.0.attn.norm_q.weight";
  if (ck.has(qn)) {
    c.qk_norm = "rms_norm";
    MD_TRY(c.attention_head_dim, vector_size(ck, qn));
  } else {
    c.qk_norm = "";
    c.attention_head_dim = 64;
  }
  MD_TRY(c.num_attention_heads, head_count(ck, hidden, c.attention_head_dim,
                                           ck.has(qn) ? "the size of '" + qn + "'" : "SD3's 64 without qk norm"));
  MD_TRY(Shape pos, ck.shape_of("pos_embed.pos_embed"));
  if (pos.size() != 3 || pos[0] != 1 || pos[2] != hidden)
    return make_error(ck.origin() + ": tensor 'pos_embed.pos_embed' has shape " + shape_str(pos) +
                      "; expected [1, n, " + std::to_string(hidden) + "]");
  int64_t side = 0;
  while ((side + 1) * (side + 1) <= pos[1]) ++side;
  if (side * side != pos[1])
    return make_error(ck.origin() + ": tensor 'pos_embed.pos_embed' has " + std::to_string(pos[1]) +
                      " positions, not a square grid");
  c.pos_embed_max_size = side;
  MD_TRY(Shape ctx, shape2(ck, "context_embedder.weight"));
  c.caption_projection_dim = ctx[0];
  c.joint_attention_dim = ctx[1];
  MD_TRY(Shape pooled, shape2(ck, "time_text_embed.text_embedder.linear_1.weight"));
  c.pooled_projection_dim = pooled[1];
  MD_TRY(Shape out, shape2(ck, "proj_out.weight"));
  const int64_t pp = int64_t(c.patch_size) * c.patch_size;
  if (out[0] % pp != 0)
    return make_error(ck.origin() + ": tensor 'proj_out.weight' has " + std::to_string(out[0]) +
                      " rows, not a multiple of patch_size^2 = " + std::to_string(pp));
  c.out_channels = out[0] / pp;
  return c;
}

Result<FluxConfig> flux_config_for(const std::string& path_or_dir, const Checkpoint& ck) {
  const std::string cfg = config_json_beside(path_or_dir);
  if (path_exists(cfg)) return FluxConfig::from_json(cfg);
  return infer_flux_config(ck);
}

Result<SD3Config> sd3_config_for(const std::string& path_or_dir, const Checkpoint& ck) {
  const std::string cfg = config_json_beside(path_or_dir);
  if (path_exists(cfg)) return SD3Config::from_json(cfg);
  return infer_sd3_config(ck);
}

}  // namespace meshdit
