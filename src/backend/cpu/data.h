// CPU kernels of the data-movement block of the table: byte copies and zeroing of host memory, the
// embedding row gather and the sinusoidal timestep embedding. cpu_backend() puts them in its table;
// nothing else calls them directly.
#pragma once
#include "backend/backend.h"

namespace meshdit::cpu {

void copy_bytes(void* dst, const void* src, size_t bytes);
void zero(Tensor& y);
size_t free_memory();  // MemAvailable (core/memory_info.h), 0 when unknown
bool embedding(const Tensor& table, const Tensor& ids, Tensor& out, int64_t* bad_id);
void timestep_embedding(const Tensor& t, int dim, bool flip_sin_to_cos, float downscale_freq_shift, float scale,
                        float max_period, Tensor& out);

}  // namespace meshdit::cpu
