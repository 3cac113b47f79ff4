// The interface both text tokenizers (CLIP byte-level BPE, T5 SentencePiece) share: one string to ids
// with the model's special tokens, and a batch to int64 [N, L] input_ids + attention_mask, truncated and
// padded as transformers does with truncation=True.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

struct TokenizedBatch {
  Tensor input_ids;       // int64 [N, L]
  Tensor attention_mask;  // int64 [N, L]: 1 for real tokens (specials included), 0 for padding
  // Per row, how many text tokens truncation cut off (0 when the string fit): the ids do not show it, and
  // a silently shortened prompt is a surprise, so callers warn with it as diffusers does.
  std::vector<int64_t> dropped;
  // Per row, its real tokens (the ones of attention_mask), so that callers slicing per row need not read the
  // mask back.
  std::vector<int64_t> lengths;
};

// Writes one warning line to stderr for each row of `b` that lost tokens to truncation, saying how many:
// "warning: prompt 2 was truncated because <why>: 12 tokens dropped". Nothing when no row was cut.
void warn_truncated(const TokenizedBatch& b, const std::string& why);

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Ids of one string with the special tokens the model adds, neither truncated nor padded
  // (transformers' `tok(s).input_ids`). Invalid UTF-8 bytes read as U+FFFD.
  std::vector<int64_t> encode(const std::string& text) const;

  // Every string truncated to max_length ids (the special tokens are kept: the text tokens are cut) and,
  // with pad, padded to max_length (padding="max_length"); without pad, to the longest row (padding=True).
  // An error when max_length cannot hold the special tokens.
  Result<TokenizedBatch> encode(const std::vector<std::string>& texts, int max_length, bool pad = true) const;

  // Ids of the text alone, without special tokens.
  virtual std::vector<int64_t> encode_text(const std::string& text) const = 0;

  const std::vector<int64_t>& prefix_ids() const { return prefix_; }  // added before the text (CLIP: bos)
  const std::vector<int64_t>& suffix_ids() const { return suffix_; }  // added after it (CLIP, T5: eos)
  int64_t pad_id() const { return pad_id_; }
  // The length the model takes (tokenizer_config.json model_max_length; 77 for CLIP), 0 when unbounded.
  int64_t model_max_length() const { return model_max_length_; }

 protected:
  std::vector<int64_t> prefix_, suffix_;
  int64_t pad_id_ = 0;
  int64_t model_max_length_ = 0;
};

// Replaces every byte that does not start a valid UTF-8 sequence (overlong forms and surrogates included)
// with U+FFFD.
std::string sanitize_utf8(const std::string& s);

}  // namespace meshdit
