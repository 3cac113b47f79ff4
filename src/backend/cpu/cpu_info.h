// The CPU this process runs on, from cpuid (and XGETBV: an ISA counts only when the OS saves its
// registers), for `meshdit info` and for the dispatch check that the GEMM library uses what the CPU has.
#pragma once
#include <string>
#include <vector>

namespace meshdit::cpu {

struct CpuInfo {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD"
  std::string model;   // brand string, e.g. "Intel(R) Xeon(R) Platinum 8488C"
  int family = 0, model_id = 0;
  bool sse41 = false, avx = false, avx2 = false, fma = false, f16c = false, avx_vnni = false;
  bool avx512f = false, avx512dq = false, avx512bw = false, avx512vl = false;
  bool avx512_vnni = false, avx512_bf16 = false, avx512_fp16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  int logical_cpus = 0;

  bool avx512_core() const { return avx512f && avx512dq && avx512bw && avx512vl; }
  // The flags above that are set, in /proc/cpuinfo's spelling.
  std::vector<std::string> flags() const;
  // The best oneDNN ISA this CPU supports, in oneDNN's names ("avx512_core_amx", "avx512_core_bf16",
  // "avx512_core_vnni", "avx512_core", "avx2", "avx", "sse41"; "" when none of them).
  std::string best_onednn_isa() const;
};

const CpuInfo& cpu_info();

}  // namespace meshdit::cpu
