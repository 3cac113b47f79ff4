// Normalisations and the adaptive (timestep-conditioned) norms of DiTs.
#pragma once
#include "layers/linear.h"
#include "parallel/mesh.h"

namespace meshdit {

struct LayerNorm {
  Tensor weight, bias;  // undefined without elementwise affine
  float eps = 1e-6f;
  static Result<LayerNorm> load(const Checkpoint& ck, const std::string& prefix, int64_t dim, float eps, bool affine,
                                bool has_bias = true);
  static LayerNorm plain(float eps) {
    LayerNorm n;
    n.eps = eps;
    return n;
  }
  Tensor operator()(const Tensor& x) const {
    return ops::layer_norm(x, weight.defined() ? &weight : nullptr, bias.defined() ? &bias : nullptr, eps);
  }
  // ops::modulate((*this)(x), shift, scale) in one pass over x [B, L, C], bit for bit the same.
  Tensor modulated(const Tensor& x, const Tensor& shift, const Tensor& scale) const {
    return ops::layer_norm_modulate(x, weight.defined() ? &weight : nullptr, bias.defined() ? &bias : nullptr, eps,
                                    shift, scale);
  }
};

struct RMSNorm {
  Tensor weight;  // undefined without elementwise affine
  float eps = 1e-6f;
  static Result<RMSNorm> load(const Checkpoint& ck, const std::string& prefix, int64_t dim, float eps);
  Tensor operator()(const Tensor& x) const { return ops::rms_norm(x, weight.defined() ? &weight : nullptr, eps); }
  // LayerNorm::modulated's counterpart, so that call sites read alike: no fused kernel, modulate(norm(x)).
  Tensor modulated(const Tensor& x, const Tensor& shift, const Tensor& scale) const {
    return ops::modulate((*this)(x), shift, scale);
  }
};

// torch.nn.RMSNorm over the channels of every head at once (Wan's q/k norm, "rms_norm_across_heads"). Under
// tensor parallelism a rank holds only its heads' channels of x and of the weight, so the mean square needs
// every rank's sum of squares: one all-reduce of one float32 per token. Without TP it is a plain RMSNorm.
struct RMSNormAcrossHeads {
  Tensor weight;                   // this rank's channels [channels.size()]
  int64_t dim = 0;                 // channels of all heads: the mean square's divisor
  float eps = 1e-6f;
  Communicator* reduce = nullptr;  // the TP group, when it splits the heads
  // channels: this rank's slice of the `dim` channels (its heads' columns of q or k).
  static Result<RMSNormAcrossHeads> load(const Checkpoint& ck, const std::string& prefix, int64_t dim,
                                         Range channels, float eps, const ParallelContext* par = nullptr);
  // x [..., channels.size()] float32 -> the same shape.
  Tensor operator()(const Tensor& x) const;
};

// The linear of an adaptive norm: emb -> k chunks of n modulation features. Under tensor parallelism each
// rank holds its 1/tp slice of every chunk (these linears are a large part of a DiT's weights: 6 x dim x dim
// per block in Flux) and one small all-gather of [B, k n] makes the chunks whole.
struct ModulationLinear {
  Linear linear;
  int64_t chunks = 1;
  Communicator* gather = nullptr;
  static Result<ModulationLinear> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t chunks,
                                       int64_t n, const ParallelContext* par);
  Tensor operator()(const Tensor& emb) const {
    Tensor y = linear(emb);
    return gather ? all_gather_chunks(y, chunks, *gather) : y;
  }
};

// diffusers AdaLayerNormZero: emb -> SiLU -> Linear(dim, 6 dim) -> shift, scale, gate for attention and
// for the MLP; the input is LayerNorm'ed (no affine) and modulated with the attention pair.
struct AdaLayerNormZero {
  ModulationLinear linear;
  LayerNorm norm;
  struct Out {
    Tensor x, gate_msa, shift_mlp, scale_mlp, gate_mlp;  // modulation tensors are [B, dim] views
  };
  static Result<AdaLayerNormZero> load(const Checkpoint& ck, const std::string& prefix, int64_t dim, float eps = 1e-6f,
                                       const ParallelContext* par = nullptr);
  // silu_emb is SiLU(temb), shared by every adaptive norm of a step.
  Out operator()(const Tensor& x, const Tensor& silu_emb) const;
};

// diffusers AdaLayerNormZeroSingle (Flux single-stream blocks): Linear(dim, 3 dim) -> shift, scale, gate.
struct AdaLayerNormZeroSingle {
  ModulationLinear linear;
  LayerNorm norm;
  struct Out {
    Tensor x, gate;
  };
  static Result<AdaLayerNormZeroSingle> load(const Checkpoint& ck, const std::string& prefix, int64_t dim,
                                             float eps = 1e-6f, const ParallelContext* par = nullptr);
  Out operator()(const Tensor& x, const Tensor& silu_emb) const;
};

// diffusers AdaLayerNormContinuous: emb -> SiLU -> Linear(cond, 2 dim) -> (scale, shift) — scale first.
struct AdaLayerNormContinuous {
  ModulationLinear linear;
  LayerNorm norm;
  static Result<AdaLayerNormContinuous> load(const Checkpoint& ck, const std::string& prefix, int64_t dim,
                                             int64_t cond_dim, float eps = 1e-6f, const ParallelContext* par = nullptr);
  Tensor operator()(const Tensor& x, const Tensor& silu_emb) const;
};

}  // namespace meshdit
