// The GEMM must run what the CPU supports, never less without a word: these fail on a machine where
// oneDNN picks an ISA below the CPU's best (or a reference kernel), and check that `meshdit info` says so
// when the ISA is capped on purpose.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "../test_util.h"
#include "backend/cpu/cpu_info.h"
#include "backend/cpu/gemm.h"

using namespace meshdit;

namespace {

TEST(Dispatch, GemmIsaIsTheBestTheCpuSupports) {
  const cpu::CpuInfo& c = cpu::cpu_info();
  const auto& k = cpu::gemm_kernel_info();
  SCOPED_TRACE("cpu " + c.model + ", best " + c.best_onednn_isa() + "; " + cpu::gemm_kernel_line());
  const Status st = cpu::check_gemm_dispatch();
  EXPECT_TRUE(st.ok()) << st.error().message;
  EXPECT_FALSE(k.f32_impl.empty());
  EXPECT_NE(k.f32_impl.rfind("ref", 0), 0u) << k.f32_impl;
  // The levels the issue names, spelled out.
  if (c.avx2 && c.fma) {
    EXPECT_NE(k.isa, "sse41") << k.isa;
  }
  if (c.avx512_core()) {
    EXPECT_EQ(k.isa.rfind("avx512_core", 0), 0u) << k.isa;
  }
  if (c.avx512_core() && c.avx512_bf16) {
    EXPECT_TRUE(k.isa == "avx512_core_bf16" || k.isa == "avx512_core_amx") << k.isa;
    EXPECT_TRUE(k.bf16_available);
  }
  if (c.amx_tile && c.amx_bf16 && c.avx512_bf16) {
    EXPECT_EQ(k.isa, "avx512_core_amx");
  }
}

// Our cpuid reading agrees with the kernel's: every flag we report is in /proc/cpuinfo, and the ones the
// dispatch check rests on are reported exactly when the kernel lists them.
TEST(Dispatch, CpuFlagsAgreeWithProcCpuinfo) {
  std::ifstream f("/proc/cpuinfo");
  if (!f) GTEST_SKIP() << "no /proc/cpuinfo";
  std::string line;
  std::set<std::string> proc;
  while (std::getline(f, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream in(line.substr(line.find(':') + 1));
    for (std::string w; in >> w;) proc.insert(w);
    break;
  }
  ASSERT_FALSE(proc.empty());
  const cpu::CpuInfo& c = cpu::cpu_info();
  for (const auto& flag : c.flags()) EXPECT_TRUE(proc.count(flag)) << flag << " reported but not in /proc/cpuinfo";
  EXPECT_EQ(c.avx2, proc.count("avx2") == 1);
  EXPECT_EQ(c.fma, proc.count("fma") == 1);
  EXPECT_EQ(c.avx512f, proc.count("avx512f") == 1);
  EXPECT_EQ(c.avx512_bf16, proc.count("avx512_bf16") == 1);
  EXPECT_EQ(c.amx_bf16, proc.count("amx_bf16") == 1);
}

TEST(Dispatch, InfoReportsTheKernels) {
  std::string out;
  ASSERT_EQ(test::run_command(std::string(MESHDIT_CLI) + " info", &out), 0) << out;
  EXPECT_NE(out.find("gemm:     oneDNN"), std::string::npos) << out;
  EXPECT_NE(out.find("  isa:    " + cpu::gemm_kernel_info().isa), std::string::npos) << out;
  EXPECT_NE(out.find("dispatch: ok"), std::string::npos) << out;
}

// DNNL_MAX_CPU_ISA=AVX2 on a CPU above it: the engine must say the GEMM runs below the CPU.
TEST(Dispatch, CappedIsaIsReported) {
  if (!cpu::cpu_info().avx512_core()) GTEST_SKIP() << "the CPU's best ISA is AVX2 or less";
  std::string out;
  const int rc = test::run_command("DNNL_MAX_CPU_ISA=AVX2 " + std::string(MESHDIT_CLI) + " info", &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("BELOW THE CPU"), std::string::npos) << out;
}

}  // namespace
