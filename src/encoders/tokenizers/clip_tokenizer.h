// CLIP's byte-level BPE tokenizer (FLUX.1 `tokenizer`, SD3 `tokenizer` and `tokenizer_2`), matching
// transformers 5 / tokenizers' CLIPTokenizer:
//   1. special tokens (bos, eos, unk, pad) are cut out of the raw text, leftmost-longest;
//   2. each remaining segment is normalised: NFC, every whitespace run to one space, lower-case
//      (no ftfy, no HTML unescape);
//   3. split with CLIP's regex <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
//      (whitespace dropped);
//   4. each piece's UTF-8 bytes are mapped to GPT-2's byte characters and merged by BPE, the last
//      character carrying "</w>";
//   5. <|startoftext|> ... <|endoftext|> around the text; truncation keeps bos + (max_length - 2) + eos.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "encoders/tokenizers/byte_bpe.h"
#include "encoders/tokenizers/tokenizer.h"

namespace meshdit {

struct ClipTokenizerOptions {
  // Overrides tokenizer_config.json's pad_token (SD3's tokenizer_2 pads with "!"). Like every special
  // token, the pad token is matched as a whole in the raw text.
  std::optional<std::string> pad_token;
};

class ClipTokenizer : public Tokenizer {
 public:
  // A diffusers tokenizer folder: vocab.json + merges.txt, and tokenizer_config.json when present
  // (bos/eos/unk/pad tokens, model_max_length).
  static Result<ClipTokenizer> load(const std::string& dir, const ClipTokenizerOptions& opt = {});
  // The files themselves; config_json may be "" (defaults: pad = eos = unk = <|endoftext|>, length 77).
  static Result<ClipTokenizer> load_files(const std::string& vocab_json, const std::string& merges_txt,
                                          const std::string& config_json, const ClipTokenizerOptions& opt = {});

  std::vector<int64_t> encode_text(const std::string& text) const override;

  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t vocab_size() const { return bpe_.size(); }
  // The token string of an id (byte characters as in vocab.json), "" when out of range.
  std::string token(int64_t id) const;
  // The id of a vocab.json token, -1 when absent.
  int64_t token_id(const std::string& token) const;
  // The text the ids stand for (the inverse byte mapping; "</w>" reads as a space), special tokens kept.
  std::string decode(const std::vector<int64_t>& ids) const;

 private:
  void encode_segment(const std::string& segment, std::vector<int64_t>& out) const;

  BpeModel bpe_;
  std::vector<std::pair<std::string, int64_t>> specials_;  // matched in the raw text
  int64_t bos_id_ = 0, eos_id_ = 0, unk_id_ = -1;
};

}  // namespace meshdit
