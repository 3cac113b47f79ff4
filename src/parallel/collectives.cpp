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

// x as the communicator takes it: contiguous float32. A tensor to send may be copied into that form; one
// that receives must already be in it, since the data lands in its memory.
Tensor buffer(const Tensor& x, const char* op) {
  MD_CHECK(x.dtype() == DType::F32, std::string(op) + ": float32 only, got " + dtype_name(x.dtype()));
  return x.is_contiguous() ? x : x.contiguous();
}

// A tensor data lands in: it must already be contiguous float32 and writable.
void check_receiver(const Tensor& r, const char* op) {
  MD_CHECK(r.defined() && r.dtype() == DType::F32 && r.is_contiguous() && !r.read_only(),
           std::string(op) + ": the receive tensor must be a writable contiguous float32 tensor");
}

// The element pointers and counts of one send_recv; a side whose peer is < 0 passes nothing. An exchange
// that outlives the call (async) cannot send from a temporary copy, so its send tensor must be contiguous.
struct Exchange {
  Exchange(const Tensor& s, int dst, Tensor& r, int src, const char* op, bool async) {
    if (dst >= 0) {
      MD_CHECK(s.defined(), std::string(op) + ": nothing to send to rank " + std::to_string(dst));
      MD_CHECK(!async || s.is_contiguous(), std::string(op) + ": the send tensor must be contiguous");
      held = buffer(s, op);
      send = held.f32();
      n_send = held.numel();
    }
    if (src >= 0) {
      check_receiver(r, op);
      recv = r.f32();
      n_recv = r.numel();
    }
  }
  int64_t bytes() const { return (n_send + n_recv) * int64_t(sizeof(float)); }
  Tensor held;  // keeps a contiguous copy of the send tensor alive for the call
  const float* send = nullptr;
  float* recv = nullptr;
  int64_t n_send = 0, n_recv = 0;
};

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
  int64_t max_n = 0, total = 0;
  for (int64_t s : sizes) {
    max_n = std::max(max_n, s);
    total += s;
  }
  Shape padded = send.shape();
  padded[0] = max_n;
  // Equal blocks (padded to the largest shard) keep this one all-gather; the padding is dropped below.
  Tensor block = send.size(0) == max_n ? send : Tensor::zeros(padded, send.dtype(), send.device());
  if (send.size(0) != max_n) {
    Tensor head = block.slice(0, 0, send.size(0));
    copy_into(send, head);
  }
  const Tensor all = all_gather_stacked(block, c);  // [P, max_n, ...]
  Shape out_shape = padded;
  out_shape[0] = total;
  Tensor out = Tensor::empty(out_shape, send.dtype(), send.device());
  int64_t at = 0;
  for (int r = 0; r < c.size(); ++r) {
    Tensor dst = out.slice(0, at, at + sizes[size_t(r)]);
    copy_into(all.select(0, r).slice(0, 0, sizes[size_t(r)]), dst);
    at += sizes[size_t(r)];
  }
  return dim == 0 ? out : dim_back(out, dim);
}

Tensor all_gather_stacked(const Tensor& x, Communicator& c) {
  if (c.size() == 1) return x.unsqueeze(0);
  const Tensor send = buffer(x, "all_gather_stacked");
  Shape shape = x.shape();
  shape.insert(shape.begin(), int64_t(c.size()));
  Tensor all = Tensor::empty(shape, DType::F32, x.device());
  Span span("comm", span_name("all_gather", c));
  span.set_bytes(int64_t(send.nbytes()) * c.size());
  c.all_gather(send.f32(), send.numel(), all.f32());
  return all;
}

void send_recv(const Tensor& send, int dst, Tensor& recv, int src, Communicator& c) {
  const Exchange e(send, dst, recv, src, "send_recv", false);
  if (c.size() == 1) return c.send_recv(e.send, e.n_send, dst, e.recv, e.n_recv, src);
  Span span("comm", span_name("send_recv", c));
  span.set_bytes(e.bytes());
  c.send_recv(e.send, e.n_send, dst, e.recv, e.n_recv, src);
}

void send_recv_start(const Tensor& send, int dst, Tensor& recv, int src, Communicator& c) {
  const Exchange e(send, dst, recv, src, "send_recv_start", true);
  if (c.size() == 1) return c.send_recv_start(e.send, e.n_send, dst, e.recv, e.n_recv, src);
  Span span("comm", span_name("send_recv_start", c));
  span.set_bytes(e.bytes());
  c.send_recv_start(e.send, e.n_send, dst, e.recv, e.n_recv, src);
}

void send_recv_wait(Communicator& c) {
  if (c.size() == 1) return c.send_recv_wait();
  Span span("comm", span_name("send_recv_wait", c));
  c.send_recv_wait();
}

void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor& recv,
                  const std::vector<int64_t>& recv_counts, Communicator& c) {
  MD_CHECK(int(send_counts.size()) == c.size() && int(recv_counts.size()) == c.size(),
           "all_to_all_v: one count per rank");
  int64_t n_send = 0, n_recv = 0;
  for (int r = 0; r < c.size(); ++r) n_send += send_counts[size_t(r)], n_recv += recv_counts[size_t(r)];
  const Tensor s = buffer(send, "all_to_all_v");
  check_receiver(recv, "all_to_all_v");
  MD_CHECK(s.numel() == n_send && recv.numel() == n_recv, "all_to_all_v: counts " + std::to_string(n_send) + " / " +
                                                             std::to_string(n_recv) + " vs tensors " +
                                                             shape_str(s.shape()) + " / " + shape_str(recv.shape()));
  if (c.size() == 1) return c.all_to_all_v(s.f32(), send_counts, recv.f32(), recv_counts);
  Span span("comm", span_name("all_to_all_v", c));
  span.set_bytes(int64_t(s.nbytes() + recv.nbytes()));
  c.all_to_all_v(s.f32(), send_counts, recv.f32(), recv_counts);
}

Tensor all_gather_chunks(const Tensor& x, int64_t k, Communicator& c) {
  if (c.size() == 1) return x;
  MD_CHECK(x.dim() == 2 && x.size(1) % k == 0, "all_gather_chunks: x must be [B, k * n]");
  const int64_t B = x.size(0), n = x.size(1) / k;
  Tensor g = all_gather(x.reshape({B, k, n}).contiguous(), 2, c);  // [B, k, P n]: each chunk whole
  return g.reshape({B, k * n * c.size()});
}

}  // namespace meshdit
