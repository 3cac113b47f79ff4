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

#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"
#include "backend/precision.h"

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
  // Row-major y [M, N] = x [M, K] . w [N, K]^T is column-major y^T [N, M] = w^T(as stored [K, N]) . x^T [K, M].
  const bool relu = act == Act::Relu;
  bool done = gemm(N, M, K, A, B, yp, N, bp, relu);
  if (!done) {  // no algorithm with this epilogue: a plain product, bias and activation after it
    MD_CHECK(gemm(N, M, K, A, B, yp, N, nullptr, false),
             "cuda linear: cuBLASLt has no algorithm for [" + std::to_string(M) + ", " + std::to_string(K) + "] x [" +
                 std::to_string(N) + ", " + std::to_string(K) + "]^T in " + dtype_name(w.dtype()));
    if (bp) {
      Tensor bias_b = b.reshape({1, N}).expand({M, N});
      Tensor out = y;
      add_broadcast(y, bias_b, out);
    }
    apply_activation(yp, M * N, act);
  } else if (!relu) {
    apply_activation(yp, M * N, act);
  }
}

void linear_quantized(const Tensor&, const Tensor&, QuantType type, const Tensor*, Act, Tensor&) {
  MD_CHECK(false, std::string("linear_quantized (") + quant_type_name(type) +
                      " block-quantized weights): not implemented on cuda yet");
}

}  // namespace meshdit::cuda
