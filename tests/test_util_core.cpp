// The test helpers that need nothing above core/ (random tensors, the relative error, running a command): the
// backend-only test build (MESHDIT_BACKEND_ONLY, tools/device-check.sh) links this file without test_util.cpp.
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <random>

#include "test_util.h"

namespace meshdit::test {

double rel_l2(const Tensor& got, const Tensor& ref) {
  const std::vector<float> a = got.contiguous().to_vector(), b = ref.contiguous().to_vector();
  MD_CHECK(a.size() == b.size(), "rel_l2: " + shape_str(got.shape()) + " against " + shape_str(ref.shape()));
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

Tensor random_tensor(const Shape& shape, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  Tensor t = Tensor::empty(shape);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = nd(rng);
  return t;
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* f = popen(full.c_str(), "r");
  if (!f) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) out.append(buf.data(), n);
  int st = pclose(f);
  if (output) *output = out;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace meshdit::test
