// Operations for model code that used to be host loops over tensor memory in models, encoders and
// schedulers (RoPE tables, GroupNorm moments, tile blending, T5's biases, CLIP's pooled row, the Euler
// step). Like backend/ops.h, each allocates its output on its input's device and dispatches to that
// device's backend table.
#pragma once
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"

namespace meshdit::ops {

// Rotary tables for positions pos [L, axes] (any float dtype): {cos, sin}, each [L, sum(axes_dims)] float32,
// axis a owning axes_dims[a] interleaved columns; angles in float64 as diffusers' get_1d_rotary_pos_embed.
std::pair<Tensor, Tensor> rope_tables(const Tensor& pos, const std::vector<int>& axes_dims, double theta);
// x [B, L, H, D] contiguous float32, in place: rotary embedding in halves (transformers' rotate_half, as
// Llama / Qwen; ops::rope_ rotates interleaved pairs as Flux) with cos, sin [L, D] from rope_tables.
void rope_half_(Tensor& x, const Tensor& cos, const Tensor& sin);

// GroupNorm moments from sums over `count` elements (sums reduced across ranks): float64 arithmetic, then
// float32. mean = sums / count; rstd = 1 / sqrt(ssd / count + eps) from the sums of squared deviations.
Tensor mean_from_sums(const Tensor& sums, double count);
Tensor rstd_from_sums(const Tensor& ssd, double count, double eps);

// Tiled decoding's seam blend, in place on b (contiguous float32 [B, C, h, w]): along dim 2 diffusers'
// blend_v (a is the tile above), along dim 3 blend_h (a is the tile to the left).
void blend_(const Tensor& a, Tensor& b, int64_t extent, int64_t dim);

// table [buckets, H] (any float dtype, any strides) at int64 bucket ids [Lq, Lk] -> [1, H, Lq, Lk] float32.
Tensor gather_bias(const Tensor& table, const Tensor& buckets);
// A 0/1 mask (int64 or float, any shape) -> float32 of its shape: 0 where mask > 0, -inf elsewhere.
Tensor mask_to_bias(const Tensor& mask);

// On int64 x [R, L] -> int64 [R]: each row's first maximum; each row's first position holding value
// (missing where none does).
Tensor argmax_rows(const Tensor& x);
Tensor find_rows(const Tensor& x, int64_t value, int64_t missing);
// x [B, L, D] at one row per batch element, idx [B] int64 -> [B, D] float32.
Tensor gather_rows(const Tensor& x, const Tensor& idx);

// a * x + b * y and a * x in float32 (any float inputs are read as float32), each product rounded before
// the sum, as torch computes `sample + dt * model_output` on float32 tensors.
Tensor axpby(float a, const Tensor& x, float b, const Tensor& y);
// Per row of x [R, ...] (everything but dim 0): torch.std (Bessel-corrected) / the L2 norm -> [R].
Tensor row_std(const Tensor& x);
Tensor row_l2(const Tensor& x);
// x [R, ...] with row r multiplied by num[r] / den[r] (num, den [R]).
Tensor scale_rows_by_ratio(const Tensor& x, const Tensor& num, const Tensor& den);
Tensor scale(const Tensor& x, float a);

// {sum |a - b|, sum |b|} -> [2] float32 on the inputs' device, summed in float64 in a fixed order: the
// relative L1 change step caching decides on (all-reduce it across ranks before reading it).
Tensor l1_change_sums(const Tensor& a, const Tensor& b);
// A few values on the host, copied from any device: for the rare decision that steers control flow (step
// caching's skip); never for tensor data.
std::vector<float> host_values(const Tensor& t);

}  // namespace meshdit::ops
