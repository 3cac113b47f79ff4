#include "encoders/tokenizers/clip_tokenizer.h"

#include <utf8proc.h>

#include <filesystem>

#include "io/json_config.h"

namespace meshdit {
namespace {

constexpr const char* kEndOfWord = "</w>";

using bytelevel::append_utf8;
using bytelevel::byte_chars;
using bytelevel::decode_utf8;
using bytelevel::is_letter;
using bytelevel::is_number;
using bytelevel::is_space;
using bytelevel::read_json;

// NFC, whitespace runs to one space, lower-case (Rust's char::to_lowercase: the simple mapping, plus
// U+0130 -> "i\u0307", the one unconditional multi-character lower-case mapping).
std::vector<int32_t> normalize(const std::string& segment) {
  const std::string nfc = bytelevel::nfc(segment);
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
  MD_TRY(t.bpe_, BpeModel::load(vocab_json, merges_txt, kEndOfWord));

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

std::string ClipTokenizer::token(int64_t id) const { return bpe_.token(id); }

int64_t ClipTokenizer::token_id(const std::string& tok) const { return bpe_.token_id(tok); }

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
    bpe_.encode_word(piece, unk_id_, out);
    i += n;
  }
}

std::vector<int64_t> ClipTokenizer::encode_text(const std::string& raw) const {
  std::vector<int64_t> out;
  bytelevel::encode_with_specials(
      sanitize_utf8(raw), specials_,
      [this](const std::string& segment, std::vector<int64_t>& ids) { encode_segment(segment, ids); }, out);
  return out;
}

}  // namespace meshdit
