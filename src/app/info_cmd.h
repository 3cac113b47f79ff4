// `meshdit info`: what this machine and build will run on (CPU model and ISA flags, the GEMM library and
// the kernels it chose, threads, MPI/NCCL), and whether the GEMM uses everything the CPU offers.
#pragma once
#include <string>

namespace meshdit {

// "gemm: ..." and "cpu: ..." lines, the kernel facts --timings and traces carry too.
std::string cpu_kernel_summary();
std::string gemm_kernel_summary();
// Prints the report to stdout; exits 1 (after printing) when the GEMM runs below what the CPU supports.
int run_info();
// For generate and bench: one warning on stderr when the GEMM runs below the CPU (the run goes on, but
// not silently).
void warn_if_gemm_below_cpu();

}  // namespace meshdit
