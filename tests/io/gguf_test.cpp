// GGUF (io/gguf.h): the writer's files read back (metadata, dims reversed to our order, >4-D tensors through
// orig_shape, quantized tensors dequantized by Checkpoint), and every kind of damaged file, built byte by byte,
// is an error naming what is wrong.
#include "io/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/cpu/quant.h"
#include "io/checkpoint.h"

using namespace meshdit;

namespace {

// A GGUF image built field by field, so that each test can damage one field.
struct Builder {
  struct T {
    std::string name;
    std::vector<uint64_t> ne;  // innermost first, as stored
    uint32_t type = 0;
    uint64_t offset = 0;
  };
  uint32_t magic = 0x46554747, version = 3;
  std::string kv;  // encoded pairs
  uint64_t n_kv = 0;
  std::vector<T> tensors;
  uint64_t alignment = 32;
  std::string data;

  template <class V>
  static void put(std::string& s, V v) {
    s.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  static void put_str(std::string& s, const std::string& v) {
    put<uint64_t>(s, v.size());
    s += v;
  }
  void kv_string(const std::string& k, const std::string& v) {
    put_str(kv, k);
    put<uint32_t>(kv, 8);
    put_str(kv, v);
    ++n_kv;
  }
  void kv_u32(const std::string& k, uint32_t v) {
    put_str(kv, k);
    put<uint32_t>(kv, 4);
    put<uint32_t>(kv, v);
    ++n_kv;
  }
  // A tensor whose data (`bytes` long) is appended at the next aligned offset.
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, const std::string& bytes) {
    while (data.size() % alignment) data.push_back('\0');
    tensors.push_back({name, std::move(ne), type, data.size()});
    data += bytes;
  }
  std::string bytes() const {
    std::string s;
    put<uint32_t>(s, magic);
    put<uint32_t>(s, version);
    put<uint64_t>(s, tensors.size());
    put<uint64_t>(s, n_kv);
    s += kv;
    for (const auto& t : tensors) {
      put_str(s, t.name);
      put<uint32_t>(s, uint32_t(t.ne.size()));
      for (uint64_t d : t.ne) put<uint64_t>(s, d);
      put<uint32_t>(s, t.type);
      put<uint64_t>(s, t.offset);
    }
    while (s.size() % alignment) s.push_back('\0');
    return s + data;
  }
};

std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// A valid two-tensor file: a [2, 3] F32 matrix and a Q8_0 row of 32.
Builder valid() {
  Builder b;
  b.kv_string("general.architecture", "flux");
  b.tensor("w", {3, 2}, 0, f32_bytes({1, 2, 3, 4, 5, 6}));
  std::string q(34, '\0');
  b.tensor("q", {32}, 8, q);
  return b;
}

Result<GgufFile> parse(const std::string& s) {
  return parse_gguf(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "t.gguf");
}

void expect_error(const Builder& b, const std::string& part) {
  auto r = parse(b.bytes());
  ASSERT_FALSE(r.ok()) << "expected an error containing: " << part;
  EXPECT_NE(r.error().message.find(part), std::string::npos) << r.error().message;
  EXPECT_EQ(r.error().message.rfind("t.gguf: ", 0), 0u) << r.error().message;
}

TEST(Gguf, ValidFileParses) {
  auto r = parse(valid().bytes());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->string_value("general.architecture"), "flux");
  ASSERT_EQ(r->tensors.size(), 2u);
  EXPECT_EQ(r->tensors[0].shape, (Shape{2, 3}));  // ne [3, 2] reversed
  EXPECT_EQ(r->tensors[1].type, QuantType::Q8_0);
  EXPECT_EQ(r->tensors[1].bytes, 34u);
}

TEST(Gguf, WriteReadRoundTripThroughCheckpoint) {
  test::TempDir dir;
  const std::string path = dir.str() + "/m.gguf";
  const Tensor vec = test::random_tensor({64}, 1);
  const Tensor mat = test::random_tensor({4, 64}, 2).to(DType::BF16);
  const Tensor q8 = test::random_tensor({3, 64}, 3, 0.1f);
  const Tensor q4k = test::random_tensor({2, 256}, 4, 0.1f);
  const Tensor five = test::random_tensor({4, 2, 1, 2, 2}, 5);
  std::vector<GgufWriter::Entry> entries{{"vec", QuantType::F32, vec.shape()},
                                         {"mat", QuantType::BF16, mat.shape()},
                                         {"blocks.0.q8", QuantType::Q8_0, q8.shape()},
                                         {"blocks.0.q4k", QuantType::Q4_K, q4k.shape()},
                                         {"patch", QuantType::F32, five.shape()}};
  auto w = GgufWriter::create(path, {{"general.architecture", GgufValue::string("flux")}}, entries);
  ASSERT_TRUE(w.ok()) << w.error().message;
  for (const Tensor* t : {&vec, &mat, &q8, &q4k, &five}) ASSERT_TRUE((*w)->write(*t).ok());
  ASSERT_TRUE((*w)->finish().ok());

  auto ck = Checkpoint::open(path);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_TRUE(ck->has_gguf());
  EXPECT_EQ(ck->file_metadata("general.architecture"), "flux");
  auto exact = [&](const std::string& name, const Tensor& want) {
    auto t = ck->get(name);
    ASSERT_TRUE(t.ok()) << t.error().message;
    EXPECT_EQ(t->shape(), want.shape()) << name;
    EXPECT_EQ(t->dtype(), want.dtype()) << name;
    EXPECT_EQ(std::memcmp(t->raw(), want.contiguous().raw(), want.nbytes()), 0) << name;
  };
  exact("vec", vec);
  exact("mat", mat);
  exact("patch", five);  // 5-D: stored as 4-D, shape from comfy.gguf.orig_shape.patch
  // Quantized: dequantized to bf16, equal to decoding the encoder's blocks.
  for (auto [name, src, type] :
       {std::tuple{"blocks.0.q8", &q8, QuantType::Q8_0}, std::tuple{"blocks.0.q4k", &q4k, QuantType::Q4_K}}) {
    auto t = ck->get(name, src->shape());
    ASSERT_TRUE(t.ok()) << t.error().message;
    EXPECT_EQ(t->dtype(), DType::BF16);
    std::vector<uint8_t> blocks(quant_row_bytes(type, src->numel()));
    quantize_row(type, src->data<float>(), blocks.data(), src->numel());
    std::vector<float> want(static_cast<size_t>(src->numel()));
    dequantize_row(type, blocks.data(), want.data(), src->numel());
    const Tensor got = t->to(DType::F32);
    for (int64_t i = 0; i < src->numel(); ++i)
      ASSERT_EQ(got.data<float>()[i], bf16_to_f32(f32_to_bf16(want[size_t(i)]))) << name << " " << i;
  }
  // A row range of a quantized tensor (a fused q/k/v alias) is a slice of the dequantized rows.
  ASSERT_TRUE(ck->add_alias("row1", "blocks.0.q8", 1, 2).ok());
  auto row = ck->get("row1");
  ASSERT_TRUE(row.ok());
  EXPECT_EQ(row->shape(), (Shape{1, 64}));
  {
    // While one is held, every alias of a quantized tensor reads the same dequantized copy.
    auto whole = ck->get("blocks.0.q8");
    ASSERT_TRUE(whole.ok());
    auto again = ck->get("row1");
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(static_cast<const char*>(again->raw()), static_cast<const char*>(whole->raw()) + 64 * 2);
  }
  // Its folder opens as a checkpoint too (a folder with only GGUF files).
  auto folder = Checkpoint::open(dir.str());
  ASSERT_TRUE(folder.ok()) << folder.error().message;
  EXPECT_TRUE(folder->has("blocks.0.q4k"));
  // The file as parsed: the 5-D tensor's stored dims are 4.
  std::ifstream f(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto g = parse(bytes);
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->tensors[4].stored, (Shape{4, 2, 1, 4}));
  EXPECT_EQ(g->tensors[4].shape, five.shape());
  EXPECT_EQ(g->version, 3u);
}

TEST(Gguf, TruncatedFilesAreErrors) {
  const std::string full = valid().bytes();
  for (size_t n = 0; n < full.size(); ++n) {
    auto r = parse(full.substr(0, n));
    ASSERT_FALSE(r.ok()) << "accepted a file cut at " << n << " of " << full.size() << " bytes";
  }
  auto r = parse(full.substr(0, 30));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("truncated"), std::string::npos) << r.error().message;
  auto d = parse(full.substr(0, full.size() - 1));  // the last tensor's data cut short
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message.find("tensor 'q'"), std::string::npos) << d.error().message;
  EXPECT_NE(d.error().message.find("runs past the end"), std::string::npos) << d.error().message;
}

TEST(Gguf, BadHeaderFieldsAreNamed) {
  {
    Builder b = valid();
    b.magic = 0x12345678;
    expect_error(b, "not a GGUF file");
  }
  {
    Builder b = valid();
    b.version = 1;
    expect_error(b, "version 1 is not supported");
  }
  {
    Builder b = valid();
    b.version = 7;
    expect_error(b, "unsupported GGUF version 7");
  }
  {
    Builder b = valid();
    b.n_kv = 1000000;
    expect_error(b, "metadata count 1000000");
  }
  {
    Builder b = valid();
    Builder::put_str(b.kv, "bad.type");
    Builder::put<uint32_t>(b.kv, 13);
    ++b.n_kv;
    expect_error(b, "metadata 'bad.type': unknown metadata value type 13");
  }
  {
    Builder b = valid();
    Builder::put_str(b.kv, "huge.string");
    Builder::put<uint32_t>(b.kv, 8);
    Builder::put<uint64_t>(b.kv, uint64_t(1) << 40);
    ++b.n_kv;
    expect_error(b, "string length 1099511627776 runs past the end");
  }
  {
    Builder b = valid();
    Builder::put_str(b.kv, "huge.array");
    Builder::put<uint32_t>(b.kv, 9);
    Builder::put<uint32_t>(b.kv, 5);
    Builder::put<uint64_t>(b.kv, uint64_t(1) << 40);
    ++b.n_kv;
    expect_error(b, "metadata 'huge.array': array of 1099511627776 i32 values runs past the end");
  }
  {
    Builder b = valid();
    Builder::put_str(b.kv, "nested");
    Builder::put<uint32_t>(b.kv, 9);
    Builder::put<uint32_t>(b.kv, 9);
    Builder::put<uint64_t>(b.kv, 1);
    ++b.n_kv;
    expect_error(b, "nested arrays");
  }
  {
    Builder b = valid();
    b.kv_string("general.architecture", "sd3");
    expect_error(b, "metadata 'general.architecture' appears twice");
  }
  {
    Builder b = valid();
    b.kv_u32("general.alignment", 24);
    expect_error(b, "general.alignment 24 is not a power of two");
  }
}

TEST(Gguf, BadTensorInfosAreNamed) {
  {
    Builder b = valid();
    b.tensors[0].type = 99;
    expect_error(b, "tensor 'w': unknown or unsupported tensor type 99");
  }
  {
    Builder b = valid();
    b.tensors[1].type = 16;
    expect_error(b, "tensor type 16 (IQ2_XXS)");
  }
  {
    Builder b = valid();
    b.tensors[1].ne = {48};
    expect_error(b, "tensor 'q': row length 48 is not a multiple of Q8_0's block size 32");
  }
  {
    Builder b = valid();
    b.tensors[1].offset = 1u << 20;
    expect_error(b, "tensor 'q': data [1048576, +34) runs past the end of the data section");
  }
  {
    Builder b = valid();
    b.tensors[1].offset = 8;
    expect_error(b, "tensor 'q': offset 8 is not a multiple of the alignment 32");
  }
  {
    Builder b = valid();
    b.tensors[1].offset = 0;
    b.tensors[1].ne = {4};
    b.tensors[1].type = 0;  // 16 bytes at 0: inside 'w'
    expect_error(b, "overlap");
  }
  {
    Builder b = valid();
    b.tensors[0].ne = {1, 1, 1, 1, 6};
    expect_error(b, "tensor 'w': 5 dims; GGUF tensors have 1 to 4");
  }
  {
    Builder b = valid();
    b.tensors[0].ne = {3, 0};
    expect_error(b, "tensor 'w': dim 1 is 0");
  }
  {
    Builder b = valid();
    b.tensors[0].ne = {uint64_t(1) << 40, uint64_t(1) << 40};
    expect_error(b, "tensor 'w': its dims' product is too large");
  }
  {
    Builder b = valid();
    b.tensors[1].name = b.tensors[0].name;
    expect_error(b, "tensor 'w' appears twice");
  }
  {
    Builder b = valid();
    Builder::put_str(b.kv, "comfy.gguf.orig_shape.w");
    Builder::put<uint32_t>(b.kv, 9);
    Builder::put<uint32_t>(b.kv, 5);
    Builder::put<uint64_t>(b.kv, 2);
    Builder::put<int32_t>(b.kv, 4);
    Builder::put<int32_t>(b.kv, 4);
    ++b.n_kv;
    expect_error(b, "tensor 'w': orig_shape [4, 4] does not hold the 6 stored values");
  }
}

TEST(Gguf, IntegerTypesMeshditDoesNotReadAreRefusedWhenOpened) {
  Builder b = valid();
  b.tensors[0].type = 24;  // I8: 6 bytes, inside the 24 stored
  test::TempDir dir;
  const std::string path = dir.str() + "/i8.gguf";
  std::ofstream(path, std::ios::binary) << b.bytes();
  auto ck = Checkpoint::open(path);
  ASSERT_FALSE(ck.ok());
  EXPECT_NE(ck.error().message.find("tensor 'w' has type I8, which meshdit does not read"), std::string::npos)
      << ck.error().message;
}

TEST(Gguf, WriterRefusesRowsNotWholeBlocks) {
  test::TempDir dir;
  auto w = GgufWriter::create(dir.str() + "/x.gguf", {}, {{"w", QuantType::Q4_K, {4, 128}}});
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.error().message.find("row length 128 is not a multiple of Q4_K's block size 256"), std::string::npos)
      << w.error().message;
}

}  // namespace
