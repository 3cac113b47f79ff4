// See motif.h. Compiled with -ffp-contract=off (CMakeLists.txt): torch rounds every float32 operation, so no
// multiply-add may be fused here.
#include "schedulers/motif.h"

#include <cmath>

#include "backend/model_ops.h"
#include "backend/ops.h"

namespace meshdit {

std::vector<float> torch_linspace_f32(float start, float end, int64_t steps) {
  std::vector<float> v(static_cast<size_t>(std::max<int64_t>(steps, 0)));
  if (steps == 1) v[0] = start;
  if (steps < 2) return v;
  const float step = (end - start) / float(steps - 1);
  const int64_t halfway = steps / 2;
  for (int64_t i = 0; i < steps; ++i) {
    // Each product is rounded to float32 before the sum, as torch's kernel computes it.
    const float d = i < halfway ? step * float(i) : step * float(steps - i - 1);
    v[size_t(i)] = i < halfway ? start + d : end - d;
  }
  return v;
}

int64_t motif_timestep(float sigma) { return int64_t(std::nearbyint(sigma * 1000.0f)); }

Result<MotifSampler> MotifSampler::create(const MotifSamplerConfig& cfg, int64_t steps) {
  const bool lq = cfg.schedule == MotifSchedule::LinearQuadratic;
  if (steps < 1) return make_error("Motif sampler: " + std::to_string(steps) + " steps; at least 1 is needed");
  if (lq && steps % 2 != 0)
    return make_error(
        "Motif sampler: the linear-quadratic schedule needs an even step count (half linear, half "
        "quadratic), got " +
        std::to_string(steps));
  if (lq && (cfg.emulating_steps < steps / 2))
    return make_error("Motif sampler: linear_quadratic_emulating_steps " + std::to_string(cfg.emulating_steps) +
                      " is below half the step count " + std::to_string(steps));
  MotifSampler s;
  s.cfg_ = cfg;
  if (!lq) {
    s.sigmas_ = torch_linspace_f32(1.0f, 0.0f, steps + 1);
  } else {
    const int64_t half = steps / 2, N = cfg.emulating_steps;
    const std::vector<float> linear = torch_linspace_f32(1.0f, 0.0f, N + 1);
    s.sigmas_.assign(linear.begin(), linear.begin() + half);
    // A Python float scalar applied to a float32 tensor: cast to float32, each operation rounded.
    const float a = float(double(half) * 1.0 / double(N) - 1.0);
    for (float u : torch_linspace_f32(0.0f, 1.0f, half + 1)) s.sigmas_.push_back((u * u) * a - a);
  }
  for (int64_t i = 0; i < steps; ++i) s.timesteps_.push_back(motif_timestep(s.sigmas_[size_t(i)]));
  return s;
}

Tensor MotifSampler::sigmas_tensor() const { return Tensor::from_f32({int64_t(sigmas_.size())}, sigmas_); }

Tensor MotifSampler::timesteps_tensor() const { return Tensor::from_i64({num_steps()}, timesteps_); }

Tensor MotifSampler::timestep_input(int64_t step, int64_t batch) const {
  return Tensor::from_i64({batch}, std::vector<int64_t>(size_t(batch), timesteps_.at(size_t(step))));
}

MotifNegative MotifSampler::negative_for(int64_t step, bool has_negative_prompt) const {
  if (has_negative_prompt) return MotifNegative::Prompt;
  return double(sigmas_.at(size_t(step))) >= cfg_.negative_switch_t ? MotifNegative::EmptyPrompt : MotifNegative::Zeros;
}

Result<Tensor> MotifSampler::step(int64_t i, const Tensor& latents, const Tensor& cond_dx,
                                  const Tensor& uncond_dx) const {
  if (i < 0 || i >= num_steps())
    return make_error("Motif sampler: step " + std::to_string(i) + " outside the " + std::to_string(num_steps()) +
                      "-step schedule");
  if (cond_dx.shape() != latents.shape() || uncond_dx.shape() != latents.shape())
    return make_error("Motif sampler: model outputs " + shape_str(cond_dx.shape()) + " / " +
                      shape_str(uncond_dx.shape()) + " do not match the latents " + shape_str(latents.shape()));
  const float dt = sigmas_[size_t(i) + 1] - sigmas_[size_t(i)];
  const Tensor dx = ops::lerp(uncond_dx.to(DType::F32), cond_dx.to(DType::F32), cfg_.guidance_scale);
  return ops::axpby(1.0f, latents, dt, dx);
}

}  // namespace meshdit
