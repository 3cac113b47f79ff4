#include "io/single_file.h"

#include <algorithm>
#include <filesystem>

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

}  // namespace

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

int64_t block_count(const std::vector<std::string>& names, const std::string& head) {
  const auto s = block_indices(names, head);
  return s.empty() ? 0 : *s.rbegin() + 1;
}

Error KeyMapper::fail(const std::string& src, const std::string& what) const {
  return make_error(ck_.origin() + ": " + layout_ + " layout: tensor '" + prefix_ + src + "' " + what);
}

bool KeyMapper::has(const std::string& src) const { return ck_.has_stored(prefix_ + src); }

Result<Shape> KeyMapper::shape(const std::string& src) const {
  if (!has(src)) return make_error(ck_.origin() + ": " + layout_ + " layout: missing tensor '" + prefix_ + src + "'");
  return ck_.stored_shape(prefix_ + src);
}

Status KeyMapper::whole(const std::string& src, const std::string& dst) {
  if (!has(src)) return make_error(ck_.origin() + ": " + layout_ + " layout: missing tensor '" + prefix_ + src + "'");
  used_.insert(prefix_ + src);
  return ck_.add_alias(dst, prefix_ + src);
}

Status KeyMapper::linear(const std::string& src, const std::string& dst) {
  MD_RETURN_IF_ERROR(whole(src + ".weight", dst + ".weight"));
  return whole(src + ".bias", dst + ".bias");
}

Status KeyMapper::split(const std::string& src, const std::vector<std::string>& dst, const std::vector<int64_t>& sizes) {
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
Status KeyMapper::split_qkv(const std::string& src, const std::string& q, const std::string& k, const std::string& v) {
  MD_TRY(Shape s, shape(src + ".weight"));
  if (s.size() != 2 || s[0] % 3 != 0)
    return make_error(ck_.origin() + ": " + layout_ + " layout: fused q/k/v '" + prefix_ + src +
                      ".weight' has shape " + shape_str(s) + "; expected [3 * dim, dim]");
  const int64_t d = s[0] / 3;
  return split(src, {q, k, v}, {d, d, d});
}
Status KeyMapper::swap_scale_shift(const std::string& src, const std::string& dst) {
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
Status KeyMapper::finish() {
  for (const auto& n : ck_.stored_names())
    if (starts_with(n, prefix_) && !used_.count(n))
      return make_error(ck_.origin() + ": tensor '" + n + "' does not fit the " + layout_ + " layout" +
                        (prefix_.empty() ? "" : " (under \"" + prefix_ + "\")"));
  ck_.hide_stored_names();
  return ok_status();
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
    MD_RETURN_IF_ERROR(found[0]->map(ck, prefix, names));
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
