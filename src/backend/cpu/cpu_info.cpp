#include "backend/cpu/cpu_info.h"

#include <cpuid.h>

#include <cstdint>
#include <cstring>
#include <thread>

namespace meshdit::cpu {
namespace {

struct Regs {
  uint32_t a = 0, b = 0, c = 0, d = 0;
};

Regs cpuid(uint32_t leaf, uint32_t sub = 0) {
  Regs r;
  if (!__get_cpuid_count(leaf, sub, &r.a, &r.b, &r.c, &r.d)) r = Regs{};
  return r;
}

bool bit(uint32_t v, int i) { return (v >> i) & 1u; }

// XCR0: which register states the OS saves on a context switch. Without them the instructions fault.
uint64_t xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

CpuInfo detect() {
  CpuInfo info;
  const Regs v = cpuid(0);
  char vendor[13] = {};
  std::memcpy(vendor, &v.b, 4);
  std::memcpy(vendor + 4, &v.d, 4);
  std::memcpy(vendor + 8, &v.c, 4);
  info.vendor = vendor;
  const uint32_t max_leaf = v.a;

  const Regs l1 = cpuid(1);
  const uint32_t base_family = (l1.a >> 8) & 0xf, base_model = (l1.a >> 4) & 0xf;
  info.family = int(base_family == 0xf ? base_family + ((l1.a >> 20) & 0xff) : base_family);
  info.model_id = int(base_family >= 0x6 ? base_model | (((l1.a >> 16) & 0xf) << 4) : base_model);
  info.sse41 = bit(l1.c, 19);
  info.fma = bit(l1.c, 12);
  info.f16c = bit(l1.c, 29);
  const bool osxsave = bit(l1.c, 27);
  const uint64_t xcr = osxsave ? xcr0() : 0;
  const bool os_avx = (xcr & 0x6) == 0x6;             // SSE and AVX state
  const bool os_avx512 = os_avx && (xcr & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr & 0x60000) == 0x60000;     // XTILECFG, XTILEDATA
  info.avx = bit(l1.c, 28) && os_avx;
  info.fma = info.fma && os_avx;
  info.f16c = info.f16c && os_avx;

  if (max_leaf >= 7) {
    const Regs l7 = cpuid(7, 0);
    info.avx2 = bit(l7.b, 5) && os_avx;
    info.avx512f = bit(l7.b, 16) && os_avx512;
    info.avx512dq = bit(l7.b, 17) && os_avx512;
    info.avx512bw = bit(l7.b, 30) && os_avx512;
    info.avx512vl = bit(l7.b, 31) && os_avx512;
    info.avx512_vnni = bit(l7.c, 11) && os_avx512;
    info.avx512_fp16 = bit(l7.d, 23) && os_avx512;
    info.amx_bf16 = bit(l7.d, 22) && os_amx;
    info.amx_tile = bit(l7.d, 24) && os_amx;
    info.amx_int8 = bit(l7.d, 25) && os_amx;
    if (l7.a >= 1) {
      const Regs l71 = cpuid(7, 1);
      info.avx_vnni = bit(l71.a, 4) && os_avx;
      info.avx512_bf16 = bit(l71.a, 5) && os_avx512;
    }
  }

  if (cpuid(0x80000000).a >= 0x80000004) {
    char brand[49] = {};
    for (uint32_t i = 0; i < 3; ++i) {
      const Regs r = cpuid(0x80000002 + i);
      std::memcpy(brand + 16 * i, &r, 16);
    }
    std::string s = brand;
    const size_t b = s.find_first_not_of(' '), e = s.find_last_not_of(' ');
    info.model = b == std::string::npos ? "" : s.substr(b, e - b + 1);
  }
  info.logical_cpus = int(std::thread::hardware_concurrency());
  return info;
}

}  // namespace

std::vector<std::string> CpuInfo::flags() const {
  const std::pair<const char*, bool> all[] = {
      {"sse4_1", sse41},
      {"avx", avx},
      {"avx2", avx2},
      {"fma", fma},
      {"f16c", f16c},
      {"avx512f", avx512f},
      {"avx512dq", avx512dq},
      {"avx512bw", avx512bw},
      {"avx512vl", avx512vl},
      {"avx_vnni", avx_vnni},
      {"avx512_vnni", avx512_vnni},
      {"avx512_bf16", avx512_bf16},
      {"avx512_fp16", avx512_fp16},
      {"amx_tile", amx_tile},
      {"amx_bf16", amx_bf16},
      {"amx_int8", amx_int8},
  };
  std::vector<std::string> out;
  for (const auto& [name, on] : all)
    if (on) out.emplace_back(name);
  return out;
}

std::string CpuInfo::best_onednn_isa() const {
  // oneDNN's own requirements for each level (cpu_isa_traits.hpp, 2.6).
  if (avx512_core() && avx512_vnni && avx512_bf16 && amx_tile && amx_int8 && amx_bf16) return "avx512_core_amx";
  if (avx512_core() && avx512_vnni && avx512_bf16) return "avx512_core_bf16";
  if (avx512_core() && avx512_vnni) return "avx512_core_vnni";
  if (avx512_core()) return "avx512_core";
  if (avx2) return "avx2";
  if (avx) return "avx";
  if (sse41) return "sse41";
  return "";
}

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

}  // namespace meshdit::cpu
