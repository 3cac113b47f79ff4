// The CUDA backend's public face (plain C++, no CUDA headers): whether a device is present, the devices'
// descriptions for `meshdit info`, and the kernel table. Compiled only when CMake finds the CUDA toolkit
// (MESHDIT_HAVE_CUDA_BACKEND); backend.cpp lists the backend only when a device is present at run time, so
// a build with CUDA on a machine without a GPU behaves as a CPU-only build.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace meshdit::cuda {

// True when the CUDA runtime reports at least one device; any error (no driver, no device, a sanitizer's
// shadow memory in the way of the driver) counts as none. Asked once per process.
bool device_present();

struct DeviceInfo {
  std::string name;
  size_t total_bytes = 0, free_bytes = 0;
  int major = 0, minor = 0;  // compute capability
  int multiprocessors = 0;
};
// Every device the runtime sees (empty when none); the current device is the first.
std::vector<DeviceInfo> devices();

// Bytes the caching allocator holds from the driver: in tensors, and kept free for reuse.
struct AllocatorStats {
  size_t in_use_bytes = 0, cached_bytes = 0;
  size_t driver_allocations = 0, reuses = 0;
};
AllocatorStats allocator_stats();
// Gives every cached free block back to the driver.
void release_cached_memory();

// FP8 precision's linears so far: products run in e4m3, those that ran in BF16 instead (no FP8 algorithm for
// the shape or the GPU: said once on stderr), and the weights' e4m3 copies made and held now.
struct Fp8Stats {
  size_t fp8_products = 0, bf16_fallbacks = 0, weights_quantized = 0, weights_cached = 0;
};
Fp8Stats fp8_stats();
// FP8 precision's quantization of activations as linear runs it on the device (an amax reduction, then the e4m3
// conversion): x's rows [M, K] (float32 on the device, rows strided) as bytes [M, ld] (ld >= K, zeros past K)
// and x's scale, read back to the host. For tests against core/fp8.h.
struct Fp8Quantized {
  std::vector<uint8_t> bytes;
  float scale = 0;
};
Fp8Quantized fp8_quantize(const Tensor& x, int64_t ld);
// The most bytes of decoded weight linear_quantized holds at once (a band of whole rows of the weight, at least
// one; 64 MiB by default, 0 restores it). Returns the previous value. For tests, which need several bands.
size_t set_quantized_band_bytes(size_t bytes);

// "cuBLASLt 13.0.0 (libcublasLt.so.13)": the library the products use (loading it; needs a device).
const char* gemm_library();

}  // namespace meshdit::cuda

namespace meshdit {
// The CUDA kernel table (backend/cuda/table.cu). Only valid when cuda::device_present().
const Backend& cuda_backend();
}  // namespace meshdit
