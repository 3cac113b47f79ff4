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

}  // namespace meshdit
