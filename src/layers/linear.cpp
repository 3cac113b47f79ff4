#include "layers/linear.h"

namespace meshdit {
namespace {

// The weight of this rank kept quantized when the checkpoint stores it so, else taken as floats by `take_float`.
template <class F>
Status take_weight(Linear& l, const Checkpoint& ck, const std::string& name, const Shape& shape, Shard shard,
                   const std::vector<std::pair<int64_t, int64_t>>& ranges, int64_t padded, const F& take_float) {
  MD_TRY(std::optional<QuantizedWeight> q, ck.get_quantized(name, shape, shard, ranges, padded));
  if (q) {
    l.weight = std::move(q->rows);
    l.quant = q->type;
    l.in = q->cols;
    return ok_status();
  }
  MD_TRY(l.weight, take_float());
  return ok_status();
}

}  // namespace

Result<Linear> Linear::load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out, bool has_bias) {
  Linear l;
  MD_RETURN_IF_ERROR(take_weight(l, ck, prefix + ".weight", {out, in}, Shard::Replicated, {}, 0, [&] {
    return ck.get(prefix + ".weight", {out, in});
  }));
  if (has_bias) {
    MD_TRY(l.bias, ck.get(prefix + ".bias", {out}));
  }
  return l;
}

namespace {
std::vector<std::pair<int64_t, int64_t>> pairs(const std::vector<Range>& r) {
  std::vector<std::pair<int64_t, int64_t>> p;
  for (const Range& x : r) p.push_back({x.begin, x.end});
  return p;
}
}  // namespace

Result<Linear> Linear::load_rows(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                 const std::vector<Range>& rows, bool has_bias, int64_t padded) {
  Linear l;
  MD_RETURN_IF_ERROR(take_weight(l, ck, prefix + ".weight", {out, in}, Shard::Rows, pairs(rows), padded, [&] {
    return ck.get_sharded(prefix + ".weight", {out, in}, Shard::Rows, pairs(rows), padded);
  }));
  if (has_bias) {
    MD_TRY(l.bias, ck.get_sharded(prefix + ".bias", {out}, Shard::Rows, pairs(rows), padded));
  }
  return l;
}

Result<Linear> Linear::load_cols(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                 const std::vector<Range>& cols, Communicator* reduce, bool has_bias,
                                 int64_t padded) {
  Linear l;
  MD_RETURN_IF_ERROR(take_weight(l, ck, prefix + ".weight", {out, in}, Shard::Cols, pairs(cols), padded, [&] {
    return ck.get_sharded(prefix + ".weight", {out, in}, Shard::Cols, pairs(cols), padded);
  }));
  if (has_bias) {  // added once, after the partial sums are reduced: whole on every rank
    MD_TRY(l.bias, ck.get(prefix + ".bias", {out}));
  }
  l.reduce = reduce && reduce->size() > 1 ? reduce : nullptr;
  return l;
}

Tensor Linear::operator()(const Tensor& x, Act act) const {
  auto product = [&](const Tensor* b, Act a) {
    return quant ? ops::linear_quantized(x, weight, *quant, in, b, a) : ops::linear(x, weight, b, a);
  };
  if (!reduce) return product(bias.defined() ? &bias : nullptr, act);
  Tensor y = product(nullptr, Act::None);
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
