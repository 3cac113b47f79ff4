#pragma once
#include <optional>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "io/checkpoint.h"
#include "parallel/collectives.h"

namespace meshdit {

// y = x W^T + b, weight [out, in] kept in its checkpoint dtype (a view into the mapped file). A weight stored
// block-quantized (a GGUF Q8_0, Q4_K, ... tensor) stays so: `weight` then holds its rows as bytes and `quant`
// its type, and the product decodes the blocks as it goes (Checkpoint::get_quantized, ops::linear_quantized).
//
// Tensor parallelism (Megatron-style) is a matter of which part of W a rank holds:
//  - column-parallel (load_rows): rows of W, i.e. a slice of the outputs. One range is a view into the
//    mapped file, several (the chunks of a modulation linear) a copy of 1/tp of the weight.
//  - row-parallel (load_cols): columns of W, i.e. a slice of the inputs (a copy of 1/tp of the weight).
//    Its partial products are summed over `reduce` before the bias and the activation.
// padded (> 0): the outputs (load_rows) or inputs (load_cols) are zero-padded up to that many, and the ranges may
// reach into the padding (attention heads padded to a multiple of tp: zero rows, zero bias, zero columns).
struct Linear {
  Tensor weight;                   // [out, in] floats, or U8 [out, bytes per row] when quant is set
  std::optional<QuantType> quant;  // the block type of a weight kept quantized
  int64_t in = 0;                  // a quantized weight's in features (this rank's); a float one's are its size(1)
  Tensor bias;                     // undefined when the layer has none
  Communicator* reduce = nullptr;  // row-parallel: the group whose partial sums make the output

  static Result<Linear> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                             bool has_bias = true);
  static Result<Linear> load_rows(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                  const std::vector<Range>& rows, bool has_bias = true, int64_t padded = 0);
  static Result<Linear> load_cols(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                  const std::vector<Range>& cols, Communicator* reduce, bool has_bias = true,
                                  int64_t padded = 0);
  int64_t in_features() const { return quant ? in : weight.size(1); }
  int64_t out_features() const { return weight.size(0); }
  Tensor operator()(const Tensor& x, Act act = Act::None) const;
};

// Two linears with an activation between: diffusers' TimestepEmbedding and PixArtAlphaTextProjection
// (linear_1, act, linear_2).
struct Mlp2 {
  Linear linear_1, linear_2;
  Act act = Act::SiLU;
  static Result<Mlp2> load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t hidden, int64_t out,
                           Act act);
  Tensor operator()(const Tensor& x) const { return linear_2(linear_1(x, act)); }
};

// The rows of `k` equal chunks of an output of k * n features that rank `part` of `parts` holds: its slice
// of every chunk (shift / scale / gate of a modulation linear are sharded alike).
std::vector<Range> chunk_shards(int64_t k, int64_t n, int parts, int part);

}  // namespace meshdit
