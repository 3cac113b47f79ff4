// Exits 1 when the compiler, with the flags under test, builds a 32- or 64-byte constant whose upper 64-bit
// words are zero as a broadcast of its lower words (GCC 12 with AVX-512: {1,1,1,1,0,0,0,0} comes out as
// eight 1s). CMakeLists.txt runs it; tests/core/wide_constant_test.cpp checks the same in the build itself.
#include <cstddef>
#include <cstdint>
#include <vector>

#define PROBE __attribute__((noinline))
PROBE std::vector<float> f8() { return {1, 1, 1, 1, 0, 0, 0, 0}; }
PROBE std::vector<int64_t> i4() { return {5, 5, 0, 0}; }
PROBE std::vector<float> f16() { return {2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0}; }

template <class T>
bool zero_tail(const std::vector<T>& v, std::size_t nonzero) {
  for (std::size_t i = nonzero; i < v.size(); ++i)
    if (v[i] != 0) return false;
  return true;
}

int main() { return zero_tail(f8(), 4) && zero_tail(i4(), 2) && zero_tail(f16(), 8) ? 0 : 1; }
