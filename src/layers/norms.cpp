#include "layers/norms.h"

#include "backend/model_ops.h"

namespace meshdit {

Result<LayerNorm> LayerNorm::load(const Checkpoint& ck, const std::string& prefix, int64_t dim, float eps, bool affine,
                                  bool has_bias) {
  LayerNorm n;
  n.eps = eps;
  if (affine) {
    MD_TRY(n.weight, ck.get(prefix + ".weight", {dim}));
    if (has_bias) {
      MD_TRY(n.bias, ck.get(prefix + ".bias", {dim}));
    }
  }
  return n;
}

Result<RMSNorm> RMSNorm::load(const Checkpoint& ck, const std::string& prefix, int64_t dim, float eps) {
  RMSNorm n;
  n.eps = eps;
  MD_TRY(n.weight, ck.get(prefix + ".weight", {dim}));
  return n;
}

Result<RMSNormAcrossHeads> RMSNormAcrossHeads::load(const Checkpoint& ck, const std::string& prefix, int64_t dim,
                                                    Range channels, float eps, const ParallelContext* par) {
  RMSNormAcrossHeads n;
  n.dim = dim;
  n.eps = eps;
  const std::string name = prefix + ".weight";
  if (channels.begin == 0 && channels.end == dim) {
    MD_TRY(n.weight, ck.get(name, {dim}));
  } else {
    MD_TRY(n.weight, ck.get_sharded(name, {dim}, Shard::Rows, {{channels.begin, channels.end}}));
  }
  n.reduce = par && par->tp_size() > 1 && channels.size() < dim ? par->tp : nullptr;
  return n;
}

Tensor RMSNormAcrossHeads::operator()(const Tensor& x) const {
  if (!reduce) return ops::rms_norm(x, &weight, eps);
  // GroupNorm's split kernels with one group and a zero mean: the sum of squares per token, then x * rstd * w
  // with rstd from the whole dim's sum, as the unsplit norm computes it.
  const int64_t d = x.size(-1), rows = x.numel() / d;
  const Tensor flat = x.contiguous().reshape({rows, d});
  const Tensor zero = ops::full({rows, 1}, 0.0f, x.device());
  Tensor ss = ops::group_sums(flat, 1, &zero);
  all_reduce_(ss, *reduce);
  const Tensor rstd = ops::rstd_from_sums(ss, double(dim), double(eps));
  return ops::group_norm_apply(flat, 1, zero, rstd, &weight, nullptr).reshape(x.shape());
}

Result<ModulationLinear> ModulationLinear::load(const Checkpoint& ck, const std::string& prefix, int64_t in,
                                                int64_t chunks, int64_t n, const ParallelContext* par) {
  ModulationLinear m;
  m.chunks = chunks;
  if (!par || par->tp_size() == 1) {
    MD_TRY(m.linear, Linear::load(ck, prefix, in, chunks * n));
    return m;
  }
  if (n % par->tp_size() != 0)
    return make_error(prefix + ": " + std::to_string(n) +
                      " modulation features are not divisible by tp=" + std::to_string(par->tp_size()));
  MD_TRY(m.linear,
         Linear::load_rows(ck, prefix, in, chunks * n, chunk_shards(chunks, n, par->tp_size(), par->tp_rank())));
  m.gather = par->tp;
  return m;
}

Result<AdaLayerNormZero> AdaLayerNormZero::load(const Checkpoint& ck, const std::string& prefix, int64_t dim, float eps,
                                                const ParallelContext* par) {
  AdaLayerNormZero n;
  MD_TRY(n.linear, ModulationLinear::load(ck, prefix + ".linear", dim, 6, dim, par));
  n.norm = LayerNorm::plain(eps);
  return n;
}

AdaLayerNormZero::Out AdaLayerNormZero::operator()(const Tensor& x, const Tensor& silu_emb) const {
  Tensor emb = linear(silu_emb);
  auto c = emb.chunk(6, 1);  // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
  return Out{norm.modulated(x, c[0], c[1]), c[2], c[3], c[4], c[5]};
}

Result<AdaLayerNormZeroSingle> AdaLayerNormZeroSingle::load(const Checkpoint& ck, const std::string& prefix,
                                                            int64_t dim, float eps, const ParallelContext* par) {
  AdaLayerNormZeroSingle n;
  MD_TRY(n.linear, ModulationLinear::load(ck, prefix + ".linear", dim, 3, dim, par));
  n.norm = LayerNorm::plain(eps);
  return n;
}

AdaLayerNormZeroSingle::Out AdaLayerNormZeroSingle::operator()(const Tensor& x, const Tensor& silu_emb) const {
  auto c = linear(silu_emb).chunk(3, 1);  // shift, scale, gate
  return Out{norm.modulated(x, c[0], c[1]), c[2]};
}

Result<AdaLayerNormContinuous> AdaLayerNormContinuous::load(const Checkpoint& ck, const std::string& prefix,
                                                            int64_t dim, int64_t cond_dim, float eps,
                                                            const ParallelContext* par) {
  AdaLayerNormContinuous n;
  MD_TRY(n.linear, ModulationLinear::load(ck, prefix + ".linear", cond_dim, 2, dim, par));
  n.norm = LayerNorm::plain(eps);
  return n;
}

Tensor AdaLayerNormContinuous::operator()(const Tensor& x, const Tensor& silu_emb) const {
  auto c = linear(silu_emb).chunk(2, 1);  // scale, shift
  return norm.modulated(x, c[1], c[0]);
}

}  // namespace meshdit
