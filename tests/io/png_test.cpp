// encode_png writes what write_png writes, into memory.
#include "io/png.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "../test_util.h"

using namespace meshdit;

TEST(Png, EncodeInMemoryEqualsTheFileAndReadsBack) {
  const int w = 5, h = 3;
  std::vector<uint8_t> rgb(size_t(w * h * 3));
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t(i * 7);
  const PngText text = {{"prompt", "a cat"}, {"seed", "7"}};
  auto bytes = encode_png(rgb.data(), w, h, text);
  ASSERT_TRUE(bytes.ok()) << bytes.error().message;

  const test::TempDir dir;
  const std::string path = (dir.path() / "a.png").string();
  ASSERT_TRUE(write_png(path, rgb.data(), w, h, text).ok());
  std::ifstream f(path, std::ios::binary);
  const std::vector<uint8_t> file((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(*bytes, file);

  int rw = 0, rh = 0;
  PngText back;
  auto px = read_png(path, &rw, &rh, &back);
  ASSERT_TRUE(px.ok());
  EXPECT_EQ(*px, rgb);
  EXPECT_EQ(back, text);
}
