// Writes PyTorch zip checkpoints byte by byte as torch.save does (no Python needed): a pickle protocol 2
// data.pkl of an OrderedDict of _rebuild_tensor_v2 calls, storage records data/<key> 64-byte aligned, stored
// (uncompressed) zip entries, ZIP64 records on request. The pickle is built opcode by opcode so tests can write
// malicious or malformed ones as easily as good ones.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace meshdit::test {

inline uint32_t zip_crc32(const std::string& s) {
  uint32_t c = 0xffffffffu;
  for (unsigned char ch : s) {
    c ^= ch;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
  }
  return c ^ 0xffffffffu;
}

// A pickle, opcode by opcode.
class Pickle {
 public:
  std::string bytes;
  Pickle& op(char c) { return raw(std::string(1, c)); }
  Pickle& raw(const std::string& s) {
    bytes += s;
    return *this;
  }
  Pickle& proto(int v = 2) { return raw(std::string{char(0x80), char(v)}); }
  Pickle& global(const std::string& module, const std::string& name) {
    return op('c').raw(module + "\n" + name + "\n");
  }
  Pickle& str(const std::string& s) {  // BINUNICODE
    op('X');
    le(s.size(), 4);
    return raw(s);
  }
  Pickle& integer(int64_t v) {
    if (v >= 0 && v < 256) return op('K').raw(std::string(1, char(v)));
    if (v >= 0 && v < 65536) {
      op('M');
      return le(uint64_t(v), 2);
    }
    if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      return le(uint64_t(v), 4);
    }
    op(char(0x8a)).raw(std::string(1, char(8)));  // LONG1, 8 bytes
    return le(uint64_t(v), 8);
  }
  Pickle& mark() { return op('('); }
  Pickle& tuple() { return op('t'); }
  Pickle& empty_tuple() { return op(')'); }
  Pickle& reduce() { return op('R'); }
  Pickle& binput(int i) { return op('q').raw(std::string(1, char(i))); }
  Pickle& binget(int i) { return op('h').raw(std::string(1, char(i))); }
  Pickle& stop() { return op('.'); }
  // As pickle writes tuples from protocol 2 on: EMPTY_TUPLE, TUPLE1..3, else MARK ... TUPLE.
  Pickle& ints_tuple(const std::vector<int64_t>& v) {
    if (v.empty()) return empty_tuple();
    if (v.size() <= 3) {
      for (int64_t x : v) integer(x);
      return op(char(0x84 + v.size()));
    }
    mark();
    for (int64_t x : v) integer(x);
    return tuple();
  }
  // An empty OrderedDict (what torch pickles as a tensor's backward_hooks).
  Pickle& ordered_dict() { return global("collections", "OrderedDict").empty_tuple().reduce(); }
  // torch._utils._rebuild_tensor_v2(('storage', torch.<type>, key, 'cpu', numel), offset, size, stride, False,
  // OrderedDict()), exactly as torch lays the call out.
  Pickle& tensor(const std::string& storage_type, const std::string& key, int64_t numel, int64_t offset,
                 const Shape& shape, const Shape& stride) {
    global("torch._utils", "_rebuild_tensor_v2");
    mark();
    mark().str("storage").global("torch", storage_type).str(key).str("cpu").integer(numel).tuple().op('Q');
    integer(offset).ints_tuple(shape).ints_tuple(stride).op(char(0x89));
    ordered_dict();
    return tuple().reduce();
  }

 private:
  Pickle& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes.push_back(char((v >> (8 * i)) & 0xff));
    return *this;
  }
};

struct ZipOptions {
  bool zip64 = false;            // ZIP64 end records and central extra fields (as in archives over 4 GB)
  int compress_entry = -1;       // this entry's method set to 8 (deflate) in both headers
  bool data_descriptor = false;  // local headers with zero sizes and CRC, as a streaming writer leaves them
};

// A zip archive of stored entries, each entry's data 64-byte aligned through padding in the local extra field.
inline std::string write_zip(const std::vector<std::pair<std::string, std::string>>& entries,
                             const ZipOptions& opt = {}) {
  auto le = [](std::string& s, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
  };
  std::string out, cd;
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& [name, data] = entries[i];
    const uint16_t method = int(i) == opt.compress_entry ? 8 : 0;
    const uint64_t local = out.size();
    const uint32_t crc = zip_crc32(data);
    size_t extra = 4;
    while ((local + 30 + name.size() + extra) % 64) ++extra;
    std::string h;
    le(h, 0x04034b50, 4);
    le(h, 20, 2);
    le(h, opt.data_descriptor ? 8 : 0, 2);
    le(h, method, 2);
    le(h, 0, 4);
    le(h, opt.data_descriptor ? 0 : crc, 4);
    le(h, opt.data_descriptor ? 0 : data.size(), 4);
    le(h, opt.data_descriptor ? 0 : data.size(), 4);
    le(h, name.size(), 2);
    le(h, extra, 2);
    h += name;
    le(h, 0x4246, 2);  // torch's padding field ("FB")
    le(h, extra - 4, 2);
    h += std::string(extra - 4, 'Z');
    out += h + data;
    if (opt.data_descriptor) {
      le(out, 0x08074b50, 4);
      le(out, crc, 4);
      le(out, data.size(), 4);
      le(out, data.size(), 4);
    }
    std::string c;
    le(c, 0x02014b50, 4);
    le(c, 45, 2);
    le(c, 45, 2);
    le(c, opt.data_descriptor ? 8 : 0, 2);
    le(c, method, 2);
    le(c, 0, 4);
    le(c, crc, 4);
    le(c, opt.zip64 ? 0xffffffffu : data.size(), 4);
    le(c, opt.zip64 ? 0xffffffffu : data.size(), 4);
    le(c, name.size(), 2);
    le(c, opt.zip64 ? 28 : 0, 2);
    le(c, 0, 2);
    le(c, 0, 2);
    le(c, 0, 2);
    le(c, 0, 4);
    le(c, opt.zip64 ? 0xffffffffu : local, 4);
    c += name;
    if (opt.zip64) {
      le(c, 0x0001, 2);
      le(c, 24, 2);
      le(c, data.size(), 8);
      le(c, data.size(), 8);
      le(c, local, 8);
    }
    cd += c;
  }
  const uint64_t cd_offset = out.size();
  out += cd;
  if (opt.zip64) {
    const uint64_t z = out.size();
    le(out, 0x06064b50, 4);
    le(out, 44, 8);
    le(out, 45, 2);
    le(out, 45, 2);
    le(out, 0, 4);
    le(out, 0, 4);
    le(out, entries.size(), 8);
    le(out, entries.size(), 8);
    le(out, cd.size(), 8);
    le(out, cd_offset, 8);
    le(out, 0x07064b50, 4);
    le(out, 0, 4);
    le(out, z, 8);
    le(out, 1, 4);
  }
  le(out, 0x06054b50, 4);
  le(out, 0, 2);
  le(out, 0, 2);
  le(out, opt.zip64 ? 0xffff : entries.size(), 2);
  le(out, opt.zip64 ? 0xffff : entries.size(), 2);
  le(out, opt.zip64 ? 0xffffffffu : cd.size(), 4);
  le(out, opt.zip64 ? 0xffffffffu : cd_offset, 4);
  le(out, 0, 2);
  return out;
}

// A checkpoint as torch.save lays it out: archive/data.pkl, archive/byteorder, archive/data/<key>...,
// archive/version.
inline std::string write_torch_checkpoint(const std::string& pickle,
                                          const std::vector<std::pair<std::string, std::string>>& storages,
                                          const ZipOptions& opt = {}, const std::string& byteorder = "little") {
  std::vector<std::pair<std::string, std::string>> e{{"archive/data.pkl", pickle}};
  if (!byteorder.empty()) e.push_back({"archive/byteorder", byteorder});
  for (const auto& [key, data] : storages) e.push_back({"archive/data/" + key, data});
  e.push_back({"archive/version", "3\n"});
  return write_zip(e, opt);
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

}  // namespace meshdit::test
