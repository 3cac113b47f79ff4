#include "layers/causal_conv3d.h"

#include <algorithm>
#include <utility>

#include "layers/spatial_split.h"

namespace meshdit {

namespace {

// x with `before` copies of its first entry along `axis` in front and `after` of its last behind.
Tensor replicate_edges(const Tensor& x, int64_t axis, int64_t before, int64_t after) {
  if (before == 0 && after == 0) return x;
  const int64_t n = x.size(axis);
  auto copies = [&](int64_t at, int64_t count) {
    Shape s = x.shape();
    s[size_t(axis)] = count;
    return x.slice(axis, at, at + 1).expand(s);
  };
  std::vector<Tensor> parts;
  if (before > 0) parts.push_back(copies(0, before));
  parts.push_back(x);
  if (after > 0) parts.push_back(copies(n - 1, after));
  return concat(parts, axis);
}

// Images [N, C, H, W] with copies of the edge rows (top, bottom) and columns (left, right) around, in one
// new tensor: at full size this is the largest copy a replicate-padded conv makes.
Tensor replicate_pad_2d(const Tensor& x, int64_t top, int64_t bottom, int64_t left, int64_t right) {
  if (top == 0 && bottom == 0 && left == 0 && right == 0) return x;
  const int64_t H = x.size(2), W = x.size(3), Hp = top + H + bottom, Wp = left + W + right;
  Tensor out = Tensor::empty({x.size(0), x.size(1), Hp, Wp}, x.dtype(), x.device());
  Tensor rows = out.slice(2, top, top + H);  // the input's rows, padded left and right
  Tensor inner = rows.slice(3, left, left + W);
  copy_into(x, inner);
  auto fill = [](const Tensor& from, Tensor dst) { copy_into(from.expand(dst.shape()), dst); };
  if (left > 0) fill(rows.slice(3, left, left + 1), rows.slice(3, 0, left));
  if (right > 0) fill(rows.slice(3, left + W - 1, left + W), rows.slice(3, left + W, Wp));
  if (top > 0) fill(out.slice(2, top, top + 1), out.slice(2, 0, top));
  if (bottom > 0) fill(out.slice(2, top + H - 1, top + H), out.slice(2, top + H, Hp));
  return out;
}

}  // namespace

Result<CausalConv3d> CausalConv3d::load(const Checkpoint& ck, const std::string& prefix, int64_t in, int64_t out,
                                        int64_t kt, int64_t k, int64_t pad_t, int pad_s, int64_t stride_t) {
  if (2 * pad_t > kt - 1)
    return make_error(prefix + ": a causal conv's padding of " + std::to_string(2 * pad_t) +
                      " past frames exceeds its " + std::to_string(kt) + " taps");
  MD_TRY(Tensor w, ck.get(prefix + ".weight", {out, in, kt, k, k}));
  MD_TRY(Tensor b, ck.get(prefix + ".bias", {out}));
  CausalConv3d c;
  c.pad_front = 2 * pad_t;
  c.stride_t = stride_t;
  c.pad_s = pad_s;
  for (int64_t j = 0; j < kt; ++j) {
    Conv2d tap;
    // A strided view, not a copy: the weights stay in the mapped file (and the loader touches no memory,
    // so it runs on Checkpoint::meta() too); conv2d packs the slice per call, a cost of one weight read
    // against a conv's H W multiply-adds per weight.
    tap.weight = w.select(2, j);
    if (j == kt - 1) tap.bias = b;
    tap.params.pad_top = tap.params.pad_left = tap.params.pad_bottom = tap.params.pad_right = pad_s;
    c.taps.push_back(std::move(tap));
  }
  return c;
}

Result<CausalConv3d> CausalConv3d::load_replicate(const Checkpoint& ck, const std::string& prefix, int64_t in,
                                                  int64_t out, int64_t kt, int64_t k) {
  if (k % 2 != 1)
    return make_error(prefix + ": a replicate-padded causal conv needs an odd kernel, got " + std::to_string(k));
  MD_TRY(Tensor w, ck.get(prefix + ".weight", {out, in, kt, k, k}));
  MD_TRY(Tensor b, ck.get(prefix + ".bias", {out}));
  CausalConv3d c;
  c.pad_front = kt - 1;
  c.mode = CausalPad::Replicate;
  c.pad_s = int((k - 1) / 2);
  for (int64_t j = 0; j < kt; ++j) {
    Conv2d tap;  // no padding of its own: the input arrives padded with copies
    tap.weight = w.select(2, j);
    if (j == kt - 1) tap.bias = b;
    c.taps.push_back(std::move(tap));
  }
  return c;
}

Tensor CausalConv3d::operator()(const Tensor& x, const Tensor& past, const BandSplit* rows) const {
  Tensor seq = x.contiguous();
  int64_t zeros = pad_front;  // leading zero frames: never materialised, their taps are skipped
  if (past.defined() && pad_front > 0) {
    MD_CHECK(past.size(0) <= pad_front, "CausalConv3d: " + std::to_string(past.size(0)) + " cached frames for " +
                                            std::to_string(pad_front) + " of padding");
    seq = concat({past, seq}, 0);
    zeros -= past.size(0);
  }
  if (mode == CausalPad::Replicate) {
    // A past shorter than the padding begins at the video's first frame: its copies fill the rest.
    seq = replicate_edges(seq, 0, zeros, 0);
    zeros = 0;
  }
  const int64_t K = kt(), Tp = zeros + seq.size(0);
  MD_CHECK(Tp >= K, "CausalConv3d: " + std::to_string(seq.size(0)) + " frames for " + std::to_string(K) + " taps");
  const int64_t Tout = (Tp - K) / stride_t + 1, B = seq.size(1);
  // On a row split every tap reads the same frames' rows: one halo exchange of the whole sequence serves
  // them all, the neighbours' rows standing in for the padding inside the image.
  Tensor images = as_images(seq);
  int64_t halo_before = 0, halo_after = 0;
  if (rows && pad_s > 0) {
    const Halo halo = conv_halo(taps[0].weight.size(2), 1, pad_s, pad_s);
    HaloBand ext = exchange_halo(images, halo, *rows);
    images = std::move(ext.x);
    halo_before = ext.before;
    halo_after = ext.after;
  }
  if (mode == CausalPad::Replicate) {
    images = replicate_pad_2d(images, pad_s - halo_before, pad_s - halo_after, pad_s, pad_s);
    halo_before = halo_after = 0;  // the taps have no zero padding to take off
  }
  // Frames [first, first + n) of seq through one tap.
  auto tap = [&](int64_t j, int64_t first, int64_t n) {
    const Conv2d& c = taps[size_t(j)];
    Conv2dParams p = c.params;
    p.pad_top -= int(halo_before);
    p.pad_bottom -= int(halo_after);
    const Tensor in = images.slice(0, first * B, (first + n) * B);
    return as_frames(ops::conv2d(in, c.weight, c.bias.defined() ? &c.bias : nullptr, p), n);
  };
  if (stride_t == 1) {
    // Output t reads padded frame t + j, i.e. seq frame t + j - zeros; the last tap always reads a real one
    // (zeros <= K - 1), so it makes the whole output and carries the bias.
    Tensor out = tap(K - 1, K - 1 - zeros, Tout);
    for (int64_t j = 0; j + 1 < K; ++j) {
      const int64_t t0 = std::max<int64_t>(0, zeros - j);
      if (t0 >= Tout) continue;
      Tensor dst = out.slice(0, t0, Tout);
      ops::add_(dst, tap(j, t0 + j - zeros, Tout - t0));
    }
    return out;
  }
  std::vector<Tensor> frames;
  for (int64_t t = 0; t < Tout; ++t) {
    Tensor o = tap(K - 1, t * stride_t + K - 1 - zeros, 1);
    for (int64_t j = 0; j + 1 < K; ++j) {
      const int64_t i = t * stride_t + j - zeros;
      if (i >= 0) ops::add_(o, tap(j, i, 1));
    }
    frames.push_back(std::move(o));
  }
  return frames.size() == 1 ? frames[0] : concat(frames, 0);
}

Tensor CausalConv3d::cached(const Tensor& x, CausalCacheSlot& slot, const BandSplit* rows) const {
  Tensor y = (*this)(x, slot.frames, rows);
  // The sequence's last kCausalCacheT frames: a one-frame chunk keeps the previous chunk's last frame before it.
  const Tensor seq = slot.frames.defined() ? concat({slot.frames, x.contiguous()}, 0) : x;
  const int64_t n = std::min(kCausalCacheT, seq.size(0));
  slot.frames = seq.slice(0, seq.size(0) - n, seq.size(0)).clone();
  return y;
}

}  // namespace meshdit
