// T5's SentencePiece tokenizer (FLUX.1 `tokenizer_2`, SD3 `tokenizer_3`): the model's own normalisation and
// unigram segmentation (libsentencepiece), then </s> (id 1); truncation keeps (max_length - 1) + eos,
// padding uses <pad> (id 0). Matches transformers' T5Tokenizer for text without literal special tokens
// ("</s>", "<extra_id_0>", ... in the text are segmented as ordinary text, as plain SentencePiece does).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "encoders/tokenizers/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace meshdit {

class T5Tokenizer : public Tokenizer {
 public:
  // A folder holding spiece.model (and tokenizer_config.json for eos/pad tokens when present), or the
  // .model file itself.
  static Result<T5Tokenizer> load(const std::string& path);

  std::vector<int64_t> encode_text(const std::string& text) const override;

  int64_t eos_id() const { return eos_id_; }
  int64_t vocab_size() const;  // pieces in the model (transformers adds 100 <extra_id_*> after them)
  std::string decode(const std::vector<int64_t>& ids) const;

 private:
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int64_t eos_id_ = 1;
};

}  // namespace meshdit
