// Regression: GCC 12 targeting AVX-512 built std::vector<float>{1,1,1,1,0,0,0,0} as eight 1s (a 32- or
// 64-byte constant with zero upper 64-bit words and repeating lower words became a broadcast of the lower
// words). CMakeLists.txt turns the faulty step off where cmake/gcc_wide_constant_probe.cpp sees the bug; this
// checks the patterns in the build's own flags, so a build that lost the workaround fails here rather than in
// a model's masks or ids.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace {

// Out of line, so each constant is materialised in its own function instead of folded into the check.
__attribute__((noinline)) std::vector<float> mask8() { return {1, 1, 1, 1, 0, 0, 0, 0}; }
__attribute__((noinline)) std::vector<float> six_of_eight() { return {2, 2, 2, 2, 2, 2, 0, 0}; }
__attribute__((noinline)) std::vector<int32_t> ids8() { return {7, 7, 7, 7, 0, 0, 0, 0}; }
__attribute__((noinline)) std::vector<int64_t> ids4() { return {5, 5, 0, 0}; }
__attribute__((noinline)) std::vector<double> pair4() { return {2, 2, 0, 0}; }
__attribute__((noinline)) std::vector<int16_t> half16() { return {3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0}; }
__attribute__((noinline)) std::vector<float> mask16() { return {2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0}; }

// Compared by rule, not with another vector literal, which the same bug would build the same wrong way.
template <class T>
::testing::AssertionResult leading_then_zeros(const std::vector<T>& v, size_t size, size_t lead, T value) {
  if (v.size() != size) return ::testing::AssertionFailure() << "size " << v.size() << ", want " << size;
  for (size_t i = 0; i < size; ++i)
    if (v[i] != (i < lead ? value : T(0)))
      return ::testing::AssertionFailure()
             << "element " << i << " is " << double(v[i]) << ", want " << (i < lead ? double(value) : 0.0);
  return ::testing::AssertionSuccess();
}

TEST(WideConstants, ZeroTailedConstantsKeepTheirZeros) {
  EXPECT_TRUE(leading_then_zeros(mask8(), 8, 4, 1.0f));
  EXPECT_TRUE(leading_then_zeros(six_of_eight(), 8, 6, 2.0f));
  EXPECT_TRUE(leading_then_zeros(ids8(), 8, 4, int32_t(7)));
  EXPECT_TRUE(leading_then_zeros(ids4(), 4, 2, int64_t(5)));
  EXPECT_TRUE(leading_then_zeros(pair4(), 4, 2, 2.0));
  EXPECT_TRUE(leading_then_zeros(half16(), 16, 8, int16_t(3)));
  EXPECT_TRUE(leading_then_zeros(mask16(), 16, 8, 2.0f));
}

}  // namespace
