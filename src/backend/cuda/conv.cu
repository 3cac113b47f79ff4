// Convolution on the GPU, float32 data and float32 products in every precision (the contract keeps the conv
// GEMM in float32), by one of two paths:
//
// cuDNN 9 (the legacy cudnnConvolutionForward API), loaded with dlopen at first use as linear.cu loads
// cuBLASLt, with math type CUDNN_FMA_MATH (no TF32: the fixtures' tolerances are float32's) and only the
// GEMM-like algorithms: FFT and Winograd round in their transforms, which a float32 sum-of-|terms| tolerance
// does not bound. Descriptors and the algorithm are kept per shape; the workspace comes from the caching
// allocator on the backend's stream.
//
// im2col + one cuBLASLt product per tile of output pixels, for everything cuDNN does not take: cuDNN not
// loadable (or built without <cudnn.h>), asymmetric padding (the legacy API has one pad per dimension, and a
// symmetric pad then a crop is wrong for strided convolutions), and shapes cuDNN answers NOT_SUPPORTED. For
// image b and output pixels [p0, p0 + np):
//   Y_b [O, np] (row-major, leading dimension P = Ho * Wo) = W [O, K] . col [K, np],   K = C * kh * kw,
// which column-major is Y^T [np, O] = col^T [np, K] . W^T [K, O], both operands as stored. Tiles keep col
// under kColFloats; a 1x1, stride-1, unpadded conv reads the image itself as col.
//
// Either way the bias is added after the product (cuBLASLt's bias epilogue runs along the other dimension of
// this layout). Each fallback is noted once on stderr; conv_library() (meshdit info) names the path.
#include <dlfcn.h>
#include <glob.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/conv_path.h"
#include "backend/cuda/elementwise.cuh"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"

// Only cuDNN 9's headers: the library loaded must be 9 too, and the legacy API's structs are checked against
// these declarations.
#if __has_include(<cudnn.h>)
#include <cudnn.h>
#endif
#if defined(CUDNN_MAJOR) && CUDNN_MAJOR == 9
#define MD_WITH_CUDNN 1
#else
#define MD_WITH_CUDNN 0
#endif

#ifndef MESHDIT_CUDA_LIBDIR
#define MESHDIT_CUDA_LIBDIR ""
#endif

namespace meshdit::cuda {
namespace {

constexpr int64_t kColFloats = int64_t(1) << 26;  // 256 MiB of im2col at most (unless one pixel's K is more)

std::atomic<size_t> g_cudnn_calls{0}, g_im2col_calls{0};

// A note on stderr the first time `flag` is raised: a fallback is worth knowing once, not per call.
void note_once(std::atomic<bool>& flag, const std::string& msg) {
  if (!flag.exchange(true)) std::fprintf(stderr, "meshdit: %s\n", msg.c_str());
}

// ---- im2col + cuBLASLt -------------------------------------------------------------------------------

// col [K, np]: row (c, ki, kj), column i = the value output pixel p0 + i sees through tap (ki, kj), 0 in the
// padding.
__global__ void im2col_kernel(const float* x, int64_t H, int64_t W, int64_t kh, int64_t kw, int sh, int sw, int pt,
                              int pl, int64_t Wo, int64_t p0, int64_t np, float* col, int64_t n) {
  MD_GRID_LOOP(e, n) {
    const int64_t i = e % np, row = e / np;
    const int64_t kj = row % kw, ki = (row / kw) % kh, c = row / (kw * kh);
    const int64_t p = p0 + i, oh = p / Wo, ow = p % Wo;
    const int64_t ih = oh * sh - pt + ki, iw = ow * sw - pl + kj;
    col[e] = ih >= 0 && ih < H && iw >= 0 && iw < W ? x[(c * H + ih) * W + iw] : 0.0f;
  }
}

__global__ void channel_bias_kernel(float* y, const float* bias, int64_t O, int64_t P, int64_t n) {
  MD_GRID_LOOP(e, n) y[e] += bias[(e / P) % O];
}

// y (every element written) = conv(x, wf) without bias; wf float32 contiguous, K > 0.
void conv2d_im2col(const Tensor& x, const Tensor& wf, const Conv2dParams& p, Tensor& y) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t O = wf.size(0), kh = wf.size(2), kw = wf.size(3);
  const int64_t Wo = y.size(3), P = y.size(2) * Wo, K = C * kh * kw;
  const bool direct = kh == 1 && kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_top == 0 && p.pad_left == 0 &&
                      p.pad_bottom == 0 && p.pad_right == 0;
  const int64_t tile = std::min(P, std::max<int64_t>(1, kColFloats / K));
  Tensor col = direct ? Tensor() : Tensor::empty({K * tile}, DType::F32, Device::CUDA);
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = x.f32() + b * C * H * W;
    float* yb = y.f32() + b * O * P;
    for (int64_t p0 = 0; p0 < P; p0 += tile) {
      const int64_t np = std::min(tile, P - p0);
      GemmOperand a{};
      if (direct) {
        a = {xb + p0, CUDA_R_32F, P, false};
      } else {
        const int64_t n = K * np;
        MD_LAUNCH(im2col_kernel, n, xb, H, W, kh, kw, p.stride_h, p.stride_w, p.pad_top, p.pad_left, Wo, p0, np,
                  col.f32(), n);
        a = {col.f32(), CUDA_R_32F, np, false};
      }
      const GemmOperand wb{wf.f32(), CUDA_R_32F, K, false};
      MD_CHECK(
          gemm(np, O, K, a, wb, yb + p0, P, nullptr, false),
          "cuda conv2d: cuBLASLt has no float32 algorithm for " + shape_str(x.shape()) + " * " + shape_str(wf.shape()));
    }
  }
  g_im2col_calls.fetch_add(1, std::memory_order_relaxed);
}

// ---- cuDNN -------------------------------------------------------------------------------------------

#if MD_WITH_CUDNN

#define MD_STR2(x) #x
#define MD_STR(x) MD_STR2(x)
constexpr const char* kSoname = "libcudnn.so." MD_STR(CUDNN_MAJOR);

// The cuDNN entry points used, resolved from the shared library. libcudnn.so.9 is a small shim that loads its
// sub-libraries (libcudnn_graph, _ops, _cnn, ...) from its own directory (RUNPATH $ORIGIN) when first needed.
struct Dnn {
  decltype(&cudnnGetVersion) get_version;
  decltype(&cudnnGetErrorString) error_string;
  decltype(&cudnnGetLastErrorString) last_error;
  decltype(&cudnnCnnVersionCheck) cnn_version_check;
  decltype(&cudnnCreate) create;
  decltype(&cudnnSetStream) set_stream;
  decltype(&cudnnCreateTensorDescriptor) tensor_create;
  decltype(&cudnnSetTensor4dDescriptor) tensor_set;
  decltype(&cudnnDestroyTensorDescriptor) tensor_destroy;
  decltype(&cudnnCreateFilterDescriptor) filter_create;
  decltype(&cudnnSetFilter4dDescriptor) filter_set;
  decltype(&cudnnDestroyFilterDescriptor) filter_destroy;
  decltype(&cudnnCreateConvolutionDescriptor) conv_create;
  decltype(&cudnnSetConvolution2dDescriptor) conv_set;
  decltype(&cudnnSetConvolutionMathType) conv_math;
  decltype(&cudnnDestroyConvolutionDescriptor) conv_destroy;
  decltype(&cudnnGetConvolution2dForwardOutputDim) out_dim;
  decltype(&cudnnGetConvolutionForwardAlgorithmMaxCount) algo_count;
  decltype(&cudnnGetConvolutionForwardAlgorithm_v7) algo_get;
  decltype(&cudnnGetConvolutionForwardWorkspaceSize) workspace_size;
  decltype(&cudnnConvolutionForward) forward;
  std::string description;  // "cuDNN 9.19.0 (/path/libcudnn.so.9)"
};

std::string dnn_error(const Dnn& d, cudnnStatus_t s) {
  char detail[512] = {};
  d.last_error(detail, sizeof detail);
  std::string msg = d.error_string(s);
  if (detail[0]) msg += std::string(" (") + detail + ")";
  return msg;
}

// cuDNN from PyTorch's pip wheels (nvidia-cudnn-cu12 / -cu13) in the usual Python prefixes.
std::vector<std::string> wheel_candidates() {
  std::vector<std::string> roots;
  for (const char* var : {"VIRTUAL_ENV", "CONDA_PREFIX"})
    if (const char* v = std::getenv(var); v && *v) roots.push_back(std::string(v) + "/lib/python3*/site-packages");
  if (const char* home = std::getenv("HOME"); home && *home)
    roots.push_back(std::string(home) + "/.local/lib/python3*/site-packages");
  for (const char* r : {"/usr/local/lib/python3*/dist-packages", "/usr/local/lib/python3*/site-packages",
                        "/usr/lib/python3/dist-packages", "/opt/conda/lib/python3*/site-packages"})
    roots.push_back(r);
  std::vector<std::string> found;
  for (const std::string& root : roots)
    for (const char* sub : {"/nvidia/cudnn/lib/", "/nvidia/cu13/lib/"}) {
      const std::string pattern = root + sub + kSoname;
      glob_t g{};
      if (glob(pattern.c_str(), 0, nullptr, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) found.push_back(g.gl_pathv[i]);
      globfree(&g);
    }
  return found;
}

template <class F>
void resolve(void* lib, const char* name, F& fn, std::string& missing) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
}

// The library and its entry points, or why not (`why`); never fatal: without cuDNN conv2d falls back.
struct Loaded {
  const Dnn* dnn = nullptr;
  std::string why;
};

const Loaded& load_cudnn() {
  static const Loaded loaded = [] {
    Loaded r;
    std::vector<std::string> candidates;
    std::string where;
    const char* env = std::getenv("MESHDIT_CUDNN_LIB");
    if (env && *env) {
      const std::string e = env;
      if (e == "off" || e == "0" || e == "none") {
        r.why = "cuDNN off: MESHDIT_CUDNN_LIB=" + e;
        return r;
      }
      // Named explicitly: nothing else is tried, so a wrong name is not hidden by another copy.
      std::error_code ec;
      candidates.push_back(std::filesystem::is_directory(e, ec) ? e + "/" + kSoname : e);
      where = "MESHDIT_CUDNN_LIB=" + e;
    } else {
      candidates.push_back(kSoname);
      where = std::string(kSoname) + " in the loader's path (LD_LIBRARY_PATH, ldconfig)";
      if (MESHDIT_CUDA_LIBDIR[0]) {
        candidates.push_back(std::string(MESHDIT_CUDA_LIBDIR) + "/" + kSoname);
        where += ", " + std::string(MESHDIT_CUDA_LIBDIR);
      }
      for (const std::string& w : wheel_candidates()) candidates.push_back(w);
      where += ", pip wheels' nvidia/cudnn/lib under the Python prefixes; MESHDIT_CUDNN_LIB=FILE or DIR names it";
      candidates.push_back("libcudnn.so");
    }
    void* lib = nullptr;
    std::string errors;  // the loader's reasons, but for "no such file" (the usual answer of most candidates)
    for (const std::string& c : candidates) {
      if ((lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL))) break;
      const char* e = dlerror();
      if (e && !std::string(e).ends_with("No such file or directory")) errors += std::string("; ") + e;
    }
    if (!lib) {
      r.why = "cuDNN not found: looked for " + where + errors;
      return r;
    }
    auto d = std::make_unique<Dnn>();
    std::string missing;
    resolve(lib, "cudnnGetVersion", d->get_version, missing);
    resolve(lib, "cudnnGetErrorString", d->error_string, missing);
    resolve(lib, "cudnnGetLastErrorString", d->last_error, missing);
    resolve(lib, "cudnnCnnVersionCheck", d->cnn_version_check, missing);
    resolve(lib, "cudnnCreate", d->create, missing);
    resolve(lib, "cudnnSetStream", d->set_stream, missing);
    resolve(lib, "cudnnCreateTensorDescriptor", d->tensor_create, missing);
    resolve(lib, "cudnnSetTensor4dDescriptor", d->tensor_set, missing);
    resolve(lib, "cudnnDestroyTensorDescriptor", d->tensor_destroy, missing);
    resolve(lib, "cudnnCreateFilterDescriptor", d->filter_create, missing);
    resolve(lib, "cudnnSetFilter4dDescriptor", d->filter_set, missing);
    resolve(lib, "cudnnDestroyFilterDescriptor", d->filter_destroy, missing);
    resolve(lib, "cudnnCreateConvolutionDescriptor", d->conv_create, missing);
    resolve(lib, "cudnnSetConvolution2dDescriptor", d->conv_set, missing);
    resolve(lib, "cudnnSetConvolutionMathType", d->conv_math, missing);
    resolve(lib, "cudnnDestroyConvolutionDescriptor", d->conv_destroy, missing);
    resolve(lib, "cudnnGetConvolution2dForwardOutputDim", d->out_dim, missing);
    resolve(lib, "cudnnGetConvolutionForwardAlgorithmMaxCount", d->algo_count, missing);
    resolve(lib, "cudnnGetConvolutionForwardAlgorithm_v7", d->algo_get, missing);
    resolve(lib, "cudnnGetConvolutionForwardWorkspaceSize", d->workspace_size, missing);
    resolve(lib, "cudnnConvolutionForward", d->forward, missing);
    std::string path = candidates.front();
    Dl_info info{};
    if (d->get_version && dladdr(reinterpret_cast<void*>(d->get_version), &info) && info.dli_fname)
      path = info.dli_fname;
    if (!missing.empty()) {
      r.why = path + " has no " + missing;
      return r;
    }
    const size_t v = d->get_version();
    const std::string version =
        std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
    if (v / 10000 != CUDNN_MAJOR) {
      r.why = path + " is cuDNN " + version + ", not " MD_STR(CUDNN_MAJOR);
      return r;
    }
    // Loads libcudnn_cnn and checks it against the shim: a missing or mismatched sub-library shows here, not
    // in the middle of a decode.
    if (const cudnnStatus_t s = d->cnn_version_check(); s != CUDNN_STATUS_SUCCESS) {
      r.why = path + ": cudnnCnnVersionCheck: " + dnn_error(*d, s);
      return r;
    }
    d->description = "cuDNN " + version + " (" + path + ")";
    r.dnn = d.release();
    return r;
  }();
  return loaded;
}

// The library with a handle on the backend's stream, or why not.
struct Path {
  const Dnn* dnn = nullptr;
  cudnnHandle_t handle = nullptr;
  std::string description;  // conv_library()
};

const Path& conv_path() {
  static const Path path = [] {
    Path p;
    const Loaded& l = load_cudnn();
    if (!l.dnn) {
      p.description = "im2col + cuBLASLt (" + l.why + ")";
      return p;
    }
    const Dnn& d = *l.dnn;
    cudnnHandle_t h = nullptr;
    if (const cudnnStatus_t s = d.create(&h); s != CUDNN_STATUS_SUCCESS) {
      p.description = "im2col + cuBLASLt (cudnnCreate with " + d.description + ": " + dnn_error(d, s) + ")";
      return p;
    }
    // Every call then runs in the backend's stream order, so the workspace's block can be reused at once.
    const cudnnStatus_t s = d.set_stream(h, stream());
    MD_CHECK(s == CUDNN_STATUS_SUCCESS, "cudnnSetStream: " + dnn_error(d, s));
    p.dnn = &d;
    p.handle = h;
    p.description = d.description;
    return p;
  }();
  return path;
}

// What cudnnConvolutionForward may answer that sends a shape to im2col: cuDNN's NOT_SUPPORTED family, and a
// pointer it finds misaligned (a view's offset). Any other failure there is fatal (a broken device, or a bug
// here that a fallback would hide).
bool unsupported(cudnnStatus_t s) {
  return CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED || s == CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER;
}

// Algorithms whose float32 result is a plain sum of float32 products (see the header).
bool gemm_like(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
}

constexpr size_t kMaxWorkspace = size_t(1) << 30;

// One shape's descriptors and algorithm, kept for the process (a model repeats a few dozen shapes).
struct Plan {
  bool ok = false;
  std::string why;  // when not ok
  cudnnTensorDescriptor_t xd = nullptr, yd = nullptr;
  cudnnFilterDescriptor_t wd = nullptr;
  cudnnConvolutionDescriptor_t cd = nullptr;
  cudnnConvolutionFwdAlgo_t algo{};
  size_t workspace = 0;
};

// n, C, H, W, O, kh, kw, pad_h, pad_w, stride_h, stride_w, alignment of the x and y pointers
using PlanKey = std::tuple<int, int, int, int, int, int, int, int, int, int, int, int>;
std::mutex g_dnn_mu;  // the handle is not for concurrent use, and guards the plans
std::map<PlanKey, Plan> g_plans;

// A cuDNN call while planning: any failure leaves the plan not ok, saying why, and the shape to im2col (with a
// note): a refused shape costs speed, never the run.
#define MD_DNN_PLAN(call)                                         \
  do {                                                            \
    const cudnnStatus_t md_s_ = (call);                           \
    if (md_s_ != CUDNN_STATUS_SUCCESS) {                          \
      plan.why = std::string(#call) + ": " + dnn_error(d, md_s_); \
      return plan;                                                \
    }                                                             \
  } while (0)

Plan make_plan(const Path& path, const PlanKey& k, int Ho, int Wo) {
  const Dnn& d = *path.dnn;
  const auto [n, C, H, W, O, kh, kw, pad_h, pad_w, stride_h, stride_w, align] = k;
  (void)align;
  Plan plan;
  MD_DNN_PLAN(d.tensor_create(&plan.xd));
  MD_DNN_PLAN(d.tensor_set(plan.xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, C, H, W));
  MD_DNN_PLAN(d.filter_create(&plan.wd));
  MD_DNN_PLAN(d.filter_set(plan.wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, O, C, kh, kw));
  MD_DNN_PLAN(d.conv_create(&plan.cd));
  // PyTorch's conv2d is a cross-correlation (the kernel not flipped).
  MD_DNN_PLAN(d.conv_set(plan.cd, pad_h, pad_w, stride_h, stride_w, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  MD_DNN_PLAN(d.conv_math(plan.cd, CUDNN_FMA_MATH));
  int on = 0, oc = 0, oh = 0, ow = 0;
  MD_DNN_PLAN(d.out_dim(plan.cd, plan.xd, plan.wd, &on, &oc, &oh, &ow));
  MD_CHECK(on == n && oc == O && oh == Ho && ow == Wo,
           "cuda conv2d: cuDNN's output [" + std::to_string(on) + ", " + std::to_string(oc) + ", " +
               std::to_string(oh) + ", " + std::to_string(ow) + "] is not the contract's [" + std::to_string(n) + ", " +
               std::to_string(O) + ", " + std::to_string(Ho) + ", " + std::to_string(Wo) + "]");
  MD_DNN_PLAN(d.tensor_create(&plan.yd));
  MD_DNN_PLAN(d.tensor_set(plan.yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, O, Ho, Wo));
  int max_algos = 0;
  MD_DNN_PLAN(d.algo_count(path.handle, &max_algos));
  std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(size_t(std::max(max_algos, 1)));
  int got = 0;
  MD_DNN_PLAN(d.algo_get(path.handle, plan.xd, plan.wd, plan.cd, plan.yd, int(perf.size()), &got, perf.data()));
  std::string seen;  // what the heuristic offered, for the message when nothing fits
  for (int i = 0; i < std::min(got, int(perf.size())); ++i) {
    const cudnnConvolutionFwdAlgoPerf_t& r = perf[size_t(i)];
    seen +=
        " " + std::to_string(int(r.algo)) + "/" + std::to_string(int(r.status)) + "/" + std::to_string(int(r.mathType));
    // Tensor-op math on float32 data is TF32; the descriptor forbids it, so such an entry is skipped too.
    if (r.status != CUDNN_STATUS_SUCCESS || !gemm_like(r.algo) || r.mathType == CUDNN_TENSOR_OP_MATH ||
        r.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
      continue;
    size_t bytes = 0;
    const cudnnStatus_t s = d.workspace_size(path.handle, plan.xd, plan.wd, plan.cd, plan.yd, r.algo, &bytes);
    if (s != CUDNN_STATUS_SUCCESS) {
      seen += "(workspace: " + dnn_error(d, s) + ")";
      continue;
    }
    if (bytes > kMaxWorkspace) continue;
    plan.algo = r.algo;
    plan.workspace = bytes;
    plan.ok = true;
    return plan;
  }
  plan.why = "no float32 GEMM-like algorithm with FMA math among cuDNN's (algo/status/math):" + seen;
  return plan;
}

std::string pads_str(const Conv2dParams& p) {
  return "(top " + std::to_string(p.pad_top) + ", left " + std::to_string(p.pad_left) + ", bottom " +
         std::to_string(p.pad_bottom) + ", right " + std::to_string(p.pad_right) + ")";
}

uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al) al >>= 1;
  return al;
}

std::atomic<bool> g_note_missing{false}, g_note_asymmetric{false}, g_note_large{false};

#endif  // MD_WITH_CUDNN

// y = conv(x, wf) through cuDNN; false (y untouched, or to be overwritten) when this convolution is for im2col.
bool conv2d_cudnn(const Tensor& x, const Tensor& wf, const Conv2dParams& p, Tensor& y) {
#if MD_WITH_CUDNN
  const Path& path = conv_path();
  auto shape = [&] { return shape_str(x.shape()) + " * " + shape_str(wf.shape()); };  // for the notes only
  if (!path.dnn) {
    note_once(g_note_missing, "cuda conv2d: " + path.description + "; every convolution runs as im2col + cuBLASLt");
    return false;
  }
  if (p.pad_top != p.pad_bottom || p.pad_left != p.pad_right) {
    note_once(g_note_asymmetric, "cuda conv2d: asymmetric padding " + pads_str(p) + " (first: " + shape() +
                                     ") runs as im2col + cuBLASLt: cuDNN's API has one pad per dimension");
    return false;
  }
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t O = wf.size(0), kh = wf.size(2), kw = wf.size(3), Ho = y.size(2), Wo = y.size(3);
  // The legacy descriptors count in int: batches are split so that each part's tensors stay under INT_MAX
  // elements; an image over it goes to im2col.
  const int64_t image = std::max(C * H * W, O * Ho * Wo);
  if (image > INT_MAX || O * C * kh * kw > INT_MAX) {
    note_once(g_note_large, "cuda conv2d: " + shape() + " has more than 2^31 elements per image; im2col + cuBLASLt");
    return false;
  }
  const int64_t chunk = std::min<int64_t>(B, INT_MAX / image);
  const Dnn& d = *path.dnn;
  std::lock_guard<std::mutex> lock(g_dnn_mu);
  // Every part is planned before any runs, so that a refused shape goes to im2col whole.
  std::vector<Plan*> plans;
  for (int64_t b0 = 0; b0 < B; b0 += chunk) {
    const int64_t n = std::min(chunk, B - b0);
    const float* xb = x.f32() + b0 * C * H * W;
    const float* yb = y.f32() + b0 * O * Ho * Wo;
    const PlanKey key{int(n),     int(C),     int(H),     int(W),
                      int(O),     int(kh),    int(kw),    p.pad_top,
                      p.pad_left, p.stride_h, p.stride_w, int(std::min(alignment(xb), alignment(yb)))};
    auto it = g_plans.find(key);
    if (it == g_plans.end()) {
      it = g_plans.emplace(key, make_plan(path, key, int(Ho), int(Wo))).first;
      if (!it->second.ok)  // noted once per shape: the plan, refused, is kept
        std::fprintf(stderr, "meshdit: cuda conv2d: cuDNN does not take %s (%s); it runs as im2col + cuBLASLt\n",
                     shape().c_str(), it->second.why.c_str());
    }
    if (!it->second.ok) return false;
    plans.push_back(&it->second);
  }
  const float one = 1.0f, zero = 0.0f;
  for (size_t i = 0; i < plans.size(); ++i) {
    Plan& plan = *plans[i];
    const int64_t b0 = int64_t(i) * chunk;
    // From the caching allocator: freed at the end of this iteration, reusable by the next work on the stream.
    Tensor ws =
        plan.workspace ? Tensor::empty({int64_t((plan.workspace + 3) / 4)}, DType::F32, Device::CUDA) : Tensor();
    const cudnnStatus_t s =
        d.forward(path.handle, &one, plan.xd, x.f32() + b0 * C * H * W, plan.wd, wf.f32(), plan.cd, plan.algo,
                  plan.workspace ? ws.f32() : nullptr, plan.workspace, &zero, plan.yd, y.f32() + b0 * O * Ho * Wo);
    if (s != CUDNN_STATUS_SUCCESS) {
      if (!unsupported(s))
        fatal(__FILE__, __LINE__, "cuda conv2d: cudnnConvolutionForward for " + shape() + ": " + dnn_error(d, s));
      plan.ok = false;
      plan.why = "cudnnConvolutionForward: " + dnn_error(d, s);
      std::fprintf(stderr, "meshdit: cuda conv2d: cuDNN does not take %s (%s); it runs as im2col + cuBLASLt\n",
                   shape().c_str(), plan.why.c_str());
      return false;  // im2col writes the whole of y, parts done here included
    }
  }
  g_cudnn_calls.fetch_add(1, std::memory_order_relaxed);
  return true;
#else
  (void)x, (void)wf, (void)p, (void)y;
  static std::atomic<bool> noted{false};
  note_once(noted, "cuda conv2d: built without cuDNN 9's cudnn.h; every convolution runs as im2col + cuBLASLt");
  return false;
#endif
}

}  // namespace

const char* conv_library() {
#if MD_WITH_CUDNN
  return conv_path().description.c_str();
#else
  return "im2col + cuBLASLt (built without cuDNN 9's cudnn.h)";
#endif
}

std::string cudnn_library() {
#if MD_WITH_CUDNN
  const Loaded& l = load_cudnn();
  return l.dnn ? l.dnn->description : l.why;
#else
  return "built without cuDNN 9's cudnn.h";
#endif
}

ConvCounts conv_counts() { return {g_cudnn_calls.load(), g_im2col_calls.load()}; }

void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& y) {
  const int64_t O = w.size(0), P = y.size(2) * y.size(3), K = x.size(1) * w.size(2) * w.size(3);
  if (y.numel() == 0) return;
  if (K == 0) {
    fill(y, 0.0f);
  } else {
    // A bf16/f16 weight is widened once per call (float32 products in every precision).
    const Tensor wf = f32_contiguous(w);
    if (!conv2d_cudnn(x, wf, p, y)) conv2d_im2col(x, wf, p, y);
  }
  if (bias) {
    const Tensor bf = f32_contiguous(*bias);
    const int64_t n = y.numel();
    MD_LAUNCH(channel_bias_kernel, n, y.f32(), bf.f32(), O, P, n);
  }
}

}  // namespace meshdit::cuda
