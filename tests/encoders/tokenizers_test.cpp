// CLIP BPE, T5 SentencePiece and Qwen2 BPE tokenizers: hand-checked ids with the fixtures' real CLIP
// vocabulary and tiny SentencePiece model, BPE merge order on a hand-made vocabulary, Qwen2's regex split,
// truncation/padding edge cases, error messages, and the unpadded ids of every fixture string (the fixture
// check covers the padded ones).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "app/check.h"
#include "app/runners.h"
#include "encoders/tokenizers/clip_tokenizer.h"
#include "encoders/tokenizers/qwen2_tokenizer.h"
#include "encoders/tokenizers/t5_tokenizer.h"

namespace fs = std::filesystem;
using namespace meshdit;

namespace {

using test::TempDir;

std::string clip_dir() { return test::fixtures_dir() + "/tok_clip"; }
std::string t5_dir() { return test::fixtures_dir() + "/tok_t5_spiece"; }
std::string qwen_dir() { return test::fixtures_dir() + "/tok_qwen2_bpe"; }

const Qwen2Tokenizer& qwen() {
  static const Qwen2Tokenizer tok = [] {
    auto t = Qwen2Tokenizer::load(qwen_dir());
    if (!t.ok()) ADD_FAILURE() << t.error().message;
    return t.ok() ? t.value() : Qwen2Tokenizer();
  }();
  return tok;
}

const ClipTokenizer& clip() {
  static const ClipTokenizer tok = [] {
    auto t = ClipTokenizer::load(clip_dir());
    if (!t.ok()) ADD_FAILURE() << t.error().message;
    return t.ok() ? t.value() : ClipTokenizer();
  }();
  return tok;
}

const ClipTokenizer& clip_bang() {
  static const ClipTokenizer tok = [] {
    ClipTokenizerOptions opt;
    opt.pad_token = "!";
    auto t = ClipTokenizer::load(clip_dir(), opt);
    if (!t.ok()) ADD_FAILURE() << t.error().message;
    return t.ok() ? t.value() : ClipTokenizer();
  }();
  return tok;
}

std::vector<std::string> tokens(const ClipTokenizer& tok, const std::vector<int64_t>& ids) {
  std::vector<std::string> v;
  for (int64_t id : ids) v.push_back(tok.token(id));
  return v;
}

std::vector<int64_t> row(const Tensor& t, int64_t r) {
  const int64_t n = t.size(1);
  return std::vector<int64_t>(t.data<int64_t>() + r * n, t.data<int64_t>() + (r + 1) * n);
}

// A hand-made byte-level vocabulary over "abc!" (ASCII bytes stand for themselves).
const char* kTinyVocab = R"({"a": 0, "b": 1, "c": 2, "!": 3, "a</w>": 4, "b</w>": 5, "c</w>": 6, "!</w>": 7,
  "ab": 8, "bc</w>": 9, "abc</w>": 10, "<|startoftext|>": 11, "<|endoftext|>": 12})";

// ---- CLIP ----------------------------------------------------------------------------------------------

TEST(ClipTokenizer, HandCheckedIds) {
  const auto& tok = clip();
  EXPECT_EQ(tok.vocab_size(), 49408);
  EXPECT_EQ(tok.bos_id(), 49406);
  EXPECT_EQ(tok.eos_id(), 49407);
  EXPECT_EQ(tok.pad_id(), 49407);
  EXPECT_EQ(tok.model_max_length(), 77);
  EXPECT_EQ(tok.encode("a photo of a cat"), (std::vector<int64_t>{49406, 320, 1125, 539, 320, 2368, 49407}));
  EXPECT_EQ(tok.encode(""), (std::vector<int64_t>{49406, 49407}));
  EXPECT_EQ(tok.encode(" \t\n "), (std::vector<int64_t>{49406, 49407}));
}

TEST(ClipTokenizer, NormalisesCaseWhitespaceAndNfc) {
  const auto& tok = clip();
  EXPECT_EQ(tok.encode("A  PHOTO\tOf a\r\n  CAT  "), tok.encode("a photo of a cat"));
  // "CAFE" + combining acute composes to "CAFÉ", lower-cased to "café".
  EXPECT_EQ(tok.encode("CAFE\xCC\x81"), tok.encode("caf\xC3\xA9"));
  // U+0130 (İ) lower-cases to "i" + U+0307, as Rust's char::to_lowercase does.
  EXPECT_EQ(tok.encode_text("\xC4\xB0"), tok.encode_text("i\xCC\x87"));
  // No HTML unescape.
  EXPECT_EQ(tokens(tok, tok.encode_text("&amp;")), (std::vector<std::string>{"&</w>", "amp</w>", ";</w>"}));
}

TEST(ClipTokenizer, ClipRegexPieces) {
  const auto& tok = clip();
  EXPECT_EQ(tokens(tok, tok.encode_text("don't y'all 'single")),
            (std::vector<std::string>{"don</w>", "'t</w>", "y</w>", "'</w>", "all</w>", "'s</w>", "ingle</w>"}));
  // Digits are single pieces; punctuation runs stay together.
  EXPECT_EQ(tokens(tok, tok.encode_text("42...")), (std::vector<std::string>{"4</w>", "2</w>", "...</w>"}));
  EXPECT_EQ(tok.decode(tok.encode_text("Hello, World!")), "hello , world !");
}

TEST(ClipTokenizer, SpecialTokensInTextAndBangPad) {
  const auto& tok = clip();
  EXPECT_EQ(tok.encode("<|startoftext|>x<|endoftext|>"),
            (std::vector<int64_t>{49406, 49406, tok.token_id("x</w>"), 49407, 49407}));
  // With "!" as the pad token, "!" is a special token: matched whole, never merged with its neighbours.
  const auto& bang = clip_bang();
  EXPECT_EQ(bang.pad_id(), 0);
  EXPECT_EQ(tokens(tok, tok.encode_text("off!)")), (std::vector<std::string>{"off</w>", "!)</w>"}));
  EXPECT_EQ(tokens(bang, bang.encode_text("off!)")), (std::vector<std::string>{"off</w>", "!", ")</w>"}));
  EXPECT_EQ(bang.encode_text("!!"), (std::vector<int64_t>{0, 0}));
}

TEST(ClipTokenizer, TruncationAndPadding) {
  const auto& tok = clip();
  std::string many;
  for (int i = 0; i < 200; ++i) many += "cat ";
  auto b = tok.encode({many, "", "a photo of a cat"}, 77, /*pad=*/true);
  ASSERT_TRUE(b.ok()) << b.error().message;
  ASSERT_EQ(b->input_ids.shape(), (Shape{3, 77}));
  ASSERT_EQ(b->input_ids.dtype(), DType::I64);
  ASSERT_EQ(b->attention_mask.shape(), (Shape{3, 77}));
  const int64_t cat = tok.token_id("cat</w>");
  std::vector<int64_t> r0 = row(b->input_ids, 0);
  EXPECT_EQ(r0.front(), 49406);
  EXPECT_EQ(r0.back(), 49407);
  for (int j = 1; j < 76; ++j) EXPECT_EQ(r0[size_t(j)], cat) << j;
  EXPECT_EQ(row(b->attention_mask, 0), std::vector<int64_t>(77, 1));
  // The count the pipelines' truncation warning reports: 200 words, 75 kept; nothing for rows that fit.
  EXPECT_EQ(b->dropped, (std::vector<int64_t>{125, 0, 0}));
  std::vector<int64_t> r1 = row(b->input_ids, 1), m1 = row(b->attention_mask, 1);
  EXPECT_EQ(r1[0], 49406);
  EXPECT_EQ(r1[1], 49407);
  for (int j = 2; j < 77; ++j) EXPECT_EQ(r1[size_t(j)], 49407);
  EXPECT_EQ(m1[0] + m1[1], 2);
  for (int j = 2; j < 77; ++j) EXPECT_EQ(m1[size_t(j)], 0);
  // Exactly max_length: nothing cut. One more: the last text token goes, eos stays.
  std::string s75, s76;
  for (int i = 0; i < 75; ++i) s75 += "cat ";
  s76 = s75 + "dog";
  auto c = tok.encode({s75, s76}, 77, true);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(row(c->input_ids, 0), row(c->input_ids, 1));
  EXPECT_EQ(c->dropped, (std::vector<int64_t>{0, 1}));
  // The smallest length that holds the specials, and one too small.
  auto d = tok.encode({"a photo"}, 2, true);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(row(d->input_ids, 0), (std::vector<int64_t>{49406, 49407}));
  EXPECT_FALSE(tok.encode({"a photo"}, 1, true).ok());
  // Bang padding pads with id 0.
  auto e = clip_bang().encode({"cat"}, 6, true);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(row(e->input_ids, 0), (std::vector<int64_t>{49406, cat, 49407, 0, 0, 0}));
  EXPECT_EQ(row(e->attention_mask, 0), (std::vector<int64_t>{1, 1, 1, 0, 0, 0}));
}

TEST(ClipTokenizer, PadToLongestAndEmptyBatch) {
  const auto& tok = clip();
  auto b = tok.encode({"cat", "a photo of a cat"}, 77, /*pad=*/false);
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(b->input_ids.shape(), (Shape{2, 7}));
  EXPECT_EQ(row(b->attention_mask, 0), (std::vector<int64_t>{1, 1, 1, 0, 0, 0, 0}));
  auto e = tok.encode(std::vector<std::string>{}, 77, true);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->input_ids.shape(), (Shape{0, 77}));
}

TEST(ClipTokenizer, InvalidUtf8ReadsAsReplacementCharacter) {
  const auto& tok = clip();
  EXPECT_EQ(tok.encode("\xFF"
                       "cat\xC3"),
            tok.encode("\xEF\xBF\xBD"
                       "cat\xEF\xBF\xBD"));
  EXPECT_EQ(sanitize_utf8("ok \xE2\x82\xAC"), "ok \xE2\x82\xAC");
}

TEST(ClipTokenizer, MergesApplyByRankThenPosition) {
  TempDir dir("bpe_rank");
  dir.write("vocab.json", kTinyVocab);
  dir.write("merges.txt", "#version: 0.2\nb c</w>\na b\nab c</w>\n");
  auto t = ClipTokenizer::load(dir.str());
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t->encode_text("abc"), (std::vector<int64_t>{0, 9}));  // "b c</w>" ranks before "a b"
  EXPECT_EQ(t->encode_text("ab"), (std::vector<int64_t>{0, 5}));   // "a b</w>" is no merge
  EXPECT_EQ(t->encode_text("abcabc"), (std::vector<int64_t>{8, 2, 0, 9}));
  EXPECT_EQ(t->encode("ABC!"), (std::vector<int64_t>{11, 0, 9, 7, 12}));

  TempDir other("bpe_rank2");
  other.write("vocab.json", kTinyVocab);
  other.write("merges.txt", "a b\nab c</w>\nb c</w>\n");
  auto u = ClipTokenizer::load(other.str());
  ASSERT_TRUE(u.ok()) << u.error().message;
  EXPECT_EQ(u->encode_text("abc"), (std::vector<int64_t>{10}));
  // Bytes missing from the vocabulary become the unk token (<|endoftext|>).
  EXPECT_EQ(u->encode_text("d"), (std::vector<int64_t>{12}));
}

TEST(ClipTokenizer, ReadsTokenizerConfig) {
  TempDir dir("config");
  dir.write("vocab.json", kTinyVocab);
  dir.write("merges.txt", "a b\n");
  dir.write(
      "tokenizer_config.json",
      R"({"pad_token": {"content": "!", "special": true}, "model_max_length": 5, "bos_token": "<|startoftext|>"})");
  auto t = ClipTokenizer::load(dir.str());
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t->pad_id(), 3);
  EXPECT_EQ(t->model_max_length(), 5);
  // The option overrides the config.
  ClipTokenizerOptions opt;
  opt.pad_token = "<|endoftext|>";
  auto u = ClipTokenizer::load(dir.str(), opt);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->pad_id(), 12);
}

TEST(ClipTokenizer, ErrorsNameTheFile) {
  {
    TempDir dir("missing_vocab");
    dir.write("merges.txt", "a b\n");
    auto t = ClipTokenizer::load(dir.str());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("vocab.json"), std::string::npos) << t.error().message;
  }
  {
    TempDir dir("missing_merges");
    dir.write("vocab.json", kTinyVocab);
    auto t = ClipTokenizer::load(dir.str());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("merges.txt"), std::string::npos) << t.error().message;
  }
  {
    TempDir dir("bad_merges");
    dir.write("vocab.json", kTinyVocab);
    dir.write("merges.txt", "#version: 0.2\na b\na b c\n");
    auto t = ClipTokenizer::load(dir.str());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("merges.txt:3: bad merges line"), std::string::npos) << t.error().message;
  }
  {
    TempDir dir("merge_out_of_vocab");
    dir.write("vocab.json", kTinyVocab);
    dir.write("merges.txt", "c a\n");
    auto t = ClipTokenizer::load(dir.str());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("'ca' is not in"), std::string::npos) << t.error().message;
  }
  {
    TempDir dir("bad_vocab");
    dir.write("vocab.json", R"({"a": "zero"})");
    dir.write("merges.txt", "");
    auto t = ClipTokenizer::load(dir.str());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("vocab.json"), std::string::npos) << t.error().message;
  }
  {
    TempDir dir("not_json");
    dir.write("vocab.json", "{not json");
    dir.write("merges.txt", "");
    auto t = ClipTokenizer::load(dir.str());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("invalid JSON"), std::string::npos) << t.error().message;
  }
  {
    TempDir dir("bad_pad");
    dir.write("vocab.json", kTinyVocab);
    dir.write("merges.txt", "");
    dir.write("tokenizer_config.json", R"({"pad_token": "<pad>"})");
    auto t = ClipTokenizer::load(dir.str());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("tokenizer_config.json: pad_token '<pad>'"), std::string::npos)
        << t.error().message;
  }
}

// ---- T5 ------------------------------------------------------------------------------------------------

TEST(T5Tokenizer, HandCheckedIdsTruncationPadding) {
  auto t = T5Tokenizer::load(t5_dir());
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t->eos_id(), 1);
  EXPECT_EQ(t->pad_id(), 0);
  EXPECT_EQ(t->vocab_size(), 600);
  EXPECT_EQ(t->encode("a photo of a cat"), (std::vector<int64_t>{4, 21, 156, 4, 177, 1}));
  EXPECT_EQ(t->encode(""), (std::vector<int64_t>{1}));
  EXPECT_EQ(t->decode(t->encode("a photo of a cat")), "a photo of a cat");
  auto b = t->encode({"a photo of a cat", ""}, 4, /*pad=*/true);
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_EQ(row(b->input_ids, 0), (std::vector<int64_t>{4, 21, 156, 1}));
  EXPECT_EQ(row(b->attention_mask, 0), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(row(b->input_ids, 1), (std::vector<int64_t>{1, 0, 0, 0}));
  EXPECT_EQ(row(b->attention_mask, 1), (std::vector<int64_t>{1, 0, 0, 0}));
  auto one = t->encode({"a photo"}, 1, true);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(row(one->input_ids, 0), (std::vector<int64_t>{1}));
  EXPECT_FALSE(t->encode({"a photo"}, 0, true).ok());
  // The model file itself loads too.
  auto f = T5Tokenizer::load(t5_dir() + "/spiece.model");
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->encode("a photo of a cat"), t->encode("a photo of a cat"));
}

TEST(T5Tokenizer, ErrorsNameTheFile) {
  {
    TempDir dir("t5_missing");
    auto t = T5Tokenizer::load(dir.str());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("spiece.model"), std::string::npos) << t.error().message;
  }
  {
    TempDir dir("t5_garbage");
    dir.write("spiece.model", "this is not a protobuf \xFF\xFF\xFF\xFF");
    auto t = T5Tokenizer::load(dir.str());
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("spiece.model: not a readable SentencePiece model"), std::string::npos)
        << t.error().message;
  }
}

// ---- Qwen2 ---------------------------------------------------------------------------------------------

// Expected pieces from Python's `regex` module with Qwen2's pattern.
TEST(Qwen2Tokenizer, PreTokenizerSplitsLikeTheRegex) {
  using V = std::vector<std::string>;
  const std::vector<std::pair<std::string, V>> cases = {
      {"don't I'M we'LL y'all 'sun", {"don", "'t", " I", "'M", " we", "'LL", " y", "'all", " '", "sun"}},
      {"1234 3.14 x\u00b2 \u2460", {"1", "2", "3", "4", " ", "3", ".", "1", "4", " x", "\u00b2", " ", "\u2460"}},
      {"\u4e00\u53ea\u53ef\u7231\u7684\u732b\u5750\u5728\u7a97\u53f0\u4e0a\uff0c\u9633\u5149\u660e\u5a9a\u3002",
       {"\u4e00\u53ea\u53ef\u7231\u7684\u732b\u5750\u5728\u7a97\u53f0\u4e0a", "\uff0c\u9633\u5149\u660e\u5a9a",
        "\u3002"}},
      {"mixed \u4e2d\u6587 and", {"mixed", " \u4e2d\u6587", " and"}},
      {"emoji \U0001F600\U0001F389 test \u2764\ufe0f", {"emoji", " \U0001F600\U0001F389", " test", " \u2764\ufe0f"}},
      {"a   b", {"a", "  ", " b"}},
      {"a \n\n b", {"a", " \n\n", " b"}},
      {"a  ", {"a", "  "}},
      {"\t\tx", {"\t", "\tx"}},
      {"hello!!!\n\nworld", {"hello", "!!!\n\n", "world"}},
      {"  leading", {" ", " leading"}},
      {"x\r\n\r\ny", {"x", "\r\n\r\n", "y"}},
      {"", {}},
  };
  for (const auto& [text, pieces] : cases) EXPECT_EQ(Qwen2Tokenizer::pre_tokenize(text), pieces) << text;
}

TEST(Qwen2Tokenizer, AddedTokensInsideTextAreNeverSplit) {
  const Qwen2Tokenizer& t = qwen();
  EXPECT_EQ(t.token_id("<|endoftext|>"), 800);
  EXPECT_EQ(t.token_id("<|im_start|>"), 801);
  EXPECT_EQ(t.token_id("<|im_end|>"), 802);
  EXPECT_EQ(t.token(802), "<|im_end|>");
  EXPECT_EQ(t.vocab_size(), 803);
  EXPECT_EQ(t.pad_id(), 800);
  EXPECT_TRUE(t.prefix_ids().empty());
  EXPECT_TRUE(t.suffix_ids().empty());
  auto cat = [](std::vector<std::vector<int64_t>> parts) {
    std::vector<int64_t> v;
    for (const auto& p : parts) v.insert(v.end(), p.begin(), p.end());
    return v;
  };
  EXPECT_EQ(t.encode("a cat<|im_start|>user\n<|im_end|><|endoftext|>"),
            cat({t.encode("a cat"), {801}, t.encode("user\n"), {802, 800}}));
  // A partial special token is ordinary text.
  const auto partial = t.encode("<|im_start");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), int64_t(801)), 0);
  EXPECT_GT(partial.size(), 1u);
}

TEST(Qwen2Tokenizer, NfcBeforeSplittingAndPadToLongest) {
  const Qwen2Tokenizer& t = qwen();
  EXPECT_EQ(t.encode("cafe\u0301 r\u00e9sume\u0301"), t.encode("caf\u00e9 r\u00e9sum\u00e9"));
  auto b = t.encode({"a photo of a cat", ""}, 1058, /*pad=*/false);
  ASSERT_TRUE(b.ok()) << b.error().message;
  const int64_t n = int64_t(t.encode("a photo of a cat").size());
  ASSERT_EQ(b->input_ids.size(1), n);
  EXPECT_EQ(row(b->input_ids, 1), std::vector<int64_t>(size_t(n), 800));
  EXPECT_EQ(row(b->attention_mask, 1), std::vector<int64_t>(size_t(n), 0));
  EXPECT_EQ(row(b->attention_mask, 0), std::vector<int64_t>(size_t(n), 1));
}

TEST(Qwen2Tokenizer, ErrorsNameTheFile) {
  const std::string vocab = R"({"a": 0, "b": 1, "ab": 2})";
  auto expect_error = [](const TempDir& dir, const std::string& needle) {
    auto t = Qwen2Tokenizer::load(dir.str());
    ASSERT_FALSE(t.ok()) << needle;
    EXPECT_NE(t.error().message.find(needle), std::string::npos) << t.error().message;
  };
  {
    TempDir dir("qwen_missing_vocab");
    dir.write("merges.txt", "a b\n");
    expect_error(dir, "vocab.json: cannot open");
  }
  {
    TempDir dir("qwen_missing_merges");
    dir.write("vocab.json", vocab);
    expect_error(dir, "merges.txt: cannot open");
  }
  {
    TempDir dir("qwen_bad_merges");
    dir.write("vocab.json", vocab);
    dir.write("merges.txt", "#version: 0.2\nb a\n");
    expect_error(dir, "merges.txt:2: bad merges line 'b a': 'ba' is not in");
  }
  {
    TempDir dir("qwen_bad_tokenizer_json");
    dir.write("vocab.json", vocab);
    dir.write("merges.txt", "a b\n");
    dir.write("tokenizer.json", "{not json");
    expect_error(dir, "tokenizer.json: invalid JSON");
  }
  {
    TempDir dir("qwen_bad_added_token");
    dir.write("vocab.json", vocab);
    dir.write("merges.txt", "a b\n");
    dir.write("tokenizer.json", R"({"added_tokens": [{"id": -3, "content": "<|endoftext|>"}]})");
    expect_error(dir, "tokenizer.json: added token '<|endoftext|>' has id -3");
  }
  {
    TempDir dir("qwen_bad_decoder_key");
    dir.write("vocab.json", vocab);
    dir.write("merges.txt", "a b\n");
    dir.write("tokenizer_config.json", R"({"added_tokens_decoder": {"x1": {"content": "<|endoftext|>"}}})");
    expect_error(dir, "tokenizer_config.json: added_tokens_decoder key 'x1' is not a token id");
  }
  {
    TempDir dir("qwen_no_pad");
    dir.write("vocab.json", vocab);
    dir.write("merges.txt", "a b\n");
    dir.write("tokenizer_config.json", R"({"pad_token": "<pad>"})");
    expect_error(dir, "tokenizer_config.json: pad_token '<pad>' is neither in");
  }
  {
    // The added tokens may come from tokenizer_config.json alone (as in Qwen's own folders).
    TempDir dir("qwen_config_added");
    dir.write("vocab.json", vocab);
    dir.write("merges.txt", "a b\n");
    dir.write("tokenizer_config.json",
              R"({"pad_token": "<|endoftext|>", "added_tokens_decoder": {"3": {"content": "<|endoftext|>"}}})");
    auto t = Qwen2Tokenizer::load(dir.str());
    ASSERT_TRUE(t.ok()) << t.error().message;
    EXPECT_EQ(t->pad_id(), 3);
    EXPECT_EQ(t->encode("ab<|endoftext|>ba"), (std::vector<int64_t>{2, 3, 1, 0}));
  }
}

// ---- fixtures ------------------------------------------------------------------------------------------

// The unpadded ids of every string (outputs.safetensors holds only the padded batches).
TEST(TokenizerFixtures, UnpaddedIdsMatchEveryString) {
  struct Variant {
    std::string case_name, name;
    const Tokenizer* tok;
  };
  auto t5 = T5Tokenizer::load(t5_dir());
  ASSERT_TRUE(t5.ok()) << t5.error().message;
  const std::vector<Variant> variants = {{"tok_clip", "CLIPTokenizer", &clip()},
                                         {"tok_clip", "CLIPTokenizerFast", &clip()},
                                         {"tok_clip", "CLIPTokenizer_pad_bang", &clip_bang()},
                                         {"tok_t5_spiece", "T5Tokenizer", &t5.value()},
                                         {"tok_t5_spiece", "T5TokenizerFast", &t5.value()},
                                         {"tok_t5_spiece", "sentencepiece+eos", &t5.value()},
                                         {"tok_qwen2_bpe", "Qwen2Tokenizer", &qwen()},
                                         {"tok_qwen2_bpe", "Qwen2TokenizerFast", &qwen()},
                                         {"tok_qwen2_bpe", "tokenizers.Tokenizer(tokenizer.json)", &qwen()}};
  for (const auto& v : variants) {
    std::ifstream f(test::fixtures_dir() + "/" + v.case_name + "/ids.json");
    ASSERT_TRUE(f) << v.case_name;
    const nlohmann::json ids = nlohmann::json::parse(f);
    const auto& strings = ids["strings"];
    const auto& expect = ids["results"][v.name]["unpadded"];
    ASSERT_EQ(strings.size(), expect.size());
    for (size_t i = 0; i < strings.size(); ++i)
      EXPECT_EQ(v.tok->encode(strings[i].get<std::string>()), expect[i].get<std::vector<int64_t>>())
          << v.name << " string " << i;
  }
}

TEST(TokenizerFixtures, CaseClasses) {
  register_builtin_runners();
  const std::string dir = test::fixtures_dir();
  EXPECT_EQ(case_class(dir + "/tok_clip").value(), "tokenizer.clip");
  EXPECT_EQ(case_class(dir + "/tok_t5_spiece").value(), "tokenizer.t5");
  EXPECT_EQ(case_class(dir + "/tok_qwen2_bpe").value(), "tokenizer.qwen2");
  for (const char* c : {"tok_clip", "tok_t5_spiece", "tok_qwen2_bpe"}) EXPECT_TRUE(is_case_supported(dir + "/" + c));
}

// outputs.safetensors holds only the template batch: the runner checks ids.json's other results itself.
TEST(TokenizerFixtures, Qwen2RunnerChecksIdsJson) {
  register_builtin_runners();
  TempDir dir("qwen_case");
  for (const auto& e : fs::directory_iterator(qwen_dir())) fs::copy_file(e.path(), dir.path() / e.path().filename());
  auto rep = run_check(dir.str());
  ASSERT_TRUE(rep.ok()) << rep.error().message;
  EXPECT_TRUE(rep->pass()) << rep->format();
  std::ifstream f(dir.path() / "ids.json");
  nlohmann::json ids = nlohmann::json::parse(f);
  f.close();
  ids["results"]["Qwen2TokenizerFast"]["unpadded"][15][0] = 7;
  dir.write("ids.json", ids.dump());
  rep = run_check(dir.str());
  ASSERT_FALSE(rep.ok());
  EXPECT_NE(rep.error().message.find("results.Qwen2TokenizerFast.unpadded[15]: got ["), std::string::npos)
      << rep.error().message;
  ids["results"]["Qwen2TokenizerFast"]["unpadded"][15][0] = ids["results"]["Qwen2Tokenizer"]["unpadded"][15][0];
  ids["results"]["Qwen2Tokenizer"]["template_prefix_len"] = 33;
  dir.write("ids.json", ids.dump());
  rep = run_check(dir.str());
  ASSERT_FALSE(rep.ok());
  EXPECT_NE(rep.error().message.find("template_prefix_len: got 34, expected 33"), std::string::npos)
      << rep.error().message;
}

}  // namespace
