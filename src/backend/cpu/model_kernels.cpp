#include "backend/cpu/model_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/thread_pool.h"

namespace meshdit::cpu {
namespace {
constexpr int64_t kGrain = 1 << 15;  // elements per task: small tensors stay on one thread
}

void rope_tables(const Tensor& pos, const std::vector<int>& axes_dims, double theta, Tensor& cos, Tensor& sin) {
  const int64_t L = pos.size(0), n_axes = pos.size(1), D = cos.size(1);
  const float* p = pos.f32();
  float* c = cos.f32();
  float* s = sin.f32();
  // The frequencies do not depend on the position: one pow per column pair instead of one per element.
  std::vector<double> freq;
  for (int64_t a = 0; a < n_axes; ++a) {
    const int dim = axes_dims[size_t(a)];
    for (int i = 0; i < dim / 2; ++i) freq.push_back(1.0 / std::pow(theta, double(2 * i) / double(dim)));
  }
  parallel_for(
      L,
      [&](int64_t l0, int64_t l1, int) {
        for (int64_t l = l0; l < l1; ++l) {
          int64_t col = 0;
          size_t f = 0;
          for (int64_t a = 0; a < n_axes; ++a) {
            const double x = double(p[l * n_axes + a]);
            for (int i = 0; i < axes_dims[size_t(a)] / 2; ++i, ++f, col += 2) {
              const double angle = x * freq[f];
              c[l * D + col] = c[l * D + col + 1] = float(std::cos(angle));
              s[l * D + col] = s[l * D + col + 1] = float(std::sin(angle));
            }
          }
        }
      },
      64);
}

void moments_from_sums(const Tensor& sums, double count, double eps, bool rstd, Tensor& y) {
  const float* s = sums.f32();
  float* d = y.f32();
  for (int64_t i = 0; i < sums.numel(); ++i)
    d[i] = rstd ? float(1.0 / std::sqrt(double(s[i]) / count + eps)) : float(double(s[i]) / count);
}

void blend(const Tensor& a, Tensor& b, int64_t extent, int dim) {
  const float* ap = a.f32();
  float* bp = b.f32();
  if (dim == 2) {
    const int64_t ha = a.size(2), hb = b.size(2), w = b.size(3), planes = b.size(0) * b.size(1);
    const int64_t e = std::min({ha, hb, extent});
    for (int64_t y = 0; y < e; ++y) {
      const float t = float(double(y) / double(e)), s = float(1.0 - double(y) / double(e));
      for (int64_t pl = 0; pl < planes; ++pl) {
        const float* ar = ap + (pl * ha + ha - e + y) * w;
        float* br = bp + (pl * hb + y) * w;
        for (int64_t x = 0; x < w; ++x) br[x] = ar[x] * s + br[x] * t;
      }
    }
    return;
  }
  const int64_t wa = a.size(3), wb = b.size(3), rows = b.size(0) * b.size(1) * b.size(2);
  const int64_t e = std::min({wa, wb, extent});
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = ap + r * wa + wa - e;
    float* br = bp + r * wb;
    for (int64_t x = 0; x < e; ++x) {
      const float t = float(double(x) / double(e)), s = float(1.0 - double(x) / double(e));
      br[x] = ar[x] * s + br[x] * t;
    }
  }
}

void gather_bias(const Tensor& table, const Tensor& buckets, Tensor& out) {
  const int64_t V = table.size(0), H = table.size(1), n = buckets.numel();
  const float* t = table.f32();
  const int64_t* id = buckets.data<int64_t>();
  float* o = out.f32();
  for (int64_t i = 0; i < n; ++i)
    MD_CHECK(id[i] >= 0 && id[i] < V,
             "gather_bias: bucket " + std::to_string(id[i]) + " outside the table of " + std::to_string(V) + " rows");
  parallel_for(
      H,
      [&](int64_t h0, int64_t h1, int) {
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t i = 0; i < n; ++i) o[h * n + i] = t[id[i] * H + h];
      },
      1);
}

void mask_to_bias(const Tensor& mask, Tensor& y) {
  const float* m = mask.f32();
  float* d = y.f32();
  parallel_for(
      mask.numel(),
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) d[i] = m[i] > 0 ? 0.0f : -INFINITY;
      },
      kGrain);
}

void argmax_rows(const Tensor& x, Tensor& out) {
  const int64_t R = x.size(0), L = x.size(1);
  const int64_t* p = x.data<int64_t>();
  int64_t* o = out.data<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    int64_t at = 0;
    for (int64_t i = 1; i < L; ++i)
      if (p[r * L + i] > p[r * L + at]) at = i;
    o[r] = at;
  }
}

void find_rows(const Tensor& x, int64_t value, int64_t missing, Tensor& out) {
  const int64_t R = x.size(0), L = x.size(1);
  const int64_t* p = x.data<int64_t>();
  int64_t* o = out.data<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    o[r] = missing;
    for (int64_t i = 0; i < L; ++i)
      if (p[r * L + i] == value) {
        o[r] = i;
        break;
      }
  }
}

void gather_rows(const Tensor& x, const Tensor& idx, Tensor& out) {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
  const int64_t* id = idx.data<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    MD_CHECK(id[b] >= 0 && id[b] < L,
             "gather_rows: row " + std::to_string(id[b]) + " outside [0, " + std::to_string(L) + ")");
    std::memcpy(out.f32() + b * D, x.f32() + (b * L + id[b]) * D, size_t(D) * sizeof(float));
  }
}

void row_std(const Tensor& x, Tensor& out) {
  const int64_t R = x.size(0), n = x.numel() / R;
  const float* p = x.f32();
  float* o = out.f32();
  for (int64_t r = 0; r < R; ++r) {
    double sum = 0, ssd = 0;
    for (int64_t i = 0; i < n; ++i) sum += p[r * n + i];
    const double mean = sum / double(n);
    for (int64_t i = 0; i < n; ++i) ssd += (p[r * n + i] - mean) * (p[r * n + i] - mean);
    o[r] = float(std::sqrt(ssd / double(n > 1 ? n - 1 : 1)));
  }
}

void row_l2(const Tensor& x, Tensor& out) {
  const int64_t R = x.size(0), n = x.numel() / R;
  const float* p = x.f32();
  float* o = out.f32();
  for (int64_t r = 0; r < R; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(p[r * n + i]) * p[r * n + i];
    o[r] = float(std::sqrt(ss));
  }
}

void l1_change_sums(const Tensor& a, const Tensor& b, Tensor& out) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t n = a.numel(), chunks = (n + kChunk - 1) / kChunk;
  const float* pa = a.f32();
  const float* pb = b.f32();
  std::vector<double> diff(size_t(chunks), 0.0), base(size_t(chunks), 0.0);
  parallel_for(chunks, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      double d = 0, s = 0;
      for (int64_t i = c * kChunk, end = std::min(n, i + kChunk); i < end; ++i) {
        d += std::fabs(double(pa[i]) - double(pb[i]));
        s += std::fabs(double(pb[i]));
      }
      diff[size_t(c)] = d;
      base[size_t(c)] = s;
    }
  });
  double d = 0, s = 0;
  for (int64_t c = 0; c < chunks; ++c) d += diff[size_t(c)], s += base[size_t(c)];
  out.f32()[0] = float(d);
  out.f32()[1] = float(s);
}

void scale_rows_by_ratio(const Tensor& x, const Tensor& num, const Tensor& den, Tensor& y) {
  const int64_t R = x.size(0), n = x.numel() / R;
  const float* p = x.f32();
  const float* a = num.f32();
  const float* b = den.f32();
  float* o = y.f32();
  for (int64_t r = 0; r < R; ++r) {
    const float s = a[r] / b[r];
    for (int64_t i = 0; i < n; ++i) o[r * n + i] = p[r * n + i] * s;
  }
}

void rope_half(Tensor& x, const Tensor& cos, const Tensor& sin) {
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3), half = D / 2;
  float* xp = x.f32();
  const float* c = cos.f32();
  const float* s = sin.f32();
  parallel_for(
      B * L,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* cl = c + (r % L) * D;
          const float* sl = s + (r % L) * D;
          for (int64_t h = 0; h < H; ++h) {
            float* v = xp + (r * H + h) * D;
            for (int64_t i = 0; i < half; ++i) {
              const float x0 = v[i], x1 = v[i + half], ci = cl[2 * i], si = sl[2 * i];
              v[i] = x0 * ci - x1 * si;
              v[i + half] = x1 * ci + x0 * si;
            }
          }
        }
      },
      16);
}

}  // namespace meshdit::cpu
