#include "app/info_cmd.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "app/serve.h"
#include "backend/cpu/cpu_info.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/quant_dot.h"
#include "backend/graphed_forward.h"
#include "backend/precision.h"
#include "core/thread_pool.h"
#include "io/video.h"
#include "parallel/mpi_comm.h"
#include "parallel/nccl_comm.h"
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
#include "backend/cuda/conv_path.h"
#include "backend/cuda/cuda_backend.h"
#endif

namespace meshdit {

std::string cpu_kernel_summary() {
  const cpu::CpuInfo& c = cpu::cpu_info();
  std::string flags;
  for (const auto& f : c.flags()) flags += (flags.empty() ? "" : " ") + f;
  return (c.model.empty() ? c.vendor : c.model) + " [" + flags + "]";
}

std::string gemm_kernel_summary() {
  return cpu::gemm_kernel_line() + ", quantized (GGUF) few-row dots " + cpu::quant_dot_isa_name(cpu::quant_dot_isa());
}

namespace {

// The CUDA devices the backend sees, or why there are none.
void print_cuda_devices() {
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  const std::vector<cuda::DeviceInfo> devs = cuda::devices();
  if (devs.empty()) {
    std::printf("cuda:     compiled, no device\n");
    return;
  }
  for (size_t i = 0; i < devs.size(); ++i) {
    const cuda::DeviceInfo& d = devs[i];
    std::printf("cuda:     device %zu: %s, %.1f GiB", i, d.name.c_str(), double(d.total_bytes) / double(1 << 30));
    if (d.free_bytes) std::printf(" (%.1f GiB free)", double(d.free_bytes) / double(1 << 30));
    std::printf(", compute capability %d.%d, %d SMs%s\n", d.major, d.minor, d.multiprocessors,
                i == 0 ? " (the backend's)" : "");
  }
  std::printf("  gemm:   %s (fp8: e4m3 with per-tensor scales)\n", cuda::gemm_library());
  std::printf(
      "  attention: tensor cores (mma.sync bf16, FlashAttention-2 tiles) in bf16/fp8 precision for head dims 64 and "
      "128 without a bias; float32 online-softmax kernel otherwise\n");
  std::printf("  graphs: %s\n", cuda_graphs_enabled() ? "the denoising step is captured after its first call"
                                                      : "off (MESHDIT_CUDA_GRAPHS=0)");
  std::printf("  conv:   %s\n", cuda::conv_library());
#else
  std::printf("cuda:     not compiled\n");
#endif
}

}  // namespace

int run_info() {
  const cpu::CpuInfo& c = cpu::cpu_info();
  std::printf("cpu:      %s (%s, family %d model %d, %d logical CPUs)\n", c.model.c_str(), c.vendor.c_str(), c.family,
              c.model_id, c.logical_cpus);
  std::string flags;
  for (const auto& f : c.flags()) flags += (flags.empty() ? "" : " ") + f;
  std::printf("isa:      %s\n", flags.c_str());
  std::printf("best:     %s (the highest oneDNN ISA this CPU supports)\n", c.best_onednn_isa().c_str());
  const auto& k = cpu::gemm_kernel_info();
  std::printf("gemm:     %s\n", k.library.c_str());
  std::printf("  isa:    %s\n", k.isa.c_str());
  std::printf("  f32:    %s\n", k.f32_impl.empty() ? "none" : k.f32_impl.c_str());
  std::printf("  bf16:   %s\n", k.bf16_available ? k.bf16_impl.c_str() : "none (no bf16 matmul kernel for this CPU)");
  std::printf("  precision: default %s for generate / bench transformer (check: f32); bf16 here is %s\n",
              precision_name(default_compute_precision()), native_bf16() ? "native" : "emulated");
  std::printf(
      "quantized: GGUF weights stay quantized; products over many rows decode each weight tile to bf16 (f32)\n"
      "          for the GEMM above; over 1-7 rows in bf16 precision, Q8_0 / Q4_K run integer dot products: %s\n",
      cpu::quant_dot_isa_name(cpu::quant_dot_isa()).c_str());
  std::printf("threads:  %d (our pool; each GEMM call is single-threaded inside one of its tasks)\n", num_threads());
  {
    const char* w = std::getenv("MESHDIT_WEIGHTS");
    std::printf("weights:  %s\n", w && std::string(w) == "map" ? "read through the file's mapping (MESHDIT_WEIGHTS=map)"
                                  : w && std::string(w) == "memory"
                                      ? "a denoiser's copied into memory on 2 MiB pages (MESHDIT_WEIGHTS=memory)"
                                      : "a denoiser's copied into memory on 2 MiB pages when they take at most "
                                        "half of the available memory, else read through the file's mapping "
                                        "(MESHDIT_WEIGHTS=map|memory)");
  }
  std::printf("mpi:      %s (%s)\n", mpi::library_version().c_str(),
              mpi::launched() ? "launched by mpirun" : "not launched: single process");
  std::printf("nccl:     %s\n", nccl_available() ? "built in (CUDA + NCCL)" : "not built in");
  const std::string video = video_library(), http = http_library();
  std::printf("ffmpeg:   %s\n",
              video.empty() ? "not built in (no MP4 output; PNG frames only)" : (video + " (MP4 output)").c_str());
  std::printf("httplib:  %s\n",
              http.empty() ? "not built in (no `meshdit serve`)" : (http + " (`meshdit serve`)").c_str());
  // The optional dependencies (CMake MESHDIT_WITH_MPI / _FFMPEG / _HTTPLIB), one line to grep.
  std::printf("built with: MPI %s, FFmpeg %s, cpp-httplib %s\n", mpi::available() ? "yes" : "no",
              video.empty() ? "no" : "yes", http.empty() ? "no" : "yes");
  print_cuda_devices();
  const Status st = cpu::check_gemm_dispatch();
  if (!st.ok()) {
    std::printf("dispatch: BELOW THE CPU: %s\n", st.error().message.c_str());
    return 1;
  }
  std::printf("dispatch: ok (the GEMM runs the best ISA the CPU supports)\n");
  return 0;
}

void warn_if_gemm_below_cpu() {
  static const bool once = [] {
    if (const Status st = cpu::check_gemm_dispatch(); !st.ok())
      std::fprintf(stderr, "meshdit: warning: %s; every product runs slower than this CPU allows\n",
                   st.error().message.c_str());
    return true;
  }();
  (void)once;
}

}  // namespace meshdit
