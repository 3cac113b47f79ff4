#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/thread_pool.h"
#include "io/json_config.h"

namespace meshdit {

MappedFile::~MappedFile() {
  if (data_ && size_) munmap(data_, size_);
}

Result<std::shared_ptr<MappedFile>> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(path + ": not a regular file");
  }
  auto m = std::make_shared<MappedFile>();
  m->size_ = size_t(st.st_size);
  if (m->size_ > 0) {
    void* p = mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      return make_error(path + ": mmap failed: " + std::strerror(errno));
    }
    m->data_ = p;
  }
  ::close(fd);
  return m;
}

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // the format's own limit is 100 MB
// Bound on a tensor's byte size, so that size products and int64 shapes never overflow.
constexpr uint64_t kMaxTensorBytes = uint64_t(1) << 62;

Result<uint64_t> as_u64(const nlohmann::json& j, const std::string& what) {
  if (!j.is_number_integer() || (j.is_number_integer() && !j.is_number_unsigned() && j.get<int64_t>() < 0))
    return make_error(what + " must be a non-negative integer, got " + json_brief(j));
  return j.get<uint64_t>();
}

}  // namespace

Result<SafetensorsHeader> parse_safetensors(const uint8_t* bytes, uint64_t size, const std::string& what) {
  if (size < 8)
    return make_error(what + ": truncated: " + std::to_string(size) +
                      " bytes, shorter than the 8-byte header length field");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxHeader) return make_error(what + ": header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > size - 8)
    return make_error(what + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                      std::to_string(size) + " bytes): truncated or not a safetensors file");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(bytes + 8, bytes + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    return make_error(what + ": invalid JSON header: " + e.what());
  }
  if (!j.is_object()) return make_error(what + ": header is not a JSON object");
  SafetensorsHeader h;
  h.data_offset = 8 + n;
  const uint64_t data_size = size - h.data_offset;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) return make_error(what + ": __metadata__ is not an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string()) return make_error(what + ": __metadata__." + m.key() + " is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = what + ": tensor '" + name + "'";
    if (!e.is_object()) return make_error(where + ": entry is not an object");
    if (!e.contains("dtype") || !e["dtype"].is_string()) return make_error(where + ": missing or non-string dtype");
    TensorInfo info;
    info.name = name;
    const std::string dt = e["dtype"].get<std::string>();
    if (dt == "F8_E4M3" || dt == "F8_E5M2") {
      info.fp8 = dt == "F8_E4M3" ? TensorInfo::Fp8::E4M3 : TensorInfo::Fp8::E5M2;
      info.dtype = DType::BF16;  // what get() decodes it to
    } else if (!dtype_from_name(dt, &info.dtype)) {
      return make_error(where + ": unknown dtype '" + dt + "'");
    }
    if (!e.contains("shape") || !e["shape"].is_array()) return make_error(where + ": missing shape array");
    // Byte size over the non-zero dimensions, bounded so every partial product of the shape fits an int64.
    uint64_t bytes = info.fp8 != TensorInfo::Fp8::None ? 1 : dtype_size(info.dtype);
    bool empty = false;
    for (const auto& d : e["shape"]) {
      MD_TRY(uint64_t v, as_u64(d, where + ": shape entry"));
      if (v == 0)
        empty = true;
      else if (bytes > kMaxTensorBytes / v)
        return make_error(where + ": shape " + json_brief(e["shape"]) + " is too large");
      else
        bytes *= v;
      info.shape.push_back(int64_t(v));
    }
    if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
      return make_error(where + ": data_offsets must be [begin, end]");
    MD_TRY(info.begin, as_u64(e["data_offsets"][0], where + ": data_offsets[0]"));
    MD_TRY(info.end, as_u64(e["data_offsets"][1], where + ": data_offsets[1]"));
    if (info.begin > info.end)
      return make_error(where + ": data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                        "] are reversed");
    if (info.end > data_size)
      return make_error(where + ": data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                        "] are out of range: the data section has " + std::to_string(data_size) +
                        " bytes (file truncated?)");
    const uint64_t expect = empty ? 0 : bytes;
    if (info.end - info.begin != expect)
      return make_error(where + ": shape " + shape_str(info.shape) + " of " + dt + " needs " + std::to_string(expect) +
                        " bytes but data_offsets span " + std::to_string(info.end - info.begin));
    h.tensors.push_back(std::move(info));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
  });
  // Every non-empty tensor must start at or after the furthest end seen so far.
  const TensorInfo* furthest = nullptr;
  for (const auto& t : h.tensors) {
    if (t.end == t.begin) continue;
    if (furthest && t.begin < furthest->end)
      return make_error(what + ": tensors '" + furthest->name + "' and '" + t.name + "' overlap in the data section");
    if (!furthest || t.end > furthest->end) furthest = &t;
  }
  return h;
}

Result<std::shared_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  MD_TRY(auto map, MappedFile::open(path));
  MD_TRY(auto header, parse_safetensors(map->data(), map->size(), path));
  return from_header(path, std::move(map), std::move(header));
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::from_header(const std::string& path, std::shared_ptr<MappedFile> map,
                                                              SafetensorsHeader header) {
  auto f = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  f->path_ = path;
  f->map_ = std::move(map);
  f->header_ = std::move(header);
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) f->index_[f->header_.tensors[i].name] = i;
  f->tie_fp8_scales();
  return f;
}

void SafetensorsFile::tie_fp8_scales() {
  std::vector<std::string> hidden;
  bool any_fp8 = false;
  for (auto& t : header_.tensors) {
    if (t.fp8 == TensorInfo::Fp8::None) continue;
    any_fp8 = true;
    if (!t.name.ends_with(".weight")) continue;
    const std::string stem = t.name.substr(0, t.name.size() - 7);
    for (const char* s : {".weight_scale", ".scale_weight"})
      if (auto it = index_.find(stem + s); it != index_.end()) {
        t.scale_index = int(it->second);
        hidden.push_back(stem + s);
      }
    for (const char* s : {".input_scale", ".scale_input"})
      if (index_.count(stem + s)) hidden.push_back(stem + s);
  }
  if (!any_fp8) return;
  if (index_.count("scaled_fp8")) hidden.push_back("scaled_fp8");
  for (const auto& h : hidden) {
    hidden_.insert(h);
    index_.erase(h);
  }
}

namespace {

// One FP8 byte as a float: E4M3 (bias 7, no infinities, S.1111.111 is NaN, max 448) or E5M2 (the top byte of an
// IEEE half).
float fp8_to_f32(uint8_t b, TensorInfo::Fp8 kind) {
  if (kind == TensorInfo::Fp8::E5M2) return f16_to_f32(uint16_t(b) << 8);
  const int exp = (b >> 3) & 0xF, man = b & 7;
  const float sign = b & 0x80 ? -1.0f : 1.0f;
  if (exp == 0xF && man == 7) return std::numeric_limits<float>::quiet_NaN();
  if (exp == 0) return sign * std::ldexp(float(man), -9);  // subnormal: man / 8 * 2^-6
  return sign * std::ldexp(float(8 + man), exp - 10);      // (1 + man / 8) * 2^(exp - 7)
}

}  // namespace

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> n;
  for (const auto& kv : index_) n.push_back(kv.first);
  return n;
}

Result<Tensor> SafetensorsFile::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return make_error(path_ + ": no tensor named '" + name + "'");
  const TensorInfo& info = header_.tensors[it->second];
  if (info.quantized() || info.fp8 != TensorInfo::Fp8::None)
    return dequantize(it->second, map_->data() + header_.data_offset + info.begin);
  return view(info);
}

Tensor SafetensorsFile::view(const TensorInfo& info) const {
  const uint8_t* p = map_->data() + header_.data_offset + info.begin;
  // Safetensors gives no alignment guarantee; the kernels read through memcpy-safe paths for 2-byte
  // types, but float32 data must be 4-aligned for direct use, so misaligned data is copied.
  Tensor t = Tensor::wrap(const_cast<uint8_t*>(p), info.shape, info.dtype, map_, /*read_only=*/true);
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(info.dtype) != 0) t = t.clone();
  return t;
}

Result<Tensor> SafetensorsFile::get_blocks(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return make_error(path_ + ": no tensor named '" + name + "'");
  const TensorInfo& info = header_.tensors[it->second];
  if (!info.quantized() || info.shape.empty())
    return make_error(path_ + ": tensor '" + name + "' is not stored block-quantized");
  const int64_t cols = info.shape.back(), rows = shape_numel(info.shape) / std::max<int64_t>(cols, 1);
  const uint8_t* p = map_->data() + header_.data_offset + info.begin;
  return Tensor::wrap(const_cast<uint8_t*>(p), {rows, int64_t(quant_row_bytes(*info.ggml_type, cols))}, DType::U8, map_,
                      /*read_only=*/true);
}

Result<std::vector<float>> SafetensorsFile::fp8_scale(const TensorInfo& info) const {
  if (info.scale_index < 0) return std::vector<float>{1.0f};
  const TensorInfo& s = header_.tensors[size_t(info.scale_index)];
  const int64_t n = shape_numel(s.shape), rows = info.shape.empty() ? 1 : info.shape[0];
  if (s.fp8 != TensorInfo::Fp8::None || (n != 1 && n != rows))
    return make_error(path_ + ": tensor '" + s.name + "' (" + shape_str(s.shape) + ") is not a scale of '" + info.name +
                      "' " + shape_str(info.shape) + ": expected one float or one per row");
  if (s.dtype != DType::F32 && s.dtype != DType::BF16 && s.dtype != DType::F16)
    return make_error(path_ + ": scale '" + s.name + "' has dtype " + dtype_name(s.dtype) +
                      "; expected F32, BF16 or F16");
  return view(s).to_vector();
}

Result<Tensor> SafetensorsFile::dequantize(size_t index, const uint8_t* p) const {
  const TensorInfo& info = header_.tensors[index];
  std::lock_guard<std::mutex> lock(dequant_mu_);
  std::shared_ptr<void> owner = dequantized_[index].lock();
  // Not read-only: a read-only tensor is taken for a mapped one, whose pages may be dropped (madvise).
  if (owner) return Tensor::wrap(owner.get(), info.shape, info.dtype, owner, /*read_only=*/false);
  if (info.fp8 != TensorInfo::Fp8::None) {
    MD_TRY(std::vector<float> scale, fp8_scale(info));
    const int64_t numel = shape_numel(info.shape);
    const int64_t per_scale = scale.size() == 1 ? numel : numel / int64_t(scale.size());
    auto* data = new uint16_t[size_t(numel)];
    owner = std::shared_ptr<void>(data, [](void* q) { delete[] static_cast<uint16_t*>(q); });
    float table[256];
    for (int b = 0; b < 256; ++b) table[b] = fp8_to_f32(uint8_t(b), info.fp8);
    parallel_for(
        numel,
        [&](int64_t begin, int64_t end, int) {
          for (int64_t i = begin; i < end; ++i) data[i] = f32_to_bf16(table[p[i]] * scale[size_t(i / per_scale)]);
        },
        1 << 16);
    dequantized_[index] = owner;
    return Tensor::wrap(data, info.shape, info.dtype, owner, /*read_only=*/false);
  }
  const QuantType type = *info.ggml_type;
  const int64_t block = quant_block_size(type);
  const size_t block_bytes = quant_block_bytes(type);
  const int64_t numel = shape_numel(info.shape), blocks = numel / block;
  auto* data = new uint8_t[size_t(numel) * dtype_size(info.dtype)];
  owner = std::shared_ptr<void>(data, [](void* q) { delete[] static_cast<uint8_t*>(q); });
  const bool to_bf16 = info.dtype == DType::BF16;
  // Blocks are independent: each thread dequantizes a run of them through a small float buffer.
  parallel_for(
      blocks,
      [&](int64_t begin, int64_t end, int) {
        std::vector<float> buf(size_t(64 * block));
        for (int64_t b = begin; b < end; b += 64) {
          const int64_t n = std::min<int64_t>(64, end - b);
          float* dst = to_bf16 ? buf.data() : reinterpret_cast<float*>(data) + b * block;
          dequantize_row(type, p + size_t(b) * block_bytes, dst, n * block);
          if (to_bf16) {
            uint16_t* o = reinterpret_cast<uint16_t*>(data) + b * block;
            for (int64_t i = 0; i < n * block; ++i) o[i] = f32_to_bf16(buf[size_t(i)]);
          }
        }
      },
      16);
  dequantized_[index] = owner;
  return Tensor::wrap(data, info.shape, info.dtype, owner, /*read_only=*/false);
}

Result<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::create(
    const std::string& path, const std::vector<Entry>& entries, const std::map<std::string, std::string>& metadata) {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& e : entries) {
    if (h.contains(e.name)) return make_error(path + ": tensor '" + e.name + "' given twice");
    const uint64_t bytes = uint64_t(shape_numel(e.shape)) * dtype_size(e.dtype);
    h[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string hs = h.dump();
  while ((hs.size() + 8) % 8) hs.push_back(' ');
  auto w = std::unique_ptr<SafetensorsWriter>(new SafetensorsWriter());
  w->path_ = path;
  w->entries_ = entries;
  w->out_.open(path, std::ios::binary);
  if (!w->out_) return make_error(path + ": cannot open for writing: " + std::strerror(errno));
  uint64_t n = hs.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = (n >> (8 * i)) & 0xff;
  w->out_.write(reinterpret_cast<const char*>(len), 8);
  w->out_.write(hs.data(), std::streamsize(hs.size()));
  if (!w->out_) return make_error(path + ": write failed");
  return w;
}

Status SafetensorsWriter::write(const Tensor& t) {
  if (next_ >= entries_.size()) return make_error(path_ + ": more tensors written than declared");
  const Entry& e = entries_[next_++];
  if (t.dtype() != e.dtype || t.shape() != e.shape)
    return make_error(path_ + ": tensor '" + e.name + "' is " + dtype_name(t.dtype()) + " " + shape_str(t.shape()) +
                      ", declared " + dtype_name(e.dtype) + " " + shape_str(e.shape));
  Tensor c = t.contiguous();
  out_.write(static_cast<const char*>(c.raw()), std::streamsize(c.nbytes()));
  if (!out_) return make_error(path_ + ": write failed at tensor '" + e.name + "' (disk full?)");
  return ok_status();
}

Status SafetensorsWriter::finish() {
  if (next_ != entries_.size())
    return make_error(path_ + ": " + std::to_string(entries_.size() - next_) + " declared tensors were not written");
  out_.flush();
  out_.close();
  if (!out_) return make_error(path_ + ": write failed");
  return ok_status();
}

Status save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsWriter::Entry> entries;
  for (const auto& [name, t] : tensors) entries.push_back({name, t.dtype(), t.shape()});
  MD_TRY(auto w, SafetensorsWriter::create(path, entries, metadata));
  for (const auto& [name, t] : tensors) MD_RETURN_IF_ERROR(w->write(t));
  return w->finish();
}

}  // namespace meshdit
