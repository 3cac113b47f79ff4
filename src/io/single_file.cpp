#include "io/single_file.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

namespace fs = std::filesystem;

namespace meshdit {
namespace {

const char* const kComfyPrefix = "model.diffusion_model.";

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

// Applies a layout's rules to a checkpoint as aliases: source names are relative to the prefix, every source used
// is recorded, and finish() rejects the first source tensor under the prefix that nothing used.
class KeyMapper {
 public:
  KeyMapper(Checkpoint& ck, std::string prefix, std::string layout)
      : ck_(ck), prefix_(std::move(prefix)), layout_(std::move(layout)) {}

  Status apply(const KeyRule& r) {
    const auto& d = r.diffusers;
    switch (r.kind) {
      case KeyRule::Kind::Whole:
        return whole(r.stored, d[0]);
      case KeyRule::Kind::Linear:
        MD_RETURN_IF_ERROR(whole(r.stored + ".weight", d[0] + ".weight"));
        return whole(r.stored + ".bias", d[0] + ".bias");
      case KeyRule::Kind::Qkv:
        return qkv(r.stored, d);
      case KeyRule::Kind::QkvMlp:
        return qkv_mlp(r.stored, d);
      case KeyRule::Kind::SwapScaleShift:
        return swap_scale_shift(r.stored, d[0]);
    }
    return make_error("unknown key rule kind");
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
  Error fail(const std::string& src, const std::string& what) const {
    return make_error(ck_.origin() + ": " + layout_ + " layout: tensor '" + prefix_ + src + "' " + what);
  }
  Result<Shape> shape(const std::string& src) const {
    if (!ck_.has_stored(prefix_ + src))
      return make_error(ck_.origin() + ": " + layout_ + " layout: missing tensor '" + prefix_ + src + "'");
    return ck_.stored_shape(prefix_ + src);
  }
  Status whole(const std::string& src, const std::string& dst) {
    MD_RETURN_IF_ERROR(shape(src));
    used_.insert(prefix_ + src);
    return ck_.add_alias(dst, prefix_ + src);
  }
  // Rows of src.weight and src.bias split into consecutive ranges of `sizes` rows, one per dst (views).
  Status split(const std::string& src, const std::vector<std::string>& dst, const std::vector<int64_t>& sizes) {
    for (const char* part : {".weight", ".bias"}) {
      MD_TRY(Shape s, shape(src + part));
      int64_t total = 0;
      for (int64_t n : sizes) total += n;
      if (s.empty() || s[0] != total)
        return fail(src + part, "has shape " + shape_str(s) + ", expected " + std::to_string(total) + " rows");
      used_.insert(prefix_ + src + part);
      int64_t at = 0;
      for (size_t i = 0; i < dst.size(); ++i) {
        MD_RETURN_IF_ERROR(ck_.add_alias(dst[i] + part, prefix_ + src + part, at, at + sizes[i]));
        at += sizes[i];
      }
    }
    return ok_status();
  }
  Status qkv(const std::string& src, const std::vector<std::string>& dst) {
    MD_TRY(Shape s, shape(src + ".weight"));
    if (s.size() != 2 || s[0] % 3 != 0)
      return make_error(ck_.origin() + ": " + layout_ + " layout: fused q/k/v '" + prefix_ + src +
                        ".weight' has shape " + shape_str(s) + "; expected [3 * dim, dim]");
    const int64_t d = s[0] / 3;
    return split(src, dst, {d, d, d});
  }
  Status qkv_mlp(const std::string& src, const std::vector<std::string>& dst) {
    MD_TRY(Shape s, shape(src + ".weight"));
    if (s.size() != 2 || s[0] <= 3 * s[1])
      return fail(src + ".weight", "has shape " + shape_str(s) + "; expected [3 * dim + mlp, dim]");
    const int64_t d = s[1];
    return split(src, dst, {d, d, d, s[0] - 3 * d});
  }
  // diffusers' swap_scale_shift: a concatenation of the two row halves (a copy of this tensor only).
  Status swap_scale_shift(const std::string& src, const std::string& dst) {
    for (const char* part : {".weight", ".bias"}) {
      MD_TRY(Shape s, shape(src + part));
      if (s.empty() || s[0] % 2 != 0)
        return fail(src + part, "has shape " + shape_str(s) + "; expected an even number of rows (shift, scale)");
      const int64_t h = s[0] / 2;
      used_.insert(prefix_ + src + part);
      const std::string full = prefix_ + src + part;
      MD_RETURN_IF_ERROR(ck_.add_alias(dst + part, std::vector<Checkpoint::RowRange>{{full, h, 2 * h}, {full, 0, h}}));
    }
    return ok_status();
  }

  Checkpoint& ck_;
  std::string prefix_, layout_;
  std::set<std::string> used_;
};

}  // namespace

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

int64_t block_count(const std::vector<std::string>& names, const std::string& head) {
  const auto s = block_indices(names, head);
  return s.empty() ? 0 : *s.rbegin() + 1;
}

int64_t LayoutNames::blocks(const std::string& stored_head, const std::string& diffusers_head) const {
  return block_count(names_, pick(stored_head, diffusers_head));
}

bool LayoutNames::has(const std::string& stored, const std::string& diffusers) const {
  return std::find(names_.begin(), names_.end(), pick(stored, diffusers)) != names_.end();
}

std::string LayoutNames::find(const std::string& stored_part, const std::string& diffusers_part) const {
  const std::string& part = pick(stored_part, diffusers_part);
  for (const auto& n : names_)
    if (n.find(part) != std::string::npos) return n;
  return "";
}

Error LayoutNames::reject(const std::string& name, const std::string& why) const {
  return make_error(origin_ + ": tensor '" + prefix_ + name + "': " + why);
}

Result<std::vector<StoredTensor>> stored_tensors(const SingleFileLayout& layout,
                                                 const std::vector<std::string>& diffusers_names) {
  const std::string origin = "diffusers tensors to the " + layout.name + " layout";
  MD_TRY(KeyRules keys, layout.keys(LayoutNames(LayoutNames::Side::Diffusers, diffusers_names, origin)));
  std::set<std::string> left(diffusers_names.begin(), diffusers_names.end());
  auto take = [&](const std::string& n) -> Status {
    if (!left.erase(n))
      return make_error(origin + ": " +
                        (std::find(diffusers_names.begin(), diffusers_names.end(), n) == diffusers_names.end()
                             ? "missing tensor '" + n + "'"
                             : "tensor '" + n + "' taken twice"));
    return ok_status();
  };
  std::vector<StoredTensor> out;
  for (const auto& r : keys.rules()) {
    if (r.kind == KeyRule::Kind::Whole) {
      MD_RETURN_IF_ERROR(take(r.diffusers[0]));
      out.push_back({r.stored, {r.diffusers[0]}, false});
      continue;
    }
    for (const char* part : {".weight", ".bias"}) {
      StoredTensor t{r.stored + part, {}, r.kind == KeyRule::Kind::SwapScaleShift};
      for (const auto& d : r.diffusers) {
        MD_RETURN_IF_ERROR(take(d + part));
        t.parts.push_back(d + part);
      }
      out.push_back(std::move(t));
    }
  }
  if (!left.empty()) return make_error(origin + ": no rule takes tensor '" + *left.begin() + "'");
  return out;
}

namespace {

template <class T>
std::vector<std::string> names_of(const std::vector<std::pair<std::string, T>>& v) {
  std::vector<std::string> n;
  for (const auto& kv : v) n.push_back(kv.first);
  return n;
}

// Rows stack: every part has the first one's trailing dims; a swap needs an even number of rows.
Result<Shape> stacked_shape(const StoredTensor& t, const std::vector<Shape>& parts) {
  Shape s = parts[0];
  if (s.empty()) return make_error("tensor '" + t.name + "': its parts are scalars");
  for (size_t i = 1; i < parts.size(); ++i) {
    if (parts[i].size() != s.size() || !std::equal(s.begin() + 1, s.end(), parts[i].begin() + 1))
      return make_error("tensor '" + t.name + "': part '" + t.parts[i] + "' has shape " + shape_str(parts[i]) +
                        ", unlike '" + t.parts[0] + "' " + shape_str(parts[0]));
    s[0] += parts[i][0];
  }
  if (t.swap_halves && s[0] % 2 != 0)
    return make_error("tensor '" + t.name + "' has shape " + shape_str(s) + "; expected an even number of rows");
  return s;
}

}  // namespace

Result<NamedShapes> single_file_shapes(const SingleFileLayout& layout, const NamedShapes& diffusers) {
  MD_TRY(auto stored, stored_tensors(layout, names_of(diffusers)));
  const std::map<std::string, Shape> shape_of(diffusers.begin(), diffusers.end());
  NamedShapes out;
  for (const auto& t : stored) {
    std::vector<Shape> parts;
    for (const auto& p : t.parts) parts.push_back(shape_of.at(p));
    MD_TRY(Shape s, stacked_shape(t, parts));
    out.emplace_back(t.name, s);
  }
  return out;
}

Result<NamedTensors> single_file_tensors(const SingleFileLayout& layout, const NamedTensors& diffusers) {
  MD_TRY(auto stored, stored_tensors(layout, names_of(diffusers)));
  const std::map<std::string, Tensor> tensor_of(diffusers.begin(), diffusers.end());
  NamedTensors out;
  for (const auto& t : stored) {
    std::vector<Tensor> parts;
    std::vector<Shape> shapes;
    for (const auto& p : t.parts) {
      parts.push_back(tensor_of.at(p));
      shapes.push_back(parts.back().shape());
    }
    MD_TRY(Shape s, stacked_shape(t, shapes));
    if (t.swap_halves) {
      const int64_t h = s[0] / 2;
      out.emplace_back(t.name, concat({parts[0].slice(0, h, 2 * h), parts[0].slice(0, 0, h)}, 0));
    } else {
      out.emplace_back(t.name, parts.size() == 1 ? parts[0] : concat(parts, 0));
    }
  }
  return out;
}

std::string config_json_beside(const std::string& path_or_dir) {
  const fs::path p(path_or_dir);
  return ((is_directory(path_or_dir) ? p : p.parent_path()) / "config.json").string();
}

Result<Shape> matrix_shape(const Checkpoint& ck, const std::string& name) {
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

Result<int64_t> head_count(const Checkpoint& ck, int64_t hidden, int64_t head_dim, const std::string& from) {
  if (head_dim < 1 || hidden % head_dim != 0)
    return make_error(ck.origin() + ": hidden size " + std::to_string(hidden) + " is not a multiple of the head size " +
                      std::to_string(head_dim) + " (" + from + ")");
  return hidden / head_dim;
}

Result<Checkpoint> open_single_file(const std::string& path_or_dir, const std::vector<SingleFileLayout>& layouts,
                                    const std::vector<std::string>& diffusers_detect,
                                    const std::vector<std::string>& diffusers_modules, std::string* detected_layout) {
  MD_TRY(Checkpoint ck, Checkpoint::open(path_or_dir));
  return open_single_file(std::move(ck), layouts, diffusers_detect, diffusers_modules, detected_layout);
}

Result<Checkpoint> open_single_file(Checkpoint ck, const std::vector<SingleFileLayout>& layouts,
                                    const std::vector<std::string>& diffusers_detect,
                                    const std::vector<std::string>& diffusers_modules, std::string* detected_layout) {
  const std::vector<std::string> stored = ck.stored_names();
  const bool prefixed =
      std::any_of(stored.begin(), stored.end(), [](const std::string& n) { return starts_with(n, kComfyPrefix); });
  const std::string prefix = prefixed ? kComfyPrefix : "";
  std::vector<std::string> names;  // relative to the prefix
  for (const auto& n : stored)
    if (starts_with(n, prefix)) names.push_back(n.substr(prefix.size()));
  auto any_of = [&names](const std::vector<std::string>& heads) {
    for (const auto& head : heads)
      for (const auto& n : names)
        if (starts_with(n, head)) return true;
    return false;
  };
  std::string known;  // "flux-bfl, sd3-stability, diffusers"
  std::vector<const SingleFileLayout*> found;
  for (const auto& l : layouts) {
    known += l.name + ", ";
    if (any_of(l.detect)) found.push_back(&l);
  }
  known += "diffusers";
  const bool diffusers = any_of(diffusers_detect);
  if (found.size() + (diffusers ? 1 : 0) > 1) {
    std::string list;
    for (const auto* l : found) list += (list.empty() ? "" : " and ") + l->name;
    if (diffusers) list += " and diffusers";
    return make_error(ck.origin() + ": mixes tensors of the " + list + " layouts");
  }
  std::string layout;
  if (!found.empty()) {
    layout = found[0]->name;
    MD_TRY(KeyRules keys, found[0]->keys(LayoutNames(LayoutNames::Side::Stored, names, ck.origin(), prefix)));
    KeyMapper m(ck, prefix, layout);
    for (const auto& r : keys.rules()) MD_RETURN_IF_ERROR(m.apply(r));
    MD_RETURN_IF_ERROR(m.finish());
  } else if (diffusers) {
    layout = "diffusers";
    if (prefixed) {  // diffusers names under ComfyUI's prefix: strip it
      for (const auto& n : names) MD_RETURN_IF_ERROR(ck.add_alias(n, prefix + n));
      ck.hide_stored_names();
    }
  } else {
    auto fits = [&](const std::string& n) {
      for (const auto& l : layouts)
        for (const auto& m : l.modules)
          if (n == m || starts_with(n, m + ".")) return true;
      for (const auto& m : diffusers_modules)
        if (n == m || starts_with(n, m + ".")) return true;
      return false;
    };
    for (const auto& n : names)
      if (!fits(n))
        return make_error(ck.origin() + ": tensor '" + prefix + n + "' fits no known transformer layout (" + known +
                          ")");
    return make_error(
        ck.origin() + ": not a transformer in a known layout (" + known + "): " +
        (names.empty() ? std::string("no tensors") : "no blocks; its first tensor is '" + prefix + names[0] + "'"));
  }
  if (detected_layout) *detected_layout = layout;
  return ck;
}

}  // namespace meshdit
