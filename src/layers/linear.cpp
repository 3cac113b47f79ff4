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

Result<Linear> Linear::load_rows(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                 const std::vector<Range>& rows, bool has_bias) {
  MD_TRY(Linear full, load(ck, prefix, in, out, has_bias));
  auto take = [&](const Tensor& t) {
    if (rows.size() == 1) return t.slice(0, rows[0].begin, rows[0].end);  // a view into the map
    std::vector<Tensor> parts;
    for (const Range& r : rows) parts.push_back(t.slice(0, r.begin, r.end));
    return concat(parts, 0);
  };
  Linear l;
  l.weight = take(full.weight);
  if (has_bias) l.bias = take(full.bias);
  return l;
}

Result<Linear> Linear::load_cols(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                 const std::vector<Range>& cols, Communicator* reduce, bool has_bias) {
  MD_TRY(Linear full, load(ck, prefix, in, out, has_bias));
  std::vector<Tensor> parts;
  for (const Range& r : cols) parts.push_back(full.weight.slice(1, r.begin, r.end));
  Linear l;
  l.weight = concat(parts, 1);
  l.bias = full.bias;
  l.reduce = reduce && reduce->size() > 1 ? reduce : nullptr;
  return l;
}

Tensor Linear::operator()(const Tensor& x, Act act) const {
  if (!reduce) return ops::linear(x, weight, bias.defined() ? &bias : nullptr, act);
  Tensor y = ops::linear(x, weight);
  all_reduce_(y, *reduce);
  if (bias.defined()) {
    Shape s(size_t(y.dim()), 1);
    s.back() = bias.size(0);
    y = ops::add_broadcast(y, bias.to(DType::F32).reshape(s));
  }
  return act == Act::None ? y : ops::activation(y, act);
}

Result<Mlp2> Mlp2::load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t hidden, int64_t out,
                        Act act) {
  Mlp2 m;
  m.act = act;
  MD_TRY(m.linear_1, Linear::load(ck, prefix + ".linear_1", in, hidden));
  MD_TRY(m.linear_2, Linear::load(ck, prefix + ".linear_2", hidden, out));
  return m;
}

std::vector<Range> chunk_shards(int64_t k, int64_t n, int parts, int part) {
  const Range r = shard_range(n, parts, part);
  std::vector<Range> rows;
  for (int64_t c = 0; c < k; ++c) rows.push_back(Range{c * n + r.begin, c * n + r.end});
  return rows;
}

}  // namespace meshdit
