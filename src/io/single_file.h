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
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace meshdit {

bool starts_with(const std::string& s, const std::string& prefix);

// One past the largest block index N of names "<head>N.<rest>" (0 when there is none).
int64_t block_count(const std::vector<std::string>& names, const std::string& head);

// --- Key maps ------------------------------------------------------------------------------------------------
// A layout's key map is a declaration: a list of rules, each a stored tensor (or a .weight/.bias pair) and the
// diffusers tensor(s) it holds. Loading applies the rules as aliases of the stored tensors; the inverse builds a
// file of the layout from diffusers-named tensors (the tests' converted fixtures, `bench random-checkpoint`), so
// the two directions cannot disagree.

struct KeyRule {
  enum class Kind : uint8_t {
    Whole,           // the tensor as it is (stored and diffusers names are full tensor names)
    Linear,          // stored.weight/.bias <-> diffusers.weight/.bias
    Qkv,             // a fused [3 D, D] projection (weight and bias): its row thirds are q, k, v
    QkvMlp,          // a fused [3 D + M, D] projection: D rows each for q, k, v, the other M for the MLP input
    SwapScaleShift,  // weight and bias stored (shift, scale), (scale, shift) in diffusers: AdaLayerNormContinuous
  };
  Kind kind = Kind::Whole;
  std::string stored;                  // relative to the layout's prefix
  std::vector<std::string> diffusers;  // one name; q, k, v (and the MLP's) for the fused kinds
};

// A key map under construction; the rules keep the order they are declared in, which is the order the inverse
// writes a file in.
class KeyRules {
 public:
  void whole(const std::string& stored, const std::string& diffusers) {
    add(KeyRule::Kind::Whole, stored, {diffusers});
  }
  void linear(const std::string& stored, const std::string& diffusers) {
    add(KeyRule::Kind::Linear, stored, {diffusers});
  }
  void qkv(const std::string& stored, const std::string& q, const std::string& k, const std::string& v) {
    add(KeyRule::Kind::Qkv, stored, {q, k, v});
  }
  void qkv_mlp(const std::string& stored, const std::string& q, const std::string& k, const std::string& v,
               const std::string& mlp) {
    add(KeyRule::Kind::QkvMlp, stored, {q, k, v, mlp});
  }
  void swap_scale_shift(const std::string& stored, const std::string& diffusers) {
    add(KeyRule::Kind::SwapScaleShift, stored, {diffusers});
  }
  const std::vector<KeyRule>& rules() const { return rules_; }

 private:
  void add(KeyRule::Kind kind, const std::string& stored, std::vector<std::string> diffusers) {
    rules_.push_back(KeyRule{kind, stored, std::move(diffusers)});
  }
  std::vector<KeyRule> rules_;
};

// What a key map depends on (block counts, optional modules) is read from the names it converts from: the stored
// names when loading, the diffusers names when writing a file. Each question therefore names what to look for
// in both namings, and is answered from the side at hand.
class LayoutNames {
 public:
  enum class Side : uint8_t { Stored, Diffusers };
  // `names` relative to `prefix`; `origin` (a file) and `prefix` only for messages.
  LayoutNames(Side side, std::vector<std::string> names, std::string origin, std::string prefix = "")
      : side_(side), names_(std::move(names)), origin_(std::move(origin)), prefix_(std::move(prefix)) {}
  // One past the largest block index N of names "<head>N.<rest>" (0 when there is none).
  int64_t blocks(const std::string& stored_head, const std::string& diffusers_head) const;
  // Whether there is a tensor of this name.
  bool has(const std::string& stored, const std::string& diffusers) const;
  // The first name that contains the part, "" when none.
  std::string find(const std::string& stored_part, const std::string& diffusers_part) const;
  // A message naming the source and one of `names`.
  Error reject(const std::string& name, const std::string& why) const;

 private:
  const std::string& pick(const std::string& stored, const std::string& diffusers) const {
    return side_ == Side::Stored ? stored : diffusers;
  }
  Side side_;
  std::vector<std::string> names_;
  std::string origin_, prefix_;
};

// A single-file layout of some model: the top-level modules that identify it (any one present), every top-level
// module it has (to name a tensor that fits no layout), and its key map.
struct SingleFileLayout {
  std::string name;  // "flux-bfl"
  std::vector<std::string> detect;
  std::vector<std::string> modules;
  std::function<Result<KeyRules>(const LayoutNames&)> keys;
};

// One tensor of a layout as the inverse builds it: the rows of the diffusers tensors `parts` stacked in order,
// or, with `swap_halves`, the one part's two row halves exchanged.
struct StoredTensor {
  std::string name;
  std::vector<std::string> parts;
  bool swap_halves = false;
};

// The inverse of `layout`'s key map for these diffusers names, in rule order. Every diffusers name must be taken
// by exactly one rule and every name a rule needs must be there; otherwise an error names the first that is not.
Result<std::vector<StoredTensor>> stored_tensors(const SingleFileLayout& layout,
                                                 const std::vector<std::string>& diffusers_names);

using NamedShapes = std::vector<std::pair<std::string, Shape>>;
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
// The names and shapes of a file in `layout` holding the diffusers tensors of these shapes (a weight spec).
Result<NamedShapes> single_file_shapes(const SingleFileLayout& layout, const NamedShapes& diffusers);
// The tensors of a file in `layout` holding these diffusers tensors (fused rows stacked, halves swapped back).
Result<NamedTensors> single_file_tensors(const SingleFileLayout& layout, const NamedTensors& diffusers);

// A file, a sharded index or a folder, in one of `layouts` (its key map applied as aliases: fused rows are views
// into the mapping, swapped halves a copy on each get) or already in diffusers names (a tensor starting with
// one of `diffusers_detect`; `diffusers_modules` lists every diffusers top-level module). The result answers to
// diffusers names. `detected_layout` (may be null) receives the layout's name or "diffusers". A file in no
// layout is an error naming it and the first tensor that fits none.
Result<Checkpoint> open_single_file(const std::string& path_or_dir, const std::vector<SingleFileLayout>& layouts,
                                    const std::vector<std::string>& diffusers_detect,
                                    const std::vector<std::string>& diffusers_modules, std::string* detected_layout);
// The same for a checkpoint already opened (one whose metadata the caller checked first: a GGUF architecture).
Result<Checkpoint> open_single_file(Checkpoint ck, const std::vector<SingleFileLayout>& layouts,
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
