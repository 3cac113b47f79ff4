#include "layers/feed_forward.h"

namespace meshdit {

Result<FeedForward> FeedForward::load(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t inner,
                                      int64_t dim_out, Act act) {
  FeedForward f;
  f.act = act;
  MD_TRY(f.proj_in, Linear::load(ck, prefix + ".net.0.proj", dim, inner));
  MD_TRY(f.proj_out, Linear::load(ck, prefix + ".net.2", inner, dim_out));
  return f;
}

}  // namespace meshdit
