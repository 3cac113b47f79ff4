// linear on the GPU: one cuBLASLt product per call, the bias fused as cuBLASLt's BIAS epilogue (ReLU too);
// other activations run as one element-wise pass after it (cuBLASLt's GELU epilogue is not documented to be
// the tanh form the models use, and erf / SiLU / QuickGELU have none).
//
// Precision (backend/precision.h), as on the CPU:
//   F32:  x and w in float32 (a bf16/f16 weight widened into a scratch buffer), float32 products.
//   BF16: x rounded to bf16 into a contiguous scratch buffer, w used as stored when bf16 (rounded once per call
//         otherwise), bf16 x bf16 products with float32 accumulation and a float32 output.
#include <cublasLt.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/elementwise.cuh"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"
#include "backend/precision.h"
#include "backend/quant_blocks.h"

#ifndef MESHDIT_CUDA_LIBDIR
#define MESHDIT_CUDA_LIBDIR ""
#endif

namespace meshdit::cuda {
namespace {

#define MD_STR2(x) #x
#define MD_STR(x) MD_STR2(x)

// The cuBLASLt entry points used, resolved from the shared library at first use.
struct Lt {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtGetVersion) get_version;
  decltype(&cublasLtGetStatusString) status_string;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmul) matmul;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = size_t(32) << 20;
  std::string description;
};

template <class F>
void resolve(void* lib, const char* name, F& fn, const std::string& soname) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  MD_CHECK(fn != nullptr, "cuda: " + soname + " has no " + name);
}

const Lt& lt() {
  static const Lt* loaded = [] {
    const std::string soname = "libcublasLt.so." MD_STR(CUBLAS_VER_MAJOR);
    const std::string in_toolkit = std::string(MESHDIT_CUDA_LIBDIR) + "/" + soname;
    std::vector<std::string> names{soname};
    if (std::strlen(MESHDIT_CUDA_LIBDIR) > 0) names.push_back(in_toolkit);
    names.push_back("libcublasLt.so");
    void* lib = nullptr;
    for (const std::string& name : names)
      if ((lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL))) break;
    MD_CHECK(lib != nullptr, "cuda: cannot load " + soname + " (cuBLASLt; looked in the loader's path and " +
                                 MESHDIT_CUDA_LIBDIR + "): " + (dlerror() ? dlerror() : "not found"));
    auto* l = new Lt;
    resolve(lib, "cublasLtCreate", l->create, soname);
    resolve(lib, "cublasLtGetVersion", l->get_version, soname);
    resolve(lib, "cublasLtGetStatusString", l->status_string, soname);
    resolve(lib, "cublasLtMatmulDescCreate", l->desc_create, soname);
    resolve(lib, "cublasLtMatmulDescDestroy", l->desc_destroy, soname);
    resolve(lib, "cublasLtMatmulDescSetAttribute", l->desc_set, soname);
    resolve(lib, "cublasLtMatrixLayoutCreate", l->layout_create, soname);
    resolve(lib, "cublasLtMatrixLayoutDestroy", l->layout_destroy, soname);
    resolve(lib, "cublasLtMatmulPreferenceCreate", l->pref_create, soname);
    resolve(lib, "cublasLtMatmulPreferenceDestroy", l->pref_destroy, soname);
    resolve(lib, "cublasLtMatmulPreferenceSetAttribute", l->pref_set, soname);
    resolve(lib, "cublasLtMatmulAlgoGetHeuristic", l->heuristic, soname);
    resolve(lib, "cublasLtMatmul", l->matmul, soname);
    const cublasStatus_t s = l->create(&l->handle);
    MD_CHECK(s == CUBLAS_STATUS_SUCCESS, std::string("cublasLtCreate: ") + l->status_string(s));
    MD_CUDA(cudaMalloc(&l->workspace, l->workspace_bytes));
    const size_t v = l->get_version();
    l->description = "cuBLASLt " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                     std::to_string(v % 100) + " (" + soname + ")";
    return l;
  }();
  return *loaded;
}

void lt_check(cublasStatus_t s, const char* call) {
  if (s != CUBLAS_STATUS_SUCCESS) fatal(__FILE__, __LINE__, std::string(call) + ": " + lt().status_string(s));
}
#define MD_LT(call) lt_check(call, #call)

// The largest power of two (at most 256) dividing the address: cuBLASLt's heuristic otherwise assumes 256-byte
// aligned operands, and a row view of a tensor need not be.
uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al) al >>= 1;
  return al;
}

// One cached heuristic result per problem: the query costs tens of microseconds, a model repeats its shapes.
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int, int, uint32_t,
                       uint32_t, uint32_t>;
std::mutex g_algo_mu;
std::map<Key, std::pair<bool, cublasLtMatmulHeuristicResult_t>> g_algos;

}  // namespace

const char* gemm_library() { return lt().description.c_str(); }

bool gemm(int64_t m, int64_t n, int64_t k, const GemmOperand& a, const GemmOperand& b, float* d, int64_t ldd,
          const float* bias, bool relu) {
  const Lt& l = lt();
  const bool f32 = a.type == CUDA_R_32F && b.type == CUDA_R_32F;
  const cublasComputeType_t compute = CUBLAS_COMPUTE_32F;  // never CUBLAS_COMPUTE_32F_FAST_TF32
  cublasLtMatmulDesc_t op = nullptr;
  MD_LT(l.desc_create(&op, compute, CUDA_R_32F));
  const cublasOperation_t ta = a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N, tb = b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  MD_LT(l.desc_set(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  MD_LT(l.desc_set(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cublasLtEpilogue_t epi = bias ? (relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                      : (relu ? CUBLASLT_EPILOGUE_RELU : CUBLASLT_EPILOGUE_DEFAULT);
  MD_LT(l.desc_set(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (bias) {
    const cudaDataType_t bias_type = CUDA_R_32F;
    MD_LT(l.desc_set(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    MD_LT(l.desc_set(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  MD_LT(l.layout_create(&la, a.type, uint64_t(a.transposed ? k : m), uint64_t(a.transposed ? m : k), a.ld));
  MD_LT(l.layout_create(&lb, b.type, uint64_t(b.transposed ? n : k), uint64_t(b.transposed ? k : n), b.ld));
  MD_LT(l.layout_create(&ld, CUDA_R_32F, uint64_t(m), uint64_t(n), ldd));

  const uint32_t al_a = alignment(a.data), al_b = alignment(b.data), al_d = alignment(d);
  const Key key{
      m,        n,        k,    a.ld, b.ld, ldd, int(a.type), int(b.type), int(a.transposed) * 2 + int(b.transposed),
      int(epi), int(f32), al_a, al_b, al_d};
  std::pair<bool, cublasLtMatmulHeuristicResult_t> found{};
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(g_algo_mu);
    auto it = g_algos.find(key);
    if (it != g_algos.end()) found = it->second, cached = true;
  }
  if (!cached) {
    cublasLtMatmulPreference_t pref = nullptr;
    MD_LT(l.pref_create(&pref));
    MD_LT(l.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &l.workspace_bytes, sizeof(l.workspace_bytes)));
    MD_LT(l.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
    MD_LT(l.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
    MD_LT(l.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d)));
    MD_LT(l.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)));
    int count = 0;
    const cublasStatus_t s = l.heuristic(l.handle, op, la, lb, ld, ld, pref, 1, &found.second, &count);
    MD_LT(l.pref_destroy(pref));
    // NOT_SUPPORTED is an answer (no algorithm for this epilogue or these types), not an error.
    if (s != CUBLAS_STATUS_NOT_SUPPORTED) lt_check(s, "cublasLtMatmulAlgoGetHeuristic");
    found.first = s == CUBLAS_STATUS_SUCCESS && count > 0;
    std::lock_guard<std::mutex> lock(g_algo_mu);
    g_algos[key] = found;
  }
  if (found.first) {
    const float alpha = 1.0f, beta = 0.0f;
    MD_LT(l.matmul(l.handle, op, &alpha, a.data, la, b.data, lb, &beta, d, ld, d, ld, &found.second.algo, l.workspace,
                   l.workspace_bytes, stream()));
  }
  MD_LT(l.layout_destroy(la));
  MD_LT(l.layout_destroy(lb));
  MD_LT(l.layout_destroy(ld));
  MD_LT(l.desc_destroy(op));
  return found.first;
}

namespace {

__global__ void bias_rows_kernel(float* y, const float* bias, int64_t M, int64_t N) {
  const int64_t n = M * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = bias ? bias[i % N] : 0.0f;
}

// y[m, n] = act(y[m, n] + bias[n]) over N columns of rows of ldy floats: what cuBLASLt's epilogue did not do.
__global__ void bias_act_kernel(float* y, int64_t ldy, int64_t M, int64_t N, const float* bias, Act act) {
  MD_GRID_LOOP(i, M * N) {
    const int64_t m = i / N, n = i % N;
    float& v = y[m * ldy + n];
    v = act_value(bias ? v + bias[n] : v, act);
  }
}

// The product of x with a dense weight, shared by linear and linear_quantized: y = act(x . w^T + bias), with A
// the weight w [N, K] as stored (row-major rows of K) and B x [M, K]. y's N columns start at yp, in rows of ldy
// floats, so a band of a wider output can be filled (linear_quantized's row tiles of w). `weight` names the
// weight's type in the error when cuBLASLt has no algorithm at all.
void dense_product(int64_t M, int64_t N, int64_t K, const GemmOperand& A, const GemmOperand& B, const float* bias,
                   Act act, float* yp, int64_t ldy, const std::string& weight) {
  // Row-major y [M, N] = x [M, K] . w [N, K]^T is column-major y^T [N, M] = w^T(as stored [K, N]) . x^T [K, M].
  const bool relu = act == Act::Relu;
  if (gemm(N, M, K, A, B, yp, ldy, bias, relu)) {
    if (!relu && act != Act::None) MD_LAUNCH(bias_act_kernel, M * N, yp, ldy, M, N, nullptr, act);
    return;
  }
  // No algorithm with this epilogue: a plain product, bias and activation after it.
  MD_CHECK(gemm(N, M, K, A, B, yp, ldy, nullptr, false),
           "cuda linear: cuBLASLt has no algorithm for [" + std::to_string(M) + ", " + std::to_string(K) + "] x [" +
               std::to_string(N) + ", " + std::to_string(K) + "]^T in " + weight);
  if (bias || act != Act::None) MD_LAUNCH(bias_act_kernel, M * N, yp, ldy, M, N, bias, act);
}

}  // namespace

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Act act, Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  MD_CHECK(x.dtype() == DType::F32 && x.stride(1) == 1 && (M <= 1 || x.stride(0) >= K),
           "cuda linear: x must be float32 rows with a contiguous last dimension");
  if (M == 0 || N == 0) return;
  const Tensor b = bias ? f32_contiguous(*bias) : Tensor();
  const float* bp = bias ? b.data<float>() : nullptr;
  float* yp = y.data<float>();
  if (K == 0) {  // an empty sum: the bias alone
    bias_rows_kernel<<<grid_for(M * N), kThreads, 0, stream()>>>(yp, bp, M, N);
    MD_CUDA_LAUNCHED(bias_rows_kernel);
    apply_activation(yp, M * N, act);
    return;
  }
  Tensor xa, wa;
  GemmOperand A{}, B{};
  if (compute_precision() == Precision::BF16) {
    xa = Tensor::empty({M, K}, DType::BF16, Device::CUDA);
    copy(x, xa);  // rounds to nearest even, as the CPU's to_bf16
    wa = w.dtype() == DType::BF16 ? w : w.to(DType::BF16);
    A = {wa.raw(), CUDA_R_16BF, K, true};
    B = {xa.raw(), CUDA_R_16BF, K, false};
  } else {
    wa = w.dtype() == DType::F32 ? w : w.to(DType::F32);
    A = {wa.raw(), CUDA_R_32F, K, true};
    B = {x.raw(), CUDA_R_32F, M <= 1 ? K : x.stride(0), false};
  }
  dense_product(M, N, K, A, B, bp, act, yp, N, dtype_name(w.dtype()));
}

// --- block-quantized weights ----------------------------------------------------------------------------------
// linear_quantized decodes a band of w's rows at a time into a dense tile (bf16 in BF16 precision, float32 in
// F32, as the CPU's tiles) and runs dense_product on it into that band of y's columns: the decode is exact
// (quant_blocks.h, the CPU's own decoders), so the result is linear's on the decoded weight, and the dense copy
// never exceeds the band's bytes, whatever the weight's size.

namespace {

constexpr size_t kDefaultBandBytes = size_t(64) << 20;
std::atomic<size_t> g_band_bytes{kDefaultBandBytes};

// The device's sink for quant_blocks' decoders in BF16 precision: each decoded float rounded to nearest even, as
// the CPU rounds its decoded tiles.
struct Bf16Sink {
  uint16_t* y;
  __device__ void put(int j, float v) const { y[j] = f32_to_bf16_bits(v); }
};

template <QuantType T, class Sink>
__device__ void decode_block(const uint8_t* b, const Sink& out) {
  using namespace quant_blocks;
  if constexpr (T == QuantType::Q4_0)
    dq_q4_0(b, out);
  else if constexpr (T == QuantType::Q4_1)
    dq_q4_1(b, out);
  else if constexpr (T == QuantType::Q5_0)
    dq_q5_0(b, out);
  else if constexpr (T == QuantType::Q5_1)
    dq_q5_1(b, out);
  else if constexpr (T == QuantType::Q8_0)
    dq_q8_0(b, out);
  else if constexpr (T == QuantType::Q2_K)
    dq_q2_k(b, out);
  else if constexpr (T == QuantType::Q3_K)
    dq_q3_k(b, out);
  else if constexpr (T == QuantType::Q4_K)
    dq_q4_k(b, out);
  else if constexpr (T == QuantType::Q5_K)
    dq_q5_k(b, out);
  else if constexpr (T == QuantType::Q6_K)
    dq_q6_k(b, out);
  else if constexpr (T == QuantType::Q8_K)
    dq_q8_k(b, out);
  else
    static_assert(T == QuantType::Q4_0, "decode_block: not a block type");
}

// tile [nrows, K] (row-major, elements of Sink's type) = rows' first nrows rows decoded; one thread per block,
// `per_row` blocks of `values` values and `bytes` bytes in each row of `row_stride` bytes.
template <QuantType T, class Sink, class Elem>
__global__ void decode_tile_kernel(const uint8_t* rows, int64_t row_stride, int64_t nrows, int64_t per_row,
                                   int64_t values, int64_t bytes, Elem* tile, int64_t K) {
  MD_GRID_LOOP(i, nrows * per_row) {
    const int64_t r = i / per_row, c = i % per_row;
    decode_block<T>(rows + r * row_stride + c * bytes, Sink{tile + r * K + c * values});
  }
}

template <QuantType T>
void decode_tile(const uint8_t* rows, int64_t row_stride, int64_t nrows, int64_t K, bool bf16, void* tile) {
  const int64_t values = quant_block_size(T), bytes = int64_t(quant_block_bytes(T)), per_row = K / values;
  const int64_t n = nrows * per_row;
  if (n == 0) return;
  if (bf16)
    decode_tile_kernel<T, Bf16Sink, uint16_t><<<grid_for(n), kThreads, 0, stream()>>>(
        rows, row_stride, nrows, per_row, values, bytes, static_cast<uint16_t*>(tile), K);
  else
    decode_tile_kernel<T, quant_blocks::FloatSink, float><<<grid_for(n), kThreads, 0, stream()>>>(
        rows, row_stride, nrows, per_row, values, bytes, static_cast<float*>(tile), K);
  MD_CUDA_LAUNCHED(decode_tile_kernel);
}

void decode_tile(QuantType t, const uint8_t* rows, int64_t row_stride, int64_t nrows, int64_t K, bool bf16,
                 void* tile) {
  switch (t) {
    case QuantType::Q4_0:
      return decode_tile<QuantType::Q4_0>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q4_1:
      return decode_tile<QuantType::Q4_1>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q5_0:
      return decode_tile<QuantType::Q5_0>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q5_1:
      return decode_tile<QuantType::Q5_1>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q8_0:
      return decode_tile<QuantType::Q8_0>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q2_K:
      return decode_tile<QuantType::Q2_K>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q3_K:
      return decode_tile<QuantType::Q3_K>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q4_K:
      return decode_tile<QuantType::Q4_K>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q5_K:
      return decode_tile<QuantType::Q5_K>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q6_K:
      return decode_tile<QuantType::Q6_K>(rows, row_stride, nrows, K, bf16, tile);
    case QuantType::Q8_K:
      return decode_tile<QuantType::Q8_K>(rows, row_stride, nrows, K, bf16, tile);
    default:
      MD_CHECK(false, std::string("cuda linear_quantized: ") + quant_type_name(t) + " is not a block type");
  }
}

}  // namespace

size_t set_quantized_band_bytes(size_t bytes) { return g_band_bytes.exchange(bytes ? bytes : kDefaultBandBytes); }

void linear_quantized(const Tensor& x, const Tensor& rows, QuantType type, const Tensor* bias, Act act, Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = rows.size(0);
  const std::string name = quant_type_name(type);
  MD_CHECK(quant_is_block(type), "cuda linear_quantized: " + name + " is not a block type");
  MD_CHECK(x.dtype() == DType::F32 && x.stride(1) == 1 && (M <= 1 || x.stride(0) >= K),
           "cuda linear_quantized: x must be float32 rows with a contiguous last dimension");
  MD_CHECK(rows.dim() == 2 && rows.dtype() == DType::U8 && rows.stride(1) == 1 && K % quant_block_size(type) == 0 &&
               uint64_t(rows.size(1)) == quant_row_bytes(type, K) && (N <= 1 || rows.stride(0) >= rows.size(1)),
           "cuda linear_quantized: " + std::to_string(K) + " columns of " + name + " blocks are not the rows " +
               shape_str(rows.shape()) + " of U8 (whole blocks, contiguous bytes in a row)");
  MD_CHECK(
      y.dtype() == DType::F32 && y.is_contiguous() && y.size(0) == M && y.size(1) == N,
      "cuda linear_quantized: y must be contiguous float32 [" + std::to_string(M) + ", " + std::to_string(N) + "]");
  if (M == 0 || N == 0) return;
  const Tensor b = bias ? f32_contiguous(*bias) : Tensor();
  const float* bp = bias ? b.data<float>() : nullptr;
  float* yp = y.data<float>();
  if (K == 0) {  // an empty sum: the bias alone
    bias_rows_kernel<<<grid_for(M * N), kThreads, 0, stream()>>>(yp, bp, M, N);
    MD_CUDA_LAUNCHED(bias_rows_kernel);
    apply_activation(yp, M * N, act);
    return;
  }
  const bool bf16 = compute_precision() == Precision::BF16;
  Tensor xa;
  GemmOperand B{};
  if (bf16) {
    xa = Tensor::empty({M, K}, DType::BF16, Device::CUDA);
    copy(x, xa);  // rounds to nearest even, as the CPU's to_bf16
    B = {xa.raw(), CUDA_R_16BF, K, false};
  } else {
    B = {x.raw(), CUDA_R_32F, M <= 1 ? K : x.stride(0), false};
  }
  // Bands of whole rows within the byte budget (at least one row). From 16 rows on, a multiple of 16: every band
  // then starts 64-byte aligned in y (cuBLASLt's faster kernels want aligned operands) and the shapes repeat.
  const DType tile_type = bf16 ? DType::BF16 : DType::F32;
  const size_t row_bytes = size_t(K) * dtype_size(tile_type);
  int64_t band = int64_t(std::max<size_t>(1, g_band_bytes.load() / row_bytes));
  if (band >= 16) band -= band % 16;
  band = std::min(band, N);
  // One tile for every band: the stream orders each band's decode after the previous band's product.
  Tensor tile = Tensor::empty({band, K}, tile_type, Device::CUDA);
  const auto* src = static_cast<const uint8_t*>(rows.raw());
  const int64_t row_stride = N <= 1 ? rows.size(1) : rows.stride(0);
  const std::string what = name + " (decoded to " + dtype_name(tile_type) + ")";
  for (int64_t n0 = 0; n0 < N; n0 += band) {
    const int64_t nb = std::min(band, N - n0);
    decode_tile(type, src + n0 * row_stride, row_stride, nb, K, bf16, tile.raw());
    const GemmOperand A{tile.raw(), bf16 ? CUDA_R_16BF : CUDA_R_32F, K, true};
    dense_product(M, nb, K, A, B, bp ? bp + n0 : nullptr, act, yp + n0, N, what);
  }
}

}  // namespace meshdit::cuda
