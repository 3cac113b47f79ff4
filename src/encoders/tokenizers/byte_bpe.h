// What CLIP's and Qwen2's tokenizers share: GPT-2's byte-to-character mapping, the Unicode classes their
// split regexes use (as Oniguruma reads \s, \p{L}, \p{N}), and the BPE model itself (vocab.json +
// merges.txt, merged by rank as the tokenizers library does).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "io/json_config.h"

namespace meshdit {
namespace bytelevel {

void append_utf8(std::string& s, int32_t cp);
// Code points of valid UTF-8 (callers sanitise first; a stray bad byte reads as U+FFFD).
std::vector<int32_t> decode_utf8(const std::string& s);
std::string nfc(const std::string& s);

// GPT-2's bytes_to_unicode: the character each byte stands for, as a code point and as UTF-8.
const std::vector<int32_t>& byte_chars();
const std::vector<std::string>& byte_strings();

bool is_space(int32_t c);   // \s: the White_Space property
bool is_letter(int32_t c);  // \p{L}
bool is_number(int32_t c);  // \p{N}

Result<std::string> read_file(const std::string& path);
Result<Json> read_json(const std::string& path);

// Special tokens are cut out of the raw text first (leftmost, then longest) and appended as their ids; the
// text between them goes through `encode_segment`.
void encode_with_specials(const std::string& text, const std::vector<std::pair<std::string, int64_t>>& specials,
                          const std::function<void(const std::string&, std::vector<int64_t>&)>& encode_segment,
                          std::vector<int64_t>& out);

}  // namespace bytelevel

class BpeModel {
 public:
  // eow_suffix is appended to a word's last byte character before merging (CLIP's "</w>"; "" for GPT-2
  // style models, where a leading "Ġ" marks word starts instead).
  static Result<BpeModel> load(const std::string& vocab_json, const std::string& merges_txt,
                               const std::string& eow_suffix = "");

  // The ids of one pre-tokenised piece (raw UTF-8 bytes). A byte without a vocabulary character becomes
  // unk_id, or is dropped when unk_id < 0, as the tokenizers library does.
  void encode_word(const std::string& piece, int64_t unk_id, std::vector<int64_t>& out) const;

  int64_t token_id(const std::string& token) const;  // -1 when absent
  std::string token(int64_t id) const;               // "" when out of range
  int64_t size() const { return int64_t(id_to_token_.size()); }
  const std::string& eow_suffix() const { return eow_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  struct Cache {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int64_t>> words;
  };
  const Merge* find(int32_t a, int32_t b) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, merged id
  int32_t byte_id_[256] = {};                   // id of each byte's character, -1 when missing
  int32_t byte_eow_id_[256] = {};               // id of that character + eow suffix
  std::string eow_;
  // Shared so that copies of a tokenizer (kept by value) reuse one cache; the mutex makes encode thread-safe.
  std::shared_ptr<Cache> cache_ = std::make_shared<Cache>();
};

}  // namespace meshdit
