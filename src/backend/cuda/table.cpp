// The CUDA backend's kernel table (backend/backend.h): every entry implemented.
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kernels.h"

namespace meshdit {

const Backend& cuda_backend() {
  static const Backend b{
      .name = "cuda",
      .linear = cuda::linear,
      .linear_quantized = cuda::linear_quantized,
      .layer_norm = cuda::layer_norm,
      .rms_norm = cuda::rms_norm,
      .modulate = cuda::modulate,
      .layer_norm_modulate = cuda::layer_norm_modulate,
      .add_gated = cuda::add_gated,
      .activation = cuda::activation,
      .softmax = cuda::softmax,
      .attention_accumulate = cuda::attention_accumulate,
      .attention_finalize = cuda::attention_finalize,
      .rope = cuda::rope,
      .conv2d = cuda::conv2d,
      .group_norm = cuda::group_norm,
      .upsample_nearest2x = cuda::upsample_nearest2x,
      .group_sums = cuda::group_sums,
      .group_norm_apply = cuda::group_norm_apply,
      .fill = cuda::fill,
      .affine = cuda::affine,
      .lerp = cuda::lerp,
      .clamp = cuda::clamp,
      .mul = cuda::mul,
      .div_add = cuda::div_add,

      .device = Device::CUDA,
      .allocator = cuda::allocator(),
      .copy = cuda::copy,
      .copy_to_host = cuda::copy_to_host,
      .copy_from_host = cuda::copy_from_host,
      .zero = cuda::zero,
      .free_memory = cuda::free_memory,
      .embedding = cuda::embedding,
      .timestep_embedding = cuda::timestep_embedding,
      .add_broadcast = cuda::add_broadcast,

      .rope_tables = cuda::rope_tables,
      .moments_from_sums = cuda::moments_from_sums,
      .blend = cuda::blend,
      .gather_bias = cuda::gather_bias,
      .mask_to_bias = cuda::mask_to_bias,
      .argmax_rows = cuda::argmax_rows,
      .find_rows = cuda::find_rows,
      .gather_rows = cuda::gather_rows,
      .axpby = cuda::axpby,
      .row_std = cuda::row_std,
      .row_l2 = cuda::row_l2,
      .scale_rows_by_ratio = cuda::scale_rows_by_ratio,
      .rope_half = cuda::rope_half,
      .l1_change_sums = cuda::l1_change_sums,
  };
  return b;
}

}  // namespace meshdit
