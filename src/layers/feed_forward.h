#pragma once
#include "layers/linear.h"
#include "parallel/mesh.h"

namespace meshdit {

// diffusers FeedForward: net.0.proj (with its activation), net.2 back to dim. Under TP the hidden features
// are sharded: net.0.proj column-parallel, net.2 row-parallel (one all-reduce).
struct FeedForward {
  Linear proj_in, proj_out;
  Act act = Act::GeluTanh;
  static Result<FeedForward> load(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t inner,
                                  int64_t dim_out, Act act, const ParallelContext* par = nullptr);
  // The same with a model's own names for the two linears (Motif's gate_proj, down_proj).
  static Result<FeedForward> load_named(const Checkpoint& ck, const std::string& in_name, const std::string& out_name,
                                        int64_t dim, int64_t inner, int64_t dim_out, Act act,
                                        const ParallelContext* par = nullptr);
  Tensor operator()(const Tensor& x) const { return proj_out(proj_in(x, act)); }
};

}  // namespace meshdit
