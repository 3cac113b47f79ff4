// Transformer checkpoints in the single-file layouts that ComfyUI and stable-diffusion.cpp users have
// (Black Forest Labs' flux1-dev.safetensors, Stability's sd3.5_large.safetensors, ...), read as
// diffusers-named layers at load time without copying the model. This file holds the generic machinery; each
// model's own file declares its layouts (which top-level modules identify it, and the key map: diffusers'
// loaders/single_file_utils.py conversions), and models/registry.h opens a file against all of them.
//
// Any layout may sit under "model.diffusion_model." (ComfyUI's all-in-one files); tensors outside that prefix
// (VAE, text encoders) are then ignored. Fused q/k/v (and Flux's single-block q/k/v/mlp) become row ranges of
// the fused tensor, which are views into the mapped file; only tensors whose rows diffusers reorders are copied.
#pragma once
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace meshdit {

bool starts_with(const std::string& s, const std::string& prefix);

// One past the largest block index N of names "<head>N.<rest>" (0 when there is none).
int64_t block_count(const std::vector<std::string>& names, const std::string& head);

// Builds the aliases of one single-file layout: source names are relative to the prefix, every source used is
// recorded, and finish() rejects the first source tensor under the prefix that nothing used.
class KeyMapper {
 public:
  KeyMapper(Checkpoint& ck, std::string prefix, std::string layout)
      : ck_(ck), prefix_(std::move(prefix)), layout_(std::move(layout)) {}
  const Checkpoint& checkpoint() const { return ck_; }
  const std::string& prefix() const { return prefix_; }
  // A message naming the file, the layout and a source tensor.
  Error fail(const std::string& src, const std::string& what) const;

  bool has(const std::string& src) const;
  Result<Shape> shape(const std::string& src) const;
  // src -> dst as it is (a view).
  Status whole(const std::string& src, const std::string& dst);
  // src.weight / src.bias -> dst.weight / dst.bias
  Status linear(const std::string& src, const std::string& dst);
  // Rows of src.weight and src.bias split into consecutive ranges of `sizes` rows, one per dst (views).
  Status split(const std::string& src, const std::vector<std::string>& dst, const std::vector<int64_t>& sizes);
  // A fused [3 D, ...] q/k/v projection split into thirds.
  Status split_qkv(const std::string& src, const std::string& q, const std::string& k, const std::string& v);
  // An AdaLayerNormContinuous projection stored as (shift, scale), which diffusers orders (scale, shift):
  // diffusers' swap_scale_shift, here a concatenation of the two row halves (a copy of this tensor only).
  Status swap_scale_shift(const std::string& src, const std::string& dst);
  // Every stored tensor under the prefix must have been mapped; the stored names disappear from view.
  Status finish();

 private:
  Checkpoint& ck_;
  std::string prefix_, layout_;
  std::set<std::string> used_;
};

// A single-file layout of some model: the top-level modules that identify it (any one present), every top-level
// module it has (to name a tensor that fits no layout), and the map to diffusers names. `names` are the stored
// names relative to `prefix`.
struct SingleFileLayout {
  std::string name;  // "flux-bfl"
  std::vector<std::string> detect;
  std::vector<std::string> modules;
  std::function<Status(Checkpoint& ck, const std::string& prefix, const std::vector<std::string>& names)> map;
};

// A file, a sharded index or a folder, in one of `layouts` or already in diffusers names (a tensor starting with
// one of `diffusers_detect`; `diffusers_modules` lists every diffusers top-level module). The result answers to
// diffusers names. `detected_layout` (may be null) receives the layout's name or "diffusers". A file in no
// layout is an error naming it and the first tensor that fits none.
Result<Checkpoint> open_single_file(const std::string& path_or_dir, const std::vector<SingleFileLayout>& layouts,
                                    const std::vector<std::string>& diffusers_detect,
                                    const std::vector<std::string>& diffusers_modules, std::string* detected_layout);

// The config.json in the folder of a checkpoint (the folder itself, or the one holding the file).
std::string config_json_beside(const std::string& path_or_dir);

// Shape checks for inferring configs from weights, each an error naming the tensor.
Result<Shape> matrix_shape(const Checkpoint& ck, const std::string& name);  // [out, in]
Result<int64_t> vector_size(const Checkpoint& ck, const std::string& name);
// hidden / head_dim, which must divide; `from` says where head_dim came from.
Result<int64_t> head_count(const Checkpoint& ck, int64_t hidden, int64_t head_dim, const std::string& from);

}  // namespace meshdit
