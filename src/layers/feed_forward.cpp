#include "layers/feed_forward.h"

namespace meshdit {

Result<FeedForward> FeedForward::load(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t inner,
                                      int64_t dim_out, Act act, const ParallelContext* par) {
  return load_named(ck, prefix + ".net.0.proj", prefix + ".net.2", dim, inner, dim_out, act, par);
}

Result<FeedForward> FeedForward::load_named(const Checkpoint& ck, const std::string& in_name,
                                            const std::string& out_name, int64_t dim, int64_t inner, int64_t dim_out,
                                            Act act, const ParallelContext* par) {
  FeedForward f;
  f.act = act;
  const Range h = par ? shard_range(inner, par->tp_size(), par->tp_rank()) : Range{0, inner};
  MD_TRY(f.proj_in, Linear::load_rows(ck, in_name, dim, inner, {h}));
  MD_TRY(f.proj_out, Linear::load_cols(ck, out_name, inner, dim_out, {h}, par ? par->tp : nullptr));
  return f;
}

Result<FeedForward> FeedForward::load_gated(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t inner,
                                            int64_t dim_out, Act act, bool bias, const ParallelContext* par) {
  FeedForward f;
  f.act = act;
  f.gated = true;
  const int tp = par ? par->tp_size() : 1, rank = par ? par->tp_rank() : 0;
  const Range h = shard_range(inner, tp, rank);
  MD_TRY(f.proj_in,
         Linear::load_rows(ck, prefix + ".net.0.proj", dim, 2 * inner, chunk_shards(2, inner, tp, rank), bias));
  MD_TRY(f.proj_out, Linear::load_cols(ck, prefix + ".net.2", inner, dim_out, {h}, par ? par->tp : nullptr, bias));
  return f;
}

Tensor FeedForward::operator()(const Tensor& x) const {
  if (!gated) return proj_out(proj_in(x, act));
  const Tensor y = proj_in(x);
  const int64_t n = y.size(-1) / 2, last = y.dim() - 1;
  return proj_out(ops::mul(y.slice(last, 0, n), ops::activation(y.slice(last, n, 2 * n), act)));
}

}  // namespace meshdit
