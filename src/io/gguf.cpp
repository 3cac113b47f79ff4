#include "io/gguf.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include "core/align.h"
#include "core/thread_pool.h"

namespace meshdit {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS
// Bounds that keep every size product inside 64 bits and every allocation proportional to the file.
constexpr uint64_t kMaxElements = uint64_t(1) << 60;
const char* const kOrigShape = "comfy.gguf.orig_shape.";

using VT = GgufValue::Type;

// Fixed size of a scalar value type (0 for strings and arrays).
uint64_t scalar_size(VT t) {
  switch (t) {
    case VT::U8:
    case VT::I8:
    case VT::Bool:
      return 1;
    case VT::U16:
    case VT::I16:
      return 2;
    case VT::U32:
    case VT::I32:
    case VT::F32:
      return 4;
    case VT::U64:
    case VT::I64:
    case VT::F64:
      return 8;
    case VT::String:
    case VT::Array:
      return 0;
  }
  return 0;
}

// A bounds-checked reader over the file image; every read names what it was reading when the file ends.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t size, std::string what) : p_(p), size_(size), what_(std::move(what)) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  Error truncated(const std::string& field) const {
    return make_error(what_ + ": truncated: the file ends (at " + std::to_string(size_) + " bytes) inside " + field);
  }
  template <class T>
  Result<T> read(const std::string& field) {
    if (left() < sizeof(T)) return truncated(field);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  Result<std::string> string(const std::string& field) {
    MD_TRY(uint64_t n, read<uint64_t>(field + " (its length)"));
    if (n > left())
      return make_error(what_ + ": " + field + ": string length " + std::to_string(n) +
                        " runs past the end of the file (" + std::to_string(left()) +
                        " bytes left): truncated or corrupt");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(n));
    pos_ += n;
    return s;
  }
  Status skip(uint64_t n, const std::string& field) {
    if (n > left()) return truncated(field);
    pos_ += n;
    return ok_status();
  }

 private:
  const uint8_t* p_;
  uint64_t size_, pos_ = 0;
  std::string what_;
};

Result<VT> value_type(uint32_t t, const std::string& where) {
  if (t > uint32_t(VT::F64))
    return make_error(where + ": unknown metadata value type " + std::to_string(t) + " (GGUF knows 0-12)");
  return VT(t);
}

// One scalar of type t into v.
Status read_scalar(Cursor& c, VT t, GgufValue& v, const std::string& field) {
  switch (t) {
    case VT::U8: {
      MD_TRY(uint8_t x, c.read<uint8_t>(field));
      v.ints.push_back(x);
      break;
    }
    case VT::I8: {
      MD_TRY(int8_t x, c.read<int8_t>(field));
      v.ints.push_back(x);
      break;
    }
    case VT::U16: {
      MD_TRY(uint16_t x, c.read<uint16_t>(field));
      v.ints.push_back(x);
      break;
    }
    case VT::I16: {
      MD_TRY(int16_t x, c.read<int16_t>(field));
      v.ints.push_back(x);
      break;
    }
    case VT::U32: {
      MD_TRY(uint32_t x, c.read<uint32_t>(field));
      v.ints.push_back(x);
      break;
    }
    case VT::I32: {
      MD_TRY(int32_t x, c.read<int32_t>(field));
      v.ints.push_back(x);
      break;
    }
    case VT::U64: {
      MD_TRY(uint64_t x, c.read<uint64_t>(field));
      v.ints.push_back(int64_t(x));
      break;
    }
    case VT::I64: {
      MD_TRY(int64_t x, c.read<int64_t>(field));
      v.ints.push_back(x);
      break;
    }
    case VT::Bool: {
      MD_TRY(uint8_t x, c.read<uint8_t>(field));
      if (x > 1) return make_error(field + ": a bool must be 0 or 1, got " + std::to_string(x));
      v.ints.push_back(x);
      break;
    }
    case VT::F32: {
      MD_TRY(float x, c.read<float>(field));
      v.floats.push_back(x);
      break;
    }
    case VT::F64: {
      MD_TRY(double x, c.read<double>(field));
      v.floats.push_back(x);
      break;
    }
    case VT::String: {
      MD_TRY(std::string s, c.string(field));
      v.strings.push_back(std::move(s));
      break;
    }
    case VT::Array:
      return make_error(field + ": nested arrays are not supported");
  }
  return ok_status();
}

Result<GgufValue> read_value(Cursor& c, VT t, const std::string& where) {
  GgufValue v;
  v.type = t;
  if (t != VT::Array) {
    MD_RETURN_IF_ERROR(read_scalar(c, t, v, where));
    return v;
  }
  MD_TRY(uint32_t et, c.read<uint32_t>(where + " (array element type)"));
  MD_TRY(v.elem, value_type(et, where + " (array element type)"));
  if (v.elem == VT::Array) return make_error(where + ": nested arrays are not supported");
  MD_TRY(uint64_t n, c.read<uint64_t>(where + " (array length)"));
  // Each element takes at least one byte (a string at least its 8-byte length), so a count the rest of the file
  // cannot hold is refused before anything is allocated.
  const uint64_t min_size = v.elem == VT::String ? 8 : scalar_size(v.elem);
  if (n > c.left() / min_size)
    return make_error(where + ": array of " + std::to_string(n) + " " + gguf_type_name(v.elem) +
                      " values runs past the end of the file: truncated or corrupt");
  for (uint64_t i = 0; i < n; ++i) MD_RETURN_IF_ERROR(read_scalar(c, v.elem, v, where + "[" + std::to_string(i) + "]"));
  return v;
}

bool is_integer_type(VT t) {
  return t == VT::U8 || t == VT::I8 || t == VT::U16 || t == VT::I16 || t == VT::U32 || t == VT::I32 || t == VT::U64 ||
         t == VT::I64;
}

}  // namespace

GgufValue GgufValue::string(std::string s) {
  GgufValue v;
  v.type = Type::String;
  v.strings.push_back(std::move(s));
  return v;
}

GgufValue GgufValue::u32(uint32_t x) {
  GgufValue v;
  v.type = Type::U32;
  v.ints.push_back(x);
  return v;
}

GgufValue GgufValue::i32_array(const std::vector<int64_t>& x) {
  GgufValue v;
  v.type = Type::Array;
  v.elem = Type::I32;
  v.ints = x;
  return v;
}

bool GgufValue::is_integer_array() const { return type == Type::Array && is_integer_type(elem); }

const char* gguf_type_name(GgufValue::Type t) {
  static const char* const kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                       "bool", "string", "array", "u64", "i64", "f64"};
  return uint32_t(t) <= uint32_t(VT::F64) ? kNames[uint32_t(t)] : "?";
}

const GgufValue* GgufFile::find(const std::string& key) const {
  for (const auto& [k, v] : metadata)
    if (k == key) return &v;
  return nullptr;
}

std::string GgufFile::string_value(const std::string& key) const {
  const GgufValue* v = find(key);
  return v && v->is_string() ? v->strings[0] : "";
}

bool is_gguf_file(const uint8_t* bytes, uint64_t size) { return size >= 4 && std::memcmp(bytes, "GGUF", 4) == 0; }

Result<GgufFile> parse_gguf(const uint8_t* bytes, uint64_t size, const std::string& what) {
  Cursor c(bytes, size, what);
  MD_TRY(uint32_t magic, c.read<uint32_t>("the magic"));
  if (magic != kMagic) return make_error(what + ": not a GGUF file (its first bytes are not \"GGUF\")");
  GgufFile g;
  MD_TRY(g.version, c.read<uint32_t>("the version"));
  if (g.version == 1) return make_error(what + ": GGUF version 1 is not supported (versions 2 and 3 are)");
  if (g.version != 2 && g.version != 3) {
    if ((g.version & 0xffff) == 0)
      return make_error(what + ": GGUF version field " + std::to_string(g.version) +
                        " looks big-endian; only little-endian GGUF files are supported");
    return make_error(what + ": unsupported GGUF version " + std::to_string(g.version) + " (versions 2 and 3 are)");
  }
  MD_TRY(uint64_t n_tensors, c.read<uint64_t>("the tensor count"));
  MD_TRY(uint64_t n_kv, c.read<uint64_t>("the metadata count"));
  // A metadata pair takes at least 8 + 4 + 1 bytes and a tensor info 8 + 4 + 4 + 8: counts the file cannot hold
  // are refused before anything is allocated.
  if (n_kv > c.left() / 13)
    return make_error(what + ": metadata count " + std::to_string(n_kv) + " cannot fit in a file of " +
                      std::to_string(size) + " bytes: truncated or corrupt");
  if (n_tensors > c.left() / 24)
    return make_error(what + ": tensor count " + std::to_string(n_tensors) + " cannot fit in a file of " +
                      std::to_string(size) + " bytes: truncated or corrupt");
  std::set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string field = "metadata key " + std::to_string(i);
    MD_TRY(std::string key, c.string(field));
    const std::string where = what + ": metadata '" + key + "'";
    if (!keys.insert(key).second) return make_error(where + " appears twice");
    MD_TRY(uint32_t t, c.read<uint32_t>("the type of metadata '" + key + "'"));
    MD_TRY(VT vt, value_type(t, where));
    MD_TRY(GgufValue v, read_value(c, vt, where));
    g.metadata.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = g.find("general.alignment")) {
    if (a->type != VT::U32)
      return make_error(what + ": metadata 'general.alignment' must be a u32, got " + gguf_type_name(a->type));
    const uint64_t al = uint64_t(a->ints[0]);
    if (al == 0 || (al & (al - 1)) != 0)
      return make_error(what + ": general.alignment " + std::to_string(al) + " is not a power of two");
    g.alignment = al;
  }
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    MD_TRY(t.name, c.string("the name of tensor " + std::to_string(i)));
    const std::string where = what + ": tensor '" + t.name + "'";
    if (!names.insert(t.name).second) return make_error(where + " appears twice");
    MD_TRY(uint32_t n_dims, c.read<uint32_t>("the dims of tensor '" + t.name + "'"));
    if (n_dims == 0 || n_dims > kMaxDims)
      return make_error(where + ": " + std::to_string(n_dims) + " dims; GGUF tensors have 1 to 4");
    std::vector<uint64_t> ne(n_dims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      MD_TRY(ne[d], c.read<uint64_t>("the dims of tensor '" + t.name + "'"));
      if (ne[d] == 0) return make_error(where + ": dim " + std::to_string(d) + " is 0");
      if (ne[d] > kMaxElements / numel) return make_error(where + ": its dims' product is too large");
      numel *= ne[d];
    }
    for (uint32_t d = n_dims; d-- > 0;) t.stored.push_back(int64_t(ne[d]));
    MD_TRY(uint32_t type, c.read<uint32_t>("the type of tensor '" + t.name + "'"));
    if (!quant_type_known(type))
      return make_error(where + ": unknown or unsupported tensor type " + std::to_string(type) + " (" +
                        quant_type_name(type) + ")");
    t.type = QuantType(type);
    const int64_t block = quant_block_size(t.type);
    if (int64_t(ne[0]) % block != 0)
      return make_error(where + ": row length " + std::to_string(ne[0]) + " is not a multiple of " +
                        quant_type_name(t.type) + "'s block size " + std::to_string(block));
    t.bytes = quant_row_bytes(t.type, int64_t(numel));
    MD_TRY(t.offset, c.read<uint64_t>("the offset of tensor '" + t.name + "'"));
    if (t.offset % g.alignment != 0)
      return make_error(where + ": offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                        std::to_string(g.alignment));
    t.shape = t.stored;
    g.tensors.push_back(std::move(t));
  }
  const uint64_t end_of_infos = c.pos();
  g.data_offset = (end_of_infos + g.alignment - 1) / g.alignment * g.alignment;
  if (g.data_offset < end_of_infos) return make_error(what + ": alignment overflows the file offset");
  const uint64_t data_size = g.data_offset <= size ? size - g.data_offset : 0;
  for (auto& t : g.tensors) {
    const std::string where = what + ": tensor '" + t.name + "'";
    if (t.offset > data_size || t.bytes > data_size - t.offset)
      return make_error(where + ": data [" + std::to_string(t.offset) + ", +" + std::to_string(t.bytes) +
                        ") runs past the end of the data section (" + std::to_string(data_size) +
                        " bytes): truncated file or bad offset");
    // city96 stores tensors of more than 4 dims (Wan's patch embedding) flattened, with their shape beside them.
    if (const GgufValue* o = g.find(kOrigShape + t.name)) {
      if (!o->is_integer_array() || o->ints.empty() || o->ints.size() > 8)
        return make_error(where + ": metadata '" + kOrigShape + t.name + "' must be an array of 1 to 8 integers");
      Shape s;
      uint64_t n = 1;
      for (int64_t d : o->ints) {
        if (d <= 0 || uint64_t(d) > kMaxElements / n)
          return make_error(where + ": orig_shape " + shape_str(Shape(o->ints.begin(), o->ints.end())) +
                            " is not a valid shape");
        n *= uint64_t(d);
        s.push_back(d);
      }
      if (int64_t(n) != shape_numel(t.stored))
        return make_error(where + ": orig_shape " + shape_str(s) + " does not hold the " +
                          std::to_string(shape_numel(t.stored)) + " stored values (stored " + shape_str(t.stored) +
                          ")");
      t.shape = s;
    }
  }
  // No two tensors may share bytes.
  std::vector<const GgufTensor*> order;
  for (const auto& t : g.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i]->offset < order[i - 1]->offset + order[i - 1]->bytes)
      return make_error(what + ": tensors '" + order[i - 1]->name + "' and '" + order[i]->name +
                        "' overlap in the data section");
  return g;
}

Result<SafetensorsHeader> gguf_to_header(const GgufFile& g, const std::string& what) {
  SafetensorsHeader h;
  h.data_offset = g.data_offset;
  for (const auto& [k, v] : g.metadata)
    if (v.is_string()) h.metadata[k] = v.strings[0];
  h.metadata["format"] = "gguf";
  for (const auto& t : g.tensors) {
    TensorInfo info;
    info.name = t.name;
    info.shape = t.shape;
    info.begin = t.offset;
    info.end = t.offset + t.bytes;
    info.ggml_type = t.type;
    switch (t.type) {
      case QuantType::F32:
        info.dtype = DType::F32;
        break;
      case QuantType::F16:
        info.dtype = DType::F16;
        break;
      case QuantType::BF16:
        info.dtype = DType::BF16;
        break;
      case QuantType::F64:
        info.dtype = DType::F64;
        break;
      case QuantType::I32:
        info.dtype = DType::I32;
        break;
      case QuantType::I64:
        info.dtype = DType::I64;
        break;
      case QuantType::I8:
      case QuantType::I16:
        return make_error(what + ": tensor '" + t.name + "' has type " + quant_type_name(t.type) +
                          ", which meshdit does not read");
      default:
        info.dtype = t.shape.size() >= 2 ? DType::BF16 : DType::F32;
        break;
    }
    h.tensors.push_back(std::move(info));
  }
  std::sort(h.tensors.begin(), h.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  return h;
}

// --- Writer ------------------------------------------------------------------------------------------------------

namespace {

void put_bytes(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
template <class T>
void put(std::string& out, T v) {
  put_bytes(out, &v, sizeof v);
}
void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_scalar(std::string& out, VT t, const GgufValue& v, size_t& ii, size_t& fi, size_t& si) {
  switch (t) {
    case VT::U8:
    case VT::Bool:
      put<uint8_t>(out, uint8_t(v.ints[ii++]));
      break;
    case VT::I8:
      put<int8_t>(out, int8_t(v.ints[ii++]));
      break;
    case VT::U16:
      put<uint16_t>(out, uint16_t(v.ints[ii++]));
      break;
    case VT::I16:
      put<int16_t>(out, int16_t(v.ints[ii++]));
      break;
    case VT::U32:
      put<uint32_t>(out, uint32_t(v.ints[ii++]));
      break;
    case VT::I32:
      put<int32_t>(out, int32_t(v.ints[ii++]));
      break;
    case VT::U64:
      put<uint64_t>(out, uint64_t(v.ints[ii++]));
      break;
    case VT::I64:
      put<int64_t>(out, v.ints[ii++]);
      break;
    case VT::F32:
      put<float>(out, float(v.floats[fi++]));
      break;
    case VT::F64:
      put<double>(out, v.floats[fi++]);
      break;
    case VT::String:
      put_string(out, v.strings[si++]);
      break;
    case VT::Array:
      break;
  }
}

size_t value_count(const GgufValue& v) {
  return v.elem == VT::String                       ? v.strings.size()
         : (v.elem == VT::F32 || v.elem == VT::F64) ? v.floats.size()
                                                    : v.ints.size();
}

void put_value(std::string& out, const GgufValue& v) {
  put<uint32_t>(out, uint32_t(v.type));
  size_t ii = 0, fi = 0, si = 0;
  if (v.type != VT::Array) {
    put_scalar(out, v.type, v, ii, fi, si);
    return;
  }
  put<uint32_t>(out, uint32_t(v.elem));
  const size_t n = value_count(v);
  put<uint64_t>(out, n);
  for (size_t i = 0; i < n; ++i) put_scalar(out, v.elem, v, ii, fi, si);
}

}  // namespace

Result<std::unique_ptr<GgufWriter>> GgufWriter::create(const std::string& path,
                                                       std::vector<std::pair<std::string, GgufValue>> metadata,
                                                       const std::vector<Entry>& entries, uint64_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    return make_error(path + ": alignment " + std::to_string(alignment) + " is not a power of two");
  if (alignment != 32) metadata.emplace_back("general.alignment", GgufValue::u32(uint32_t(alignment)));
  std::string tensor_infos;
  uint64_t off = 0;
  std::set<std::string> seen;
  for (const auto& e : entries) {
    if (!seen.insert(e.name).second) return make_error(path + ": tensor '" + e.name + "' given twice");
    // More than 4 dims: the innermost ones merged into the 4th, the shape kept in metadata (city96's way).
    Shape s = e.shape.empty() ? Shape{1} : e.shape;
    if (s.size() > kMaxDims) {
      metadata.emplace_back(kOrigShape + e.name, GgufValue::i32_array(std::vector<int64_t>(s.begin(), s.end())));
      Shape merged(s.begin(), s.begin() + kMaxDims);
      for (size_t d = kMaxDims; d < s.size(); ++d) merged[kMaxDims - 1] *= s[d];
      s = merged;
    }
    if (s.back() % quant_block_size(e.type) != 0)
      return make_error(path + ": tensor '" + e.name + "' " + shape_str(e.shape) + ": row length " +
                        std::to_string(s.back()) + " is not a multiple of " + quant_type_name(e.type) +
                        "'s block size " + std::to_string(quant_block_size(e.type)));
    put_string(tensor_infos, e.name);
    put<uint32_t>(tensor_infos, uint32_t(s.size()));
    for (size_t d = s.size(); d-- > 0;) put<uint64_t>(tensor_infos, uint64_t(s[d]));
    put<uint32_t>(tensor_infos, uint32_t(e.type));
    put<uint64_t>(tensor_infos, off);
    off = align_up(off + quant_row_bytes(e.type, shape_numel(s)), alignment);
  }
  std::string head;
  put<uint32_t>(head, kMagic);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, entries.size());
  put<uint64_t>(head, metadata.size());
  for (const auto& [k, v] : metadata) {
    put_string(head, k);
    put_value(head, v);
  }
  head += tensor_infos;
  head.resize(align_up(head.size(), alignment), '\0');
  auto w = std::unique_ptr<GgufWriter>(new GgufWriter());
  w->path_ = path;
  w->entries_ = entries;
  w->alignment_ = alignment;
  w->out_.open(path, std::ios::binary);
  if (!w->out_) return make_error(path + ": cannot open for writing: " + std::strerror(errno));
  w->out_.write(head.data(), std::streamsize(head.size()));
  if (!w->out_) return make_error(path + ": write failed");
  return w;
}

uint64_t GgufWriter::next_bytes() const {
  if (next_ >= entries_.size()) return 0;
  const Entry& e = entries_[next_];
  return quant_row_bytes(e.type, shape_numel(e.shape));
}

Status GgufWriter::write(const void* data, uint64_t bytes) {
  if (next_ >= entries_.size()) return make_error(path_ + ": more tensors written than declared");
  const Entry& e = entries_[next_];
  if (bytes != next_bytes())
    return make_error(path_ + ": tensor '" + e.name + "': " + std::to_string(bytes) + " bytes given, " +
                      quant_type_name(e.type) + " " + shape_str(e.shape) + " takes " + std::to_string(next_bytes()));
  ++next_;
  out_.write(static_cast<const char*>(data), std::streamsize(bytes));
  const uint64_t pad = align_up(bytes, alignment_) - bytes;
  static const char kZeros[256] = {};
  for (uint64_t left = pad; left > 0;) {
    const uint64_t n = std::min<uint64_t>(left, sizeof kZeros);
    out_.write(kZeros, std::streamsize(n));
    left -= n;
  }
  written_ += bytes + pad;
  if (!out_) return make_error(path_ + ": write failed at tensor '" + e.name + "' (disk full?)");
  return ok_status();
}

Status GgufWriter::write(const Tensor& t) {
  if (next_ >= entries_.size()) return make_error(path_ + ": more tensors written than declared");
  const Entry& e = entries_[next_];
  if (t.shape() != e.shape)
    return make_error(path_ + ": tensor '" + e.name + "' is " + shape_str(t.shape()) + ", declared " +
                      shape_str(e.shape));
  if (t.dtype() != DType::F32 && t.dtype() != DType::F16 && t.dtype() != DType::BF16 && t.dtype() != DType::F64)
    return make_error(path_ + ": tensor '" + e.name + "' has dtype " + dtype_name(t.dtype()) +
                      "; only float tensors are written to GGUF");
  const Tensor f = t.to(DType::F32).contiguous();
  std::vector<uint8_t> buf(static_cast<size_t>(next_bytes()));
  // Blocks are independent: each thread encodes a run of them.
  const int64_t block = quant_block_size(e.type);
  const size_t block_bytes = quant_block_bytes(e.type);
  const float* src = f.data<float>();
  parallel_for(
      f.numel() / block,
      [&](int64_t begin, int64_t end, int) {
        quantize_row(e.type, src + begin * block, buf.data() + size_t(begin) * block_bytes, (end - begin) * block);
      },
      64);
  return write(buf.data(), buf.size());
}

Status GgufWriter::finish() {
  if (next_ != entries_.size())
    return make_error(path_ + ": " + std::to_string(entries_.size() - next_) + " declared tensors were not written");
  out_.flush();
  out_.close();
  if (!out_) return make_error(path_ + ": write failed");
  return ok_status();
}

}  // namespace meshdit
