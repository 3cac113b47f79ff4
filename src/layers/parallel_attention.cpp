#include "layers/parallel_attention.h"

#include "backend/ops.h"
#include "parallel/collectives.h"

namespace meshdit {
namespace {

struct Parts {
  int64_t txt_begin, img_begin, n_txt, n_img;
};

Parts parts_of(const SeqLayout& seq, int64_t n_img) {
  return seq.txt_first ? Parts{0, seq.n_txt, seq.n_txt, n_img} : Parts{n_img, 0, seq.n_txt, n_img};
}

Tensor joint_concat(const Tensor& txt, const Tensor& img, bool txt_first) {
  if (txt.size(1) == 0) return img;
  return txt_first ? concat({txt, img}, 1) : concat({img, txt}, 1);
}

}  // namespace

AttentionMask joint_key_mask(const Tensor& txt_bias, int64_t n_img, bool txt_first) {
  const int64_t B = txt_bias.size(0), L = txt_bias.size(1) + n_img;
  const Tensor img = ops::full({B, n_img}, 0.0f, txt_bias.device());
  const Tensor txt = txt_bias.to(DType::F32);
  AttentionMask m;
  m.bias = (txt_first ? concat({txt, img}, 1) : concat({img, txt}, 1)).reshape({B, 1, 1, L});
  return m;
}

Tensor joint_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const SeqLayout& seq,
                       const ParallelContext* par, const Tensor* txt_bias) {
  if (!par || par->sp_size() == 1) {
    if (!txt_bias) return ops::attention(q, k, v, scale);
    const AttentionMask m = joint_key_mask(*txt_bias, k.size(1) - seq.n_txt, seq.txt_first);
    return ops::attention(q, k, v, scale, &m);
  }
  return par->sp_mode == SpMode::Ring ? ring_attention(q, k, v, scale, seq, *par->sp, txt_bias)
                                      : ulysses_attention(q, k, v, scale, seq, *par->sp, txt_bias);
}

Tensor ring_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const SeqLayout& seq,
                      Communicator& sp, const Tensor* txt_bias) {
  const int P = sp.size(), r = sp.rank();
  MD_CHECK(int(seq.img_sizes.size()) == P, "ring_attention: one image size per SP rank");
  const int64_t B = k.size(0), H = k.size(2), D = k.size(3);
  const Parts p = parts_of(seq, seq.img_sizes[size_t(r)]);
  MD_CHECK(k.size(1) == p.n_txt + p.n_img, "ring_attention: local sequence does not match the layout");

  // A block in flight is [K; V] of one image shard: [2, B, n, H, D].
  auto pack = [&](const Tensor& kk, const Tensor& vv) {
    Tensor buf = Tensor::empty({2, B, kk.size(1), H, D}, DType::F32, kk.device());
    Tensor k0 = buf.select(0, 0), v0 = buf.select(0, 1);
    copy_into(kk, k0);
    copy_into(vv, v0);
    return buf;
  };
  // Only the local block holds text keys; the image blocks that travel are never masked.
  AttentionMask local_mask;
  if (txt_bias) local_mask = joint_key_mask(*txt_bias, p.n_img, seq.txt_first);
  const AttentionMask* own = txt_bias ? &local_mask : nullptr;
  AttentionState st = ops::attention_begin(q);
  Tensor cur = pack(k.slice(1, p.img_begin, p.img_begin + p.n_img), v.slice(1, p.img_begin, p.img_begin + p.n_img));
  const int right = (r + 1) % P, left = (r + P - 1) % P;
  // Double-buffered: step s sends `cur` on and receives `next` while the block held is folded in, and only
  // then waits. With NCCL on device tensors the transfer runs on the communicator's stream beside the
  // attention kernels on the compute stream, and the wait is a stream wait, not a host one; with MPI the
  // transfer progresses while the CPU computes. Both buffers stay alive until the wait (collectives.h).
  for (int s = 1; s < P; ++s) {
    const int origin = (r - s + P) % P;  // whose shard arrives at this step
    Tensor next = Tensor::empty({2, B, seq.img_sizes[size_t(origin)], H, D}, DType::F32, k.device());
    send_recv_start(cur, right, next, left, sp);
    // Overlap: fold in the block we hold while the next one travels.
    if (s == 1)
      ops::attention_accumulate(q, k, v, scale, st, own);  // text + my own shard
    else
      ops::attention_accumulate(q, cur.select(0, 0), cur.select(0, 1), scale, st);
    send_recv_wait(sp);
    cur = next;
  }
  if (P == 1)
    ops::attention_accumulate(q, k, v, scale, st, own);
  else
    ops::attention_accumulate(q, cur.select(0, 0), cur.select(0, 1), scale, st);
  return ops::attention_end(st);
}

Tensor ulysses_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const SeqLayout& seq,
                         Communicator& sp, const Tensor* txt_bias) {
  const int P = sp.size(), r = sp.rank();
  MD_CHECK(int(seq.img_sizes.size()) == P, "ulysses_attention: one image size per SP rank");
  const int64_t B = q.size(0), Hl = q.size(2), D = q.size(3);
  MD_CHECK(Hl % P == 0, "ulysses_attention: heads must divide by sp (validated by the parallel config)");
  const int64_t Hh = Hl / P;
  const Device dev = q.device();
  const Parts p = parts_of(seq, seq.img_sizes[size_t(r)]);
  auto img = [&](const Tensor& t) { return t.slice(1, p.img_begin, p.img_begin + p.n_img); };
  auto txt = [&](const Tensor& t) { return t.slice(1, p.txt_begin, p.txt_begin + p.n_txt); };
  int64_t n_all = 0;
  for (int64_t n : seq.img_sizes) n_all += n;

  // all-to-all #1: to rank d, heads [d Hh, (d+1) Hh) of my image tokens for q, k and v.
  const int64_t mine = 3 * B * p.n_img * Hh * D;
  std::vector<int64_t> send_counts(size_t(P), mine), recv_counts(static_cast<size_t>(P));
  for (int s = 0; s < P; ++s) recv_counts[size_t(s)] = 3 * B * seq.img_sizes[size_t(s)] * Hh * D;
  Tensor send = Tensor::empty({int64_t(P), 3, B, p.n_img, Hh, D}, DType::F32, dev);
  const Tensor* qkv[3] = {&q, &k, &v};
  for (int d = 0; d < P; ++d)
    for (int t = 0; t < 3; ++t) {
      Tensor dst = send.select(0, d).select(0, t);
      copy_into(img(*qkv[t]).slice(2, d * Hh, (d + 1) * Hh), dst);
    }
  Tensor recv = Tensor::empty({3 * B * n_all * Hh * D}, DType::F32, dev);
  all_to_all_v(send, send_counts, recv, recv_counts, sp);
  // Source s sent [3, B, n_s, Hh, D]: stitch the full image sequence of my heads together, in rank order.
  Tensor full[3];
  for (int t = 0; t < 3; ++t) full[t] = Tensor::empty({B, n_all, Hh, D}, DType::F32, dev);
  int64_t off = 0, at = 0;
  for (int s = 0; s < P; ++s) {
    const int64_t n = seq.img_sizes[size_t(s)];
    Tensor block = recv.slice(0, off, off + 3 * B * n * Hh * D).reshape({3, B, n, Hh, D});
    for (int t = 0; t < 3; ++t) {
      Tensor dst = full[t].slice(1, at, at + n);
      copy_into(block.select(0, t), dst);
    }
    off += 3 * B * n * Hh * D;
    at += n;
  }
  auto my_heads = [&](const Tensor& t) { return txt(t).slice(2, r * Hh, (r + 1) * Hh); };
  AttentionMask mask;
  if (txt_bias) mask = joint_key_mask(*txt_bias, n_all, seq.txt_first);
  Tensor o = ops::attention(joint_concat(my_heads(q), full[0], seq.txt_first),
                            joint_concat(my_heads(k), full[1], seq.txt_first),
                            joint_concat(my_heads(v), full[2], seq.txt_first), scale, txt_bias ? &mask : nullptr);
  const int64_t ot = seq.txt_first ? 0 : n_all, oi = seq.txt_first ? p.n_txt : 0;

  // Text output: every rank needs all heads (text stays replicated).
  Tensor o_txt = p.n_txt ? all_gather(o.slice(1, ot, ot + p.n_txt).contiguous(), 2, sp) : Tensor();

  // all-to-all #2: image tokens of rank d (my heads) go back to d; I get my tokens for every head chunk.
  std::vector<int64_t> back_send(static_cast<size_t>(P)), back_recv(size_t(P), B * p.n_img * Hh * D);
  Tensor send2 = Tensor::empty({B * n_all * Hh * D}, DType::F32, dev);
  at = 0;
  off = 0;
  for (int d = 0; d < P; ++d) {
    const int64_t n = seq.img_sizes[size_t(d)];
    back_send[size_t(d)] = B * n * Hh * D;
    Tensor dst = send2.slice(0, off, off + B * n * Hh * D).reshape({B, n, Hh, D});
    copy_into(o.slice(1, oi + at, oi + at + n), dst);
    off += B * n * Hh * D;
    at += n;
  }
  Tensor recv2 = Tensor::empty({int64_t(P), B, p.n_img, Hh, D}, DType::F32, dev);
  all_to_all_v(send2, back_send, recv2, back_recv, sp);
  Tensor o_img = Tensor::empty({B, p.n_img, Hl, D}, DType::F32, dev);
  for (int s = 0; s < P; ++s) {
    Tensor dst = o_img.slice(2, s * Hh, (s + 1) * Hh);
    copy_into(recv2.select(0, s), dst);
  }
  return p.n_txt ? joint_concat(o_txt, o_img, seq.txt_first) : o_img;
}

}  // namespace meshdit
