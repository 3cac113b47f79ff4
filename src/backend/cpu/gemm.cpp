#include "backend/cpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>
#include <vector>

#include "backend/cpu/cpu_info.h"

// Debian's libdnnl runs its threads on OpenMP (libgomp). The two calls are declared here rather than
// through <omp.h> so that they bind to the runtime libdnnl uses (CMake links libgomp), whichever OpenMP
// our own compiler would bring.
extern "C" {
void omp_set_num_threads(int);
int omp_get_max_threads(void);
}

namespace meshdit::cpu {
namespace {

using dnnl::memory;
using dt = memory::data_type;

// Never destroyed: the pool's threads release their cached primitives when they are joined, during
// static destruction, possibly after a static engine would be gone.
dnnl::engine& engine() {
  static dnnl::engine& eng = *new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return eng;
}

struct Key {
  int64_t m, n, k, lda, ldb, ldc;
  bool ta, tb, bf16;
  float alpha, beta;
  bool operator==(const Key&) const = default;
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    for (int64_t v : {k.m, k.n, k.k, k.lda, k.ldb, k.ldc}) mix(uint64_t(v));
    mix(uint64_t(k.ta) | uint64_t(k.tb) << 1 | uint64_t(k.bf16) << 2);
    uint32_t a, b;
    std::memcpy(&a, &k.alpha, 4);
    std::memcpy(&b, &k.beta, 4);
    mix(uint64_t(a) << 32 | b);
    return size_t(h);
  }
};

// A matrix [rows, cols] stored row-major with leading dimension ld, or its transpose, as a strided desc.
memory::desc matrix_desc(int64_t rows, int64_t cols, int64_t ld, bool trans, dt type) {
  return memory::desc({rows, cols}, type, trans ? memory::dims{1, ld} : memory::dims{ld, 1});
}

dnnl::matmul::primitive_desc make_pd(const Key& k) {
  const dt type = k.bf16 ? dt::bf16 : dt::f32;
  const memory::desc a = matrix_desc(k.m, k.k, k.lda, k.ta, type);
  const memory::desc b = matrix_desc(k.k, k.n, k.ldb, k.tb, type);
  const memory::desc c({k.m, k.n}, dt::f32, memory::dims{k.ldc, 1});
  dnnl::primitive_attr attr;
  // Our pool runs several products at once: each thread passes its own scratch buffer.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (k.alpha != 1.0f) attr.set_output_scales(0, {k.alpha});
  if (k.beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(k.beta);
    attr.set_post_ops(po);
  }
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, engine());
}

// A built primitive with its memory objects, whose data handles are swapped per call.
struct Entry {
  dnnl::matmul prim;
  memory a, b, c, scratch;
  size_t scratch_bytes = 0;
};

Entry make_entry(const Key& k) {
  const auto pd = make_pd(k);
  MD_CHECK(std::strncmp(pd.impl_info_str(), "ref", 3) != 0,
           std::string("gemm: oneDNN offers only its reference matmul (") + pd.impl_info_str() + ") for this product");
  Entry e;
  e.prim = dnnl::matmul(pd);
  e.a = memory(pd.src_desc(), engine(), DNNL_MEMORY_NONE);
  e.b = memory(pd.weights_desc(), engine(), DNNL_MEMORY_NONE);
  e.c = memory(pd.dst_desc(), engine(), DNNL_MEMORY_NONE);
  e.scratch_bytes = pd.scratchpad_desc().get_size();
  e.scratch = memory(pd.scratchpad_desc(), engine(), DNNL_MEMORY_NONE);
  return e;
}


const char* isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_all: return "all";
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
  }
  return "unknown";
}

dnnl_cpu_isa_t isa_from_name(const std::string& s) {
  for (dnnl_cpu_isa_t i : {dnnl_cpu_isa_sse41, dnnl_cpu_isa_avx, dnnl_cpu_isa_avx2, dnnl_cpu_isa_avx512_core,
                           dnnl_cpu_isa_avx512_core_vnni, dnnl_cpu_isa_avx512_core_bf16, dnnl_cpu_isa_avx512_core_amx})
    if (s == isa_name(i)) return i;
  return dnnl_cpu_isa_all;
}

// The implementation oneDNN picks for a Linear-sized product (x [1024, 2432] . W^T, W [2432, 2432]
// stored [out, in]); "" with the reason in *err when it builds none.
std::string probe_impl(bool bf16, std::string* err) {
  try {
    const Key k{1024, 2432, 2432, 2432, 2432, 2432, false, true, bf16, 1.0f, 0.0f};
    return make_pd(k).impl_info_str();
  } catch (const dnnl::error& e) {
    if (err) *err = e.what();
    return "";
  }
}

GemmKernelInfo detect_kernels() {
  GemmKernelInfo info;
  const dnnl_version_t* v = dnnl_version();
  info.library = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                 std::to_string(v->patch) + " (" + (v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other") +
                 " runtime)";
  info.isa = isa_name(dnnl_get_effective_cpu_isa());
  info.f32_impl = probe_impl(false, nullptr);
  const std::string bf16 = probe_impl(true, nullptr);
  // A reference bf16 matmul is orders of magnitude slower than f32: no bf16 path then, rather than that.
  info.bf16_available = !bf16.empty() && bf16.rfind("ref", 0) != 0;
  info.bf16_impl = info.bf16_available ? bf16 : "";
  return info;
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, float alpha, const GemmOperand& a, const GemmOperand& b, float beta,
          float* c, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  MD_CHECK(a.dtype == b.dtype && (a.dtype == DType::F32 || a.dtype == DType::BF16),
           std::string("gemm: operands must be both F32 or both BF16, got ") + dtype_name(a.dtype) + " and " +
               dtype_name(b.dtype));
  if (K <= 0) {  // an empty sum: C = beta * C
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  if (a.dtype == DType::BF16 && !bf16_gemm_available()) {
    // Widens the stored rows x cols of an operand into buf, leading dimension cols.
    auto widen = [](const GemmOperand& op, int64_t rows, int64_t cols, std::vector<float>& buf) {
      buf.resize(size_t(rows * cols));
      const uint16_t* p = static_cast<const uint16_t*>(op.data);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) buf[size_t(r * cols + j)] = bf16_to_f32(p[r * op.ld + j]);
      return GemmOperand{buf.data(), DType::F32, cols, op.trans};
    };
    thread_local std::vector<float> wa, wb;
    const GemmOperand fa = a.trans ? widen(a, K, M, wa) : widen(a, M, K, wa);
    const GemmOperand fb = b.trans ? widen(b, N, K, wb) : widen(b, K, N, wb);
    gemm(M, N, K, alpha, fa, fb, beta, c, ldc);
    return;
  }
  // Our pool owns the cores: a product inside one of its tasks must not start an OpenMP team. The
  // setting is per thread, and a caller (the benchmarks' oneDNN runs) may have changed it meanwhile.
  if (omp_get_max_threads() != 1) omp_set_num_threads(1);

  const Key key{M, N, K, a.ld, b.ld, ldc, a.trans, b.trans, a.dtype == DType::BF16, alpha, beta};
  // Per thread: no lock on the hot path, and each entry's memory objects belong to one thread.
  thread_local std::unordered_map<Key, Entry, KeyHash> cache;
  thread_local std::vector<char> scratch;
  thread_local dnnl::stream stream(engine());
  auto it = cache.find(key);
  if (it == cache.end()) {
    try {
      it = cache.emplace(key, make_entry(key)).first;
    } catch (const dnnl::error& e) {
      MD_CHECK(false, std::string("gemm: oneDNN cannot build a matmul for ") + std::to_string(M) + "x" +
                          std::to_string(N) + "x" + std::to_string(K) + ": " + e.what());
    }
  }
  Entry& e = it->second;
  if (scratch.size() < e.scratch_bytes) scratch.resize(e.scratch_bytes);
  e.a.set_data_handle(const_cast<void*>(a.data));
  e.b.set_data_handle(const_cast<void*>(b.data));
  e.c.set_data_handle(c);
  e.scratch.set_data_handle(scratch.data());
  e.prim.execute(stream, {{DNNL_ARG_SRC, e.a},
                          {DNNL_ARG_WEIGHTS, e.b},
                          {DNNL_ARG_DST, e.c},
                          {DNNL_ARG_SCRATCHPAD, e.scratch}});
}

void to_bf16(const float* src, int64_t n, uint16_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

const GemmKernelInfo& gemm_kernel_info() {
  static const GemmKernelInfo info = detect_kernels();
  return info;
}

bool bf16_gemm_available() { return gemm_kernel_info().bf16_available; }

std::string gemm_kernel_line() {
  const auto& k = gemm_kernel_info();
  return k.library + ", isa " + k.isa + ", f32 " + (k.f32_impl.empty() ? "none" : k.f32_impl) + ", bf16 " +
         (k.bf16_available ? k.bf16_impl : "none");
}

Status check_gemm_dispatch() {
  const CpuInfo& cpu = cpu_info();
  const GemmKernelInfo& k = gemm_kernel_info();
  const std::string want = cpu.best_onednn_isa();
  const dnnl_cpu_isa_t have = dnnl_get_effective_cpu_isa(), need = isa_from_name(want);
  // oneDNN's ISA values are nested bit masks: a level includes every bit of the levels below it.
  if ((unsigned(have) & unsigned(need)) != unsigned(need))
    return make_error("GEMM dispatch: the CPU supports " + want + " but oneDNN runs " + k.isa +
                      " (is DNNL_MAX_CPU_ISA set?)");
  if (k.f32_impl.empty() || k.f32_impl.rfind("ref", 0) == 0)
    return make_error("GEMM dispatch: oneDNN has no optimised f32 matmul here (" +
                      (k.f32_impl.empty() ? std::string("none") : k.f32_impl) + ")");
  if (cpu.avx512_bf16 && cpu.avx512_core() && !k.bf16_available)
    return make_error("GEMM dispatch: the CPU has avx512_bf16 but oneDNN offers no bf16 matmul kernel");
  return ok_status();
}

}  // namespace meshdit::cpu
