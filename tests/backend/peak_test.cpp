// cpu::measure_peaks: one entry per instruction kind the CPU runs, each a positive, finite rate (no speed is
// asserted: a loaded machine measures less, and that is what the figure is for).
#include "backend/cpu/peak.h"

#include <gtest/gtest.h>

#include <cmath>

#include "backend/cpu/cpu_info.h"

namespace meshdit::cpu {
namespace {

TEST(Peak, OneRatePerInstructionKindTheCpuRuns) {
  const CpuInfo& cpu = cpu_info();
  const std::vector<PeakRate> peaks = measure_peaks(2, 0.01);
  size_t want = 0;
  want += cpu.avx2 && cpu.fma;
  want += cpu.avx512f;
  want += cpu.avx512f && cpu.avx512_bf16;
  ASSERT_EQ(peaks.size(), want);
  for (const PeakRate& p : peaks) {
    SCOPED_TRACE(p.what);
    EXPECT_FALSE(p.what.empty());
    EXPECT_TRUE(std::isfinite(p.one_thread) && p.one_thread > 0);
    EXPECT_TRUE(std::isfinite(p.all_threads) && p.all_threads > 0);
  }
  if (cpu.avx512f && cpu.avx512_bf16) {
    EXPECT_NE(peaks.back().what.find("bf16"), std::string::npos);
  }
}

}  // namespace
}  // namespace meshdit::cpu
