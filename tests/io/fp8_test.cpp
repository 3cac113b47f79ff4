// FP8 safetensors as released: F8_E4M3 / F8_E5M2 weights decoded to bf16 times their scale (per tensor or per
// row), the scales and ComfyUI's `scaled_fp8` marker hidden behind their weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "../test_util.h"
#include "io/checkpoint.h"

namespace meshdit {
namespace {

struct RawTensor {
  std::string name, dtype;
  Shape shape;
  std::vector<uint8_t> bytes;
};

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// A safetensors file written byte by byte (the writer only knows meshdit's own dtypes).
std::string write_raw(const test::TempDir& dir, const std::vector<RawTensor>& ts) {
  std::string header = "{";
  uint64_t off = 0;
  for (const auto& t : ts) {
    std::string shape;
    for (int64_t d : t.shape) {
      if (!shape.empty()) shape += ',';
      shape += std::to_string(d);
    }
    if (header.size() > 1) header += ',';
    header += '"';
    header += t.name;
    header += "\":{\"dtype\":\"";
    header += t.dtype;
    header += "\",\"shape\":[";
    header += shape;
    header += "],\"data_offsets\":[";
    header += std::to_string(off);
    header += ',';
    header += std::to_string(off + t.bytes.size());
    header += "]}";
    off += t.bytes.size();
  }
  header += "}";
  const std::string path = dir.str() + "/fp8.safetensors";
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) f.put(char((n >> (8 * i)) & 0xFF));
  f << header;
  for (const auto& t : ts) f.write(reinterpret_cast<const char*>(t.bytes.data()), std::streamsize(t.bytes.size()));
  return path;
}

std::vector<float> values(const Checkpoint& ck, const std::string& name) {
  auto t = ck.get(name);
  EXPECT_TRUE(t.ok()) << (t.ok() ? "" : t.error().message);
  if (!t.ok()) return {};
  EXPECT_EQ(t->dtype(), DType::BF16) << name;
  return t->to_vector();
}

TEST(Fp8, WeightsDecodeTimesTheirScaleAndTheScalesHide) {
  test::TempDir dir;
  // E4M3: 1.0, 448 (the largest), -448, 2^-9 (the smallest subnormal), 2^-6 (the smallest normal), 0, 1.5, -2
  const std::vector<uint8_t> e4m3{0x38, 0x7E, 0xFE, 0x01, 0x08, 0x00, 0x3C, 0xC0};
  const std::string path =
      write_raw(dir, {{"a.weight", "F8_E4M3", {2, 4}, e4m3},
                      {"a.scale_weight", "F32", {}, f32_bytes({0.5f})},
                      {"a.scale_input", "F32", {}, f32_bytes({3.0f})},
                      {"b.weight", "F8_E5M2", {2, 2}, {0x3C, 0x7B, 0xBC, 0x00}},  // 1, 57344, -1, 0
                      {"c.weight", "F8_E4M3", {3, 2}, {0x38, 0x38, 0x38, 0x38, 0x38, 0x40}},
                      {"c.weight_scale", "F32", {3, 1}, f32_bytes({1.0f, 2.0f, 0.25f})},
                      {"c.input_scale", "F32", {}, f32_bytes({1.0f})},
                      {"scaled_fp8", "F8_E4M3", {2}, {0, 0}},
                      {"norm.weight", "F32", {2}, f32_bytes({1.0f, 2.0f})}});
  auto ck = Checkpoint::open(path);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_EQ(ck->names(), (std::vector<std::string>{"a.weight", "b.weight", "c.weight", "norm.weight"}));
  EXPECT_EQ(values(*ck, "a.weight"), (std::vector<float>{0.5f, 224.0f, -224.0f, 0.5f * std::ldexp(1.0f, -9),
                                                         0.5f * std::ldexp(1.0f, -6), 0.0f, 0.75f, -1.0f}));
  EXPECT_EQ(values(*ck, "b.weight"), (std::vector<float>{1.0f, 57344.0f, -1.0f, 0.0f}));
  EXPECT_EQ(values(*ck, "c.weight"), (std::vector<float>{1.0f, 1.0f, 2.0f, 2.0f, 0.25f, 0.5f}));  // one scale a row
  auto w = ck->get("a.weight", {2, 4});  // a weight like any other: shape checked, bf16
  ASSERT_TRUE(w.ok()) << w.error().message;
  // E4M3's S.1111.111 is NaN (it has no infinities).
  const std::string nan_path = write_raw(dir, {{"n.weight", "F8_E4M3", {2}, {0x7F, 0x38}}});
  auto nan_ck = Checkpoint::open(nan_path);
  ASSERT_TRUE(nan_ck.ok());
  EXPECT_TRUE(std::isnan(values(*nan_ck, "n.weight")[0]));
}

TEST(Fp8, AScaleOfAnotherShapeIsAnErrorNamingIt) {
  test::TempDir dir;
  const std::string path = write_raw(dir, {{"a.weight", "F8_E4M3", {3, 2}, std::vector<uint8_t>(6, 0x38)},
                                           {"a.weight_scale", "F32", {2}, f32_bytes({1.0f, 2.0f})}});
  auto ck = Checkpoint::open(path);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto t = ck->get("a.weight");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("tensor 'a.weight_scale' ([2]) is not a scale of 'a.weight' [3, 2]"),
            std::string::npos)
      << t.error().message;
  // A truncated FP8 tensor is caught by the header check, counting one byte a value.
  const std::string bad = write_raw(dir, {{"a.weight", "F8_E4M3", {3, 2}, std::vector<uint8_t>(5, 0x38)}});
  auto b = Checkpoint::open(bad);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().message.find("of F8_E4M3 needs 6 bytes but data_offsets span 5"), std::string::npos)
      << b.error().message;
}

}  // namespace
}  // namespace meshdit
