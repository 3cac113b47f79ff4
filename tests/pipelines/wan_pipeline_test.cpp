// WanPipeline's own pieces: prompt_clean (diffusers' basic_clean with ftfy's fix_text + whitespace_clean).
#include <gtest/gtest.h>

#include "pipelines/wan.h"

using namespace meshdit;

TEST(WanPromptClean, WhitespaceCollapsesAndEndsAreTrimmed) {
  EXPECT_EQ(wan_prompt_clean("  a cat\t\n walking   on grass \r\n"), "a cat walking on grass");
  EXPECT_EQ(wan_prompt_clean(""), "");
  EXPECT_EQ(wan_prompt_clean(" \t\n"), "");
  // Python's \s also matches NBSP and the ideographic space.
  EXPECT_EQ(wan_prompt_clean("a\xc2\xa0"
                             "b\xe3\x80\x80"
                             "c"),
            "a b c");
  // Other multi-byte text is left alone.
  EXPECT_EQ(wan_prompt_clean("一只猫  在草地上"), "一只猫 在草地上");
}

TEST(WanPromptClean, HtmlEntitiesAreUnescapedTwice) {
  EXPECT_EQ(wan_prompt_clean("cats &amp; dogs"), "cats & dogs");
  EXPECT_EQ(wan_prompt_clean("&amp;lt;b&amp;gt;"), "<b>");  // html.unescape(html.unescape(.))
  EXPECT_EQ(wan_prompt_clean("&#65;&#x42;&quot;"), "AB\"");
  EXPECT_EQ(wan_prompt_clean("caf&eacute; &nbsp;bar"), "caf\xc3\xa9 bar");
  // Not an entity, or one outside the table: kept as written.
  EXPECT_EQ(wan_prompt_clean("AT&T & co; &unknownname;"), "AT&T & co; &unknownname;");
  EXPECT_EQ(wan_prompt_clean("&#0;"), "\xef\xbf\xbd");
}

TEST(WanPromptClean, FixTextRunsFirst) {
  // Pasted text: curly quotes and an "fi" ligature, as ftfy.fix_text straightens them before the tokenizer.
  EXPECT_EQ(wan_prompt_clean("\xE2\x80\x9C" "a \xEF\xAC\x81" "sh\xE2\x80\x9D  swims"), "\"a fish\" swims");
  // An entity for a curly quote is unescaped by fix_text and then straightened too.
  EXPECT_EQ(wan_prompt_clean("&ldquo;hi&rdquo;"), "\"hi\"");
}
