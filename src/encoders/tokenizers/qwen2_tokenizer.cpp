#include "encoders/tokenizers/qwen2_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <optional>

namespace meshdit {
namespace {

using bytelevel::is_letter;
using bytelevel::is_number;
using bytelevel::is_space;

bool is_newline(int32_t c) { return c == '\r' || c == '\n'; }
bool is_other(int32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); }

// The (?i) of the contraction alternative folds case as Oniguruma does; U+017F (long s) folds to 's'.
int32_t fold(int32_t c) {
  if (c >= 'A' && c <= 'Z') return c + ('a' - 'A');
  return c == 0x17F ? int32_t('s') : c;
}

// Length of Qwen2's regex match at i (alternatives tried in order, as a backtracking engine does). Every
// code point starts some match, so the split leaves no gaps.
size_t qwen2_match(const std::vector<int32_t>& cps, size_t i) {
  const size_t n = cps.size();
  const int32_t c = cps[i];
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (c == '\'' && i + 1 < n) {
    const int32_t a = fold(cps[i + 1]);
    const int32_t b = i + 2 < n ? fold(cps[i + 2]) : 0;
    if (a == 's' || a == 't') return 2;
    if ((a == 'r' || a == 'v') && b == 'e') return 3;
    if (a == 'm') return 2;
    if (a == 'l' && b == 'l') return 3;
    if (a == 'd') return 2;
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  size_t j = i;
  if (!is_letter(c) && !is_number(c) && !is_newline(c) && i + 1 < n && is_letter(cps[i + 1])) j = i + 1;
  if (is_letter(cps[j])) {
    while (j < n && is_letter(cps[j])) ++j;
    return j - i;
  }
  // \p{N}: one digit at a time
  if (is_number(c)) return 1;
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  j = (c == ' ' && i + 1 < n && is_other(cps[i + 1])) ? i + 1 : i;
  if (is_other(cps[j])) {
    while (j < n && is_other(cps[j])) ++j;
    while (j < n && is_newline(cps[j])) ++j;
    return j - i;
  }
  // c is whitespace from here on.
  size_t end = i;
  while (end < n && is_space(cps[end])) ++end;
  // \s*[\r\n]+: \s* backtracks to the run's last newline, which then ends the match.
  for (size_t k = end; k > i; --k)
    if (is_newline(cps[k - 1])) return k - i;
  // \s+(?!\S): the whole run at the end of the text, else all but its last character (which then goes
  // with the following word as its [^\r\n\p{L}\p{N}]? prefix).
  if (end == n) return end - i;
  if (end - i > 1) return end - 1 - i;
  // \s+
  return end - i;
}

Result<int64_t> token_id_in(const Json& v, const std::string& file, const std::string& what) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= (int64_t(1) << 30))
    return make_error(file + ": " + what + " has id " + v.dump() + ", expected a non-negative integer");
  return v.get<int64_t>();
}

// tokenizer.json "added_tokens": [{"id": .., "content": ..}, ...].
Status read_added_tokens(const std::string& file, std::vector<std::pair<std::string, int64_t>>& out) {
  MD_TRY(Json j, bytelevel::read_json(file));
  if (!j.is_object()) return make_error(file + ": should be a JSON object");
  if (!j.contains("added_tokens")) return ok_status();
  if (!j["added_tokens"].is_array()) return make_error(file + ": \"added_tokens\" should be an array");
  for (const auto& t : j["added_tokens"]) {
    if (!t.is_object() || !t.contains("content") || !t["content"].is_string() || !t.contains("id"))
      return make_error(file + ": bad added_tokens entry " + t.dump());
    const std::string content = t["content"].get<std::string>();
    MD_TRY(int64_t id, token_id_in(t["id"], file, "added token '" + content + "'"));
    out.emplace_back(content, id);
  }
  return ok_status();
}

// tokenizer_config.json "added_tokens_decoder": {"151643": {"content": ..}, ...}.
Status read_added_tokens_decoder(const Json& cfg, const std::string& file,
                                 std::vector<std::pair<std::string, int64_t>>& out) {
  if (!cfg.contains("added_tokens_decoder")) return ok_status();
  const Json& d = cfg["added_tokens_decoder"];
  if (!d.is_object()) return make_error(file + ": \"added_tokens_decoder\" should be an object");
  for (auto it = d.begin(); it != d.end(); ++it) {
    const Json& t = it.value();
    if (!t.is_object() || !t.contains("content") || !t["content"].is_string())
      return make_error(file + ": bad added_tokens_decoder entry '" + it.key() + "'");
    int64_t id = -1;
    try {
      size_t used = 0;
      id = std::stoll(it.key(), &used);
      if (used != it.key().size()) id = -1;
    } catch (const std::exception&) {
      id = -1;
    }
    if (id < 0 || id >= (int64_t(1) << 30))
      return make_error(file + ": added_tokens_decoder key '" + it.key() + "' is not a token id");
    out.emplace_back(t["content"].get<std::string>(), id);
  }
  return ok_status();
}

Result<std::optional<std::string>> token_entry(const Json& cfg, const char* key, const std::string& file) {
  if (!cfg.contains(key) || cfg[key].is_null()) return std::optional<std::string>();
  const Json& v = cfg[key];
  if (v.is_string()) return std::optional<std::string>(v.get<std::string>());
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return std::optional<std::string>(v["content"].get<std::string>());
  return make_error(file + ": key '" + key + "' should be a token string, got " + v.dump());
}

}  // namespace

Result<Qwen2Tokenizer> Qwen2Tokenizer::load(const std::string& dir) {
  Qwen2Tokenizer t;
  MD_TRY(t.bpe_, BpeModel::load(dir + "/vocab.json", dir + "/merges.txt"));
  std::error_code ec;
  const std::string tok_json = dir + "/tokenizer.json", cfg_json = dir + "/tokenizer_config.json";
  std::vector<std::pair<std::string, int64_t>> added;
  if (std::filesystem::exists(tok_json, ec)) MD_RETURN_IF_ERROR(read_added_tokens(tok_json, added));
  std::string pad = "<|endoftext|>";
  if (std::filesystem::exists(cfg_json, ec)) {
    MD_TRY(Json cfg, bytelevel::read_json(cfg_json));
    if (!cfg.is_object()) return make_error(cfg_json + ": should be a JSON object");
    MD_RETURN_IF_ERROR(read_added_tokens_decoder(cfg, cfg_json, added));
    MD_TRY(std::optional<std::string> p, token_entry(cfg, "pad_token", cfg_json));
    if (p) pad = *p;
    if (cfg.contains("model_max_length") && cfg["model_max_length"].is_number()) {
      const double m = cfg["model_max_length"].get<double>();
      t.model_max_length_ = (m > 0 && m < 1e9) ? int64_t(m) : 0;
    }
  }
  // Both files usually list the same tokens; one entry per content, the first file's id kept.
  for (const auto& [content, id] : added) {
    if (content.empty()) continue;
    bool seen = false;
    for (const auto& a : t.added_) seen = seen || a.first == content;
    if (!seen) t.added_.emplace_back(content, id);
  }
  t.pad_id_ = t.token_id(pad);
  if (t.pad_id_ < 0)
    return make_error(cfg_json + ": pad_token '" + pad + "' is neither in " + dir + "/vocab.json nor an added token");
  return t;
}

int64_t Qwen2Tokenizer::token_id(const std::string& tok) const {
  for (const auto& [content, id] : added_)
    if (content == tok) return id;
  return bpe_.token_id(tok);
}

std::string Qwen2Tokenizer::token(int64_t id) const {
  for (const auto& [content, aid] : added_)
    if (aid == id) return content;
  return bpe_.token(id);
}

int64_t Qwen2Tokenizer::vocab_size() const {
  int64_t n = bpe_.size();
  for (const auto& a : added_) n = std::max(n, a.second + 1);
  return n;
}

std::vector<std::string> Qwen2Tokenizer::pre_tokenize(const std::string& segment) {
  const std::vector<int32_t> cps = bytelevel::decode_utf8(segment);
  std::vector<std::string> pieces;
  for (size_t i = 0; i < cps.size();) {
    const size_t n = qwen2_match(cps, i);
    std::string piece;
    for (size_t k = i; k < i + n; ++k) bytelevel::append_utf8(piece, cps[k]);
    pieces.push_back(std::move(piece));
    i += n;
  }
  return pieces;
}

void Qwen2Tokenizer::encode_segment(const std::string& segment, std::vector<int64_t>& out) const {
  for (const auto& piece : pre_tokenize(bytelevel::nfc(segment))) bpe_.encode_word(piece, /*unk_id=*/-1, out);
}

std::vector<int64_t> Qwen2Tokenizer::encode_text(const std::string& raw) const {
  std::vector<int64_t> out;
  bytelevel::encode_with_specials(
      sanitize_utf8(raw), added_,
      [this](const std::string& segment, std::vector<int64_t>& ids) { encode_segment(segment, ids); }, out);
  return out;
}

}  // namespace meshdit
