// Backend-parameterised kernel tests, as llama.cpp's test-backend-ops: one test body, instantiated once
// per backend compiled in (compiled_backends()), so a new backend is tested by being compiled. Inputs are
// built on the host, moved to the backend's device with ops::to_device (weights with ops::place), and
// results are moved back with ops::to_device before they are compared with double-precision references.
// With only the CPU compiled in, each test runs once, named Suite.Test/cpu.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/ops.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace meshdit::test {

// Whether a CUDA backend is compiled in and a device present: the CUDA tests' condition to run.
inline bool cuda_listed() { return find_backend(Device::CUDA) != nullptr; }

}  // namespace meshdit::test

// The first line of every GPU-only test: without a device (CI) it skips, saying why.
#define SKIP_WITHOUT_CUDA()                                                                                 \
  do {                                                                                                      \
    if (!::meshdit::test::cuda_listed())                                                                    \
      GTEST_SKIP() << "no CUDA device (or the CUDA backend is not compiled in): the CUDA tests need a GPU"; \
  } while (0)

namespace meshdit::test {

using Vec = std::vector<double>;

inline constexpr double kEps32 = 1.1920928955078125e-07;  // float32 machine epsilon

// Values of any tensor, on any device, in logical order.
inline std::vector<float> host_values(const Tensor& t) { return ops::to_device(t, Device::CPU).to_vector(); }

inline Vec to_d(const Tensor& t) {
  std::vector<float> f = host_values(t);
  return Vec(f.begin(), f.end());
}

// Fails with the worst element when any |got - ref| exceeds its tolerance (or is NaN); an infinite
// reference must be met exactly.
inline ::testing::AssertionResult all_close(const std::vector<float>& got, const Vec& ref, const Vec& tol) {
  if (got.size() != ref.size() || tol.size() != ref.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs reference " << ref.size();
  int64_t bad = 0, worst = -1;
  double worst_ratio = 0, max_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(double(got[i]) - ref[i]);
    const bool ok = err <= tol[i] || (std::isinf(ref[i]) && double(got[i]) == ref[i]);
    if (!ok) ++bad;
    const double ratio = ok ? err / (tol[i] > 0 ? tol[i] : 1) : std::numeric_limits<double>::infinity();
    if (worst < 0 || ratio > worst_ratio) worst_ratio = ratio, worst = int64_t(i);
    if (std::isfinite(err)) max_err = std::max(max_err, err);
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << ref.size() << " elements out of tolerance; worst at "
                                       << worst << ": got " << got[size_t(worst)] << " want " << ref[size_t(worst)]
                                       << " tol " << tol[size_t(worst)] << " (max finite |err| " << max_err << ")";
}

// Runs fn with 1, 2 and 3 pool threads, then restores the count the process started with.
inline int default_threads() {
  static const int n = num_threads();
  return n;
}
struct ThreadCountGuard {
  ThreadCountGuard() { (void)default_threads(); }
  ~ThreadCountGuard() { set_num_threads(default_threads()); }
};
inline void for_thread_counts(const std::function<void()>& fn) {
  ThreadCountGuard guard;
  for (int t : {1, 2, 3}) {
    SCOPED_TRACE("threads=" + std::to_string(t));
    set_num_threads(t);
    ASSERT_EQ(num_threads(), t);
    fn();
  }
}

class BackendTest : public ::testing::TestWithParam<const Backend*> {
 protected:
  const Backend& backend() const { return *GetParam(); }
  Device device() const { return GetParam()->device; }
  // A host tensor on the backend's device. On the CPU this is the same tensor (a view of the same
  // memory): clone it before an in-place op that must leave the host copy alone.
  Tensor on(const Tensor& host) const { return ops::to_device(host, device()); }
  Tensor empty(const Shape& shape, DType dtype = DType::F32) const { return Tensor::empty(shape, dtype, device()); }

  // The values of a result of this backend, which must be on its device; int64 results are read by value
  // (through float32: exact below 2^24, enough for the indices tests compare).
  std::vector<float> values(const Tensor& got) const {
    EXPECT_EQ(got.device(), device()) << "result on " << device_name(got.device()) << ", inputs on "
                                      << device_name(device());
    return host_values(got.dtype() == DType::I64 ? got.to(DType::F32) : got);
  }

  // all_close on a result of this backend, which must be on its device.
  ::testing::AssertionResult close(const Tensor& got, const Vec& ref, const Vec& tol) const {
    if (got.device() != device())
      return ::testing::AssertionFailure() << "result on " << device_name(got.device()) << ", inputs on "
                                           << device_name(device());
    return all_close(host_values(got), ref, tol);
  }
};

inline std::string backend_param_name(const ::testing::TestParamInfo<const Backend*>& info) {
  return info.param->name;
}

}  // namespace meshdit::test

// A test suite whose TEST_P bodies run once per compiled backend (empty prefix: names stay Suite.Test/cpu).
#define MESHDIT_BACKEND_SUITE(Suite)                        \
  class Suite : public ::meshdit::test::BackendTest {};    \
  INSTANTIATE_TEST_SUITE_P(, Suite, ::testing::ValuesIn(::meshdit::compiled_backends()), \
                           ::meshdit::test::backend_param_name)
