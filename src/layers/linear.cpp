#include "layers/linear.h"

namespace meshdit {

Result<Linear> Linear::load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out, bool has_bias) {
  Linear l;
  MD_TRY(l.weight, ck.get(prefix + ".weight", {out, in}));
  if (has_bias) {
    MD_TRY(l.bias, ck.get(prefix + ".bias", {out}));
  }
  return l;
}

Result<Mlp2> Mlp2::load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t hidden, int64_t out,
                        Act act) {
  Mlp2 m;
  m.act = act;
  MD_TRY(m.linear_1, Linear::load(ck, prefix + ".linear_1", in, hidden));
  MD_TRY(m.linear_2, Linear::load(ck, prefix + ".linear_2", hidden, out));
  return m;
}

}  // namespace meshdit
