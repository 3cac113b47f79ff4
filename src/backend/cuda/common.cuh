// What every CUDA kernel file shares: checked runtime calls, the backend's stream, launch geometry, and element
// loads and stores through core/dtype.h's conversions (host and device alike, so a copy on the GPU gives the
// host copy's bytes).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

namespace meshdit::cuda {

[[noreturn]] void fail(const char* call, cudaError_t e, const char* file, int line);

// Every runtime call is checked: the message names the call and the runtime's error string.
#define MD_CUDA(call)                                                                                \
  do {                                                                                               \
    const cudaError_t md_cuda_err_ = (call);                                                         \
    if (md_cuda_err_ != cudaSuccess) ::meshdit::cuda::fail(#call, md_cuda_err_, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: a bad configuration is reported at once, with the kernel's name.
#define MD_CUDA_LAUNCHED(kernel) MD_CUDA(cudaPeekAtLastError())

// The stream every kernel and copy of the backend runs on, in order: one stream, so the caching allocator
// can hand a freed block to the next allocation without waiting (stream order makes the reuse safe). A
// blocking stream (not cudaStreamNonBlocking): it stays ordered with work other code puts on the legacy
// default stream.
cudaStream_t stream();
int multiprocessors();

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements: enough to fill the device, no more.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t want = (n + threads - 1) / threads;
  const int64_t cap = int64_t(multiprocessors()) * 16;
  return unsigned(want < 1 ? 1 : (want < cap ? want : cap));
}

// for (i = this thread's first; i < n; i += grid size)
#define MD_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// A grid-stride kernel over n elements on the backend's stream (nothing when n is 0), checked.
#define MD_LAUNCH(kernel, n, ...)                                                                                     \
  do {                                                                                                                \
    if ((n) > 0) {                                                                                                    \
      kernel<<<::meshdit::cuda::grid_for(n), ::meshdit::cuda::kThreads, 0, ::meshdit::cuda::stream()>>>(__VA_ARGS__); \
      MD_CUDA_LAUNCHED(kernel);                                                                                       \
    }                                                                                                                 \
  } while (0)

// Upper bound of tensor ranks the strided kernels take (patchify's views have 6).
constexpr int kMaxRank = 8;
struct Strided {
  int rank = 0;
  int64_t size[kMaxRank] = {};
  int64_t stride[kMaxRank] = {};
};
Strided strided_of(const Tensor& t);  // checks the rank
// The same shape as `shape_of`, with t's strides (t has that shape).
Strided strided_as(const Tensor& shape_of, const Tensor& t);

// Element offset of the logical (row-major) index i.
__device__ inline int64_t strided_offset(const Strided& s, int64_t i) {
  int64_t off = 0;
  for (int d = s.rank - 1; d >= 0; --d) {
    const int64_t n = s.size[d];
    off += (i % n) * s.stride[d];
    i /= n;
  }
  return off;
}

__device__ inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// Element i of an array of dtype t as a float (float dtypes; integers by value).
__device__ inline float load_float(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32:
      return static_cast<const float*>(p)[i];
    case DType::BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F16:
      return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F64:
      return float(static_cast<const double*>(p)[i]);
    case DType::I64:
      return float(double(static_cast<const int64_t*>(p)[i]));
    case DType::I32:
      return float(static_cast<const int32_t*>(p)[i]);
    case DType::U8:
      return float(static_cast<const uint8_t*>(p)[i]);
  }
  return 0.0f;
}

// A contiguous float32 copy of t on the device (t itself when it already is one): weights and biases of any
// float dtype for the kernels that read float32.
Tensor f32_contiguous(const Tensor& t);

// Small host arrays for kernels (frequency tables, ids checked on the host): a device tensor holding them.
Tensor upload(const void* host, size_t bytes);

// Ids are checked before any output is written: the position of the first id outside [0, limit) in the
// contiguous int64 ids, or -1 when all are inside. Waits for the device (it is a decision on the host).
int64_t first_out_of_range(const Tensor& ids, int64_t limit);

}  // namespace meshdit::cuda
