#include "encoders/tokenizers/tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace meshdit {

std::string sanitize_utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(p + i, utf8proc_ssize_t(s.size() - i), &cp);
    if (n > 0) {
      out.append(s, i, size_t(n));
      i += size_t(n);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      i += 1;
    }
  }
  return out;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int64_t> body = encode_text(text);
  std::vector<int64_t> ids;
  ids.reserve(prefix_.size() + body.size() + suffix_.size());
  ids.insert(ids.end(), prefix_.begin(), prefix_.end());
  ids.insert(ids.end(), body.begin(), body.end());
  ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

Result<TokenizedBatch> Tokenizer::encode(const std::vector<std::string>& texts, int max_length, bool pad) const {
  const int64_t specials = int64_t(prefix_.size() + suffix_.size());
  if (max_length < specials || max_length <= 0)
    return make_error("tokenizer: max_length " + std::to_string(max_length) + " cannot hold the " +
                      std::to_string(specials) + " special tokens");
  const int64_t keep = max_length - specials;
  std::vector<std::vector<int64_t>> rows;
  rows.reserve(texts.size());
  int64_t longest = 0;
  TokenizedBatch b;
  for (const auto& t : texts) {
    std::vector<int64_t> body = encode_text(t);
    b.dropped.push_back(std::max<int64_t>(0, int64_t(body.size()) - keep));
    if (int64_t(body.size()) > keep) body.resize(size_t(keep));
    std::vector<int64_t> ids(prefix_);
    ids.insert(ids.end(), body.begin(), body.end());
    ids.insert(ids.end(), suffix_.begin(), suffix_.end());
    longest = std::max(longest, int64_t(ids.size()));
    b.lengths.push_back(int64_t(ids.size()));
    rows.push_back(std::move(ids));
  }
  const int64_t n = int64_t(texts.size()), len = pad ? int64_t(max_length) : longest;
  std::vector<int64_t> ids(size_t(n * len)), mask(size_t(n * len));
  for (int64_t r = 0; r < n; ++r) {
    const auto& row = rows[size_t(r)];
    for (int64_t j = 0; j < len; ++j) {
      const bool real = j < int64_t(row.size());
      ids[size_t(r * len + j)] = real ? row[size_t(j)] : pad_id_;
      mask[size_t(r * len + j)] = real ? 1 : 0;
    }
  }
  b.input_ids = Tensor::from_i64({n, len}, ids);
  b.attention_mask = Tensor::from_i64({n, len}, mask);
  return b;
}

void warn_truncated(const TokenizedBatch& b, const std::string& why) {
  for (size_t r = 0; r < b.dropped.size(); ++r)
    if (b.dropped[r] > 0)
      std::fprintf(stderr, "warning: prompt %zu was truncated because %s: %lld token%s dropped\n", r + 1, why.c_str(),
                   static_cast<long long>(b.dropped[r]), b.dropped[r] == 1 ? "" : "s");
}

}  // namespace meshdit
