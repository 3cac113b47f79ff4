// Motif-Image's sampler (MotifImage.sample in Motif's modeling_motifimage.py): rectified-flow Euler on the
// velocity with classifier-free guidance, on an inline sigma schedule. It is not a setting of
// FlowMatchEulerScheduler: there is no scheduler class behind it, the sigmas are torch.linspace in float32
// (a linear-quadratic schedule that emulates a longer one), the DiT gets round(sigma * 1000) as int64, and the
// negative branch changes with sigma. The arithmetic follows the reference's float32 torch operations:
//   sigmas   linear: linspace(1, 0, steps + 1); linear-quadratic (MovieGen, N emulated steps, steps even):
//            linspace(1, 0, N + 1)[:steps/2] ++ linspace(0, 1, steps/2 + 1)^2 * a - a, a = (steps/2) / N - 1
//   t_i      round(sigma_i * 1000) (half to even), int64
//   step     dx = uncond + g (cond - uncond); latents += (sigma_{i+1} - sigma_i) dx
//   negative with no negative prompt: the encoded empty prompt while sigma >= switch_t, then all-zero text and
//            pooled embeddings (run_inference.sh: --zero-embedding-for-cfg --negative-strategy-switch-t 0.85)
#pragma once
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

enum class MotifSchedule { Linear, LinearQuadratic };

struct MotifSamplerConfig {
  MotifSchedule schedule = MotifSchedule::LinearQuadratic;
  int64_t emulating_steps = 100;  // linear_quadratic_emulating_steps (run_inference.sh; sample()'s default is 250)
  float guidance_scale = 5.0f;
  double negative_switch_t = 0.85;
};

// What the unconditional branch of a step is given.
enum class MotifNegative {
  Prompt,       // the negative prompt's embeddings (one was given: every step)
  EmptyPrompt,  // the encoded empty prompt "" and its pooled embedding
  Zeros,        // all-zero text embeddings and all-zero pooled embedding
};

// torch.linspace(start, end, steps) in float32 as torch computes it (start + i step for the first half,
// end - (steps - 1 - i) step for the second).
std::vector<float> torch_linspace_f32(float start, float end, int64_t steps);

// The DiT's timestep for a (float32) sigma: round(sigma * 1000) half to even, the product in float32.
int64_t motif_timestep(float sigma);

class MotifSampler {
 public:
  // An odd step count with the linear-quadratic schedule, or fewer than 1 (2) steps, is an error.
  static Result<MotifSampler> create(const MotifSamplerConfig& cfg, int64_t steps);

  const MotifSamplerConfig& config() const { return cfg_; }
  int64_t num_steps() const { return int64_t(timesteps_.size()); }
  const std::vector<float>& sigmas() const { return sigmas_; }          // steps + 1 entries, 1 -> 0
  const std::vector<int64_t>& timesteps() const { return timesteps_; }  // steps entries: the DiT's t
  Tensor sigmas_tensor() const;
  Tensor timesteps_tensor() const;
  // The DiT's t input of step i for a batch: int64 [batch].
  Tensor timestep_input(int64_t step, int64_t batch) const;

  // The negative conditioning of step i (has_negative_prompt: the user gave one).
  MotifNegative negative_for(int64_t step, bool has_negative_prompt) const;

  // One Euler step with guidance: latents + (sigma_{i+1} - sigma_i) (uncond + g (cond - uncond)), float32
  // (bf16 model outputs are promoted, as the reference's `latents + dt * dx`).
  Result<Tensor> step(int64_t step, const Tensor& latents, const Tensor& cond_dx, const Tensor& uncond_dx) const;

 private:
  MotifSamplerConfig cfg_;
  std::vector<float> sigmas_;
  std::vector<int64_t> timesteps_;
};

}  // namespace meshdit
