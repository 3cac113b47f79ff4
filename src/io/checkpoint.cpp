#include "io/checkpoint.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include "backend/ops.h"
#include "io/gguf.h"
#include "io/json_config.h"
#include "io/torch_checkpoint.h"

namespace fs = std::filesystem;

namespace meshdit {

bool path_exists(const std::string& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

bool is_directory(const std::string& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

namespace {

// A safetensors file, a GGUF file or a PyTorch checkpoint, told apart by their first bytes.
Result<std::shared_ptr<SafetensorsFile>> open_tensor_file(const std::string& path, const std::string& prefix) {
  MD_TRY(auto map, MappedFile::open(path));
  if (is_zip_file(map->data(), map->size()) || is_legacy_torch_file(map->data(), map->size())) {
    MD_TRY(auto header, parse_torch_checkpoint(map->data(), map->size(), path, prefix));
    return SafetensorsFile::from_header(path, std::move(map), std::move(header));
  }
  SafetensorsHeader header;
  if (is_gguf_file(map->data(), map->size())) {
    MD_TRY(GgufFile g, parse_gguf(map->data(), map->size(), path));
    MD_TRY(header, gguf_to_header(g, path));
  } else {
    MD_TRY(header, parse_safetensors(map->data(), map->size(), path));
  }
  if (!prefix.empty()) {
    std::vector<TensorInfo> kept;
    for (auto& t : header.tensors)
      if (t.name.compare(0, prefix.size(), prefix) == 0) {
        t.name.erase(0, prefix.size());
        kept.push_back(std::move(t));
      }
    header.tensors = std::move(kept);
  }
  return SafetensorsFile::from_header(path, std::move(map), std::move(header));
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() > tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

Status Checkpoint::add_file(const std::string& path, const std::string& prefix) {
  MD_TRY(auto f, open_tensor_file(path, prefix));
  const auto& tensors = f->header().tensors;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string& name = tensors[i].name;
    if (f->hidden(name)) continue;  // an FP8 weight's scale: read with its weight
    auto it = where_.find(name);
    if (it != where_.end())
      return make_error(path + ": tensor '" + name + "' also appears in " + files_[it->second.file]->path());
    where_[name] = Where{files_.size(), i};
  }
  files_.push_back(std::move(f));
  return ok_status();
}

Result<Checkpoint> Checkpoint::open_file(const std::string& path, const std::string& prefix) {
  Checkpoint c;
  c.origin_ = path;
  MD_RETURN_IF_ERROR(c.add_file(path, prefix));
  return c;
}

Result<Checkpoint> Checkpoint::open_index(const std::string& index_json, const std::string& prefix) {
  MD_TRY(Json j, load_json(index_json));
  if (!j.contains("weight_map") || !j["weight_map"].is_object())
    return make_error(index_json + ": no \"weight_map\" object");
  const std::string dir = fs::path(index_json).parent_path().string();
  std::vector<std::string> shards;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) return make_error(index_json + ": weight_map['" + it.key() + "'] is not a file name");
    std::string s = it.value().get<std::string>();
    if (std::find(shards.begin(), shards.end(), s) == shards.end()) shards.push_back(s);
  }
  std::sort(shards.begin(), shards.end());
  Checkpoint c;
  c.origin_ = index_json;
  for (const auto& s : shards) {
    const std::string p = (fs::path(dir) / s).string();
    if (!path_exists(p)) return make_error(index_json + ": shard " + s + " is missing");
    MD_RETURN_IF_ERROR(c.add_file(p, prefix));
  }
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
    if (it.key().compare(0, prefix.size(), prefix) == 0 && !c.has(it.key().substr(prefix.size())))
      return make_error(index_json + ": tensor '" + it.key() + "' is not in its shard " +
                        it.value().get<std::string>());
  return c;
}

namespace {

// The diffusers variant a weight file belongs to ("" for the plain weights): "bf16" for
// diffusion_pytorch_model.bf16.safetensors, diffusion_pytorch_model.bf16-00001-of-00003.safetensors and
// diffusion_pytorch_model.safetensors.index.bf16.json (diffusers' _add_variant), the same for .bin files.
std::string weight_variant(const std::string& name) {
  for (const char* v : {"bf16", "fp16", "fp32"}) {
    const std::string dot = std::string(".") + v;
    if (name.find(dot + ".safetensors") != std::string::npos || name.find(dot + ".bin") != std::string::npos ||
        name.find(dot + "-0") != std::string::npos || ends_with(name, ".index" + dot + ".json"))
      return v;
  }
  return "";
}

}  // namespace

Result<Checkpoint> Checkpoint::open_dir(const std::string& dir, const std::string& prefix) {
  struct Group {
    std::vector<std::string> index, files, bin_index, bin_files, gguf_files;
  };
  std::map<std::string, Group> by_variant;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    Group& g = by_variant[weight_variant(n)];
    const bool json = ends_with(n, ".json");
    if (json && n.find(".safetensors.index") != std::string::npos)
      g.index.push_back(e.path().string());
    else if (ends_with(n, ".safetensors"))
      g.files.push_back(e.path().string());
    else if (json && n.find(".bin.index") != std::string::npos)
      g.bin_index.push_back(e.path().string());
    else if (ends_with(n, ".bin"))
      g.bin_files.push_back(e.path().string());
    else if (ends_with(n, ".gguf"))
      g.gguf_files.push_back(e.path().string());
  }
  if (ec) return make_error(dir + ": cannot list folder: " + ec.message());
  // A folder holding diffusers variants side by side (genmo/mochi-1-preview ships f32 and bf16): the bf16
  // variant, which is what meshdit computes from anyway and half the pages to map; else the plain weights.
  auto has_weights = [](const Group& g) {
    return !g.index.empty() || !g.files.empty() || !g.bin_index.empty() || !g.bin_files.empty() ||
           !g.gguf_files.empty();
  };
  Group chosen;
  for (const char* v : {"bf16", "", "fp16", "fp32"})
    if (auto it = by_variant.find(v); it != by_variant.end() && has_weights(it->second)) {
      chosen = it->second;
      break;
    }
  std::vector<std::string> index = std::move(chosen.index), files = std::move(chosen.files);
  // safetensors first; a folder with only PyTorch files (an older diffusers release) reads those, one with only
  // GGUF files (a quantized transformer downloaded into its own folder) those.
  if (index.empty() && files.empty()) {
    index = std::move(chosen.bin_index);
    files = std::move(chosen.bin_files);
  }
  if (index.empty() && files.empty()) files = std::move(chosen.gguf_files);
  if (index.size() > 1) return make_error(dir + ": more than one *.safetensors.index.json (or *.bin.index.json)");
  if (index.size() == 1) return open_index(index[0], prefix);
  if (files.empty()) return make_error(dir + ": no .safetensors file (nor a PyTorch .bin, nor a .gguf)");
  std::sort(files.begin(), files.end());
  Checkpoint c;
  c.origin_ = dir;
  for (const auto& f : files) MD_RETURN_IF_ERROR(c.add_file(f, prefix));
  return c;
}

Result<Checkpoint> Checkpoint::open(const std::string& path, const std::string& prefix) {
  if (!path_exists(path)) return make_error(path + ": no such file or folder");
  if (is_directory(path)) return open_dir(path, prefix);
  if (path.size() > 5 && path.compare(path.size() - 5, 5, ".json") == 0) return open_index(path, prefix);
  return open_file(path, prefix);
}

bool Checkpoint::has(const std::string& name) const {
  return aliases_.count(name) != 0 || (stored_visible_ && where_.count(name) != 0);
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> n;
  if (stored_visible_)
    for (const auto& kv : where_) n.push_back(kv.first);
  for (const auto& kv : aliases_) n.push_back(kv.first);
  std::sort(n.begin(), n.end());
  n.erase(std::unique(n.begin(), n.end()), n.end());  // an alias may share a stored tensor's name
  return n;
}

std::vector<std::string> Checkpoint::stored_names() const {
  std::vector<std::string> n;
  for (const auto& kv : where_) n.push_back(kv.first);
  return n;
}

Result<Tensor> Checkpoint::get_stored(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return make_error(origin_ + ": missing tensor '" + name + "'");
  return files_[it->second.file]->get(name);
}

Result<Shape> Checkpoint::stored_shape(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return make_error(origin_ + ": missing tensor '" + name + "'");
  return info(it->second).shape;
}

Status Checkpoint::add_alias(const std::string& name, const std::string& source) {
  auto it = where_.find(source);
  if (it == where_.end()) return make_error(origin_ + ": alias '" + name + "': missing tensor '" + source + "'");
  if (aliases_.count(name)) return make_error(origin_ + ": alias '" + name + "' is defined twice");
  const TensorInfo& t = info(it->second);
  Alias a;
  a.parts.push_back(RowRange{source, 0, t.shape.empty() ? 1 : t.shape[0]});
  a.whole = true;
  a.shape = t.shape;
  a.dtype = t.dtype;
  aliases_[name] = std::move(a);
  return ok_status();
}

Status Checkpoint::add_alias(const std::string& name, const std::string& source, int64_t begin, int64_t end) {
  return add_alias(name, std::vector<RowRange>{RowRange{source, begin, end}});
}

Status Checkpoint::add_alias(const std::string& name, std::vector<RowRange> parts) {
  const std::string what = origin_ + ": alias '" + name + "'";
  if (parts.empty()) return make_error(what + " has no parts");
  if (aliases_.count(name)) return make_error(what + " is defined twice");
  Alias a;
  int64_t rows = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    RowRange& p = parts[i];
    auto it = where_.find(p.source);
    if (it == where_.end()) return make_error(what + ": missing tensor '" + p.source + "'");
    const TensorInfo& t = info(it->second);
    if (t.shape.empty()) return make_error(what + ": tensor '" + p.source + "' is a scalar and has no rows");
    const int64_t n = t.shape[0];
    if (p.end < 0) p.end = n;
    if (p.begin < 0 || p.begin >= p.end || p.end > n)
      return make_error(what + ": rows [" + std::to_string(p.begin) + ", " + std::to_string(p.end) +
                        ") are not inside tensor '" + p.source + "' of shape " + shape_str(t.shape));
    const Shape trailing(t.shape.begin() + 1, t.shape.end());
    if (i == 0) {
      a.shape = t.shape;
      a.dtype = t.dtype;
    } else if (t.dtype != a.dtype || trailing != Shape(a.shape.begin() + 1, a.shape.end())) {
      return make_error(what + ": tensor '" + p.source + "' (" + dtype_name(t.dtype) + " " + shape_str(t.shape) +
                        ") does not stack with '" + parts[0].source + "' (" + dtype_name(a.dtype) + " " +
                        shape_str(a.shape) + ")");
    }
    rows += p.end - p.begin;
  }
  a.shape[0] = rows;
  a.parts = std::move(parts);
  aliases_[name] = std::move(a);
  return ok_status();
}

std::string Checkpoint::describe_alias(const std::string& name) const {
  auto it = aliases_.find(name);
  if (it == aliases_.end()) return "";
  std::string s;
  for (const auto& p : it->second.parts) {
    if (!s.empty()) s += " + ";
    s += "'" + p.source + "'";
    if (!it->second.whole) s += " rows [" + std::to_string(p.begin) + ", " + std::to_string(p.end) + ")";
  }
  return s;
}

namespace {

// A shard copied out of a memory-mapped weight leaves the whole weight's pages resident in this process.
// Dropping them keeps per-rank memory at its shard; the mapping is private and read-only, so a later read
// (another shard of the same tensor) simply faults the file back in.
void release_mapped_pages(const Tensor& w) {
  if (!w.read_only() || w.raw() == nullptr) return;
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (uintptr_t(w.raw()) + page - 1) / page * page;
  const uintptr_t end = (uintptr_t(w.raw()) + w.nbytes()) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace

// Anonymous memory for weights copied out of a mapping (Checkpoint::copy_into_memory): chunks of 256 MiB (or one
// weight's size, if larger) aligned to and advised for 2 MiB pages, handed out back to back at 64-byte
// alignment, so that weights share huge pages instead of each rounding up to its own. A chunk lives as long as
// any weight in it.
class Checkpoint::WeightArena {
 public:
  // Room for `bytes` and the chunk that owns it; null data when the memory cannot be had.
  std::pair<void*, std::shared_ptr<void>> take(size_t bytes) {
    constexpr size_t kHuge = size_t(2) << 20, kChunk = size_t(256) << 20;
    const std::lock_guard<std::mutex> lock(mu_);
    size_t at = (used_ + 63) / 64 * 64;
    if (!chunk_ || at + bytes > cap_) {
      const size_t len = std::max(kChunk, (bytes + kHuge - 1) / kHuge * kHuge);
      void* raw = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (raw == MAP_FAILED) return {nullptr, nullptr};
      const uintptr_t r = uintptr_t(raw), base = (r + kHuge - 1) / kHuge * kHuge;
      if (base > r) munmap(raw, base - r);
      munmap(reinterpret_cast<void*>(base + len), r + kHuge - base);
      madvise(reinterpret_cast<void*>(base), len, MADV_HUGEPAGE);
      chunk_ = std::shared_ptr<void>(reinterpret_cast<void*>(base), [len](void* q) { munmap(q, len); });
      cap_ = len;
      at = 0;
    }
    used_ = at + bytes;
    return {static_cast<char*>(chunk_.get()) + at, chunk_};
  }

 private:
  std::mutex mu_;
  std::shared_ptr<void> chunk_;
  size_t cap_ = 0, used_ = 0;
};

Tensor Checkpoint::placed(const Tensor& t) const {
  if (meta_) return t;
  // Small weights (norms, biases) stay views: they are read from cache, not streamed.
  if (device_ == Device::CPU && copy_into_memory_ && t.read_only() && t.is_contiguous() &&
      t.nbytes() >= (size_t(1) << 20)) {
    if (!arena_) arena_ = std::make_shared<WeightArena>();
    auto [p, owner] = arena_->take(t.nbytes());
    if (p) {
      std::memcpy(p, t.raw(), t.nbytes());
      release_mapped_pages(t);
      return Tensor::wrap(p, t.shape(), t.dtype(), std::move(owner), /*read_only=*/false);
    }
  }
  return ops::place(t, device_);
}

Result<Tensor> Checkpoint::get(const std::string& name) const {
  auto a = aliases_.find(name);
  if (a == aliases_.end()) {
    if (!stored_visible_) return make_error(origin_ + ": missing tensor '" + name + "'");
    return get_stored(name);
  }
  const Alias& al = a->second;
  if (al.whole) return get_stored(al.parts[0].source);
  std::vector<Tensor> rows;
  for (const auto& p : al.parts) {
    MD_TRY(Tensor t, get_stored(p.source));
    if (!t.is_contiguous() || t.dim() == 0)
      return make_error(origin_ + ": tensor '" + p.source + "' is not contiguous");
    rows.push_back(t.slice(0, p.begin, p.end));
  }
  if (rows.size() == 1) return rows[0];
  Tensor joined = concat(rows, 0);
  // The copy is what the model reads from now on (a BFL final layer's swapped halves: 36 MiB for Flux).
  for (const Tensor& r : rows) release_mapped_pages(r);
  return joined;
}

Result<Tensor> Checkpoint::checked(const std::string& name, const Shape& expect) const {
  if (meta_) return Tensor::wrap(nullptr, expect, meta_dtype_, nullptr, /*read_only=*/true);
  MD_TRY(Tensor t, get(name));
  const std::string alias = describe_alias(name);
  const std::string what = "tensor '" + name + "'" + (alias.empty() ? "" : " (from " + alias + ")");
  if (t.dtype() != DType::F32 && t.dtype() != DType::F16 && t.dtype() != DType::BF16)
    return make_error(origin_ + ": " + what + " has dtype " + dtype_name(t.dtype()) +
                      "; weights must be F32, F16 or BF16");
  if (t.shape() != expect)
    return make_error(origin_ + ": " + what + " has shape " + shape_str(t.shape()) + ", expected " + shape_str(expect));
  return t;
}

Result<Tensor> Checkpoint::get(const std::string& name, const Shape& expect) const {
  MD_TRY(Tensor t, checked(name, expect));
  record(name, t, Shard::Replicated, expect);
  return placed(t);
}

namespace {

// Ranges that follow one another as one: a modulation linear's k chunks on a one-rank group are the whole weight,
// which stays a view into the mapping instead of a copy of it.
std::vector<std::pair<int64_t, int64_t>> merge_adjacent(const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& r : ranges) {
    if (!out.empty() && out.back().second == r.first)
      out.back().second = r.second;
    else
      out.push_back(r);
  }
  return out;
}

}  // namespace

void Checkpoint::release_resident() const {
  if (meta_) return;
  for (const auto& name : stored_names()) {
    const Where& w = where_.at(name);
    if (info(w).fp8 != TensorInfo::Fp8::None) continue;  // decoded when taken: its copy is not a mapping
    // A quantized tensor's pages are its blocks (kept quantized, or read once to dequantize): drop them too.
    auto t = info(w).quantized() ? files_[w.file]->get_blocks(name) : get_stored(name);
    if (t.ok()) release_mapped_pages(*t);
  }
}

Result<Tensor> Checkpoint::get_sharded(const std::string& name, const Shape& expect, Shard shard,
                                       const std::vector<std::pair<int64_t, int64_t>>& ranges_in,
                                       int64_t padded_extent) const {
  const std::vector<std::pair<int64_t, int64_t>> ranges = merge_adjacent(ranges_in);
  const int64_t dim = shard == Shard::Cols ? 1 : 0;
  if (shard == Shard::Replicated || int64_t(expect.size()) <= dim || ranges.empty() ||
      (padded_extent > 0 && padded_extent < expect[size_t(dim)]))
    return make_error(origin_ + ": tensor '" + name + "': bad shard request (" + shard_name(shard) + " of " +
                      shape_str(expect) + ")");
  const int64_t stored = expect[size_t(dim)];
  const int64_t limit = padded_extent > 0 ? padded_extent : stored;
  Shape local = expect;
  local[size_t(dim)] = 0;
  bool pads = false;
  for (const auto& [b, e] : ranges) {
    pads = pads || e > stored;
    if (b < 0 || b > e || e > limit)
      return make_error(origin_ + ": tensor '" + name + "': shard [" + std::to_string(b) + ", " + std::to_string(e) +
                        ") outside dim " + std::to_string(dim) + " of " + shape_str(expect));
    local[size_t(dim)] += e - b;
  }
  // The whole tensor stays on the host, unrecorded: only this rank's part is recorded and placed.
  MD_TRY(const Tensor w, checked(name, expect));
  Tensor part;
  if (meta_) {
    part = Tensor::wrap(nullptr, local, meta_dtype_, nullptr, /*read_only=*/true);
  } else if (!pads && ranges.size() == 1 && (dim == 0 || (ranges[0].first == 0 && ranges[0].second == expect[1]))) {
    part = w.slice(dim, ranges[0].first, ranges[0].second);  // a view into the map
  } else {
    std::vector<Tensor> parts;
    for (const auto& [b, e] : ranges) {
      const int64_t real_end = std::min(e, stored);
      if (b < real_end) parts.push_back(w.slice(dim, b, real_end));
      if (e > std::max(b, stored)) {  // the padded part: zeros of the weight's dtype
        Shape z = expect;
        z[size_t(dim)] = e - std::max(b, stored);
        parts.push_back(Tensor::zeros(z, w.dtype()));
      }
    }
    if (parts.empty()) parts.push_back(w.slice(dim, 0, 0));  // only empty ranges
    part = concat(parts, dim);
    release_mapped_pages(w);
  }
  record(name, w, shard, part.shape());
  return placed(part);
}

Result<std::optional<QuantizedWeight>> Checkpoint::get_quantized(
    const std::string& name, const Shape& expect, Shard shard,
    const std::vector<std::pair<int64_t, int64_t>>& ranges_in, int64_t padded_extent) const {
  const std::vector<std::pair<int64_t, int64_t>> ranges = merge_adjacent(ranges_in);
  using None = std::optional<QuantizedWeight>;
  if (!keep_quantized_ || meta_ || expect.size() != 2) return None();
  std::vector<RowRange> parts;
  if (auto a = aliases_.find(name); a != aliases_.end())
    parts = a->second.parts;
  else if (stored_visible_ && where_.count(name))
    parts.push_back(RowRange{name, 0, -1});
  else
    return None();
  std::optional<QuantType> type;
  int64_t rows = 0, cols = -1;
  for (RowRange& p : parts) {
    const TensorInfo& t = info(where_.at(p.source));
    if (!t.quantized() || t.shape.size() != 2 || (type && *type != *t.ggml_type)) return None();
    type = *t.ggml_type;
    if (p.end < 0) p.end = t.shape[0];
    rows += p.end - p.begin;
    cols = t.shape[1];
  }
  if (Shape{rows, cols} != expect) return None();  // the float path reports the shape
  const int64_t dim = shard == Shard::Cols ? 1 : 0;
  if (shard != Shard::Replicated) {
    for (const auto& [b, e] : ranges)
      if (e > expect[size_t(dim)] || (padded_extent > 0 && padded_extent != expect[size_t(dim)])) return None();
  }
  std::vector<Tensor> stored;
  for (const RowRange& p : parts) {
    const Where& w = where_.at(p.source);
    MD_TRY(Tensor blocks, files_[w.file]->get_blocks(p.source));
    stored.push_back(blocks.slice(0, p.begin, p.end));
  }
  const Tensor whole = stored.size() == 1 ? stored[0] : concat(stored, 0);
  QuantizedWeight q;
  q.type = *type;
  Shape local = expect;
  if (shard == Shard::Replicated) {
    q.rows = whole;
  } else if (shard == Shard::Rows) {
    std::vector<Tensor> sel;
    local[0] = 0;
    for (const auto& [b, e] : ranges) {
      sel.push_back(whole.slice(0, b, e));
      local[0] += e - b;
    }
    q.rows = sel.size() == 1 ? sel[0] : concat(sel, 0);
  } else {
    const int64_t block = quant_block_size(q.type);
    const int64_t block_bytes = int64_t(quant_block_bytes(q.type));
    std::vector<Tensor> sel;
    local[1] = 0;
    for (const auto& [b, e] : ranges) {
      if (b % block != 0 || e % block != 0)
        return make_error(origin_ + ": tensor '" + name + "' is stored as " + quant_type_name(q.type) +
                          ", in blocks of " + std::to_string(block) +
                          " columns, and this tensor-parallel split cuts its columns at [" + std::to_string(b) + ", " +
                          std::to_string(e) +
                          "), not on a block boundary (use a tp that splits it on blocks, or a file of another type)");
      sel.push_back(whole.slice(1, b / block * block_bytes, e / block * block_bytes).contiguous());
      local[1] += e - b;
    }
    q.rows = sel.size() == 1 ? sel[0] : concat(sel, 1);
  }
  q.cols = local[1];
  const bool copied = !q.rows.read_only();
  // On a device the blocks are uploaded as stored (backend linear_quantized decodes them there); the mapped
  // pages are dropped once they are there.
  if (device_ != Device::CPU) q.rows = ops::place(q.rows.contiguous(), device_);
  if (device_ == Device::CPU && !copied) q.rows = placed(q.rows);  // onto 2 MiB pages (copy_into_memory)
  if (copied || device_ != Device::CPU)
    for (const Tensor& t : stored) release_mapped_pages(t);
  if (log_) log_->push_back(WeightRecord{name, expect, DType::BF16, shard, local, q.type});
  return std::optional<QuantizedWeight>(std::move(q));
}

uint64_t Checkpoint::placed_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, w] : where_) {
    const TensorInfo& t = info(w);
    if (keep_quantized_ && t.quantized() && t.shape.size() == 2)
      total += uint64_t(t.shape[0]) * quant_row_bytes(*t.ggml_type, t.shape[1]);
    else
      total += uint64_t(shape_numel(t.shape)) * dtype_size(t.dtype);
  }
  return total;
}

void Checkpoint::record(const std::string& name, const Tensor& whole, Shard shard, const Shape& local) const {
  if (log_) log_->push_back(WeightRecord{name, whole.shape(), whole.dtype(), shard, local, std::nullopt});
}

Checkpoint Checkpoint::meta(DType dtype, const std::string& origin) {
  Checkpoint ck;
  ck.meta_ = true;
  ck.meta_dtype_ = dtype;
  ck.origin_ = origin;
  return ck;
}

const char* shard_name(Shard s) {
  switch (s) {
    case Shard::Replicated:
      return "replicated";
    case Shard::Rows:
      return "rows";
    case Shard::Cols:
      return "cols";
  }
  return "?";
}

std::string Checkpoint::file_metadata(const std::string& key) const {
  for (const auto& f : files_) {
    auto it = f->header().metadata.find(key);
    if (it != f->header().metadata.end()) return it->second;
  }
  return "";
}

bool Checkpoint::has_gguf() const {
  for (const auto& f : files_) {
    auto it = f->header().metadata.find("format");
    if (it != f->header().metadata.end() && it->second == "gguf") return true;
  }
  return false;
}

Result<Shape> Checkpoint::shape_of(const std::string& name) const {
  auto a = aliases_.find(name);
  if (a != aliases_.end()) return a->second.shape;
  if (!stored_visible_) return make_error(origin_ + ": missing tensor '" + name + "'");
  return stored_shape(name);
}

Result<DiffusersFolder> DiffusersFolder::open(const std::string& dir) {
  if (!is_directory(dir)) return make_error(dir + ": model folder not found");
  const std::string idx = dir + "/model_index.json";
  if (!path_exists(idx)) return make_error(dir + ": no model_index.json (not a diffusers pipeline folder)");
  MD_TRY(Json j, load_json(idx));
  if (!j.is_object() || !j.contains("_class_name") || !j["_class_name"].is_string())
    return make_error(idx + ": missing \"_class_name\"");
  DiffusersFolder f;
  f.dir = dir;
  f.class_name = j["_class_name"].get<std::string>();
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key().empty() || it.key()[0] == '_') continue;
    const auto& v = it.value();
    if (v.is_array() && v.size() == 2 && v[0].is_string() && v[1].is_string())
      f.components[it.key()] = {v[0].get<std::string>(), v[1].get<std::string>()};
  }
  return f;
}

}  // namespace meshdit
