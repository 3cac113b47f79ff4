// diffusers UniPCMultistepScheduler (Zhao et al. 2023, UniPC: a unified predictor-corrector framework), as
// WanPipeline uses it: flow sigmas (use_flow_sigmas, flow_shift), the B(h) predictor UniP and corrector UniC of
// solver_order, warming up from order 1 and, with lower_order_final, dropping the order again at the end.
//
// Arithmetic as diffusers does it, so the schedule matches to the bit and the steps to float32 rounding:
//  * set_timesteps works on numpy float64 arrays (linspace(1, 1/N, steps + 1)[:-1], shifted); a first sigma
//    of 1 becomes 1 - 1e-6 (log(alpha) would be -inf); timesteps = int64(sigmas * N), truncated toward zero;
//    the sigmas are then float32 with a final 0 (final_sigmas_type "zero") or the last sigma ("sigma_min");
//  * the step's coefficients (lambda, h, expm1, the rho weights) are float32 scalars, as the 0-dim float32
//    tensors of diffusers; the tensor arithmetic is float32 through ops, each product rounded.
// Only flow sigmas are implemented (the VP schedules of beta_schedule, Karras / exponential / beta sigmas,
// thresholding and solver_p are reported as errors naming the key).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "io/json_config.h"

namespace meshdit {

struct UniPCConfig {
  int64_t num_train_timesteps = 1000;
  // The VP noise schedule; read (diffusers configs carry it) but not used with flow sigmas.
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";
  int64_t solver_order = 2;
  std::string prediction_type = "epsilon";  // epsilon, sample, v_prediction, flow_prediction
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;
  bool predict_x0 = true;
  std::string solver_type = "bh2";  // bh1 or bh2 (midpoint, heun, logrho mean bh2 as in diffusers)
  bool lower_order_final = true;
  std::vector<int> disable_corrector;  // step indices whose following step skips the corrector
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;
  bool use_flow_sigmas = false;
  double flow_shift = 1.0;  // Wan2.2-T2V-A14B-Diffusers ships 3.0 (the original code samples with 12.0)
  std::string timestep_spacing = "linspace";
  int64_t steps_offset = 0;
  std::string final_sigmas_type = "zero";  // or "sigma_min"
  bool rescale_betas_zero_snr = false;
  bool use_dynamic_shifting = false;
  std::string time_shift_type = "exponential";  // or "linear"
  std::optional<double> shift_terminal;

  // From a parsed scheduler_config.json; `file` names it in messages. Checks what diffusers' __init__ checks and
  // rejects what is not implemented here.
  static Result<UniPCConfig> from_json(const Json& j, const std::string& file);
  static Result<UniPCConfig> load(const std::string& path);
};

class UniPCMultistepScheduler {
 public:
  UniPCMultistepScheduler() = default;
  static Result<UniPCMultistepScheduler> create(const UniPCConfig& cfg);

  const UniPCConfig& config() const { return cfg_; }
  // WanPipeline's flow_shift argument overrides the config's (as diffusers' from_config(..., flow_shift=)).
  void set_flow_shift(double shift) { cfg_.flow_shift = shift; }
  void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }
  std::optional<int64_t> step_index() const { return step_index_; }
  std::optional<int64_t> begin_index() const { return begin_index_; }

  // set_timesteps(num_inference_steps, sigmas=, mu=): custom sigmas (their count is the step count) replace
  // linspace(1, 1/N, steps + 1)[:-1] before shifting; mu is required with use_dynamic_shifting. Resets the
  // solver's history.
  Status set_timesteps(std::optional<int64_t> num_inference_steps,
                       const std::optional<std::vector<double>>& sigmas = std::nullopt,
                       std::optional<double> mu = std::nullopt);

  int64_t num_inference_steps() const { return int64_t(timesteps_.size()); }
  const std::vector<int64_t>& timesteps_i64() const { return timesteps_; }
  std::vector<float> timesteps() const;                         // the same integers, as the loop passes them to step()
  const std::vector<float>& sigmas() const { return sigmas_; }  // num_inference_steps + 1 entries
  Tensor timesteps_tensor() const;                              // int64 [steps], as diffusers' scheduler.timesteps
  Tensor sigmas_tensor() const;                                 // float32 [steps + 1]

  // index_for_timestep: the position of `timestep` in timesteps() (the second one when it occurs several times,
  // the last step when it does not occur).
  int64_t index_for_timestep(float timestep) const;

  // One predictor (and, from the second step, corrector) step from `timestep` (one of timesteps()), sample ->
  // the sample at the next timestep. model_output and sample have one shape; the result has sample's dtype
  // (float32 for a float64 sample).
  Result<Tensor> step(const Tensor& model_output, float timestep, const Tensor& sample);

  // The order the last step's predictor used (1 while warming up and, with lower_order_final, at the end).
  int64_t this_order() const { return this_order_; }

 private:
  Tensor convert_model_output(const Tensor& model_output, const Tensor& sample) const;
  Tensor predictor(const Tensor& sample, int64_t order) const;
  Tensor corrector(const Tensor& this_model_output, const Tensor& last_sample, int64_t order) const;

  UniPCConfig cfg_;
  std::vector<int64_t> timesteps_;
  std::vector<float> sigmas_;
  // The converted outputs of the last solver_order steps, oldest first (undefined until filled).
  std::vector<Tensor> model_outputs_;
  Tensor last_sample_;
  int64_t lower_order_nums_ = 0;
  int64_t this_order_ = 0;
  std::optional<int64_t> step_index_, begin_index_;
};

}  // namespace meshdit
