#include "backend/precision.h"

#include <atomic>

#include "backend/cpu/attention.h"
#include "backend/cpu/cpu_info.h"
#include "backend/cpu/gemm.h"

namespace meshdit {
namespace {
std::atomic<Precision> g_precision{Precision::F32};
}  // namespace

void set_compute_precision(Precision p) {
  g_precision.store(p, std::memory_order_relaxed);
  // Attention's two products follow where the CPU has bf16 dot products; emulated bf16 keeps them f32 (the
  // kernel's bf16 path needs a bf16 matmul).
  const Status st =
      cpu::set_attention_precision(bf16_outside_linears(p) && native_bf16() ? Precision::BF16 : Precision::F32);
  MD_CHECK(st.ok(), st.ok() ? "" : st.error().message);
}
Precision compute_precision() { return g_precision.load(std::memory_order_relaxed); }

bool native_bf16() {
  const cpu::CpuInfo& c = cpu::cpu_info();
  return (c.avx512_bf16 || c.amx_bf16) && cpu::bf16_gemm_available();
}

Precision default_compute_precision() { return native_bf16() ? Precision::BF16 : Precision::F32; }

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::F32:
      return "f32";
    case Precision::BF16:
      return "bf16";
    case Precision::FP8:
      return "fp8";
  }
  return "?";
}

Result<Precision> parse_precision(const std::string& s) {
  if (s == "f32") return Precision::F32;
  if (s == "bf16") return Precision::BF16;
  if (s == "fp8") return Precision::FP8;
  return make_error("precision '" + s + "': expected f32, bf16 or fp8");
}

std::string precision_description(Precision p) {
  if (p == Precision::F32) return "f32";
  if (p == Precision::FP8)
    return "fp8 (e4m3 linears with per-tensor scales, emulated on the CPU; the rest as " +
           precision_description(Precision::BF16) + ")";
  return native_bf16() ? "bf16 (native, " + cpu::gemm_kernel_info().bf16_impl + ")"
                       : "bf16 (emulated: no native bf16 dot products on this CPU)";
}

}  // namespace meshdit
