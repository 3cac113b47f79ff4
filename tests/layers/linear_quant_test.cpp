// A Linear whose weight a GGUF file stores block-quantized keeps it so, and its product equals the product with
// the dequantized weight: in f32 precision the decoded values are exact, so only the GEMM's own summation
// differs; in bf16 precision the decoded tile is rounded to bf16, as a bf16 weight would be.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "../stand_in_device.h"
#include "../test_util.h"
#include "backend/cpu/quant.h"
#include "backend/ops.h"
#include "backend/precision.h"
#include "io/checkpoint.h"
#include "io/gguf.h"
#include "layers/linear.h"

namespace meshdit {
namespace {

struct Quantized {
  Tensor rows;     // U8 [N, bytes per row]
  Tensor decoded;  // F32 [N, K]: what the blocks hold
};

Quantized quantize(const Tensor& w, QuantType type) {
  const int64_t N = w.size(0), K = w.size(1);
  const size_t rb = quant_row_bytes(type, K);
  Quantized q{Tensor::empty({N, int64_t(rb)}, DType::U8), Tensor::empty({N, K})};
  for (int64_t n = 0; n < N; ++n) {
    quantize_row(type, w.data<float>() + n * K, q.rows.data<uint8_t>() + n * rb, K);
    dequantize_row(type, q.rows.data<uint8_t>() + n * rb, q.decoded.data<float>() + n * K, K);
  }
  return q;
}

double max_rel_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  double m = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    m = std::max(m, double(std::abs(x[i] - y[i])));
    scale = std::max(scale, double(std::abs(y[i])));
  }
  return m / std::max(scale, 1e-30);
}

class QuantizedLinearTypes : public ::testing::TestWithParam<QuantType> {};

// Every row count the kernel treats differently: one row (the adaptive norms' projections), few rows (the
// one-row-at-a-time path), and tiles (the GEMM path with K chunks in f32).
TEST_P(QuantizedLinearTypes, EqualsTheProductWithTheDecodedWeight) {
  const QuantType type = GetParam();
  const int64_t N = 80, K = 2 * 2560;  // K over one f32 chunk (2432) and a multiple of every block size
  const Tensor w = test::random_tensor({N, K}, 7, 0.05f);
  const Quantized q = quantize(w, type);
  const Tensor bias = test::random_tensor({N}, 8);
  for (Precision p : {Precision::F32, Precision::BF16}) {
    ScopedPrecision scope(p);
    for (int64_t M : {1, 5, 70, 300}) {
      const Tensor x = test::random_tensor({M, K}, unsigned(M));
      const Tensor got = ops::linear_quantized(x, q.rows, type, K, &bias, Act::SiLU);
      const Tensor want =
          ops::linear(x, p == Precision::BF16 ? q.decoded.to(DType::BF16) : q.decoded, &bias, Act::SiLU);
      ASSERT_EQ(got.shape(), (Shape{M, N}));
      // Few rows of x against Q8_0 / Q4_K in bf16 precision: integer dot products with x rounded to 8 bits
      // (backend/cpu/quant_dot.h, tested there), so only close.
      const bool int8 = p == Precision::BF16 && M < 8 && (type == QuantType::Q8_0 || type == QuantType::Q4_K);
      if (int8) {
        EXPECT_LT(test::rel_l2(got, want), 1e-2) << quant_type_name(type) << " M=" << M;
      } else {
        EXPECT_LT(max_rel_diff(got, want), 1e-5) << quant_type_name(type) << " M=" << M << " " << precision_name(p);
      }
      // And it is the quantized weight that ran, not the original one.
      const Tensor orig = ops::linear(x, w, &bias, Act::SiLU);
      EXPECT_GT(test::rel_l2(got, orig), 1e-5) << quant_type_name(type) << " M=" << M;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, QuantizedLinearTypes,
                         ::testing::Values(QuantType::Q8_0, QuantType::Q4_0, QuantType::Q5_1, QuantType::Q4_K,
                                           QuantType::Q6_K, QuantType::Q2_K),
                         [](const auto& info) { return std::string(quant_type_name(info.param)); });

// A GGUF file with one Q8_0 linear (and a float bias): written here, opened as users open theirs.
struct TinyGguf {
  test::TempDir dir;
  std::string path;
  Tensor w, b;
  TinyGguf(QuantType type, int64_t N, int64_t K) : path(dir.str() + "/l.gguf") {
    w = test::random_tensor({N, K}, 11, 0.05f);
    b = test::random_tensor({N}, 12);
    auto g = GgufWriter::create(path, {{"general.architecture", GgufValue::string("flux")}},
                                {{"l.weight", type, w.shape()}, {"l.bias", QuantType::F32, b.shape()}});
    EXPECT_TRUE(g.ok());
    EXPECT_TRUE((*g)->write(w).ok());
    EXPECT_TRUE((*g)->write(b).ok());
    EXPECT_TRUE((*g)->finish().ok());
  }
};

TEST(QuantizedLinear, GgufWeightStaysQuantizedInTheMapping) {
  TinyGguf f(QuantType::Q8_0, 64, 256);
  auto ck = Checkpoint::open(f.path);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto log = std::make_shared<WeightLog>();
  ck->record_into(log);
  auto l = Linear::load(*ck, "l", 256, 64);
  ASSERT_TRUE(l.ok()) << l.error().message;
  ASSERT_TRUE(l->quant.has_value());
  EXPECT_EQ(*l->quant, QuantType::Q8_0);
  EXPECT_EQ(l->weight.dtype(), DType::U8);
  EXPECT_EQ(l->weight.shape(), (Shape{64, 8 * 34}));  // 8 blocks of 32 values, 34 bytes each
  EXPECT_TRUE(l->weight.read_only());                 // a view into the file, no copy
  EXPECT_EQ(l->in_features(), 256);
  EXPECT_EQ(l->out_features(), 64);
  ASSERT_EQ(log->size(), 2u);
  EXPECT_EQ((*log)[0].quant, QuantType::Q8_0);
  EXPECT_EQ((*log)[0].local_bytes(), size_t(64 * 8 * 34));

  // The same file with quantized weights off: dequantized to bf16, the product as before.
  Checkpoint plain = *ck;
  plain.set_keep_quantized(false);
  auto lf = Linear::load(plain, "l", 256, 64);
  ASSERT_TRUE(lf.ok());
  EXPECT_FALSE(lf->quant.has_value());
  EXPECT_EQ(lf->weight.dtype(), DType::BF16);
  const Tensor x = test::random_tensor({40, 256}, 13);
  ScopedPrecision bf16(Precision::BF16);
  EXPECT_LT(max_rel_diff((*l)(x), (*lf)(x)), 1e-5);
}

TEST(QuantizedLinear, ShardsOnWholeRowsAndWholeBlocks) {
  TinyGguf f(QuantType::Q4_K, 64, 512);
  auto ck = Checkpoint::open(f.path);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto whole = Linear::load(*ck, "l", 512, 64);
  ASSERT_TRUE(whole.ok());
  const Tensor x = test::random_tensor({9, 512}, 14);
  const Tensor y = (*whole)(x);

  // Column-parallel: two row ranges (a modulation linear's chunks) are the matching outputs.
  auto rows = Linear::load_rows(*ck, "l", 512, 64, {Range{0, 16}, Range{32, 48}});
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  ASSERT_TRUE(rows->quant.has_value());
  EXPECT_EQ(rows->out_features(), 32);
  const Tensor yr = (*rows)(x);
  EXPECT_EQ(max_rel_diff(yr.slice(1, 0, 16).contiguous(), y.slice(1, 0, 16).contiguous()), 0.0);
  EXPECT_EQ(max_rel_diff(yr.slice(1, 16, 32).contiguous(), y.slice(1, 32, 48).contiguous()), 0.0);

  // Chunks that follow one another (a modulation linear's on a one-rank group) are the whole weight: a view.
  auto adjacent = Linear::load_rows(*ck, "l", 512, 64, {Range{0, 32}, Range{32, 64}});
  ASSERT_TRUE(adjacent.ok()) << adjacent.error().message;
  EXPECT_TRUE(adjacent->weight.read_only());
  EXPECT_EQ(adjacent->weight.raw(), whole->weight.raw());
  EXPECT_FALSE(rows->weight.read_only());  // two separate ranges: a copy of just them

  // Row-parallel on a block boundary (Q4_K: 256 columns a block): this rank's half of the inputs.
  auto cols = Linear::load_cols(*ck, "l", 512, 64, {Range{256, 512}}, nullptr);
  ASSERT_TRUE(cols.ok()) << cols.error().message;
  ASSERT_TRUE(cols->quant.has_value());
  EXPECT_EQ(cols->in_features(), 256);
  // Off a block boundary: an error naming the tensor, the type and its block.
  auto bad = Linear::load_cols(*ck, "l", 512, 64, {Range{0, 128}}, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("tensor 'l.weight' is stored as Q4_K, in blocks of 256 columns"),
            std::string::npos)
      << bad.error().message;
  EXPECT_NE(bad.error().message.find("[0, 128)"), std::string::npos) << bad.error().message;
}

// On a device the blocks are uploaded as stored and the device's linear_quantized runs on them (the stand-in
// device: the CPU kernels under the CUDA tag, host memory, counted uploads), giving the host's product; a whole
// weight and a row-range one (a modulation linear's chunks).
// Checkpoint::copy_into_memory applies to blocks kept quantized too: a copy off the mapping, the same product.
TEST(QuantizedLinear, GgufBlocksCopiedIntoMemoryGiveTheSameProduct) {
  TinyGguf f(QuantType::Q8_0, 4096, 256);  // 4096 rows of 8 blocks of 34 bytes: 1.06 MiB, over the copy's 1 MiB
  auto ck = Checkpoint::open(f.path);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto mapped = Linear::load(*ck, "l", 256, 4096, true);
  ASSERT_TRUE(mapped.ok()) << mapped.error().message;
  EXPECT_TRUE(mapped->weight.read_only());
  const Tensor x = test::random_tensor({9, 256}, 16);
  const Tensor want = (*mapped)(x);
  ck->copy_into_memory(true);
  auto copied = Linear::load(*ck, "l", 256, 4096, true);
  ASSERT_TRUE(copied.ok()) << copied.error().message;
  ASSERT_TRUE(copied->quant.has_value());
  EXPECT_FALSE(copied->weight.read_only());
  EXPECT_NE(copied->weight.raw(), mapped->weight.raw());
  EXPECT_EQ(max_rel_diff((*copied)(x), want), 0.0);
}

TEST(QuantizedLinear, GgufWeightStaysQuantizedOnADevice) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA device is present: cuda_quant_test covers it";
  TinyGguf f(QuantType::Q4_K, 64, 512);
  auto ck = Checkpoint::open(f.path);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  auto host = Linear::load(*ck, "l", 512, 64, true);
  ASSERT_TRUE(host.ok()) << host.error().message;
  const Tensor x = test::random_tensor({9, 512}, 15);
  const Tensor want = (*host)(x);
  auto host_rows = Linear::load_rows(*ck, "l", 512, 64, {Range{0, 16}, Range{32, 48}});
  ASSERT_TRUE(host_rows.ok()) << host_rows.error().message;
  const Tensor want_rows = (*host_rows)(x);

  test::StandInDevice device;
  Checkpoint on_device = *ck;
  on_device.place_on(Device::CUDA);
  {
    const int64_t uploads = test::g_uploads.load();
    auto l = Linear::load(on_device, "l", 512, 64, true);
    ASSERT_TRUE(l.ok()) << l.error().message;
    ASSERT_TRUE(l->quant.has_value());
    EXPECT_EQ(l->weight.dtype(), DType::U8);
    EXPECT_EQ(l->weight.device(), Device::CUDA);
    EXPECT_EQ(l->weight.shape(), (Shape{64, 2 * 144}));  // 2 Q4_K blocks of 256 values, 144 bytes each
    EXPECT_GT(test::g_uploads.load(), uploads);
    const Tensor got = ops::to_device((*l)(ops::to_device(x, Device::CUDA)), Device::CPU);
    EXPECT_EQ(max_rel_diff(got, want), 0.0);  // the same kernel on the same bytes

    auto rows = Linear::load_rows(on_device, "l", 512, 64, {Range{0, 16}, Range{32, 48}});
    ASSERT_TRUE(rows.ok()) << rows.error().message;
    ASSERT_TRUE(rows->quant.has_value());
    EXPECT_EQ(rows->weight.device(), Device::CUDA);
    const Tensor got_rows = ops::to_device((*rows)(ops::to_device(x, Device::CUDA)), Device::CPU);
    EXPECT_EQ(max_rel_diff(got_rows, want_rows), 0.0);
  }
  EXPECT_EQ(device.live(), 0) << "every device buffer freed";
}

}  // namespace
}  // namespace meshdit
