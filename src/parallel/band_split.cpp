#include "parallel/band_split.h"

#include <numeric>

#include "parallel/collectives.h"

namespace meshdit {

BandSplit::BandSplit(Communicator& comm, int64_t axis, int64_t extent)
    : BandSplit(comm, axis, shard_sizes(extent, comm.size())) {}

BandSplit::BandSplit(Communicator& comm, int64_t axis, std::vector<int64_t> sizes)
    : comm_(&comm), axis_(axis), sizes_(std::move(sizes)) {
  MD_CHECK(axis_ >= 0, "BandSplit: axis " + std::to_string(axis_));
  MD_CHECK(int(sizes_.size()) == comm.size(),
           "BandSplit: " + std::to_string(sizes_.size()) + " band sizes for " + std::to_string(comm.size()) + " ranks");
  for (int64_t s : sizes_) MD_CHECK(s >= 1, "BandSplit: every rank needs a band of at least one entry");
}

int64_t BandSplit::total() const { return std::accumulate(sizes_.begin(), sizes_.end(), int64_t(0)); }

Range BandSplit::band(int r) const {
  const int64_t begin = std::accumulate(sizes_.begin(), sizes_.begin() + r, int64_t(0));
  return Range{begin, begin + sizes_[size_t(r)]};
}

void BandSplit::upsampled(int64_t factor) {
  for (int64_t& s : sizes_) s *= factor;
}

Tensor BandSplit::local(const Tensor& whole) const {
  MD_CHECK(whole.dim() > axis_ && whole.size(axis_) == total(),
           "BandSplit::local: " + shape_str(whole.shape()) + " does not hold the whole axis " + std::to_string(axis_) +
               " (" + std::to_string(total()) + ")");
  const Range r = band();
  return whole.slice(axis_, r.begin, r.end);
}

Tensor BandSplit::gather(const Tensor& band) const {
  MD_CHECK(band.dim() > axis_ && band.size(axis_) == band_size(),
           "BandSplit::gather: " + shape_str(band.shape()) + " is not this rank's band along axis " +
               std::to_string(axis_) + " (" + std::to_string(band_size()) + ")");
  return all_gather_v(band, axis_, *comm_, sizes_);
}

Halo conv_halo(int64_t kernel, int64_t stride, int64_t pad_before, int64_t pad_after) {
  MD_CHECK(stride == 1 && pad_before >= 0 && pad_after >= 0 && kernel == pad_before + pad_after + 1,
           "split conv: needs stride 1 and a kernel of padding before + after + 1 along the split axis, got kernel " +
               std::to_string(kernel) + ", stride " + std::to_string(stride) + ", padding " +
               std::to_string(pad_before) + " + " + std::to_string(pad_after));
  return Halo{pad_before, pad_after};
}

HaloBand exchange_halo(const Tensor& band, const Halo& halo, const BandSplit& split) {
  const int64_t a = split.axis(), n = band.size(a);
  MD_CHECK(n >= halo.before && n >= halo.after,
           "exchange_halo: a band of " + std::to_string(n) + " entries is thinner than the halo (" +
               std::to_string(halo.before) + " + " + std::to_string(halo.after) + ")");
  const int prev = split.prev(), next = split.next();
  auto receiver = [&](int64_t len) {
    Shape s = band.shape();
    s[size_t(a)] = len;
    return Tensor::empty(s, DType::F32, band.device());
  };
  HaloBand out;
  Tensor from_prev, from_next;
  // The start of my band goes back and the end forward: each exchange is one matched pair per boundary,
  // so no rank waits on a cycle. A zero-length side is skipped on every rank alike (the halo is uniform).
  if (halo.after > 0) {
    if (next >= 0) from_next = receiver(halo.after);
    const Tensor start = prev >= 0 ? band.slice(a, 0, halo.after).contiguous() : Tensor();
    send_recv(start, prev, from_next, next, split.comm());
  }
  if (halo.before > 0) {
    if (prev >= 0) from_prev = receiver(halo.before);
    const Tensor end = next >= 0 ? band.slice(a, n - halo.before, n).contiguous() : Tensor();
    send_recv(end, next, from_prev, prev, split.comm());
  }
  std::vector<Tensor> parts;
  if (from_prev.defined()) parts.push_back(from_prev), out.before = halo.before;
  parts.push_back(band);
  if (from_next.defined()) parts.push_back(from_next), out.after = halo.after;
  out.x = parts.size() == 1 ? band : concat(parts, a);
  return out;
}

}  // namespace meshdit
