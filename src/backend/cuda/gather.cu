// Lookups by id: embedding rows, T5's relative position bias, last-token rows, and the int64 row searches.
// Ids are checked on the device before anything is written (first_out_of_range, memory.cu): the one place
// these kernels wait for the device, because an id out of range is a decision the host reports.
#include "backend/cuda/elementwise.cuh"
#include "backend/cuda/kernels.h"

namespace meshdit::cuda {
namespace {

__global__ void embedding_kernel(const void* table, DType dt, int64_t s0, int64_t s1, const int64_t* ids, float* out,
                                 int64_t D, int64_t n) {
  MD_GRID_LOOP(k, n) {
    const int64_t c = k % D, i = k / D;
    out[k] = load_float(table, dt, ids[i] * s0 + c * s1);
  }
}

__global__ void gather_bias_kernel(const float* t, const int64_t* id, float* out, int64_t H, int64_t n, int64_t total) {
  MD_GRID_LOOP(k, total) {
    const int64_t i = k % n, h = k / n;
    out[k] = t[id[i] * H + h];
  }
}

__global__ void gather_rows_kernel(const float* x, const int64_t* id, float* out, int64_t L, int64_t D, int64_t n) {
  MD_GRID_LOOP(k, n) {
    const int64_t d = k % D, b = k / D;
    out[k] = x[(b * L + id[b]) * D + d];
  }
}

__global__ void argmax_rows_kernel(const int64_t* p, int64_t L, int64_t* out, int64_t R) {
  MD_GRID_LOOP(r, R) {
    int64_t at = 0;
    for (int64_t i = 1; i < L; ++i)
      if (p[r * L + i] > p[r * L + at]) at = i;
    out[r] = at;
  }
}

__global__ void find_rows_kernel(const int64_t* p, int64_t L, int64_t value, int64_t missing, int64_t* out, int64_t R) {
  MD_GRID_LOOP(r, R) {
    int64_t at = missing;
    for (int64_t i = 0; i < L; ++i)
      if (p[r * L + i] == value) {
        at = i;
        break;
      }
    out[r] = at;
  }
}

}  // namespace

bool embedding(const Tensor& table, const Tensor& ids, Tensor& out, int64_t* bad_id) {
  const int64_t V = table.size(0), D = table.size(1), N = ids.numel();
  const int64_t bad = first_out_of_range(ids, V);
  if (bad >= 0) {
    int64_t id = 0;
    copy_to_host(&id, ids.data<int64_t>() + bad, sizeof(id));
    *bad_id = id;
    return false;
  }
  const int64_t n = N * D;
  MD_LAUNCH(embedding_kernel, n, table.raw(), table.dtype(), table.stride(0), table.stride(1), ids.data<int64_t>(),
            out.f32(), D, n);
  return true;
}

void gather_bias(const Tensor& table, const Tensor& buckets, Tensor& out) {
  const int64_t V = table.size(0), H = table.size(1), n = buckets.numel();
  const int64_t bad = first_out_of_range(buckets, V);
  if (bad >= 0) {
    int64_t id = 0;
    copy_to_host(&id, buckets.data<int64_t>() + bad, sizeof(id));
    MD_CHECK(false,
             "gather_bias: bucket " + std::to_string(id) + " outside the table of " + std::to_string(V) + " rows");
  }
  MD_LAUNCH(gather_bias_kernel, H * n, table.f32(), buckets.data<int64_t>(), out.f32(), H, n, H * n);
}

void gather_rows(const Tensor& x, const Tensor& idx, Tensor& out) {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
  const int64_t bad = first_out_of_range(idx, L);
  if (bad >= 0) {
    int64_t id = 0;
    copy_to_host(&id, idx.data<int64_t>() + bad, sizeof(id));
    MD_CHECK(false, "gather_rows: row " + std::to_string(id) + " outside [0, " + std::to_string(L) + ")");
  }
  MD_LAUNCH(gather_rows_kernel, B * D, x.f32(), idx.data<int64_t>(), out.f32(), L, D, B * D);
}

void argmax_rows(const Tensor& x, Tensor& out) {
  const int64_t R = x.size(0), L = x.size(1);
  MD_LAUNCH(argmax_rows_kernel, R, x.data<int64_t>(), L, out.data<int64_t>(), R);
}

void find_rows(const Tensor& x, int64_t value, int64_t missing, Tensor& out) {
  const int64_t R = x.size(0), L = x.size(1);
  MD_LAUNCH(find_rows_kernel, R, x.data<int64_t>(), L, value, missing, out.data<int64_t>(), R);
}

}  // namespace meshdit::cuda
