// Qwen2's byte-level BPE tokenizer (Qwen-Image's `tokenizer`), matching transformers 5 / tokenizers'
// Qwen2Tokenizer:
//   1. added tokens (<|endoftext|>, <|im_start|>, <|im_end|>, ...) are cut out of the raw text,
//      leftmost-longest, and never split;
//   2. each remaining segment is NFC-normalised, then split with Qwen2's regex
//      (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//      (nothing is dropped: whitespace stays in the pieces);
//   3. each piece's UTF-8 bytes are mapped to GPT-2's byte characters and merged by BPE.
// No bos/eos is added; the pad token is tokenizer_config.json's pad_token (<|endoftext|>).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "encoders/tokenizers/byte_bpe.h"
#include "encoders/tokenizers/tokenizer.h"

namespace meshdit {

class Qwen2Tokenizer : public Tokenizer {
 public:
  // A tokenizer folder: vocab.json + merges.txt; the added tokens from tokenizer.json "added_tokens" or
  // tokenizer_config.json "added_tokens_decoder" (whichever are present); pad_token / model_max_length
  // from tokenizer_config.json.
  static Result<Qwen2Tokenizer> load(const std::string& dir);

  std::vector<int64_t> encode_text(const std::string& text) const override;

  // Qwen2's regex split of one normalised segment (no added-token handling), as UTF-8 pieces.
  static std::vector<std::string> pre_tokenize(const std::string& segment);

  // The id of a vocabulary or added token, -1 when absent.
  int64_t token_id(const std::string& token) const;
  std::string token(int64_t id) const;
  int64_t vocab_size() const;  // the learned vocabulary and the added tokens

 private:
  void encode_segment(const std::string& segment, std::vector<int64_t>& out) const;

  BpeModel bpe_;
  std::vector<std::pair<std::string, int64_t>> added_;  // matched in the raw text
};

}  // namespace meshdit
