#include "encoders/tokenizers/byte_bpe.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <queue>
#include <sstream>

namespace meshdit {
namespace bytelevel {

void append_utf8(std::string& s, int32_t cp) {
  utf8proc_uint8_t buf[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(cp, buf);
  s.append(reinterpret_cast<const char*>(buf), size_t(n));
}

std::vector<int32_t> decode_utf8(const std::string& s) {
  std::vector<int32_t> cps;
  cps.reserve(s.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(p + i, utf8proc_ssize_t(s.size() - i), &cp);
    if (n <= 0) {
      cps.push_back(0xFFFD);
      i += 1;
    } else {
      cps.push_back(cp);
      i += size_t(n);
    }
  }
  return cps;
}

std::string nfc(const std::string& s) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()), &out,
                   utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::string r = (n >= 0 && out) ? std::string(reinterpret_cast<const char*>(out), size_t(n)) : s;
  std::free(out);
  return r;
}

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

void encode_with_specials(const std::string& text, const std::vector<std::pair<std::string, int64_t>>& specials,
                          const std::function<void(const std::string&, std::vector<int64_t>&)>& encode_segment,
                          std::vector<int64_t>& out) {
  size_t start = 0, i = 0;
  while (i < text.size()) {
    size_t best = 0;
    int64_t best_id = -1;
    for (const auto& [tok, id] : specials)
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
}

}  // namespace bytelevel

namespace {
constexpr size_t kCacheLimit = 1 << 16;  // words; the cache is emptied when it grows past this
}

Result<BpeModel> BpeModel::load(const std::string& vocab_json, const std::string& merges_txt,
                                const std::string& eow_suffix) {
  BpeModel t;
  t.eow_ = eow_suffix;
  MD_TRY(Json vocab, bytelevel::read_json(vocab_json));
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
    const std::string& s = bytelevel::byte_strings()[size_t(b)];
    t.byte_id_[b] = int32_t(t.token_id(s));
    t.byte_eow_id_[b] = int32_t(t.token_id(s + t.eow_));
  }

  // merges.txt: "left right" per line in rank order, after an optional "#version" line.
  MD_TRY(std::string merges, bytelevel::read_file(merges_txt));
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
  return t;
}

int64_t BpeModel::token_id(const std::string& tok) const {
  auto it = vocab_.find(tok);
  return it == vocab_.end() ? -1 : it->second;
}

std::string BpeModel::token(int64_t id) const {
  return id >= 0 && id < int64_t(id_to_token_.size()) ? id_to_token_[size_t(id)] : std::string();
}

const BpeModel::Merge* BpeModel::find(int32_t a, int32_t b) const {
  auto it = merges_.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
  return it == merges_.end() ? nullptr : &it->second;
}

// The tokenizers library's BPE (Word::merge_all): a queue of adjacent pairs ordered by (rank, position);
// the best pair is merged, then the pairs it forms with its neighbours are queued.
void BpeModel::encode_word(const std::string& piece, int64_t unk_id, std::vector<int64_t>& out) const {
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
      if (unk_id < 0) continue;
      id = int32_t(unk_id);
    }
    syms.push_back(Sym{id, int32_t(syms.size()) - 1, int32_t(syms.size()) + 1, true});
  }
  if (!syms.empty()) syms.back().next = -1;
  struct Cand {
    int32_t rank, pos, id;
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
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

}  // namespace meshdit
