#include "encoders/tokenizers/clip_tokenizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <queue>
#include <sstream>

#include "io/json_config.h"

namespace meshdit {
namespace {

constexpr const char* kEndOfWord = "</w>";
constexpr size_t kCacheLimit = 1 << 16;  // words; the cache is emptied when it grows past this

void append_utf8(std::string& s, int32_t cp) {
  utf8proc_uint8_t buf[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(cp, buf);
  s.append(reinterpret_cast<const char*>(buf), size_t(n));
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for 256 + n in order.
const std::vector<int32_t>& byte_chars() {
  static const std::vector<int32_t> table = [] {
    std::vector<int32_t> t(256, -1);
    auto keep = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    int n = 0;
    for (int b = 0; b < 256; ++b) t[size_t(b)] = keep(b) ? b : 256 + n++;
    return t;
  }();
  return table;
}

const std::vector<std::string>& byte_strings() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    for (int b = 0; b < 256; ++b) append_utf8(t[size_t(b)], byte_chars()[size_t(b)]);
    return t;
  }();
  return table;
}

// Oniguruma's \s over Unicode (the White_Space property), as the tokenizers library's regexes use it.
bool is_space(int32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
bool is_letter(int32_t c) {
  const auto cat = utf8proc_category(c);
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}
bool is_number(int32_t c) {
  const auto cat = utf8proc_category(c);
  return cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO;
}

std::vector<int32_t> decode_utf8(const std::string& s) {
  std::vector<int32_t> cps;
  cps.reserve(s.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(p + i, utf8proc_ssize_t(s.size() - i), &cp);
    if (n <= 0) {  // not reached: the input was sanitised
      cps.push_back(0xFFFD);
      i += 1;
    } else {
      cps.push_back(cp);
      i += size_t(n);
    }
  }
  return cps;
}

// NFC, whitespace runs to one space, lower-case (Rust's char::to_lowercase: the simple mapping, plus
// U+0130 -> "i\u0307", the one unconditional multi-character lower-case mapping).
std::vector<int32_t> normalize(const std::string& segment) {
  std::string nfc = segment;
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(segment.data()), utf8proc_ssize_t(segment.size()), &out,
                   utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n >= 0 && out) nfc.assign(reinterpret_cast<const char*>(out), size_t(n));
  std::free(out);
  std::vector<int32_t> cps;
  cps.reserve(nfc.size());
  bool in_space = false;
  for (int32_t c : decode_utf8(nfc)) {
    if (is_space(c)) {
      if (!in_space) cps.push_back(' ');
      in_space = true;
      continue;
    }
    in_space = false;
    if (c == 0x130) {
      cps.push_back('i');
      cps.push_back(0x307);
    } else {
      cps.push_back(utf8proc_tolower(c));
    }
  }
  return cps;
}

bool starts_with(const std::vector<int32_t>& cps, size_t i, const char* lit) {
  for (size_t k = 0; lit[k]; ++k)
    if (i + k >= cps.size() || cps[i + k] != int32_t(static_cast<unsigned char>(lit[k]))) return false;
  return true;
}

// Length of CLIP's regex match at i, 0 where none starts there (whitespace):
// <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
size_t clip_match(const std::vector<int32_t>& cps, size_t i) {
  for (const char* lit : {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"})
    if (starts_with(cps, i, lit)) return std::char_traits<char>::length(lit);
  const int32_t c = cps[i];
  size_t j = i;
  if (is_letter(c)) {
    while (j < cps.size() && is_letter(cps[j])) ++j;
    return j - i;
  }
  if (is_number(c)) return 1;
  if (is_space(c)) return 0;
  while (j < cps.size() && !is_space(cps[j]) && !is_letter(cps[j]) && !is_number(cps[j])) ++j;
  return j - i;
}

Result<std::string> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error(path + ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return make_error(path + ": read failed");
  return ss.str();
}

Result<Json> read_json(const std::string& path) {
  MD_TRY(std::string text, read_file(path));
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return make_error(path + ": invalid JSON: " + e.what());
  }
}

// A special-token entry of tokenizer_config.json: a string, an AddedToken object {"content": ...}, or null.
Result<std::optional<std::string>> token_entry(const Json& cfg, const char* key, const std::string& file) {
  if (!cfg.contains(key) || cfg[key].is_null()) return std::optional<std::string>();
  const Json& v = cfg[key];
  if (v.is_string()) return std::optional<std::string>(v.get<std::string>());
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return std::optional<std::string>(v["content"].get<std::string>());
  return make_error(file + ": key '" + key + "' should be a token string, got " + v.dump());
}

}  // namespace

Result<ClipTokenizer> ClipTokenizer::load(const std::string& dir, const ClipTokenizerOptions& opt) {
  const std::string cfg = dir + "/tokenizer_config.json";
  std::error_code ec;
  return load_files(dir + "/vocab.json", dir + "/merges.txt", std::filesystem::exists(cfg, ec) ? cfg : std::string(),
                    opt);
}

Result<ClipTokenizer> ClipTokenizer::load_files(const std::string& vocab_json, const std::string& merges_txt,
                                                const std::string& config_json, const ClipTokenizerOptions& opt) {
  ClipTokenizer t;
  // vocab.json: token -> id.
  MD_TRY(Json vocab, read_json(vocab_json));
  if (!vocab.is_object() || vocab.empty())
    return make_error(vocab_json + ": should be a JSON object mapping tokens to ids");
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() >= (1 << 30))
      return make_error(vocab_json + ": token '" + it.key() + "' has id " + it.value().dump() +
                        ", expected a non-negative integer");
    const int64_t id = it.value().get<int64_t>();
    t.vocab_[it.key()] = int32_t(id);
    max_id = std::max(max_id, id);
  }
  t.id_to_token_.assign(size_t(max_id + 1), std::string());
  for (const auto& [tok, id] : t.vocab_) t.id_to_token_[size_t(id)] = tok;
  for (int b = 0; b < 256; ++b) {
    const std::string& s = byte_strings()[size_t(b)];
    t.byte_id_[b] = int32_t(t.token_id(s));
    t.byte_eow_id_[b] = int32_t(t.token_id(s + kEndOfWord));
  }

  // merges.txt: "left right" per line in rank order, after an optional "#version" line.
  MD_TRY(std::string merges, read_file(merges_txt));
  std::istringstream lines(merges);
  std::string line;
  int32_t rank = 0;
  for (int lineno = 1; std::getline(lines, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == line.size() || line.find(' ', sp + 1) != std::string::npos)
      return make_error(merges_txt + ":" + std::to_string(lineno) + ": bad merges line '" + line +
                        "' (expected two tokens separated by one space)");
    const std::string left = line.substr(0, sp), right = line.substr(sp + 1);
    const int64_t a = t.token_id(left), b = t.token_id(right), m = t.token_id(left + right);
    if (a < 0 || b < 0 || m < 0)
      return make_error(merges_txt + ":" + std::to_string(lineno) + ": bad merges line '" + line + "': '" +
                        (a < 0   ? left
                         : b < 0 ? right
                                 : left + right) +
                        "' is not in " + vocab_json);
    const uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
    t.merges_.emplace(key, Merge{rank++, int32_t(m)});  // the first rank wins on a repeated pair
  }

  // Special tokens: tokenizer_config.json, else CLIP's defaults.
  std::string bos = "<|startoftext|>", eos = "<|endoftext|>", unk = "<|endoftext|>", pad = "<|endoftext|>";
  t.model_max_length_ = 77;
  const std::string cfg_name = config_json.empty() ? vocab_json : config_json;
  if (!config_json.empty()) {
    MD_TRY(Json cfg, read_json(config_json));
    if (!cfg.is_object()) return make_error(config_json + ": should be a JSON object");
    using Slot = std::pair<const char*, std::string*>;
    for (auto [key, dst] : std::initializer_list<Slot>{
             {"bos_token", &bos}, {"eos_token", &eos}, {"unk_token", &unk}, {"pad_token", &pad}}) {
      MD_TRY(std::optional<std::string> v, token_entry(cfg, key, config_json));
      if (v) *dst = *v;
    }
    if (cfg.contains("model_max_length") && cfg["model_max_length"].is_number()) {
      const double m = cfg["model_max_length"].get<double>();
      t.model_max_length_ = (m > 0 && m < 1e9) ? int64_t(m) : 0;
    }
  }
  if (opt.pad_token) pad = *opt.pad_token;
  auto special_id = [&](const std::string& tok, const char* what) -> Result<int64_t> {
    const int64_t id = t.token_id(tok);
    if (id < 0) return make_error(cfg_name + ": " + what + " '" + tok + "' is not in " + vocab_json);
    return id;
  };
  MD_TRY(t.bos_id_, special_id(bos, "bos_token"));
  MD_TRY(t.eos_id_, special_id(eos, "eos_token"));
  MD_TRY(t.unk_id_, special_id(unk, "unk_token"));
  MD_TRY(t.pad_id_, special_id(pad, "pad_token"));
  using Named = std::pair<std::string, int64_t>;
  for (const auto& [tok, id] :
       std::initializer_list<Named>{{bos, t.bos_id_}, {eos, t.eos_id_}, {unk, t.unk_id_}, {pad, t.pad_id_}}) {
    bool seen = tok.empty();
    for (const auto& s : t.specials_) seen = seen || s.first == tok;
    if (!seen) t.specials_.emplace_back(tok, id);
  }
  t.prefix_ = {t.bos_id_};
  t.suffix_ = {t.eos_id_};
  return t;
}

std::string ClipTokenizer::token(int64_t id) const {
  return id >= 0 && id < int64_t(id_to_token_.size()) ? id_to_token_[size_t(id)] : std::string();
}

int64_t ClipTokenizer::token_id(const std::string& tok) const {
  auto it = vocab_.find(tok);
  return it == vocab_.end() ? -1 : it->second;
}

std::string ClipTokenizer::decode(const std::vector<int64_t>& ids) const {
  static const std::unordered_map<int32_t, unsigned char> to_byte = [] {
    std::unordered_map<int32_t, unsigned char> m;
    for (int b = 0; b < 256; ++b) m[byte_chars()[size_t(b)]] = static_cast<unsigned char>(b);
    return m;
  }();
  std::string out;
  for (int64_t id : ids) {
    std::string tok = token(id);
    bool eow = false;
    if (tok.size() >= 4 && tok.compare(tok.size() - 4, 4, kEndOfWord) == 0) {
      tok.resize(tok.size() - 4);
      eow = true;
    }
    bool special = false;
    for (const auto& s : specials_) special = special || s.second == id;
    if (special) {
      out += tok;
    } else {
      for (int32_t c : decode_utf8(tok)) {
        auto it = to_byte.find(c);
        if (it != to_byte.end())
          out += char(it->second);
        else
          append_utf8(out, c);
      }
    }
    if (eow) out += ' ';
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

// The tokenizers library's BPE (Word::merge_all): a queue of adjacent pairs ordered by (rank, position);
// the best pair is merged, then the pairs it forms with its neighbours are queued.
void ClipTokenizer::bpe(const std::string& piece, std::vector<int64_t>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_->mu);
    auto it = cache_->words.find(piece);
    if (it != cache_->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  struct Sym {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) {
    const auto b = static_cast<unsigned char>(piece[i]);
    int32_t id = i + 1 == piece.size() ? byte_eow_id_[b] : byte_id_[b];
    if (id < 0) {
      if (unk_id_ < 0) continue;  // no unk token: the character is dropped, as tokenizers does
      id = int32_t(unk_id_);
    }
    syms.push_back(Sym{id, int32_t(syms.size()) - 1, int32_t(syms.size()) + 1, true});
  }
  if (!syms.empty()) syms.back().next = -1;
  struct Cand {
    int32_t rank, pos, id;
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  auto find = [&](int32_t a, int32_t b) -> const Merge* {
    auto it = merges_.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::priority_queue<Cand> queue;
  for (size_t i = 0; i + 1 < syms.size(); ++i)
    if (const Merge* m = find(syms[i].id, syms[i + 1].id)) queue.push(Cand{m->rank, int32_t(i), m->id});
  while (!queue.empty()) {
    const Cand top = queue.top();
    queue.pop();
    Sym& cur = syms[size_t(top.pos)];
    if (!cur.alive || cur.next < 0) continue;
    const Sym right = syms[size_t(cur.next)];
    const Merge* m = find(cur.id, right.id);
    if (!m || m->id != top.id) continue;  // an expired entry
    cur.id = top.id;
    syms[size_t(cur.next)].alive = false;
    cur.next = right.next;
    if (right.next >= 0) syms[size_t(right.next)].prev = top.pos;
    if (cur.prev >= 0)
      if (const Merge* p = find(syms[size_t(cur.prev)].id, cur.id)) queue.push(Cand{p->rank, cur.prev, p->id});
    if (cur.next >= 0)
      if (const Merge* n = find(cur.id, syms[size_t(cur.next)].id)) queue.push(Cand{n->rank, top.pos, n->id});
  }
  std::vector<int64_t> ids;
  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[size_t(i)].next) ids.push_back(syms[size_t(i)].id);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_->mu);
  if (cache_->words.size() >= kCacheLimit) cache_->words.clear();
  cache_->words.emplace(piece, std::move(ids));
}

void ClipTokenizer::encode_segment(const std::string& segment, std::vector<int64_t>& out) const {
  const std::vector<int32_t> cps = normalize(segment);
  std::string piece;
  size_t i = 0;
  while (i < cps.size()) {
    const size_t n = clip_match(cps, i);
    if (n == 0) {
      ++i;
      continue;
    }
    piece.clear();
    for (size_t k = i; k < i + n; ++k) append_utf8(piece, cps[k]);
    bpe(piece, out);
    i += n;
  }
}

std::vector<int64_t> ClipTokenizer::encode_text(const std::string& raw) const {
  const std::string text = sanitize_utf8(raw);
  std::vector<int64_t> out;
  // Special tokens are cut out of the raw text first (leftmost, then longest), the rest encoded per segment.
  size_t start = 0, i = 0;
  while (i < text.size()) {
    size_t best = 0;
    int64_t best_id = -1;
    for (const auto& [tok, id] : specials_)
      if (tok.size() > best && text.compare(i, tok.size(), tok) == 0) {
        best = tok.size();
        best_id = id;
      }
    if (best == 0) {
      ++i;
      continue;
    }
    if (i > start) encode_segment(text.substr(start, i - start), out);
    out.push_back(best_id);
    i += best;
    start = i;
  }
  if (start < text.size()) encode_segment(text.substr(start), out);
  return out;
}

}  // namespace meshdit
