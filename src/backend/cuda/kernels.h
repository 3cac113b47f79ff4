// The CUDA backend's entries, one declaration per Backend field (backend/backend.h states the contracts),
// grouped by the file that defines them. table.cu puts them in the Backend table.
#pragma once
#include <vector>

#include "backend/backend.h"

namespace meshdit::cuda {

// memory.cu
Allocator* allocator();
void copy(const Tensor& src, Tensor& dst);
void copy_to_host(void* host_dst, const void* src, size_t bytes);
void copy_from_host(void* dst, const void* host_src, size_t bytes);
void zero(Tensor& y);
size_t free_memory();

// linear.cu (cuBLASLt)
void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Act act, Tensor& y);
void linear_quantized(const Tensor& x, const Tensor& rows, QuantType type, const Tensor* bias, Act act, Tensor& y);

// norms.cu: row and group reductions
void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& y);
void layer_norm_modulate(const Tensor& x, const Tensor* w, const Tensor* b, float eps, const Tensor& shift,
                         const Tensor& scale, Tensor& y);
void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& y);
void softmax(Tensor& x);
void group_norm(const Tensor& x, int64_t groups, const Tensor* w, const Tensor* b, float eps, Act act, Tensor& y);
void group_sums(const Tensor& x, int64_t groups, const Tensor* mean, Tensor& out);
void group_norm_apply(const Tensor& x, int64_t groups, const Tensor& mean, const Tensor& rstd, const Tensor* w,
                      const Tensor* b, Act act, Tensor& y);
void moments_from_sums(const Tensor& sums, double count, double eps, bool rstd, Tensor& y);
void row_std(const Tensor& x, Tensor& out);
void row_l2(const Tensor& x, Tensor& out);
void l1_change_sums(const Tensor& a, const Tensor& b, Tensor& out);

// elementwise.cu
void modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, Tensor& y);
void add_gated(Tensor& x, const Tensor* gate, const Tensor& y);
void activation(Tensor& x, Act act);
void fill(Tensor& y, float value);
void affine(const Tensor& x, float a, float b, Tensor& y);
void lerp(const Tensor& a, const Tensor& b, float w, Tensor& y);
void clamp(Tensor& x, float lo, float hi);
void mul(const Tensor& a, const Tensor& b, Tensor& y);
void div_add(const Tensor& x, float d, float b, Tensor& y);
void add_broadcast(const Tensor& a, const Tensor& b, Tensor& y);
void axpby(float a, const Tensor& x, float b, const Tensor* y, Tensor& out);
void scale_rows_by_ratio(const Tensor& x, const Tensor& num, const Tensor& den, Tensor& y);
void mask_to_bias(const Tensor& mask, Tensor& y);
void blend(const Tensor& a, Tensor& b, int64_t extent, int dim);
void upsample_nearest2x(const Tensor& x, Tensor& y);
// y = act(y) over n floats on the backend's stream (linear's and group_norm's fused tail).
void apply_activation(float* y, int64_t n, Act act);

// rope.cu: positions and embeddings
void rope(Tensor& x, const Tensor& cos, const Tensor& sin);
void rope_half(Tensor& x, const Tensor& cos, const Tensor& sin);
void rope_tables(const Tensor& pos, const std::vector<int>& axes_dims, double theta, Tensor& cos, Tensor& sin);
void timestep_embedding(const Tensor& t, int dim, bool flip_sin_to_cos, float downscale_freq_shift, float scale,
                        float max_period, Tensor& out);

// gather.cu: lookups by id
bool embedding(const Tensor& table, const Tensor& ids, Tensor& out, int64_t* bad_id);
void gather_bias(const Tensor& table, const Tensor& buckets, Tensor& out);
void gather_rows(const Tensor& x, const Tensor& idx, Tensor& out);
void argmax_rows(const Tensor& x, Tensor& out);
void find_rows(const Tensor& x, int64_t value, int64_t missing, Tensor& out);

// attention.cu
void attention_accumulate(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const AttentionMask* mask,
                          AttentionState& st);
void attention_finalize(const AttentionState& st, Tensor& out);

// conv.cu
void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& y);

}  // namespace meshdit::cuda
