#include "layers/linear.h"

#include <sys/mman.h>
#include <unistd.h>

namespace meshdit {
namespace {

// A shard copied out of a memory-mapped weight leaves the whole weight's pages resident in this process.
// Dropping them keeps per-rank memory at its shard; the mapping is private and read-only, so a later read
// (another shard of the same tensor) simply faults the file back in.
void release_mapped_pages(const Tensor& w) {
  if (!w.read_only()) return;
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (uintptr_t(w.raw()) + page - 1) / page * page;
  const uintptr_t end = (uintptr_t(w.raw()) + w.nbytes()) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace

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
    Tensor copy = concat(parts, 0);
    release_mapped_pages(t);
    return copy;
  };
  Linear l;
  l.weight = take(full.weight);
  if (has_bias) l.bias = take(full.bias);
  return l;
}

Result<Linear> Linear::load_cols(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                 const std::vector<Range>& cols, Communicator* reduce, bool has_bias) {
  MD_TRY(Linear full, load(ck, prefix, in, out, has_bias));
  if (cols.size() == 1 && cols[0].begin == 0 && cols[0].end == in) return full;  // one device: the mapped view
  std::vector<Tensor> parts;
  for (const Range& r : cols) parts.push_back(full.weight.slice(1, r.begin, r.end));
  Linear l;
  l.weight = concat(parts, 1);
  release_mapped_pages(full.weight);
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
