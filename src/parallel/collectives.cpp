#include "parallel/collectives.h"

#include "core/trace.h"

namespace meshdit {
namespace {

// Moves `dim` to the front (a contiguous copy), so a rank's block is one contiguous range.
Tensor dim_first(const Tensor& x, int64_t dim) {
  std::vector<int64_t> order{dim};
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d != dim) order.push_back(d);
  return x.permute(order).contiguous();
}

Tensor dim_back(const Tensor& x, int64_t dim) {
  std::vector<int64_t> order;
  for (int64_t d = 1; d <= dim; ++d) order.push_back(d);
  order.push_back(0);
  for (int64_t d = dim + 1; d < x.dim(); ++d) order.push_back(d);
  return x.permute(order).contiguous();
}

std::string span_name(const char* op, const Communicator& c) { return std::string(op) + "." + c.name(); }

}  // namespace

std::vector<int64_t> shard_sizes(int64_t n, int parts) {
  std::vector<int64_t> s;
  for (int r = 0; r < parts; ++r) s.push_back(shard_range(n, parts, r).size());
  return s;
}

void all_reduce_(Tensor& x, Communicator& c) {
  if (c.size() == 1) return;
  MD_CHECK(x.dtype() == DType::F32, "all_reduce_: float32 only");
  if (!x.is_contiguous()) x = x.contiguous();
  Span span("comm", span_name("all_reduce", c));
  span.set_bytes(int64_t(x.nbytes()));
  c.all_reduce_sum(x.f32(), x.numel());
}

Tensor all_gather(const Tensor& x, int64_t dim, Communicator& c) {
  return all_gather_v(x, dim, c, std::vector<int64_t>(size_t(c.size()), x.size(dim)));
}

Tensor all_gather_v(const Tensor& x, int64_t dim, Communicator& c, const std::vector<int64_t>& sizes) {
  if (c.size() == 1) return x;
  MD_CHECK(int(sizes.size()) == c.size() && sizes[size_t(c.rank())] == x.size(dim), "all_gather_v: sizes");
  if (dim < 0) dim += x.dim();
  Tensor send = dim_first(x.to(DType::F32), dim);
  const int64_t inner = send.numel() / std::max<int64_t>(1, send.size(0));
  int64_t max_n = 0, total = 0;
  for (int64_t s : sizes) {
    max_n = std::max(max_n, s);
    total += s;
  }
  Shape padded = send.shape();
  padded[0] = max_n;
  // Equal blocks (padded to the largest shard) keep this one all-gather; the padding is dropped below.
  Tensor block = send.size(0) == max_n ? send : Tensor::zeros(padded);
  if (send.size(0) != max_n) {
    Tensor head = block.slice(0, 0, send.size(0));
    copy_into(send, head);
  }
  Shape all_shape = padded;
  all_shape[0] = max_n * c.size();
  Tensor all = Tensor::empty(all_shape);
  {
    Span span("comm", span_name("all_gather", c));
    span.set_bytes(int64_t(block.nbytes()) * c.size());
    c.all_gather(block.f32(), max_n * inner, all.f32());
  }
  Shape out_shape = padded;
  out_shape[0] = total;
  Tensor out = Tensor::empty(out_shape);
  int64_t at = 0;
  for (int r = 0; r < c.size(); ++r) {
    Tensor dst = out.slice(0, at, at + sizes[size_t(r)]);
    copy_into(all.slice(0, r * max_n, r * max_n + sizes[size_t(r)]), dst);
    at += sizes[size_t(r)];
  }
  return dim == 0 ? out : dim_back(out, dim);
}

Tensor all_gather_chunks(const Tensor& x, int64_t k, Communicator& c) {
  if (c.size() == 1) return x;
  MD_CHECK(x.dim() == 2 && x.size(1) % k == 0, "all_gather_chunks: x must be [B, k * n]");
  const int64_t B = x.size(0), n = x.size(1) / k;
  Tensor g = all_gather(x.reshape({B, k, n}).contiguous(), 2, c);  // [B, k, P n]: each chunk whole
  return g.reshape({B, k * n * c.size()});
}

}  // namespace meshdit
