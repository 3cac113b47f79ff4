// linear on the GPU: one cuBLASLt product per call, the bias fused as cuBLASLt's BIAS epilogue (ReLU too);
// other activations run as one element-wise pass after it (cuBLASLt's GELU epilogue is not documented to be
// the tanh form the models use, and erf / SiLU / QuickGELU have none).
//
// Precision (backend/precision.h), as on the CPU:
//   F32:  x and w in float32 (a bf16/f16 weight widened into a scratch buffer), float32 products.
//   BF16: x rounded to bf16 into a contiguous scratch buffer, w used as stored when bf16 (rounded once per call
//         otherwise), bf16 x bf16 products with float32 accumulation and a float32 output.
//   FP8:  cuBLASLt's FP8 GEMM: the weight's e4m3 copy (made once, kept until its block is freed) as A, x quantized
//         to e4m3 at each call as B (an amax reduction into a device float, then the conversion: no host sync),
//         both per-tensor scales through A/B_SCALE_POINTER, float32 accumulation and a float32 D. K is padded
//         with zeros to a multiple of 16 (FP8's rule; zeros add nothing). Where cuBLASLt has no FP8 algorithm
//         (a GPU before sm_89, an output not 16-byte aligned, ...) the product runs as BF16, said once on stderr.
//         The bias goes through the BIAS epilogue only if cuBLASLt takes a float32 bias with FP8 (its table lists
//         bf16 biases for a float32 D; a bf16-rounded bias would differ from the CPU's), else a separate add.
#include <cublasLt.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
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
#include "core/align.h"
#include "core/fp8.h"

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
  const bool fp8 = a.type == CUDA_R_8F_E4M3 || b.type == CUDA_R_8F_E4M3;
  if (a.scale) MD_LT(l.desc_set(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a.scale, sizeof(a.scale)));
  if (b.scale) MD_LT(l.desc_set(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b.scale, sizeof(b.scale)));
  if (fp8) {
    const int8_t fast_accum = 0;  // the accumulator promoted to full float32 as the product goes
    MD_LT(l.desc_set(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accum, sizeof(fast_accum)));
  }
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
    if (s != CUBLAS_STATUS_NOT_SUPPORTED && !fp8) lt_check(s, "cublasLtMatmulAlgoGetHeuristic");
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
// weight's type in the error when cuBLASLt has no algorithm at all. False when cuBLASLt has no algorithm even for
// the plain product (FP8's caller then runs the product in BF16).
[[nodiscard]] bool dense_product(int64_t M, int64_t N, int64_t K, const GemmOperand& A, const GemmOperand& B,
                                 const float* bias, Act act, float* yp, int64_t ldy) {
  // Row-major y [M, N] = x [M, K] . w [N, K]^T is column-major y^T [N, M] = w^T(as stored [K, N]) . x^T [K, M].
  const bool relu = act == Act::Relu;
  if (gemm(N, M, K, A, B, yp, ldy, bias, relu)) {
    if (!relu && act != Act::None) MD_LAUNCH(bias_act_kernel, M * N, yp, ldy, M, N, nullptr, act);
    return true;
  }
  // No algorithm with this epilogue: a plain product, bias and activation after it.
  if (!gemm(N, M, K, A, B, yp, ldy, nullptr, false)) return false;
  if (bias || act != Act::None) MD_LAUNCH(bias_act_kernel, M * N, yp, ldy, M, N, bias, act);
  return true;
}

// dense_product, which must find an algorithm: `weight` names the weight's type in the error.
void dense_product_or_fail(int64_t M, int64_t N, int64_t K, const GemmOperand& A, const GemmOperand& B,
                           const float* bias, Act act, float* yp, int64_t ldy, const std::string& weight) {
  MD_CHECK(dense_product(M, N, K, A, B, bias, act, yp, ldy),
           "cuda linear: cuBLASLt has no algorithm for [" + std::to_string(M) + ", " + std::to_string(K) + "] x [" +
               std::to_string(N) + ", " + std::to_string(K) + "]^T in " + weight);
}

std::atomic<size_t> g_fp8_products{0}, g_fp8_fallbacks{0}, g_fp8_weights_quantized{0};

// Element i of a row-major matrix of a float dtype, widened (common.cuh's conversions, the host's bit for bit).
struct LoadF32 {
  const float* p;
  __device__ float operator()(int64_t i) const { return p[i]; }
};
struct LoadBF16 {
  const uint16_t* p;
  __device__ float operator()(int64_t i) const { return bf16_to_f32(p[i]); }
};
struct LoadF16 {
  const uint16_t* p;
  __device__ float operator()(int64_t i) const { return f16_to_f32(p[i]); }
};

// max |v| over rows x cols (row stride ld) into *amax_bits (0 beforehand), as the bits of a non-negative float:
// their unsigned order is the floats' order, so one atomicMax per block combines the blocks. fmaxf skips NaNs,
// as the CPU's std::fmax does. Every block has kThreads threads (a multiple of 32: full warps for the shuffles).
template <class Load>
__global__ void amax_kernel(Load load, int64_t rows, int64_t cols, int64_t ld, unsigned* amax_bits) {
  float m = 0.0f;
  MD_GRID_LOOP(i, rows * cols) { m = fmaxf(m, fabsf(load(i / cols * ld + i % cols))); }
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  __shared__ float warp_max[kThreads / 32];
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  if (warp == 0) {
    m = lane < int(blockDim.x >> 5) ? warp_max[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) atomicMax(amax_bits, __float_as_uint(m));
  }
}

// q [rows, ld_q] = e4m3(v / scale), scale = e4m3_scale(amax) (core/fp8.h, the CPU's functions), zeros in the
// columns past cols; the scale is written to *scale_out for cuBLASLt.
template <class Load>
__global__ void quantize_kernel(Load load, int64_t rows, int64_t cols, int64_t ld, int64_t ld_q,
                                const unsigned* amax_bits, float* scale_out, uint8_t* q) {
  const float scale = e4m3_scale(__uint_as_float(*amax_bits));
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale_out = scale;
  MD_GRID_LOOP(i, rows * ld_q) {
    const int64_t r = i / ld_q, c = i % ld_q;
    q[i] = c < cols ? quantize_e4m3(load(r * ld + c), scale) : uint8_t(0);
  }
}

template <class Load>
void quantize_with(Load load, int64_t rows, int64_t cols, int64_t ld, int64_t ld_q, uint8_t* q, float* st) {
  unsigned* amax_bits = reinterpret_cast<unsigned*>(st);
  MD_CUDA(cudaMemsetAsync(amax_bits, 0, sizeof(unsigned), stream()));
  if (rows * cols > 0) {
    amax_kernel<<<grid_for(rows * cols), kThreads, 0, stream()>>>(load, rows, cols, ld, amax_bits);
    MD_CUDA_LAUNCHED(amax_kernel);
  }
  quantize_kernel<<<grid_for(std::max<int64_t>(1, rows * ld_q)), kThreads, 0, stream()>>>(load, rows, cols, ld, ld_q,
                                                                                          amax_bits, st + 1, q);
  MD_CUDA_LAUNCHED(quantize_kernel);
}

// A matrix of dtype t (F32, BF16, F16) quantized on the stream: st[0] its amax (as bits), st[1] its scale.
void quantize_rows(const void* p, DType t, int64_t rows, int64_t cols, int64_t ld, int64_t ld_q, uint8_t* q,
                   float* st) {
  switch (t) {
    case DType::F32:
      return quantize_with(LoadF32{static_cast<const float*>(p)}, rows, cols, ld, ld_q, q, st);
    case DType::BF16:
      return quantize_with(LoadBF16{static_cast<const uint16_t*>(p)}, rows, cols, ld, ld_q, q, st);
    case DType::F16:
      return quantize_with(LoadF16{static_cast<const uint16_t*>(p)}, rows, cols, ld, ld_q, q, st);
    default:
      MD_CHECK(false, std::string("cuda linear in fp8: unsupported weight dtype ") + dtype_name(t));
  }
}

// The weights' e4m3 copies [N, Kp] and their scales, by the weight's address; an entry goes when the allocator
// takes the weight's block back (fp8_forget_weights), before the address can be handed out again. Never
// destroyed: tensors freed during static destruction still call fp8_forget_weights.
struct Fp8Weight {
  int64_t N = 0, K = 0;
  DType dtype = DType::F32;
  Tensor q, scale;  // scale: [2] (amax bits, scale)
};
struct Fp8Cache {
  std::mutex mu;
  std::map<const void*, Fp8Weight> entries;
  std::atomic<bool> nonempty{false};
};
Fp8Cache& fp8_cache() {
  static Fp8Cache* c = new Fp8Cache;
  return *c;
}

// The e4m3 copy of w (row-major [N, K], contiguous) with K padded to Kp: the cached one, or made now.
Fp8Weight fp8_weight(const Tensor& w, int64_t Kp) {
  const int64_t N = w.size(0), K = w.size(1);
  Fp8Cache& c = fp8_cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.entries.find(w.raw());
    if (it != c.entries.end() && it->second.N == N && it->second.K == K && it->second.dtype == w.dtype() &&
        it->second.q.size(1) == Kp)
      return it->second;  // copies share the tensors: an eviction meanwhile cannot free them under us
  }
  Fp8Weight e{N, K, w.dtype(), Tensor::empty({N, Kp}, DType::U8, Device::CUDA),
              Tensor::empty({2}, DType::F32, Device::CUDA)};
  quantize_rows(w.raw(), w.dtype(), N, K, K, Kp, e.q.data<uint8_t>(), e.scale.data<float>());
  g_fp8_weights_quantized.fetch_add(1, std::memory_order_relaxed);
  Fp8Weight old;  // a replaced entry's tensors are freed after the lock is released (freeing calls back here)
  {
    std::lock_guard<std::mutex> lock(c.mu);
    Fp8Weight& slot = c.entries[w.raw()];
    old = std::move(slot);
    slot = e;
    c.nonempty.store(true, std::memory_order_relaxed);
  }
  return e;
}

// The FP8 product (see the top of the file); false with the reason when it cannot run here (then BF16 does).
bool linear_fp8(const Tensor& x, const Tensor& w, const Tensor* bias, Act act, Tensor& y, std::string* why) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  if (w.dtype() != DType::F32 && w.dtype() != DType::BF16 && w.dtype() != DType::F16) {
    *why = std::string("weight dtype ") + dtype_name(w.dtype());
    return false;
  }
  if (!w.is_contiguous()) {
    *why = "the weight is not contiguous";
    return false;
  }
  const int64_t Kp = int64_t(align_up(uint64_t(K), 16));
  if (alignment(y.raw()) < 16) {
    *why = "the output is not 16-byte aligned";
    return false;
  }
  const Fp8Weight wq = fp8_weight(w, Kp);
  Tensor xq = Tensor::empty({M, Kp}, DType::U8, Device::CUDA);
  Tensor xs = Tensor::empty({2}, DType::F32, Device::CUDA);
  quantize_rows(x.raw(), DType::F32, M, K, M <= 1 ? K : x.stride(0), Kp, xq.data<uint8_t>(), xs.data<float>());
  if (alignment(wq.q.raw()) < 16 || alignment(xq.raw()) < 16) {
    *why = "the e4m3 buffers are not 16-byte aligned";
    return false;
  }
  const GemmOperand A{wq.q.raw(), CUDA_R_8F_E4M3, Kp, true, wq.scale.data<float>() + 1};
  const GemmOperand B{xq.raw(), CUDA_R_8F_E4M3, Kp, false, xs.data<float>() + 1};
  if (!dense_product(M, N, Kp, A, B, bias ? bias->data<float>() : nullptr, act, y.data<float>(), N)) {
    *why = "cuBLASLt has no FP8 algorithm for it on this GPU";
    return false;
  }
  g_fp8_products.fetch_add(1, std::memory_order_relaxed);
  return true;  // xq and xs are freed in stream order: the allocator hands them out to later work only
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
  const Precision precision = compute_precision();
  if (precision == Precision::FP8) {
    std::string why;
    if (linear_fp8(x, w, bias ? &b : nullptr, act, y, &why)) return;
    g_fp8_fallbacks.fetch_add(1, std::memory_order_relaxed);
    static std::atomic<bool> said{false};
    if (!said.exchange(true))
      std::fprintf(stderr,
                   "meshdit: cuda linear [%lld, %lld] x [%lld, %lld]^T in fp8: %s; it and any other such product run "
                   "in bf16 (said once)\n",
                   (long long)M, (long long)K, (long long)N, (long long)K, why.c_str());
  }
  Tensor xa, wa;
  GemmOperand A{}, B{};
  if (precision != Precision::F32) {  // BF16, and FP8's fallback
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
  dense_product_or_fail(M, N, K, A, B, bp, act, yp, N, dtype_name(w.dtype()));
}

void fp8_forget_weights(const void* p, size_t bytes) {
  Fp8Cache& c = fp8_cache();
  if (!c.nonempty.load(std::memory_order_relaxed)) return;
  std::vector<Fp8Weight> gone;  // freed after the lock is released: freeing them calls back here
  {
    std::lock_guard<std::mutex> lock(c.mu);
    const char* lo = static_cast<const char*>(p);
    auto it = c.entries.lower_bound(lo);
    while (it != c.entries.end() && static_cast<const char*>(it->first) < lo + bytes) {
      gone.push_back(std::move(it->second));
      it = c.entries.erase(it);
    }
    c.nonempty.store(!c.entries.empty(), std::memory_order_relaxed);
  }
}

Fp8Stats fp8_stats() {
  Fp8Stats s;
  s.fp8_products = g_fp8_products.load(std::memory_order_relaxed);
  s.bf16_fallbacks = g_fp8_fallbacks.load(std::memory_order_relaxed);
  s.weights_quantized = g_fp8_weights_quantized.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(fp8_cache().mu);
  s.weights_cached = fp8_cache().entries.size();
  return s;
}

Fp8Quantized fp8_quantize(const Tensor& x, int64_t ld) {
  MD_CHECK(x.device() == Device::CUDA && x.dim() == 2 && x.dtype() == DType::F32 && x.stride(1) == 1 && ld >= x.size(1),
           "fp8_quantize: x must be float32 rows on the device, ld at least its width");
  const int64_t M = x.size(0), K = x.size(1);
  Tensor q = Tensor::empty({std::max<int64_t>(1, M * ld)}, DType::U8, Device::CUDA);
  Tensor st = Tensor::empty({2}, DType::F32, Device::CUDA);
  quantize_rows(x.raw(), DType::F32, M, K, M <= 1 ? K : x.stride(0), ld, q.data<uint8_t>(), st.data<float>());
  Fp8Quantized r;
  r.bytes.resize(size_t(M * ld));
  float host_st[2];
  MD_CUDA(cudaStreamSynchronize(stream()));
  copy_to_host(host_st, st.raw(), sizeof host_st);
  if (!r.bytes.empty()) copy_to_host(r.bytes.data(), q.raw(), r.bytes.size());
  r.scale = host_st[1];
  return r;
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
  __device__ void put(int j, float v) const { y[j] = f32_to_bf16(v); }
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
  // FP8 precision runs block-quantized weights as BF16 on the GPU (the CPU quantizes their decoded rows to e4m3).
  const bool bf16 = compute_precision() != Precision::F32;
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
    dense_product_or_fail(M, nb, K, A, B, bp ? bp + n0 : nullptr, act, yp + n0, N, what);
  }
}

}  // namespace meshdit::cuda
