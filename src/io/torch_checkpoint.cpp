#include "io/torch_checkpoint.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <unordered_map>
#include <vector>

namespace meshdit {

bool is_zip_file(const uint8_t* bytes, uint64_t size) {
  return size >= 4 && bytes[0] == 'P' && bytes[1] == 'K' && bytes[2] == 3 && bytes[3] == 4;
}

// The legacy format starts with its magic number pickled: PROTO 2, LONG1 of 10 bytes 0x1950a86a20f9469cfc6c.
bool is_legacy_torch_file(const uint8_t* bytes, uint64_t size) {
  static const uint8_t kMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
  return size >= sizeof(kMagic) && std::memcmp(bytes, kMagic, sizeof(kMagic)) == 0;
}

namespace {

uint16_t le16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t le32(const uint8_t* p) { return uint32_t(le16(p)) | uint32_t(le16(p + 2)) << 16; }
uint64_t le64(const uint8_t* p) { return uint64_t(le32(p)) | uint64_t(le32(p + 4)) << 32; }

uint32_t crc32(const uint8_t* p, uint64_t n) {
  static const auto table = [] {
    std::vector<uint32_t> t(256);
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xffffffffu;
  for (uint64_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

// ---- zip ---------------------------------------------------------------------------------------------------

struct ZipEntry {
  std::string name;
  uint64_t data = 0;  // absolute offset of the record's bytes
  uint64_t size = 0;
  uint32_t crc = 0;
};

constexpr uint32_t kEocdSig = 0x06054b50, kZip64LocatorSig = 0x07064b50, kZip64EocdSig = 0x06064b50;
constexpr uint32_t kCentralSig = 0x02014b50, kLocalSig = 0x04034b50;

// The entries of a zip archive, from its central directory; each record's bytes checked to lie in the file.
Result<std::vector<ZipEntry>> read_zip(const uint8_t* b, uint64_t size, const std::string& what) {
  const std::string trunc = " (truncated or not a zip archive)";
  // The end of central directory record: 22 bytes and a comment of up to 65535, so it starts in the last 65557.
  if (size < 22) return make_error(what + ": " + std::to_string(size) + " bytes is too short for a zip archive");
  uint64_t eocd = UINT64_MAX;
  const uint64_t lowest = size > 22 + 65535 ? size - 22 - 65535 : 0;
  for (uint64_t p = size - 22 + 1; p-- > lowest;)
    if (le32(b + p) == kEocdSig && p + 22 + le16(b + p + 20) <= size) {
      eocd = p;
      break;
    }
  if (eocd == UINT64_MAX) return make_error(what + ": no zip end-of-central-directory record" + trunc);
  if (le16(b + eocd + 4) != 0 || le16(b + eocd + 6) != 0)
    return make_error(what + ": multi-disk zip archives are not supported");
  uint64_t count = le16(b + eocd + 10), cd_size = le32(b + eocd + 12), cd_offset = le32(b + eocd + 16);
  if (eocd >= 20 && le32(b + eocd - 20) == kZip64LocatorSig) {
    const uint64_t z = le64(b + eocd - 20 + 8);
    if (z > eocd - 20 || eocd - 20 - z < 56 || le32(b + z) != kZip64EocdSig)
      return make_error(what + ": the ZIP64 end-of-central-directory offset " + std::to_string(z) + " is invalid");
    count = le64(b + z + 32);
    cd_size = le64(b + z + 40);
    cd_offset = le64(b + z + 48);
  } else if (count == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
    return make_error(what + ": zip fields need ZIP64 but there is no ZIP64 locator" + trunc);
  }
  if (cd_offset > size || cd_size > size - cd_offset)
    return make_error(what + ": the zip central directory [" + std::to_string(cd_offset) + ", +" +
                      std::to_string(cd_size) + ") runs past the end of the file (" + std::to_string(size) + " bytes)" +
                      trunc);
  if (count > cd_size / 46)
    return make_error(what + ": " + std::to_string(count) + " zip entries cannot fit a central directory of " +
                      std::to_string(cd_size) + " bytes");
  std::vector<ZipEntry> entries;
  std::set<std::string> seen;
  const uint8_t* cd = b + cd_offset;
  uint64_t at = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const std::string where = what + ": zip entry " + std::to_string(i);
    if (cd_size - at < 46 || le32(cd + at) != kCentralSig)
      return make_error(where + ": bad central directory header at offset " + std::to_string(cd_offset + at));
    const uint8_t* h = cd + at;
    const uint16_t flags = le16(h + 8), method = le16(h + 10);
    const uint64_t name_len = le16(h + 28), extra_len = le16(h + 30), comment_len = le16(h + 32);
    if (cd_size - at - 46 < name_len + extra_len + comment_len)
      return make_error(where + ": its name or extra field runs past the central directory");
    ZipEntry e;
    e.name.assign(reinterpret_cast<const char*>(h + 46), name_len);
    const std::string ewhat = what + ": zip entry '" + e.name + "'";
    e.crc = le32(h + 16);
    uint64_t csize = le32(h + 20), usize = le32(h + 24), local = le32(h + 42);
    // ZIP64 extended information: the saturated fields, in this order.
    const uint8_t* x = h + 46 + name_len;
    for (uint64_t xi = 0; xi + 4 <= extra_len;) {
      const uint16_t id = le16(x + xi), len = le16(x + xi + 2);
      if (xi + 4 + len > extra_len) return make_error(ewhat + ": extra field runs past its header");
      if (id == 0x0001) {
        const uint8_t* f = x + xi + 4;
        uint64_t left = len;
        for (uint64_t* v : {&usize, &csize, &local}) {
          if (*v != 0xffffffffu) continue;
          if (left < 8) return make_error(ewhat + ": ZIP64 extra field too short");
          *v = le64(f);
          f += 8;
          left -= 8;
        }
      }
      xi += 4 + len;
    }
    at += 46 + name_len + extra_len + comment_len;
    if (flags & 1) return make_error(ewhat + " is encrypted");
    if (method != 0)
      return make_error(ewhat + " is compressed (method " + std::to_string(method) + (method == 8 ? ", deflate" : "") +
                        "); torch.save stores records uncompressed, so they can be memory-mapped: re-save the "
                        "checkpoint with torch.save, or repack the zip without compression");
    if (csize != usize)
      return make_error(ewhat + ": stored record with compressed size " + std::to_string(csize) + " != size " +
                        std::to_string(usize));
    if (local > size || size - local < 30 || le32(b + local) != kLocalSig)
      return make_error(ewhat + ": local header offset " + std::to_string(local) + " is not a local header" + trunc);
    if (le16(b + local + 8) != method) return make_error(ewhat + ": local and central headers disagree on method");
    const uint64_t data = local + 30 + uint64_t(le16(b + local + 26)) + le16(b + local + 28);
    if (data > size || usize > size - data)
      return make_error(ewhat + ": its " + std::to_string(usize) + " bytes at offset " + std::to_string(data) +
                        " run past the end of the file (" + std::to_string(size) + " bytes)" + trunc);
    e.data = data;
    e.size = usize;
    if (!seen.insert(e.name).second) return make_error(ewhat + " appears twice");
    entries.push_back(std::move(e));
  }
  return entries;
}

// ---- the restricted unpickler ------------------------------------------------------------------------------

// Storage types torch pickles as torch.<Name>; `dtype` false for the ones meshdit has no dtype for.
struct StorageType {
  const char* name;
  size_t elem;
  bool supported;
  DType dtype;
};
constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", 4, true, DType::F32},        {"HalfStorage", 2, true, DType::F16},
    {"BFloat16Storage", 2, true, DType::BF16},    {"DoubleStorage", 8, true, DType::F64},
    {"LongStorage", 8, true, DType::I64},         {"IntStorage", 4, true, DType::I32},
    {"ByteStorage", 1, true, DType::U8},          {"BoolStorage", 1, false, DType::U8},
    {"CharStorage", 1, false, DType::U8},         {"ShortStorage", 2, false, DType::U8},
    {"ComplexFloatStorage", 8, false, DType::U8}, {"ComplexDoubleStorage", 16, false, DType::U8},
};

enum class Fn : uint8_t { OrderedDict, RebuildTensor, RebuildParameter, RebuildParameterWithState, StorageType };

struct Node {
  enum class Kind : uint8_t { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = Kind::None;
  int64_t i = 0;  // Bool, Int; the storage index of Storage and Tensor; the kStorageTypes index of a storage type
  std::string s;  // Str; the qualified name of a Global
  Fn fn = Fn::OrderedDict;
  std::vector<Node*> items;                      // Tuple, List
  std::vector<std::pair<Node*, Node*>> entries;  // Dict
  int64_t offset = 0;                            // Tensor: storage offset in elements
  Shape shape;                                   // Tensor
};

const char* kind_name(Node::Kind k) {
  switch (k) {
    case Node::Kind::None:
      return "None";
    case Node::Kind::Bool:
      return "bool";
    case Node::Kind::Int:
      return "int";
    case Node::Kind::Float:
      return "float";
    case Node::Kind::Str:
      return "str";
    case Node::Kind::Tuple:
      return "tuple";
    case Node::Kind::List:
      return "list";
    case Node::Kind::Dict:
      return "dict";
    case Node::Kind::Global:
      return "global";
    case Node::Kind::Storage:
      return "storage";
    case Node::Kind::Tensor:
      return "tensor";
  }
  return "?";
}

struct Storage {
  std::string key;
  size_t type = 0;  // into kStorageTypes
  uint64_t numel = 0;
  uint64_t data = 0;  // absolute offset of its record
};

constexpr uint64_t kMaxBytes = uint64_t(1) << 62;  // bound on any byte count, so products never overflow
constexpr size_t kMaxValues = size_t(1) << 23;

class Unpickler {
 public:
  Unpickler(const uint8_t* p, uint64_t n, std::string what, const std::map<std::string, const ZipEntry*>& records)
      : p_(p), n_(n), what_(std::move(what)), records_(records) {}

  Result<Node*> run() {
    while (true) {
      if (pos_ >= n_) return fail("ends without STOP (truncated)");
      // Far beyond any state dict (a dozen values per tensor); bounds the memory a hostile pickle costs (each
      // opcode makes at most one value).
      if (arena_.size() > kMaxValues)
        return fail("more than " + std::to_string(kMaxValues) + " values: not a state dict");
      const uint64_t at = pos_;
      const uint8_t op = p_[pos_++];
      op_at_ = at;
      switch (op) {
        case 0x80: {  // PROTO
          MD_TRY(uint64_t v, uint_le(1));
          if (v > 5) return fail("pickle protocol " + std::to_string(v) + " is newer than 5");
          break;
        }
        case 0x95: {  // FRAME: a length hint only
          MD_RETURN_IF_ERROR(uint_le(8));
          break;
        }
        case '.': {  // STOP
          if (stack_.size() != 1 || !marks_.empty())
            return fail("STOP with " + std::to_string(stack_.size()) + " values on the stack (expected 1)");
          return stack_[0];
        }
        case 'N':
          push(make(Node::Kind::None));
          break;
        case 0x88:
        case 0x89: {  // NEWTRUE, NEWFALSE
          Node* b = make(Node::Kind::Bool);
          b->i = op == 0x88;
          push(b);
          break;
        }
        case 'K':
        case 'M': {  // BININT1, BININT2
          MD_TRY(uint64_t v, uint_le(op == 'K' ? 1 : 2));
          push_int(int64_t(v));
          break;
        }
        case 'J': {  // BININT: signed 32
          MD_TRY(uint64_t v, uint_le(4));
          push_int(int64_t(int32_t(uint32_t(v))));
          break;
        }
        case 0x8a: {  // LONG1: n bytes, two's complement little-endian
          MD_TRY(uint64_t len, uint_le(1));
          if (len > 8) return fail("LONG1 integer of " + std::to_string(len) + " bytes does not fit 64 bits");
          MD_TRY(uint64_t v, uint_le(len));
          if (len > 0 && len < 8 && (v >> (8 * len - 1)) & 1) v |= ~uint64_t(0) << (8 * len);  // sign-extend
          push_int(int64_t(v));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian double
          MD_RETURN_IF_ERROR(need(8));
          uint64_t u = 0;
          for (int k = 0; k < 8; ++k) u = u << 8 | p_[pos_ + k];
          pos_ += 8;
          Node* f = make(Node::Kind::Float);
          std::memcpy(&f->i, &u, 8);
          push(f);
          break;
        }
        case 'X':
        case 0x8c:
        case 0x8d: {  // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
          MD_TRY(uint64_t len, uint_le(op == 'X' ? 4 : op == 0x8c ? 1 : 8));
          MD_RETURN_IF_ERROR(need(len));
          Node* s = make(Node::Kind::Str);
          s->s.assign(reinterpret_cast<const char*>(p_ + pos_), len);
          pos_ += len;
          push(s);
          break;
        }
        case ')':
          push(make(Node::Kind::Tuple));
          break;
        case ']':
          push(make(Node::Kind::List));
          break;
        case '}':
          push(make(Node::Kind::Dict));
          break;
        case '(':
          marks_.push_back(stack_.size());
          break;
        case 't':
        case 'l':
        case 'd': {  // TUPLE, LIST, DICT: the values since the last MARK
          MD_TRY(std::vector<Node*> items, pop_mark());
          Node* c = make(op == 't' ? Node::Kind::Tuple : op == 'l' ? Node::Kind::List : Node::Kind::Dict);
          if (op == 'd') {
            if (items.size() % 2) return fail("DICT with an odd number of values");
            for (size_t k = 0; k < items.size(); k += 2) c->entries.emplace_back(items[k], items[k + 1]);
          } else {
            c->items = std::move(items);
          }
          push(c);
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1..3
          const size_t k = size_t(op - 0x84);
          if (stack_.size() < floor() + k) return fail("TUPLE" + std::to_string(k) + " on a short stack");
          Node* c = make(Node::Kind::Tuple);
          c->items.assign(stack_.end() - long(k), stack_.end());
          stack_.resize(stack_.size() - k);
          push(c);
          break;
        }
        case '0': {  // POP
          MD_RETURN_IF_ERROR(pop());
          break;
        }
        case '1': {  // POP_MARK
          MD_RETURN_IF_ERROR(pop_mark());
          break;
        }
        case 'a': {  // APPEND
          MD_TRY(Node * v, pop());
          MD_TRY(Node * l, top(Node::Kind::List, "APPEND"));
          l->items.push_back(v);
          break;
        }
        case 'e': {  // APPENDS
          MD_TRY(std::vector<Node*> items, pop_mark());
          MD_TRY(Node * l, top(Node::Kind::List, "APPENDS"));
          l->items.insert(l->items.end(), items.begin(), items.end());
          break;
        }
        case 's': {  // SETITEM
          MD_TRY(Node * v, pop());
          MD_TRY(Node * k, pop());
          MD_TRY(Node * d, top(Node::Kind::Dict, "SETITEM"));
          d->entries.emplace_back(k, v);
          break;
        }
        case 'u': {  // SETITEMS
          MD_TRY(std::vector<Node*> items, pop_mark());
          if (items.size() % 2) return fail("SETITEMS with an odd number of values");
          MD_TRY(Node * d, top(Node::Kind::Dict, "SETITEMS"));
          for (size_t k = 0; k < items.size(); k += 2) d->entries.emplace_back(items[k], items[k + 1]);
          break;
        }
        case 'q':
        case 'r': {  // BINPUT, LONG_BINPUT
          MD_TRY(uint64_t idx, uint_le(op == 'q' ? 1 : 4));
          MD_TRY(Node * v, peek());
          memo_[idx] = v;
          break;
        }
        case 0x94: {  // MEMOIZE
          MD_TRY(Node * v, peek());
          memo_[memo_.size()] = v;
          break;
        }
        case 'h':
        case 'j': {  // BINGET, LONG_BINGET
          MD_TRY(uint64_t idx, uint_le(op == 'h' ? 1 : 4));
          auto it = memo_.find(idx);
          if (it == memo_.end()) return fail("memo entry " + std::to_string(idx) + " was never stored");
          push(it->second);
          break;
        }
        case 'c': {  // GLOBAL "module\nname\n"
          MD_TRY(std::string module, line());
          MD_TRY(std::string name, line());
          MD_TRY(Node * g, global(module, name));
          push(g);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          MD_TRY(Node * name, pop());
          MD_TRY(Node * module, pop());
          if (module->kind != Node::Kind::Str || name->kind != Node::Kind::Str)
            return fail("STACK_GLOBAL needs two strings");
          MD_TRY(Node * g, global(module->s, name->s));
          push(g);
          break;
        }
        case 'Q': {  // BINPERSID
          MD_TRY(Node * pid, pop());
          MD_TRY(Node * s, persistent_load(pid));
          push(s);
          break;
        }
        case 'R': {  // REDUCE
          MD_TRY(Node * args, pop());
          MD_TRY(Node * fn, pop());
          MD_TRY(Node * r, reduce(fn, args));
          push(r);
          break;
        }
        case 'b': {  // BUILD: only a state dict's own attributes (its _metadata), which are not tensors
          MD_TRY(Node * state, pop());
          (void)state;
          MD_TRY(Node * obj, peek());
          if (obj->kind != Node::Kind::Dict)
            return fail(std::string("BUILD on a ") + kind_name(obj->kind) + " is not allowed (only on a dict)");
          break;
        }
        default: {
          char c[16];
          std::snprintf(c, sizeof c, "opcode 0x%02x", op);
          std::string what = c;
          if (op >= 0x20 && op < 0x7f) what += std::string(" ('") + char(op) + "')";
          return fail(what + " is not allowed (only the opcodes torch.save writes for tensors)");
        }
      }
    }
  }

  const std::vector<Storage>& storages() const { return storages_; }

 private:
  Error fail(const std::string& msg) const {
    return make_error(what_ + ": " + msg + " (at byte " + std::to_string(op_at_) + ")");
  }
  Node* make(Node::Kind k) {
    arena_.push_back(std::make_unique<Node>());
    arena_.back()->kind = k;
    return arena_.back().get();
  }
  void push(Node* n) { stack_.push_back(n); }
  void push_int(int64_t v) {
    Node* n = make(Node::Kind::Int);
    n->i = v;
    push(n);
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  Result<Node*> pop() {
    if (stack_.size() <= floor()) return fail("pop from an empty stack");
    Node* n = stack_.back();
    stack_.pop_back();
    return n;
  }
  Result<Node*> peek() const {
    if (stack_.size() <= floor()) return fail("the stack is empty");
    return stack_.back();
  }
  Result<Node*> top(Node::Kind k, const char* op) const {
    MD_TRY(Node * n, peek());
    if (n->kind != k) return fail(std::string(op) + " on a " + kind_name(n->kind) + ", not a " + kind_name(k));
    return n;
  }
  Result<std::vector<Node*>> pop_mark() {
    if (marks_.empty()) return fail("no MARK to pop to");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Node*> items(stack_.begin() + long(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  Status need(uint64_t k) const {
    if (k > n_ - pos_) return fail("truncated: an argument runs past the end of data.pkl");
    return ok_status();
  }
  Result<uint64_t> uint_le(uint64_t k) {
    MD_RETURN_IF_ERROR(need(k));
    uint64_t v = 0;
    for (uint64_t j = k; j-- > 0;) v = v << 8 | p_[pos_ + j];
    pos_ += k;
    return v;
  }
  Result<std::string> line() {
    const uint64_t start = pos_;
    while (pos_ < n_ && p_[pos_] != '\n' && pos_ - start < 256) ++pos_;
    if (pos_ >= n_ || p_[pos_] != '\n') return fail("GLOBAL name is unterminated or too long");
    std::string s(reinterpret_cast<const char*>(p_ + start), pos_ - start);
    ++pos_;
    return s;
  }

  Result<Node*> global(const std::string& module, const std::string& name) {
    Node* g = make(Node::Kind::Global);
    g->s = module + "." + name;
    if (module == "collections" && name == "OrderedDict") {
      g->fn = Fn::OrderedDict;
      return g;
    }
    if (module == "torch._utils") {
      if (name == "_rebuild_tensor_v2")
        g->fn = Fn::RebuildTensor;
      else if (name == "_rebuild_parameter")
        g->fn = Fn::RebuildParameter;
      else if (name == "_rebuild_parameter_with_state")
        g->fn = Fn::RebuildParameterWithState;
      else
        g = nullptr;
      if (g) return g;
    }
    if (module == "torch")
      for (size_t k = 0; k < std::size(kStorageTypes); ++k)
        if (name == kStorageTypes[k].name) {
          g->fn = Fn::StorageType;
          g->i = int64_t(k);
          return g;
        }
    // Printable in the message even when the bytes are not.
    std::string q;
    for (char ch : module + "." + name) q += (ch >= 0x20 && ch < 0x7f) ? ch : '?';
    return fail("global '" + q + "' is not allowed (only torch tensor rebuilds)");
  }

  // ('storage', torch.<Type>Storage, key, location, numel) -> the record data/<key>.
  Result<Node*> persistent_load(const Node* pid) {
    const auto& t = pid->items;
    if (pid->kind != Node::Kind::Tuple || t.size() != 5 || t[0]->kind != Node::Kind::Str || t[0]->s != "storage" ||
        t[1]->kind != Node::Kind::Global || t[1]->fn != Fn::StorageType || t[2]->kind != Node::Kind::Str ||
        t[3]->kind != Node::Kind::Str || t[4]->kind != Node::Kind::Int)
      return fail("persistent id is not ('storage', torch.<Type>Storage, key, location, numel)");
    const size_t type = size_t(t[1]->i);
    const std::string& key = t[2]->s;
    const int64_t numel = t[4]->i;
    const std::string swhat = "storage '" + key + "'";
    if (numel < 0 || uint64_t(numel) > kMaxBytes / kStorageTypes[type].elem)
      return fail(swhat + ": numel " + std::to_string(numel) + " is out of range");
    auto seen = storage_index_.find(key);
    if (seen != storage_index_.end()) {
      const Storage& s = storages_[seen->second];
      if (s.type != type || s.numel != uint64_t(numel))
        return fail(swhat + " is named twice with different types or sizes");
    } else {
      auto rec = records_.find(key);
      if (rec == records_.end()) return fail(swhat + ": its record data/" + key + " is not in the archive");
      const uint64_t bytes = uint64_t(numel) * kStorageTypes[type].elem;
      if (bytes > rec->second->size)
        return fail(swhat + ": " + std::to_string(numel) + " elements of torch." + kStorageTypes[type].name + " need " +
                    std::to_string(bytes) + " bytes but its record has " + std::to_string(rec->second->size));
      storage_index_[key] = storages_.size();
      storages_.push_back(Storage{key, type, uint64_t(numel), rec->second->data});
    }
    Node* s = make(Node::Kind::Storage);
    s->i = int64_t(storage_index_[key]);
    return s;
  }

  Result<Node*> reduce(const Node* fn, const Node* args) {
    if (fn->kind != Node::Kind::Global) return fail(std::string("REDUCE calls a ") + kind_name(fn->kind));
    if (args->kind != Node::Kind::Tuple) return fail("REDUCE arguments are not a tuple");
    const auto& a = args->items;
    const std::string call = fn->s + ": ";
    switch (fn->fn) {
      case Fn::OrderedDict:
        if (!a.empty()) return fail(call + "expected no arguments");
        return make(Node::Kind::Dict);
      case Fn::RebuildParameter:
      case Fn::RebuildParameterWithState:
        if (a.size() != (fn->fn == Fn::RebuildParameter ? 3u : 4u) || a[0]->kind != Node::Kind::Tensor)
          return fail(call + "expected (tensor, requires_grad, hooks" +
                      (fn->fn == Fn::RebuildParameter ? ")" : ", state)"));
        return a[0];
      case Fn::StorageType:
        return fail(call + "storage types are not callable");
      case Fn::RebuildTensor:
        return rebuild_tensor(call, a);
    }
    return fail(call + "not callable");
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]).
  Result<Node*> rebuild_tensor(const std::string& call, const std::vector<Node*>& a) {
    if ((a.size() != 6 && a.size() != 7) || a[0]->kind != Node::Kind::Storage || a[1]->kind != Node::Kind::Int ||
        a[2]->kind != Node::Kind::Tuple || a[3]->kind != Node::Kind::Tuple)
      return fail(call + "expected (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])");
    const Storage& st = storages_[size_t(a[0]->i)];
    const size_t elem = kStorageTypes[st.type].elem;
    const auto& size = a[2]->items;
    const auto& stride = a[3]->items;
    if (size.size() != stride.size())
      return fail(call + "size has " + std::to_string(size.size()) + " dims but stride " +
                  std::to_string(stride.size()));
    Node* t = make(Node::Kind::Tensor);
    t->i = a[0]->i;
    t->offset = a[1]->i;
    uint64_t numel = 1;
    bool empty = false;
    for (const Node* d : size) {
      if (d->kind != Node::Kind::Int || d->i < 0) return fail(call + "size entries must be non-negative ints");
      if (d->i == 0)
        empty = true;
      else if (numel > kMaxBytes / elem / uint64_t(d->i))
        return fail(call + "size is too large");
      else
        numel *= uint64_t(d->i);
      t->shape.push_back(d->i);
    }
    if (empty) numel = 0;
    // Contiguous as torch counts it: dims of size 1 may have any stride.
    int64_t expect = 1;
    for (size_t k = size.size(); k-- > 0;) {
      if (stride[k]->kind != Node::Kind::Int) return fail(call + "stride entries must be ints");
      if (!empty && t->shape[k] != 1 && stride[k]->i != expect)
        return fail(call + "tensor of shape " + shape_str(t->shape) + " in storage '" + st.key +
                    "' is not contiguous (stride " + std::to_string(stride[k]->i) + " in dim " + std::to_string(k) +
                    ", expected " + std::to_string(expect) + "); save tensor.contiguous() instead");
      expect *= t->shape[k] == 0 ? 1 : t->shape[k];
    }
    if (t->offset < 0 || uint64_t(t->offset) > st.numel || numel > st.numel - uint64_t(t->offset))
      return fail(call + "tensor of shape " + shape_str(t->shape) + " at offset " + std::to_string(t->offset) +
                  " runs past its storage '" + st.key + "' of " + std::to_string(st.numel) + " elements");
    return t;
  }

  const uint8_t* p_;
  uint64_t n_;
  uint64_t pos_ = 0, op_at_ = 0;
  std::string what_;
  const std::map<std::string, const ZipEntry*>& records_;  // data/<key> by key
  std::vector<std::unique_ptr<Node>> arena_;               // owns every node: memo references and cycles cannot leak
  std::vector<Node*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Node*> memo_;
  std::vector<Storage> storages_;
  std::map<std::string, size_t> storage_index_;
};

// Tensors of a dict (and of dicts nested in it, names joined with "."), each dict visited once.
struct Collector {
  const std::vector<Storage>& storages;
  const std::string& what;
  const std::string& prefix;
  std::vector<TensorInfo> tensors;
  std::map<std::string, size_t> index;
  std::set<const Node*> visited;

  Status collect(const Node* dict, const std::string& path, int depth) {
    if (depth > 16 || !visited.insert(dict).second) return ok_status();
    for (const auto& [k, v] : dict->entries) {
      if (v->kind != Node::Kind::Tensor && v->kind != Node::Kind::Dict) continue;
      if (k->kind != Node::Kind::Str)
        return make_error(what + ": a " + std::string(kind_name(v->kind)) + " under '" + path +
                          "' has a key that is not a string");
      const std::string name = path.empty() ? k->s : path + "." + k->s;
      if (v->kind == Node::Kind::Dict) {
        MD_RETURN_IF_ERROR(collect(v, name, depth + 1));
        continue;
      }
      if (name.compare(0, prefix.size(), prefix) != 0) continue;
      const Storage& st = storages[size_t(v->i)];
      const StorageType& type = kStorageTypes[st.type];
      if (!type.supported)
        return make_error(what + ": tensor '" + name + "' is a torch." + type.name +
                          ", which meshdit does not read (Float, Half, BFloat16, Double, Long, Int, Byte)");
      TensorInfo info;
      info.name = name.substr(prefix.size());
      info.dtype = type.dtype;
      info.shape = v->shape;
      info.begin = st.data + uint64_t(v->offset) * type.elem;
      info.end = info.begin + uint64_t(shape_numel(v->shape)) * type.elem;
      auto it = index.find(info.name);
      if (it != index.end()) {
        tensors[it->second] = std::move(info);  // a key set twice: the last wins, as in Python
      } else {
        index[info.name] = tensors.size();
        tensors.push_back(std::move(info));
      }
    }
    return ok_status();
  }
};

}  // namespace

Result<SafetensorsHeader> parse_torch_checkpoint(const uint8_t* bytes, uint64_t size, const std::string& what,
                                                 const std::string& prefix) {
  if (is_legacy_torch_file(bytes, size))
    return make_error(what +
                      ": a legacy (pre-1.6, non-zip) PyTorch checkpoint, which meshdit does not read: "
                      "re-save it with torch.save from a PyTorch >= 1.6 (the zip format), or convert it to "
                      "safetensors");
  if (!is_zip_file(bytes, size)) return make_error(what + ": not a PyTorch zip checkpoint (no zip signature)");
  MD_TRY(std::vector<ZipEntry> entries, read_zip(bytes, size, what));
  // The pickle is <archive>/data.pkl, and every record of the checkpoint sits in that <archive>/ folder.
  const ZipEntry* pkl = nullptr;
  for (const auto& e : entries) {
    const size_t slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      if (pkl) return make_error(what + ": two data.pkl records ('" + pkl->name + "', '" + e.name + "')");
      pkl = &e;
    }
  }
  if (!pkl) return make_error(what + ": no <archive>/data.pkl record: a zip file, but not a PyTorch checkpoint");
  const std::string archive = pkl->name.substr(0, pkl->name.size() - 8);  // "<archive>/"
  std::map<std::string, const ZipEntry*> records;
  for (const auto& e : entries) {
    if (e.name.compare(0, archive.size() + 5, archive + "data/") == 0) records[e.name.substr(archive.size() + 5)] = &e;
    if (e.name == archive + "byteorder") {
      const std::string order(reinterpret_cast<const char*>(bytes + e.data), std::min<uint64_t>(e.size, 16));
      if (order != "little")
        return make_error(what + ": byteorder is '" + order + "'; only little-endian checkpoints are read");
    }
  }
  const std::string pwhat = what + ": " + pkl->name;
  if (crc32(bytes + pkl->data, pkl->size) != pkl->crc) return make_error(pwhat + ": CRC mismatch (file corrupted)");
  Unpickler up(bytes + pkl->data, pkl->size, pwhat, records);
  MD_TRY(Node * root, up.run());
  if (root->kind != Node::Kind::Dict)
    return make_error(pwhat + ": holds a " + std::string(kind_name(root->kind)) + ", not a dict of tensors");
  Collector c{up.storages(), pwhat, prefix, {}, {}, {}};
  MD_RETURN_IF_ERROR(c.collect(root, "", 0));
  SafetensorsHeader h;
  h.tensors = std::move(c.tensors);
  h.data_offset = 0;
  h.metadata["format"] = "pt";
  return h;
}

Result<std::shared_ptr<SafetensorsFile>> open_torch_checkpoint(const std::string& path, const std::string& prefix) {
  MD_TRY(auto map, MappedFile::open(path));
  MD_TRY(auto header, parse_torch_checkpoint(map->data(), map->size(), path, prefix));
  return SafetensorsFile::from_header(path, std::move(map), std::move(header));
}

}  // namespace meshdit
