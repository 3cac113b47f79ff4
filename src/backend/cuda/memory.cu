// Device memory and data movement: the caching allocator, strided dtype-converting copies, host <-> device
// transfers and zeroing, plus the runtime's state the other files share (stream, device properties).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/graph.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/stream_hooks.h"
#include "core/align.h"

namespace meshdit::cuda {

namespace {

// The capture this thread runs (graph.cu), for the calls a capture cannot contain.
struct CaptureStaging {
  bool active = false;
  char* staging = nullptr;
  size_t bytes = 0, used = 0;
};
thread_local CaptureStaging t_capture;

}  // namespace

void fail(const char* call, cudaError_t e, const char* file, int line) {
  const std::string msg = std::string(call) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
  // Inside a capture a failed call (a sync the capture forbids, a launch after it was invalidated) abandons
  // the capture, which then runs the forward eagerly, instead of the process.
  if (t_capture.active) throw CaptureAborted{msg + " (" + file + ":" + std::to_string(line) + ")"};
  fatal(file, line, msg);
}

bool device_present() {
  static const bool present = [] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    (void)cudaGetLastError();  // a failed query must not linger as the next call's error
    return e == cudaSuccess && n > 0;
  }();
  return present;
}

std::vector<DeviceInfo> devices() {
  std::vector<DeviceInfo> out;
  if (!device_present()) return out;
  int n = 0, current = 0;
  MD_CUDA(cudaGetDeviceCount(&n));
  MD_CUDA(cudaGetDevice(&current));
  for (int k = 0; k < n; ++k) {
    const int d = k == 0 ? current : (k <= current ? k - 1 : k);
    cudaDeviceProp p{};
    MD_CUDA(cudaGetDeviceProperties(&p, d));
    DeviceInfo info;
    info.name = p.name;
    info.total_bytes = p.totalGlobalMem;
    info.major = p.major;
    info.minor = p.minor;
    info.multiprocessors = p.multiProcessorCount;
    if (d == current) {
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) info.free_bytes = free_b;
      (void)cudaGetLastError();
    }
    out.push_back(info);
  }
  return out;
}

cudaStream_t stream() {
  static const cudaStream_t s = [] {
    cudaStream_t st = nullptr;
    MD_CUDA(cudaStreamCreate(&st));
    return st;
  }();
  return s;
}

void* compute_stream_handle() { return stream(); }

namespace {

// Never destroyed, like the allocator: a communicator destroyed during static destruction still unregisters.
struct StreamChecks {
  std::mutex mu;
  std::vector<std::pair<StreamCheck, void*>> list;
};
StreamChecks& stream_checks() {
  static StreamChecks* c = new StreamChecks;
  return *c;
}

bool have_stream_checks() {
  StreamChecks& c = stream_checks();
  std::lock_guard<std::mutex> lock(c.mu);
  return !c.list.empty();
}

// The host's wait for the compute stream (stream_hooks.h): a plain synchronise, or, while checks are
// registered, a poll that runs them between queries (yielding at first, then sleeping 50 us between polls).
void wait_for_stream() {
  if (!have_stream_checks()) {
    MD_CUDA(cudaStreamSynchronize(stream()));
    return;
  }
  StreamChecks& c = stream_checks();
  for (int polls = 0;; ++polls) {
    const cudaError_t e = cudaStreamQuery(stream());
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) fail("cudaStreamQuery", e, __FILE__, __LINE__);
    {
      std::lock_guard<std::mutex> lock(c.mu);
      for (const auto& [check, ctx] : c.list) check(ctx);
    }
    if (polls < 1000)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace

void add_stream_check(StreamCheck check, void* ctx) {
  StreamChecks& c = stream_checks();
  std::lock_guard<std::mutex> lock(c.mu);
  c.list.emplace_back(check, ctx);
}

void remove_stream_check(StreamCheck check, void* ctx) {
  StreamChecks& c = stream_checks();
  std::lock_guard<std::mutex> lock(c.mu);
  std::erase(c.list, std::make_pair(check, ctx));
}

int multiprocessors() {
  static const int n = [] {
    int dev = 0, sms = 0;
    MD_CUDA(cudaGetDevice(&dev));
    MD_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return std::max(1, sms);
  }();
  return n;
}

namespace {

// Freed blocks are kept in free lists by size class and handed to the next allocation of that class, so a
// denoising step that allocates the same activations as the last one never reaches cudaMalloc / cudaFree
// (both synchronise the device). Classes: powers of two up to 1 MiB (from 512 bytes), then eighths of a
// power of two (at most 12.5 % waste). When cudaMalloc fails, the cache is returned to the driver and the
// allocation tried once more.
//
// A captured graph's pool (core/graph_pool.h) takes part through the hooks below: while a capture runs every
// allocation comes from its pool, and a registered pool gets its blocks back when they are freed. Every block a
// pool owns counts as in use here until the pool is closed.
class CachingAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    const size_t c = size_class(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (capture_) {
        // The driver may not be asked during a capture: a block the rehearsal did not foresee ends it.
        if (void* p = capture_->take(c)) return p;
        throw CaptureAborted{"an allocation of " + std::to_string(bytes) +
                             " bytes that the pool reserved from the eager forward cannot serve (the captured "
                             "forward allocates differently)"};
      }
      auto it = free_.find(c);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= c;
        in_use_ += c;
        ++reuses_;
        if (rehearsal_) rehearsal_->note_alloc(p, c);
        return p;
      }
    }
    void* p = nullptr;
    if (cudaMalloc(&p, c) != cudaSuccess) {
      (void)cudaGetLastError();
      release();
      if (cudaMalloc(&p, c) != cudaSuccess) {
        (void)cudaGetLastError();
        return nullptr;  // Tensor::empty reports the out-of-memory with the size
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ += c;
    ++driver_allocations_;
    if (rehearsal_) rehearsal_->note_alloc(p, c);
    return p;
  }

  void deallocate(void* p, size_t bytes) override {
    const size_t c = size_class(bytes);
    fp8_forget_weights(p, c);  // outside mu_: it frees tensors of its own, which come back here
    std::lock_guard<std::mutex> lock(mu_);
    if (rehearsal_) rehearsal_->note_free(p);
    for (GraphPool* pool : pools_)
      if (pool->give_back(p)) return;
    if (capture_) {
      capture_->hold(p, c);  // the captured kernels may read it: reserved for the graph, not reused
      return;
    }
    free_[c].push_back(p);
    in_use_ -= c;
    cached_ += c;
  }

  const char* name() const override { return "cuda-caching"; }

  void release() {
    std::map<size_t, std::vector<void*>> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (auto& [c, list] : blocks)
      for (void* p : list) MD_CUDA(cudaFree(p));  // cudaFree waits for the work still using the block
  }

  void set_rehearsal(GraphPool* pool) {
    std::lock_guard<std::mutex> lock(mu_);
    rehearsal_ = pool;
  }

  void set_capture(GraphPool* pool) {
    std::lock_guard<std::mutex> lock(mu_);
    capture_ = pool;
  }

  Status reserve(GraphPool& pool) {
    for (const auto& [c, n] : pool.plan()) {
      for (int64_t k = 0; k < n; ++k) {
        void* p = nullptr;
        {
          std::lock_guard<std::mutex> lock(mu_);
          auto it = free_.find(c);
          if (it != free_.end() && !it->second.empty()) {
            p = it->second.back();
            it->second.pop_back();
            cached_ -= c;
            in_use_ += c;
            ++reuses_;
          }
        }
        if (!p) {
          if (cudaMalloc(&p, c) != cudaSuccess) {
            (void)cudaGetLastError();
            release();
            if (cudaMalloc(&p, c) != cudaSuccess) {
              (void)cudaGetLastError();
              return make_error("the graph's pool needs " + std::to_string(pool.plan_bytes()) +
                                " bytes of device memory; out of memory after " +
                                std::to_string(pool.reserved_bytes()) + " (" + std::to_string(c) + "-byte block)");
            }
          }
          std::lock_guard<std::mutex> lock(mu_);
          in_use_ += c;
          ++driver_allocations_;
        }
        std::lock_guard<std::mutex> lock(mu_);
        pool.add_reserved(p, c);
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    pools_.push_back(&pool);
    return ok_status();
  }

  void close(GraphPool& pool) {
    std::lock_guard<std::mutex> lock(mu_);
    pools_.erase(std::remove(pools_.begin(), pools_.end(), &pool), pools_.end());
    if (capture_ == &pool) capture_ = nullptr;
    if (rehearsal_ == &pool) rehearsal_ = nullptr;
    for (const auto& [p, c] : pool.close()) {
      free_[c].push_back(p);
      in_use_ -= c;
      cached_ += c;
    }
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return AllocatorStats{in_use_, cached_, driver_allocations_, reuses_};
  }

  static size_t size_class(size_t bytes) {
    size_t p = 512;
    while (p < bytes && p < (size_t(1) << 20)) p <<= 1;
    if (p >= bytes) return p;
    size_t pow2 = size_t(1) << 20;
    while (pow2 * 2 < bytes) pow2 <<= 1;  // pow2 < bytes <= 2 * pow2
    const size_t step = pow2 / 8;
    return (bytes + step - 1) / step * step;
  }

 private:
  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  size_t in_use_ = 0, cached_ = 0, driver_allocations_ = 0, reuses_ = 0;
  GraphPool* rehearsal_ = nullptr;  // notes every allocation and free
  GraphPool* capture_ = nullptr;    // serves every allocation
  std::vector<GraphPool*> pools_;   // registered: their blocks come back to them
};

// Bytes uploaded from the host during the rehearsal (each rounded up to 256, as staged).
size_t g_rehearsed_upload_bytes = 0;
bool g_rehearsing = false;
constexpr size_t kStagingAlign = 256;

// Never destroyed: tensors freed during static destruction still give their blocks back to it, and the
// driver may already be gone by then (the process's exit returns the memory).
CachingAllocator& caching_allocator() {
  static CachingAllocator* a = new CachingAllocator;
  return *a;
}

// dst = src element-wise through both tensors' strides, converting dtypes as host_copy does (integers by
// value through double; float targets rounded to nearest even).
__global__ void copy_kernel(const char* src, DType st, Strided ss, char* dst, DType dt, Strided ds, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t so = strided_offset(ss, i), dof = strided_offset(ds, i);
    double v;
    switch (st) {
      case DType::F32:
        v = reinterpret_cast<const float*>(src)[so];
        break;
      case DType::BF16:
        v = bf16_to_f32(reinterpret_cast<const uint16_t*>(src)[so]);
        break;
      case DType::F16:
        v = f16_to_f32(reinterpret_cast<const uint16_t*>(src)[so]);
        break;
      case DType::I64:
        v = double(reinterpret_cast<const int64_t*>(src)[so]);
        break;
      case DType::F64:
        v = reinterpret_cast<const double*>(src)[so];
        break;
      case DType::I32:
        v = reinterpret_cast<const int32_t*>(src)[so];
        break;
      default:
        v = reinterpret_cast<const uint8_t*>(src)[so];
        break;
    }
    switch (dt) {
      case DType::F32:
        reinterpret_cast<float*>(dst)[dof] = float(v);
        break;
      case DType::BF16:
        reinterpret_cast<uint16_t*>(dst)[dof] = f32_to_bf16(float(v));
        break;
      case DType::F16:
        reinterpret_cast<uint16_t*>(dst)[dof] = f32_to_f16(float(v));
        break;
      case DType::I64:
        reinterpret_cast<int64_t*>(dst)[dof] = int64_t(v);
        break;
      case DType::F64:
        reinterpret_cast<double*>(dst)[dof] = v;
        break;
      case DType::I32:
        reinterpret_cast<int32_t*>(dst)[dof] = int32_t(v);
        break;
      default:
        reinterpret_cast<uint8_t*>(dst)[dof] = uint8_t(v);
        break;
    }
  }
}

// The same dtype with the last dimensions dense in both: whole runs of bytes, one cudaMemcpy2DAsync per
// outer index would need a loop on the host, so only the fully contiguous case skips the kernel.
bool same_dense(const Tensor& src, const Tensor& dst) {
  return src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous();
}

__global__ void out_of_range_kernel(const int64_t* ids, int64_t n, int64_t limit, unsigned long long* first) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (ids[i] < 0 || ids[i] >= limit) atomicMin(first, (unsigned long long)i);
}

}  // namespace

void begin_rehearsal(GraphPool* pool) {
  g_rehearsed_upload_bytes = 0;
  g_rehearsing = true;
  caching_allocator().set_rehearsal(pool);
}

size_t end_rehearsal() {
  caching_allocator().set_rehearsal(nullptr);
  g_rehearsing = false;
  return g_rehearsed_upload_bytes;
}

Status reserve_pool(GraphPool& pool) { return caching_allocator().reserve(pool); }
void close_pool(GraphPool& pool) { caching_allocator().close(pool); }

void begin_capture_hooks(GraphPool* pool, char* staging, size_t staging_bytes) {
  caching_allocator().set_capture(pool);
  t_capture = CaptureStaging{true, staging, staging_bytes, 0};
}

void end_capture_hooks() {
  t_capture = CaptureStaging{};
  caching_allocator().set_capture(nullptr);
}

AllocatorStats allocator_stats() { return caching_allocator().stats(); }
void release_cached_memory() { caching_allocator().release(); }
Allocator* allocator() { return &caching_allocator(); }

Strided strided_of(const Tensor& t) {
  MD_CHECK(t.dim() <= kMaxRank, "cuda: tensors of rank " + std::to_string(t.dim()) + " are not supported (at most " +
                                    std::to_string(kMaxRank) + ")");
  Strided s;
  s.rank = int(t.dim());
  for (int d = 0; d < s.rank; ++d) {
    s.size[d] = t.size(d);
    s.stride[d] = t.stride(d);
  }
  return s;
}

Strided strided_as(const Tensor& shape_of, const Tensor& t) {
  MD_CHECK(shape_of.shape() == t.shape(), "cuda: shape " + shape_str(t.shape()) + " vs " + shape_str(shape_of.shape()));
  return strided_of(t);
}

void copy(const Tensor& src, Tensor& dst) {
  MD_CHECK(src.shape() == dst.shape(), "cuda copy: shape " + shape_str(src.shape()) + " vs " + shape_str(dst.shape()));
  const int64_t n = src.numel();
  if (n == 0) return;
  if (same_dense(src, dst)) {
    MD_CUDA(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToDevice, stream()));
    return;
  }
  copy_kernel<<<grid_for(n), kThreads, 0, stream()>>>(static_cast<const char*>(src.raw()), src.dtype(), strided_of(src),
                                                      static_cast<char*>(dst.raw()), dst.dtype(), strided_of(dst), n);
  MD_CUDA_LAUNCHED(copy_kernel);
}

// Both directions wait for the transfer: the host buffer may be freed or read as soon as the call returns. These
// are the backend's host synchronisation points, where NCCL failures surface (stream_hooks.h).
void copy_to_host(void* host_dst, const void* src, size_t bytes) {
  if (!bytes) return;
  if (t_capture.active)
    throw CaptureAborted{"a device-to-host copy of " + std::to_string(bytes) +
                         " bytes inside the forward (a decision on the host from device data cannot be captured)"};
  // A copy to or from pageable memory may itself wait for the stream, inside the runtime where no check
  // runs: with checks registered (stream_hooks.h) the stream is drained under them first.
  if (have_stream_checks()) wait_for_stream();
  MD_CUDA(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
  wait_for_stream();
}

void copy_from_host(void* dst, const void* host_src, size_t bytes) {
  if (!bytes) return;
  if (g_rehearsing) g_rehearsed_upload_bytes += align_up(bytes, kStagingAlign);
  if (t_capture.active) {
    // A graph cannot copy from pageable memory nor wait for the copy: the bytes go to the graph's pinned staging
    // buffer, which every replay copies from again (what the host computed at the capture: the first replay's
    // check catches a value that changes per call).
    if (t_capture.used + align_up(bytes, kStagingAlign) > t_capture.bytes)
      throw CaptureAborted{"an upload of " + std::to_string(bytes) + " bytes from the host beyond the " +
                           std::to_string(t_capture.bytes) + " the eager forward uploaded"};
    char* stage = t_capture.staging + t_capture.used;
    t_capture.used += align_up(bytes, kStagingAlign);
    std::memcpy(stage, host_src, bytes);
    MD_CUDA(cudaMemcpyAsync(dst, stage, bytes, cudaMemcpyHostToDevice, stream()));
    return;
  }
  if (have_stream_checks()) wait_for_stream();  // as in copy_to_host
  MD_CUDA(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream()));
  wait_for_stream();
}

void zero(Tensor& y) {
  if (y.nbytes()) MD_CUDA(cudaMemsetAsync(y.raw(), 0, y.nbytes(), stream()));
}

size_t free_memory() {
  size_t free = 0, total = 0;
  MD_CUDA(cudaMemGetInfo(&free, &total));
  return free + caching_allocator().stats().cached_bytes;  // cached free blocks are reused before the driver's
}

Tensor f32_contiguous(const Tensor& t) {
  if (t.dtype() == DType::F32 && t.is_contiguous()) return t;
  Tensor out = Tensor::empty(t.shape(), DType::F32, Device::CUDA);
  copy(t, out);
  return out;
}

Tensor upload(const void* host, size_t bytes) {
  Tensor t = Tensor::empty({int64_t(bytes)}, DType::U8, Device::CUDA);
  copy_from_host(t.raw(), host, bytes);
  return t;
}

int64_t first_out_of_range(const Tensor& ids, int64_t limit) {
  const int64_t n = ids.numel();
  if (n == 0) return -1;
  const unsigned long long none = ~0ull;
  Tensor flag = upload(&none, sizeof(none));
  auto* f = flag.data<unsigned long long>();
  out_of_range_kernel<<<grid_for(n), kThreads, 0, stream()>>>(ids.data<int64_t>(), n, limit, f);
  MD_CUDA_LAUNCHED(out_of_range_kernel);
  unsigned long long first = none;
  copy_to_host(&first, f, sizeof(first));
  return first == none ? -1 : int64_t(first);
}

}  // namespace meshdit::cuda
