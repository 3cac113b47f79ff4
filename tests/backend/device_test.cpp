// Every ops:: output is allocated on its inputs' device, checked without a GPU: with no CUDA backend
// compiled in, a stand-in takes the CUDA device, running the CPU kernels on host memory that carries the
// CUDA tag, with counting host<->device copies. Each op then runs on CPU tensors and on their stand-in
// copies: the results must be on the stand-in device and bit-identical to the CPU's (same kernels), and
// nothing may reach the host except through the registered copies. In a build with a CUDA backend the
// parameterised tests cover it and this test skips.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../test_util.h"
#include "backend/backend.h"
#include "backend/model_ops.h"
#include "backend/ops.h"
#include "../stand_in_device.h"
#include "backend_test_util.h"
#include "core/allocator.h"
#include "core/tensor.h"

using namespace meshdit;

namespace {

using test::random_tensor;

using test::g_downloads;
using test::g_uploads;
using test::StandInDevice;

constexpr Device kDev = Device::CUDA;

Tensor dev(const Tensor& t) { return ops::to_device(t, kDev); }

// got (from stand-in inputs) is on the stand-in device and equals want (from host inputs) bit for bit.
void same(const std::string& op, const Tensor& got, const Tensor& want) {
  SCOPED_TRACE(op);
  EXPECT_EQ(got.device(), kDev) << op << " allocated its output on " << device_name(got.device());
  EXPECT_EQ(want.device(), Device::CPU);
  EXPECT_EQ(got.shape(), want.shape());
  EXPECT_EQ(got.dtype(), want.dtype());
  // Bytes, not float values: int64 results compare too, and -0.0 / NaN payloads count as differences.
  const Tensor g = ops::to_device(got, Device::CPU).contiguous(), w = want.contiguous();
  ASSERT_EQ(g.nbytes(), w.nbytes());
  EXPECT_EQ(std::memcmp(g.raw(), w.raw(), g.nbytes()), 0) << op << ": values differ";
}

TEST(OpsDevice, EveryOpAllocatesOnItsInputsDevice) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA backend is compiled in";
  StandInDevice stand_in;
  {
    const int64_t B = 2, L = 6, C = 8, H = 2, D = 4;
    const Tensor x = random_tensor({B, L, C}, 4000), y = random_tensor({B, L, C}, 4001);
    const Tensor w = random_tensor({12, C}, 4002, 0.3f).to(DType::BF16), bias = random_tensor({12}, 4003);
    const Tensor emb = random_tensor({B, 3 * C}, 4004);
    const Tensor xd = dev(x), yd = dev(y), wd = ops::place(w, kDev), bd = ops::place(bias, kDev), ed = dev(emb);
    EXPECT_GT(g_uploads.load(), 0);

    same("linear", ops::linear(xd, wd, &bd, Act::GeluTanh), ops::linear(x, w, &bias, Act::GeluTanh));
    const Tensor g = random_tensor({C}, 4005), b = random_tensor({C}, 4006);
    const Tensor gd = dev(g), bbd = dev(b);
    same("layer_norm", ops::layer_norm(xd, &gd, &bbd, 1e-6f), ops::layer_norm(x, &g, &b, 1e-6f));
    same("rms_norm", ops::rms_norm(xd, &gd, 1e-6f), ops::rms_norm(x, &g, 1e-6f));
    same("modulate", ops::modulate(xd, ed.chunk(3, 1)[0], ed.chunk(3, 1)[1]),
         ops::modulate(x, emb.chunk(3, 1)[0], emb.chunk(3, 1)[1]));
    same("layer_norm_modulate", ops::layer_norm_modulate(xd, &gd, &bbd, 1e-6f, ed.chunk(3, 1)[0], ed.chunk(3, 1)[1]),
         ops::layer_norm_modulate(x, &g, &b, 1e-6f, emb.chunk(3, 1)[0], emb.chunk(3, 1)[1]));
    Tensor a1 = xd.clone(), a2 = x.clone();
    ops::add_gated_(a1, ed.chunk(3, 1)[2], yd);
    ops::add_gated_(a2, emb.chunk(3, 1)[2], y);
    same("add_gated_", a1, a2);
    Tensor s1 = xd.clone(), s2 = x.clone();
    ops::add_(s1, yd);
    ops::add_(s2, y);
    same("add_", s1, s2);
    same("add", ops::add(xd, yd), ops::add(x, y));
    same("activation", ops::activation(xd, Act::SiLU), ops::activation(x, Act::SiLU));
    Tensor m1 = xd.clone(), m2 = x.clone();
    ops::softmax_(m1);
    ops::softmax_(m2);
    same("softmax_", m1, m2);
    same("mul", ops::mul(xd, yd), ops::mul(x, y));
    same("full", ops::full({3, 2}, 1.5f, kDev), ops::full({3, 2}, 1.5f));
    same("affine", ops::affine(xd, 0.5f, 2.0f), ops::affine(x, 0.5f, 2.0f));
    same("lerp", ops::lerp(xd, yd, 4.0f), ops::lerp(x, y, 4.0f));
    same("div_add", ops::div_add(xd, 0.3611f, 0.1159f), ops::div_add(x, 0.3611f, 0.1159f));
    Tensor c1 = xd.clone(), c2 = x.clone();
    ops::clamp_(c1, -0.5f, 0.5f);
    ops::clamp_(c2, -0.5f, 0.5f);
    same("clamp_", c1, c2);
    const Tensor col = random_tensor({B, L, 1}, 4007);
    same("add_broadcast", ops::add_broadcast(xd, dev(col)), ops::add_broadcast(x, col));
    const Tensor ids = Tensor::empty({2, 2}, DType::I64);
    const int64_t iv[4] = {3, 0, 11, 5};
    std::memcpy(ids.raw(), iv, sizeof(iv));
    const Tensor table = random_tensor({12, C}, 4008).to(DType::BF16);
    same("embedding", ops::embedding(ops::place(table, kDev), dev(ids)).value(), ops::embedding(table, ids).value());
    const Tensor ts = Tensor::from_f32({2}, {1.0f, 500.0f});
    same("timestep_embedding", ops::timestep_embedding(dev(ts), 33, true, 1.0f),
         ops::timestep_embedding(ts, 33, true, 1.0f));

    const Tensor q = random_tensor({B, L, H, D}, 4009), k = random_tensor({B, L, H, D}, 4010),
                 v = random_tensor({B, L, H, D}, 4011);
    const Tensor qd = dev(q), kd = dev(k), vd = dev(v);
    AttentionMask mask_h{random_tensor({1, H, L, L}, 4012), true}, mask_d{dev(mask_h.bias), true};
    same("attention", ops::attention(qd, kd, vd, 0.5f, &mask_d), ops::attention(q, k, v, 0.5f, &mask_h));
    AttentionState st = ops::attention_begin(qd);
    same("attention_begin.max", st.max, ops::attention_begin(q).max);
    ops::attention_accumulate(qd, kd, vd, 0.5f, st);
    same("attention_end", ops::attention_end(st), ops::attention(q, k, v, 0.5f));
    const Tensor cs = random_tensor({L, D}, 4013), sn = random_tensor({L, D}, 4014);
    Tensor r1 = qd.clone(), r2 = q.clone();
    ops::rope_(r1, dev(cs), dev(sn));
    ops::rope_(r2, cs, sn);
    same("rope_", r1, r2);

    const Tensor img = random_tensor({1, 4, 6, 8}, 4015), imgd = dev(img);
    same("patchify", ops::patchify(imgd, 2), ops::patchify(img, 2));
    const Tensor p = random_tensor({1, 12, 16}, 4016);
    same("unpatchify", ops::unpatchify(dev(p), 3, 4, 2, 4), ops::unpatchify(p, 3, 4, 2, 4));
    const Tensor cw = random_tensor({5, 4, 3, 3}, 4017, 0.2f), cb = random_tensor({5}, 4018);
    const Tensor cwd = ops::place(cw, kDev), cbd = ops::place(cb, kDev);
    Conv2dParams cp;
    cp.pad_top = cp.pad_left = cp.pad_bottom = cp.pad_right = 1;
    same("conv2d", ops::conv2d(imgd, cwd, &cbd, cp), ops::conv2d(img, cw, &cb, cp));
    const Tensor gw = random_tensor({4}, 4019), gb = random_tensor({4}, 4020);
    const Tensor gwd = dev(gw), gbd = dev(gb);
    same("group_norm", ops::group_norm(imgd, 2, &gwd, &gbd, 1e-6f, Act::SiLU),
         ops::group_norm(img, 2, &gw, &gb, 1e-6f, Act::SiLU));
    const Tensor sums_d = ops::group_sums(imgd, 2), sums = ops::group_sums(img, 2);
    same("group_sums", sums_d, sums);
    const Tensor mean = ops::affine(sums, 1.0f / 24.0f, 0.0f), rstd = ops::full({1, 2}, 0.8f);
    const Tensor mean_d = dev(mean), rstd_d = dev(rstd);
    same("group_sums(mean)", ops::group_sums(imgd, 2, &mean_d), ops::group_sums(img, 2, &mean));
    same("group_norm_apply", ops::group_norm_apply(imgd, 2, mean_d, rstd_d, &gwd, &gbd, Act::SiLU),
         ops::group_norm_apply(img, 2, mean, rstd, &gw, &gb, Act::SiLU));
    same("upsample_nearest2x", ops::upsample_nearest2x(imgd), ops::upsample_nearest2x(img));

    // The kernels for model code (backend/model_ops.h).
    const Tensor pos = random_tensor({L, 3}, 4021, 20.0f);
    const std::vector<int> axes{4, 2, 2};
    auto [rc_d, rs_d] = ops::rope_tables(dev(pos), axes, 10000.0);
    auto [rc, rs] = ops::rope_tables(pos, axes, 10000.0);
    same("rope_tables.cos", rc_d, rc);
    same("rope_tables.sin", rs_d, rs);
    same("rope_tables(bf16)", ops::rope_tables(dev(pos).to(DType::BF16), axes, 10000.0).first,
         ops::rope_tables(pos.to(DType::BF16), axes, 10000.0).first);
    same("mean_from_sums", ops::mean_from_sums(sums_d, 24.0), ops::mean_from_sums(sums, 24.0));
    const Tensor ssd = ops::group_sums(img, 2, &mean);
    same("rstd_from_sums", ops::rstd_from_sums(dev(ssd), 24.0, 1e-6), ops::rstd_from_sums(ssd, 24.0, 1e-6));
    const Tensor above = random_tensor({1, 4, 5, 8}, 4022), left = random_tensor({1, 4, 6, 3}, 4023);
    Tensor bl1 = imgd.clone(), bl2 = img.clone();
    ops::blend_(dev(above), bl1, 3, 2);
    ops::blend_(above, bl2, 3, 2);
    ops::blend_(dev(left), bl1, 2, 3);
    ops::blend_(left, bl2, 2, 3);
    same("blend_", bl1, bl2);
    const Tensor bias_table = random_tensor({5, 4}, 4024).to(DType::BF16);
    const Tensor buckets = Tensor::from_i64({3, 4}, {0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1});
    same("gather_bias", ops::gather_bias(ops::place(bias_table, kDev).slice(1, 1, 3), dev(buckets)),
         ops::gather_bias(bias_table.slice(1, 1, 3), buckets));
    const Tensor keep = Tensor::from_i64({2, 3}, {1, 1, 0, 1, 0, 0});
    same("mask_to_bias", ops::mask_to_bias(dev(keep)), ops::mask_to_bias(keep));
    same("mask_to_bias(f32)", ops::mask_to_bias(dev(col)), ops::mask_to_bias(col));
    const Tensor tokens = Tensor::from_i64({2, 5}, {4, 9, 2, 9, 0, 7, 7, 1, 7, 3});
    const Tensor am_d = ops::argmax_rows(dev(tokens)), am = ops::argmax_rows(tokens);
    same("argmax_rows", am_d, am);
    same("find_rows", ops::find_rows(dev(tokens), 7, -1), ops::find_rows(tokens, 7, -1));
    same("gather_rows", ops::gather_rows(xd, am_d), ops::gather_rows(x, am));
    same("axpby", ops::axpby(0.8537f, xd, -0.0412f, yd), ops::axpby(0.8537f, x, -0.0412f, y));
    same("axpby(bf16)", ops::axpby(0.5f, xd.to(DType::BF16), 2.0f, yd), ops::axpby(0.5f, x.to(DType::BF16), 2.0f, y));
    same("scale", ops::scale(xd, -0.0412f), ops::scale(x, -0.0412f));
    const Tensor sd_d = ops::row_std(xd), sd = ops::row_std(x), l2_d = ops::row_l2(yd), l2 = ops::row_l2(y);
    same("row_std", sd_d, sd);
    same("row_l2", l2_d, l2);
    same("scale_rows_by_ratio", ops::scale_rows_by_ratio(xd, l2_d, sd_d), ops::scale_rows_by_ratio(x, l2, sd));

    // Core's copies stay on the device too.
    same("contiguous", xd.permute({0, 2, 1}).contiguous(), x.permute({0, 2, 1}).contiguous());
    same("to", xd.to(DType::BF16), x.to(DType::BF16));
    same("clone", xd.slice(1, 1, 4).clone(), x.slice(1, 1, 4).clone());
    same("concat", concat({xd, yd}, 1), concat({x, y}, 1));
    same("zeros", Tensor::zeros({2, 3}, DType::F16, kDev), Tensor::zeros({2, 3}, DType::F16));
    const Tensor placed = ops::place(w, kDev);
    EXPECT_EQ(placed.device(), kDev);
    EXPECT_EQ(ops::place(w, Device::CPU).raw(), w.raw());
    EXPECT_GT(g_downloads.load(), 0);
    EXPECT_GT(stand_in.live(), 0);
  }
  // Every buffer went back to the allocator that made it.
  EXPECT_EQ(stand_in.live(), 0);
}

// Inputs on two devices are a caller's bug, caught at the op with both devices named.
TEST(OpsDeviceDeathTest, MixedDevicesAreCaught) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA backend is compiled in";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        StandInDevice stand_in;
        const Tensor x = dev(random_tensor({2, 4}, 4100));
        const Tensor w = random_tensor({3, 4}, 4101);
        (void)ops::linear(x, w);
      },
      "linear: inputs on cuda and cpu");
}

}  // namespace
