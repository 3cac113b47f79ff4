#pragma once
#include "layers/linear.h"
#include "parallel/mesh.h"

namespace meshdit {

// diffusers FeedForward: net.0.proj (with its activation), net.2 back to dim. Under TP the hidden features
// are sharded: net.0.proj column-parallel, net.2 row-parallel (one all-reduce).
struct FeedForward {
  Linear proj_in, proj_out;
  Act act = Act::GeluTanh;
  bool gated = false;  // net.0.proj makes [hidden, gate] and the MLP goes on with hidden * act(gate)
  static Result<FeedForward> load(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t inner,
                                  int64_t dim_out, Act act, const ParallelContext* par = nullptr);
  // diffusers' gated feed-forwards (activation_fn "swiglu": act SiLU, "geglu": GeluErf): net.0.proj has 2 inner
  // outputs, hidden then gate; under TP a rank takes its slice of both halves. bias: whether both linears
  // have biases (FeedForward(bias=False) in Mochi).
  static Result<FeedForward> load_gated(const Checkpoint& ck, const std::string& prefix, int64_t dim, int64_t inner,
                                        int64_t dim_out, Act act, bool bias, const ParallelContext* par = nullptr);
  Tensor operator()(const Tensor& x) const;
  // The same with a model's own names for the two linears (Motif's gate_proj, down_proj).
  static Result<FeedForward> load_named(const Checkpoint& ck, const std::string& in_name, const std::string& out_name,
                                        int64_t dim, int64_t inner, int64_t dim_out, Act act,
                                        const ParallelContext* par = nullptr);
};

}  // namespace meshdit
