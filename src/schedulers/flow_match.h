// diffusers FlowMatchEulerDiscreteScheduler (SD3, FLUX, Qwen-Image, Mochi, ...), with the same float32 /
// float64 arithmetic as diffusers so that timesteps and sigmas match it to the last bit or so:
//  * set_timesteps without custom sigmas/timesteps works on a numpy float64 array (np.linspace over
//    [sigma_max, sigma_min] x num_train_timesteps), shifting in float64;
//  * custom sigmas (FLUX, Qwen-Image, Mochi) or timesteps are cast to float32 first, and then every numpy operation
//    with Python scalars stays in float32 (NEP 50 weak scalars);
//  * the tables are then float32 tensors: timesteps = sigmas * num_train_timesteps in float32; sigmas get a
//    terminal 0 (or, with invert_sigmas, sigmas = 1 - sigmas and a terminal 1);
//  * step() is float32: prev = sample + (sigma_next - sigma) * model_output, each operation rounded.
// Options that are not implemented (use_beta_sigmas, per-token timesteps) are reported as errors.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "core/torch_rng.h"
#include "io/json_config.h"

namespace meshdit {

struct FlowMatchConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  int64_t base_image_seq_len = 256;
  int64_t max_image_seq_len = 4096;
  bool invert_sigmas = false;
  std::optional<double> shift_terminal;  // null in most configs
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;
  std::string time_shift_type = "exponential";  // or "linear"
  bool stochastic_sampling = false;

  // From a parsed scheduler_config.json; `file` names it in messages. Checks what diffusers' __init__ checks and
  // rejects what is not implemented here.
  static Result<FlowMatchConfig> from_json(const Json& j, const std::string& file);
  static Result<FlowMatchConfig> load(const std::string& path);
};

// numpy.linspace(start, stop, num) in float64, computed as numpy does (i * step + start, last = stop).
std::vector<double> np_linspace(double start, double stop, int64_t num);

// diffusers.pipelines.flux.pipeline_flux.calculate_shift: mu linear in image_seq_len, base_shift at
// base_seq_len and max_shift at max_seq_len (Python float64 arithmetic).
double calculate_shift(double image_seq_len, int64_t base_seq_len = 256, int64_t max_seq_len = 4096,
                       double base_shift = 0.5, double max_shift = 1.15);

// The sigmas FLUX / Qwen-Image pipelines pass: np.linspace(1.0, 1 / steps, steps).
std::vector<double> flux_pipeline_sigmas(int64_t num_inference_steps);

// diffusers.pipelines.mochi.pipeline_mochi.linear_quadratic_schedule (linear_steps < 0: num_steps // 2).
std::vector<double> linear_quadratic_schedule(int64_t num_steps, double threshold_noise, int64_t linear_steps = -1);

// The sigma shifts of diffusers' flow schedulers (FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler with
// flow sigmas), in place on a numpy array of T (float for a float32 array, whose dtype Python scalars do not
// promote; double for a float64 one): with mu (dynamic shifting), time_shift(mu, 1, s), exponential
// (e^mu / (e^mu + 1 / s - 1)) or linear (mu for e^mu); else shift * s / (1 + (shift - 1) s). Then a non-zero
// shift_terminal stretches the schedule to end there. `who` names the scheduler in the error.
template <class T>
Status shift_flow_sigmas(std::vector<T>& s, double shift, std::optional<double> mu, bool exponential,
                         std::optional<double> shift_terminal, const std::string& who);

class FlowMatchEulerScheduler {
 public:
  FlowMatchEulerScheduler() = default;
  static Result<FlowMatchEulerScheduler> create(const FlowMatchConfig& cfg);

  const FlowMatchConfig& config() const { return cfg_; }
  double shift() const { return shift_; }
  void set_shift(double shift) { shift_ = shift; }
  void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }
  std::optional<int64_t> step_index() const { return step_index_; }
  std::optional<int64_t> begin_index() const { return begin_index_; }
  double sigma_min() const { return sigma_min_; }
  double sigma_max() const { return sigma_max_; }

  // set_timesteps(num_inference_steps, sigmas=, mu=, timesteps=). Any of num_inference_steps / sigmas / timesteps
  // may be absent as in diffusers (the count then comes from the list given); mu is required with
  // use_dynamic_shifting and ignored otherwise.
  Status set_timesteps(std::optional<int64_t> num_inference_steps, const std::optional<std::vector<double>>& sigmas,
                       std::optional<double> mu, const std::optional<std::vector<double>>& timesteps = std::nullopt);

  int64_t num_inference_steps() const { return num_inference_steps_; }
  const std::vector<float>& timesteps() const { return timesteps_; }  // num_inference_steps entries
  const std::vector<float>& sigmas() const { return sigmas_; }        // num_inference_steps + 1 entries
  Tensor timesteps_tensor() const;
  Tensor sigmas_tensor() const;

  // index_for_timestep: the position of `timestep` in timesteps() (the second one when it occurs several times).
  Result<int64_t> index_for_timestep(float timestep) const;

  // One Euler step from `timestep` (one of timesteps()). Computed in float32; the result has model_output's
  // dtype. stochastic_sampling draws its noise from `generator` (required then), as randn_tensor does.
  Result<Tensor> step(const Tensor& model_output, float timestep, const Tensor& sample,
                      TorchGenerator* generator = nullptr);

  // scale_noise (img2img): sigma * noise + (1 - sigma) * sample, sigma of `timestep` (float32).
  Result<Tensor> scale_noise(const Tensor& sample, float timestep, const Tensor& noise) const;

 private:
  FlowMatchConfig cfg_;
  double shift_ = 1.0;
  double sigma_min_ = 0, sigma_max_ = 1;
  int64_t num_inference_steps_ = 0;
  std::vector<float> timesteps_, sigmas_;
  std::optional<int64_t> step_index_, begin_index_;
};

// retrieve_timesteps(scheduler, num_inference_steps, timesteps=, sigmas=, mu=) as the pipelines call it: with
// custom sigmas or timesteps, num_inference_steps is not passed on and becomes their count. Returns the
// number of inference steps (scheduler.timesteps() holds the schedule).
Result<int64_t> retrieve_timesteps(FlowMatchEulerScheduler& scheduler, std::optional<int64_t> num_inference_steps,
                                   const std::optional<std::vector<double>>& timesteps,
                                   const std::optional<std::vector<double>>& sigmas, std::optional<double> mu);

}  // namespace meshdit
