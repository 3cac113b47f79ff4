#include "layers/sequence_shard.h"

#include "parallel/collectives.h"

namespace meshdit {

SequenceShard::SequenceShard(int64_t n_img, int64_t n_txt, bool txt_first, const ParallelContext& par)
    : n_img_(n_img),
      seq_{n_txt, txt_first, shard_sizes(n_img, par.sp_size())},
      mine_(shard_range(n_img, par.sp_size(), par.sp_rank())),
      sp_(par.sp_size() > 1 ? par.sp : nullptr) {}

Tensor SequenceShard::local(const Tensor& x) const {
  MD_CHECK(x.dim() >= 2 && x.size(1) == n_img_, "SequenceShard::local: " + shape_str(x.shape()) + " does not hold " +
                                                    std::to_string(n_img_) + " image tokens along dim 1");
  return split() ? x.slice(1, mine_.begin, mine_.end).contiguous() : x;
}

Tensor SequenceShard::local_rows(const Tensor& joint) const {
  const int64_t L = seq_.n_txt;
  MD_CHECK(joint.dim() >= 1 && joint.size(0) == L + n_img_, "SequenceShard::local_rows: " + shape_str(joint.shape()) +
                                                                " does not have the " + std::to_string(L + n_img_) +
                                                                " rows of the joint sequence");
  if (!split()) return joint;
  if (seq_.txt_first) return concat({joint.slice(0, 0, L), joint.slice(0, L + mine_.begin, L + mine_.end)}, 0);
  return concat({joint.slice(0, mine_.begin, mine_.end), joint.slice(0, n_img_, n_img_ + L)}, 0);
}

Tensor SequenceShard::gather(const Tensor& x) const {
  MD_CHECK(x.dim() >= 2 && x.size(1) == local_tokens(), "SequenceShard::gather: " + shape_str(x.shape()) +
                                                            " does not hold this rank's " +
                                                            std::to_string(local_tokens()) + " image tokens");
  return split() ? all_gather_v(x, 1, *sp_, seq_.img_sizes) : x;
}

}  // namespace meshdit
