// ftfy.fix_text's deterministic steps, each on the characters it changes and on text it must leave alone;
// expected strings are what ftfy 6 returns for these inputs.
#include "encoders/tokenizers/fix_text.h"

#include <gtest/gtest.h>

using namespace meshdit;

namespace {

TEST(FixText, PlainTextIsUnchanged) {
  for (const char* s : {"", "a cat walking on the grass", "caf\xC3\xA9 na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC",
                        "tabs\tand\nnew lines", "a < b & c", "100% \"quoted\" 'text'"})
    EXPECT_EQ(fix_text(s), s) << s;
}

TEST(FixText, CurlyQuotesAreStraightened) {
  // U+2018 U+2019 U+201C U+201D, U+201A / U+201E (low), U+02BC (modifier apostrophe)
  EXPECT_EQ(fix_text("\xE2\x80\x98hi\xE2\x80\x99 \xE2\x80\x9Cthere\xE2\x80\x9D"), "'hi' \"there\"");
  EXPECT_EQ(fix_text("\xE2\x80\x9A\xE2\x80\x9E\xCA\xBC"), "'\"'");
}

TEST(FixText, LigaturesBecomeLetters) {
  EXPECT_EQ(fix_text("\xEF\xAC\x81sh \xEF\xAC\x82ow o\xEF\xAC\x83"
                     "ce"),
            "fish flow office");
  EXPECT_EQ(fix_text("\xC4\xB3s \xC7\x89"), "ijs lj");
  EXPECT_EQ(fix_text("\xC5\x89"), "'n");  // U+0149: U+02BC n, then the apostrophe is straightened
}

TEST(FixText, FullWidthFormsBecomeAscii) {
  // "ＡＢＣ　１２３！" (full-width letters, ideographic space, digits, exclamation mark)
  EXPECT_EQ(
      fix_text("\xEF\xBC\xA1\xEF\xBC\xA2\xEF\xBC\xA3\xE3\x80\x80\xEF\xBC\x91\xEF\xBC\x92\xEF\xBC\x93\xEF\xBC\x81"),
      "ABC 123!");
  // Half-width katakana ｶ (U+FF76) -> カ (U+30AB); full-width yen ￥ (U+FFE5) -> ¥ (U+00A5)
  EXPECT_EQ(fix_text("\xEF\xBD\xB6\xEF\xBF\xA5"), "\xE3\x82\xAB\xC2\xA5");
}

TEST(FixText, C1ControlsAreWindows1252) {
  // U+0093 / U+0094 (a Windows-1252 curly quote pair decoded as Latin-1) -> quotes, then straightened;
  // U+0080 -> euro sign; U+0081 (undefined in Windows-1252) stays as it is.
  EXPECT_EQ(fix_text("\xC2\x93hi\xC2\x94 \xC2\x80\xC2\x81"), "\"hi\" \xE2\x82\xAC\xC2\x81");
}

TEST(FixText, LineBreaksAndControlCharacters) {
  EXPECT_EQ(fix_text("a\r\nb\rc\xE2\x80\xA8"
                     "d"),
            "a\nb\nc\nd");
  EXPECT_EQ(fix_text(std::string("a\x01\x7F"
                                 "b\xEF\xBB\xBF"
                                 "c",
                                 8)),
            "abc");  // SOH, DEL, BOM
  EXPECT_EQ(fix_text("a\tb\x0C"
                     "c"),
            "a\tb\x0C"
            "c");  // kept whitespace
}

TEST(FixText, ComposedToNfcAndHtmlUnescapedUnlessHtml) {
  EXPECT_EQ(fix_text("cafe\xCC\x81"), "caf\xC3\xA9");  // e + combining acute -> é
  EXPECT_EQ(fix_text("fish &amp; chips &ldquo;hot&rdquo;"), "fish & chips \"hot\"");
  EXPECT_EQ(fix_text("<b>fish &amp; chips</b>"), "<b>fish &amp; chips</b>");  // looks like HTML: left alone
}

TEST(FixText, InvalidUtf8ReadsAsReplacementCharacter) {
  EXPECT_EQ(fix_text(std::string("a\xFF"
                                 "b")),
            "a\xEF\xBF\xBD"
            "b");
}

}  // namespace
