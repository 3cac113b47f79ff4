// linear_quantized on CUDA (backend/cuda/linear.cu: GGUF blocks decoded on the device in bands of rows, then
// linear's cuBLASLt product) against the CPU backend, for every block type, in both precisions. The decode
// is exact (backend/quant_blocks.h, the CPU's decoders compiled for the device), so identity rows of x read
// the decoded weight back bit for bit; products differ from the CPU's by summation order only. The bands are
// made small here so that every call runs several, the last one partial. Without a device (CI) these skip.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/backend.h"
#include "backend/cpu/quant.h"
#include "backend/cpu/quant_dot.h"
#include "backend/ops.h"
#include "backend/precision.h"
#include "backend_test_util.h"
#include "core/tensor.h"
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
#include "backend/cuda/cuda_backend.h"
#endif

using namespace meshdit;

namespace {

constexpr QuantType kTypes[] = {QuantType::Q4_0, QuantType::Q4_1, QuantType::Q5_0, QuantType::Q5_1,
                                QuantType::Q8_0, QuantType::Q2_K, QuantType::Q3_K, QuantType::Q4_K,
                                QuantType::Q5_K, QuantType::Q6_K, QuantType::Q8_K};

constexpr int64_t kK = 512;  // a multiple of every block size (32, 256)
constexpr int64_t kN = 40;   // not a multiple of the bands below

// Bands of 16 rows in f32 precision (32 in bf16): 40 rows are bands of 16, 16, 8 (32, 8). Restores the
// default band on the way out.
struct SmallBands {
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  SmallBands() { cuda::set_quantized_band_bytes(size_t(16 * kK * 4)); }
  ~SmallBands() { cuda::set_quantized_band_bytes(0); }
#endif
};

struct Quantized {
  Tensor rows;     // U8 [N, bytes per row], on the host
  Tensor decoded;  // F32 [N, K]: what the blocks hold, as the CPU decodes them
};

// Random weights quantized with quantize_row; rows padded to `stride` bytes when it is larger than a row.
Quantized quantize(QuantType t, unsigned seed, int64_t stride = 0) {
  const size_t rb = quant_row_bytes(t, kK);
  const int64_t width = std::max<int64_t>(stride, int64_t(rb));
  const Tensor w = test::random_tensor({kN, kK}, seed, 0.2f);
  Quantized q{Tensor::zeros({kN, width}, DType::U8), Tensor::empty({kN, kK})};
  for (int64_t n = 0; n < kN; ++n) {
    uint8_t* row = q.rows.data<uint8_t>() + n * width;
    quantize_row(t, w.data<float>() + n * kK, row, kK);
    dequantize_row(t, row, q.decoded.data<float>() + n * kK, kK);
  }
  return q;
}

// The identity [K, K] as x reads the weight back: y[k, n] = w[n, k] * 1 plus zeros, exact in any summation
// order. The rows handed to the backend are a view with a row stride of an odd number of bytes, so blocks sit
// at unaligned addresses.
TEST(CudaQuant, IdentityRowsReadTheDecodedWeightBack) {
  SKIP_WITHOUT_CUDA();
  [[maybe_unused]] SmallBands bands;
  const Backend* cuda = find_backend(Device::CUDA);
  std::vector<float> eye(size_t(kK * kK), 0.0f);
  for (int64_t k = 0; k < kK; ++k) eye[size_t(k * kK + k)] = 1.0f;
  const Tensor x = ops::to_device(Tensor::from_f32({kK, kK}, eye), Device::CUDA);
  for (QuantType t : kTypes) {
    const int64_t rb = int64_t(quant_row_bytes(t, kK));
    const Quantized q = quantize(t, 7200 + unsigned(t), rb + 3);
    const Tensor rows = ops::to_device(q.rows, Device::CUDA).slice(1, 0, rb);
    ASSERT_EQ(rows.stride(0), rb + 3);
    for (Precision p : {Precision::F32, Precision::BF16}) {
      SCOPED_TRACE(std::string(quant_type_name(t)) + ", " + precision_name(p));
      ScopedPrecision prec(p);
      Tensor y = Tensor::empty({kK, kN}, DType::F32, Device::CUDA);
      cuda->linear_quantized(x, rows, t, nullptr, Act::None, y);
      const std::vector<float> got = y.to_vector();
      const Tensor w = p == Precision::BF16 ? q.decoded.to(DType::BF16).to(DType::F32) : q.decoded;
      const float* wp = w.data<float>();
      for (int64_t k = 0; k < kK; ++k)
        for (int64_t n = 0; n < kN; ++n)
          ASSERT_EQ(got[size_t(k * kN + n)], wp[n * kK + k]) << "weight row " << n << ", column " << k;
    }
  }
}

// Random x (rows strided), bias and an activation (GELU after the product, ReLU as cuBLASLt's epilogue),
// M = 1 and 37, against the CPU backend's linear_quantized. The tolerance is summation order's: 8 sqrt(K)
// float32 epsilons of sum_k |x w| + |bias|, plus a few ulps of the activation's expf.
TEST(CudaQuant, LinearMatchesTheCpuBackend) {
  SKIP_WITHOUT_CUDA();
  [[maybe_unused]] SmallBands bands;
  const Tensor b = test::random_tensor({kN}, 7301);
  for (QuantType t : kTypes) {
    const Quantized q = quantize(t, 7300 + unsigned(t));
    const Tensor rows = ops::to_device(q.rows, Device::CUDA);
    const Tensor bd = ops::place(b, Device::CUDA);
    for (int64_t M : {1, 37}) {
      const Tensor xs = test::random_tensor({M, kK + 8}, 7302 + unsigned(M));
      const Tensor x = xs.slice(1, 0, kK);
      const Tensor xd = ops::to_device(xs, Device::CUDA).slice(1, 0, kK);
      for (Precision p : {Precision::F32, Precision::BF16}) {
        for (Act act : {Act::GeluTanh, Act::Relu}) {
          SCOPED_TRACE(std::string(quant_type_name(t)) + ", M " + std::to_string(M) + ", " + precision_name(p) + ", " +
                       act_name(act));
          ScopedPrecision prec(p);
          const bool bf16 = p == Precision::BF16;
          // The CPU's bf16 product over one row of x against Q8_0 / Q4_K rounds x to 8 bits (quant_dot.h): there
          // the reference is its product with the same weight decoded, which rounds x to bf16 as CUDA does.
          const bool cpu_int8 = bf16 && M == 1 && cpu::quant_dot_supported(t);
          const Tensor w = bf16 ? q.decoded.to(DType::BF16) : q.decoded;
          const std::vector<float> want = cpu_int8 ? ops::linear(x, w, &b, act).to_vector()
                                                   : ops::linear_quantized(x, q.rows, t, kK, &b, act).to_vector();
          const Tensor got = ops::linear_quantized(xd, rows, t, kK, &bd, act);
          ASSERT_EQ(got.device(), Device::CUDA);
          ASSERT_EQ(got.shape(), (Shape{M, kN}));
          // sum_k |x w| with the operands the products saw.
          const std::vector<float> xv = (bf16 ? x.to(DType::BF16) : x).to(DType::F32).contiguous().to_vector();
          const std::vector<float> wv = w.to(DType::F32).to_vector(), bv = b.to_vector();
          test::Vec ref(want.begin(), want.end()), tol(want.size());
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < kN; ++n) {
              double s = std::fabs(bv[size_t(n)]);
              for (int64_t k = 0; k < kK; ++k) s += std::fabs(double(xv[size_t(m * kK + k)]) * wv[size_t(n * kK + k)]);
              const size_t i = size_t(m * kN + n);
              tol[i] = 1.2 * 8 * std::sqrt(double(kK)) * test::kEps32 * s + 1e-6 * (1 + std::fabs(want[i]));
            }
          EXPECT_TRUE(test::all_close(got.to_vector(), ref, tol));
        }
      }
    }
  }
}

// Not a block type, or rows that are not whole blocks: the process stops with a message naming the problem
// (the backend's checks are programming errors; ops::linear_quantized validates its inputs first).
TEST(CudaQuantDeathTest, RowsThatAreNotBlocksAreRefused) {
  SKIP_WITHOUT_CUDA();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const Backend* cuda = find_backend(Device::CUDA);
  const Tensor x = Tensor::zeros({2, 64}, DType::F32, Device::CUDA);
  Tensor y = Tensor::empty({2, 3}, DType::F32, Device::CUDA);
  const Tensor short_rows =
      Tensor::zeros({3, int64_t(quant_row_bytes(QuantType::Q8_0, 64)) - 1}, DType::U8, Device::CUDA);
  EXPECT_DEATH(cuda->linear_quantized(x, short_rows, QuantType::Q8_0, nullptr, Act::None, y), "whole blocks");
  const Tensor f16_rows = Tensor::zeros({3, 128}, DType::U8, Device::CUDA);
  EXPECT_DEATH(cuda->linear_quantized(x, f16_rows, QuantType::F16, nullptr, Act::None, y), "F16 is not a block type");
}

}  // namespace
