// See flow_match.h. Compiled with -ffp-contract=off (CMakeLists.txt): numpy and torch round every operation,
// so no multiply-add may be fused here.
#include "schedulers/flow_match.h"

#include <cmath>

#include "backend/model_ops.h"
#include "schedulers/dtype_rules.h"

namespace meshdit {

// ---- config -------------------------------------------------------------------------------------------------

Result<FlowMatchConfig> FlowMatchConfig::from_json(const Json& j, const std::string& file) {
  FlowMatchConfig c;
  ConfigReader r(j, file);
  r.get("num_train_timesteps", c.num_train_timesteps);
  r.get("shift", c.shift);
  r.get("use_dynamic_shifting", c.use_dynamic_shifting);
  r.get("base_shift", c.base_shift);
  r.get("max_shift", c.max_shift);
  r.get("base_image_seq_len", c.base_image_seq_len);
  r.get("max_image_seq_len", c.max_image_seq_len);
  r.get("invert_sigmas", c.invert_sigmas);
  if (r.has("shift_terminal")) {
    double v = 0;
    r.get("shift_terminal", v);
    c.shift_terminal = v;
  }
  r.get("use_karras_sigmas", c.use_karras_sigmas);
  r.get("use_exponential_sigmas", c.use_exponential_sigmas);
  r.get("use_beta_sigmas", c.use_beta_sigmas);
  r.get("time_shift_type", c.time_shift_type);
  r.get("stochastic_sampling", c.stochastic_sampling);
  if (r.has("num_train_timesteps") && c.num_train_timesteps < 1)
    r.fail("num_train_timesteps", "should be at least 1, got " + std::to_string(c.num_train_timesteps));
  if (c.time_shift_type != "exponential" && c.time_shift_type != "linear")
    r.fail("time_shift_type", "must either be 'exponential' or 'linear', got '" + c.time_shift_type + "'");
  if (int(c.use_beta_sigmas) + int(c.use_exponential_sigmas) + int(c.use_karras_sigmas) > 1)
    r.fail("use_karras_sigmas", "only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be used");
  else if (c.use_beta_sigmas)
    r.fail("use_beta_sigmas", "is not implemented (beta sigmas need scipy.stats.beta.ppf)");
  if (c.shift_terminal && *c.shift_terminal == 1.0)
    r.fail("shift_terminal", "must not be 1 (the schedule is stretched by 1 / (1 - shift_terminal))");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

Result<FlowMatchConfig> FlowMatchConfig::load(const std::string& path) {
  MD_TRY(Json j, load_json(path));
  return from_json(j, path);
}

// ---- helpers --------------------------------------------------------------------------------------------------

std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> y;
  if (num <= 0) return y;
  y.resize(size_t(num));
  const int64_t div = num - 1;
  const double delta = stop - start;
  if (div > 0) {
    const double step = delta / double(div);
    if (step == 0) {  // numpy's denormal branch: y / div * delta
      for (int64_t i = 0; i < num; ++i) y[size_t(i)] = double(i) / double(div) * delta + start;
    } else {
      for (int64_t i = 0; i < num; ++i) y[size_t(i)] = double(i) * step + start;
    }
    y.back() = stop;
  } else {
    y[0] = 0.0 * delta + start;
  }
  return y;
}

double calculate_shift(double image_seq_len, int64_t base_seq_len, int64_t max_seq_len, double base_shift,
                       double max_shift) {
  const double m = (max_shift - base_shift) / double(max_seq_len - base_seq_len);
  const double b = base_shift - m * double(base_seq_len);
  return image_seq_len * m + b;
}

std::vector<double> flux_pipeline_sigmas(int64_t num_inference_steps) {
  return np_linspace(1.0, 1.0 / double(num_inference_steps), num_inference_steps);
}

std::vector<double> linear_quadratic_schedule(int64_t num_steps, double threshold_noise, int64_t linear_steps) {
  if (linear_steps < 0) linear_steps = num_steps / 2;
  std::vector<double> s;
  for (int64_t i = 0; i < linear_steps; ++i) s.push_back(double(i) * threshold_noise / double(linear_steps));
  const double step_diff = double(linear_steps) - threshold_noise * double(num_steps);
  const int64_t quadratic_steps = num_steps - linear_steps;
  const double quadratic_coef = step_diff / double(linear_steps * quadratic_steps * quadratic_steps);
  const double linear_coef =
      threshold_noise / double(linear_steps) - 2.0 * step_diff / double(quadratic_steps * quadratic_steps);
  const double constant = quadratic_coef * double(linear_steps * linear_steps);
  for (int64_t i = linear_steps; i < num_steps; ++i)
    s.push_back(quadratic_coef * double(i * i) + linear_coef * double(i) + constant);
  for (double& x : s) x = 1.0 - x;
  return s;
}

// ---- scheduler ------------------------------------------------------------------------------------------------

template <class T>
Status shift_flow_sigmas(std::vector<T>& s, double shift, std::optional<double> mu, bool exponential,
                         std::optional<double> shift_terminal, const std::string& who) {
  if (mu) {
    // time_shift(mu, 1.0, t): (1 / t - 1) ** 1.0 is (1 / t - 1) exactly.
    const T a = exponential ? T(std::exp(*mu)) : T(*mu);
    for (T& x : s) {
      T r = T(1) / x;
      r = r - T(1);
      x = a / (a + r);
    }
  } else {
    const T k = T(shift), k1 = T(shift - 1.0);
    for (T& x : s) {
      const T num = k * x;
      const T den = T(1) + k1 * x;
      x = num / den;
    }
  }
  if (shift_terminal && *shift_terminal != 0.0) {  // `if self.config.shift_terminal:`
    std::vector<T> one_minus(s.size());
    for (size_t i = 0; i < s.size(); ++i) one_minus[i] = T(1) - s[i];
    // A schedule ending at sigma 1 (a single step) has nothing to stretch: diffusers divides 0 by 0 there and
    // steps with NaN.
    if (one_minus.back() == T(0))
      return make_error(who +
                        ": shift_terminal stretches the schedule to its last sigma, which is 1 here (one "
                        "step?): use at least 2 steps");
    const T scale = one_minus.back() / T(1.0 - *shift_terminal);
    for (size_t i = 0; i < s.size(); ++i) s[i] = T(1) - one_minus[i] / scale;
  }
  return ok_status();
}
template Status shift_flow_sigmas(std::vector<float>&, double, std::optional<double>, bool, std::optional<double>,
                                  const std::string&);
template Status shift_flow_sigmas(std::vector<double>&, double, std::optional<double>, bool, std::optional<double>,
                                  const std::string&);

namespace {

template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

}  // namespace

Result<FlowMatchEulerScheduler> FlowMatchEulerScheduler::create(const FlowMatchConfig& cfg) {
  if (cfg.num_train_timesteps < 1) return make_error("FlowMatchEulerDiscreteScheduler: num_train_timesteps < 1");
  if (cfg.use_beta_sigmas) return make_error("FlowMatchEulerDiscreteScheduler: use_beta_sigmas is not implemented");
  if (cfg.time_shift_type != "exponential" && cfg.time_shift_type != "linear")
    return make_error("FlowMatchEulerDiscreteScheduler: time_shift_type must be 'exponential' or 'linear'");
  FlowMatchEulerScheduler s;
  s.cfg_ = cfg;
  s.shift_ = cfg.shift;
  // __init__: timesteps 1..N (float32) reversed, sigmas = t / N and, without dynamic shifting, shifted, all in
  // float32 torch arithmetic.
  const int64_t n = cfg.num_train_timesteps;
  const float nf = float(n);
  const float k = float(cfg.shift), k1 = float(cfg.shift - 1.0);
  s.sigmas_.resize(size_t(n));
  s.timesteps_.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    float sig = float(n - i) / nf;
    if (!cfg.use_dynamic_shifting) {
      const float num = k * sig;
      const float den = 1.0f + k1 * sig;
      sig = num / den;
    }
    s.sigmas_[size_t(i)] = sig;
    s.timesteps_[size_t(i)] = sig * nf;
  }
  s.sigma_max_ = s.sigmas_.front();
  s.sigma_min_ = s.sigmas_.back();
  return s;
}

Status FlowMatchEulerScheduler::set_timesteps(std::optional<int64_t> num_inference_steps,
                                              const std::optional<std::vector<double>>& sigmas,
                                              std::optional<double> mu,
                                              const std::optional<std::vector<double>>& timesteps) {
  const std::string who = "FlowMatchEulerDiscreteScheduler.set_timesteps: ";
  if (cfg_.use_dynamic_shifting && !mu)
    return make_error(who + "`mu` must be passed when use_dynamic_shifting is true");
  if (sigmas && timesteps && sigmas->size() != timesteps->size())
    return make_error(who + "`sigmas` and `timesteps` should have the same length");
  int64_t n = 0;
  if (num_inference_steps) {
    n = *num_inference_steps;
    if ((sigmas && int64_t(sigmas->size()) != n) || (timesteps && int64_t(timesteps->size()) != n))
      return make_error(who + "`sigmas` and `timesteps` should have the same length as num_inference_steps");
  } else if (sigmas) {
    n = int64_t(sigmas->size());
  } else if (timesteps) {
    n = int64_t(timesteps->size());
  } else {
    return make_error(who + "one of num_inference_steps, sigmas or timesteps is required");
  }
  if (n < 1) return make_error(who + "needs at least one inference step, got " + std::to_string(n));

  const int64_t n_train = cfg_.num_train_timesteps;
  std::vector<double> shifted;
  if (!sigmas && !timesteps) {
    // float64: np.linspace(sigma_max * N, sigma_min * N, n) / N.
    std::vector<double> s = np_linspace(sigma_max_ * double(n_train), sigma_min_ * double(n_train), n);
    for (double& x : s) x = x / double(n_train);
    MD_RETURN_IF_ERROR(shift_flow_sigmas(s, shift_, cfg_.use_dynamic_shifting ? mu : std::nullopt,
                                         cfg_.time_shift_type == "exponential", cfg_.shift_terminal,
                                         "FlowMatchEulerDiscreteScheduler"));
    shifted = std::move(s);
  } else {
    std::vector<float> s(static_cast<size_t>(n));
    if (sigmas) {
      for (int64_t i = 0; i < n; ++i) s[size_t(i)] = float((*sigmas)[size_t(i)]);
    } else {
      for (int64_t i = 0; i < n; ++i) s[size_t(i)] = float((*timesteps)[size_t(i)]) / float(n_train);
    }
    MD_RETURN_IF_ERROR(shift_flow_sigmas(s, shift_, cfg_.use_dynamic_shifting ? mu : std::nullopt,
                                         cfg_.time_shift_type == "exponential", cfg_.shift_terminal,
                                         "FlowMatchEulerDiscreteScheduler"));
    shifted = to_double(s);
  }

  if (cfg_.use_karras_sigmas || cfg_.use_exponential_sigmas) {
    const double lo = shifted.back(), hi = shifted.front();  // in_sigmas[-1].item(), in_sigmas[0].item()
    if (cfg_.use_karras_sigmas) {
      const double rho = 7.0;
      const std::vector<double> ramp = np_linspace(0.0, 1.0, n);
      const double min_inv_rho = std::pow(lo, 1.0 / rho), max_inv_rho = std::pow(hi, 1.0 / rho);
      for (int64_t i = 0; i < n; ++i)
        shifted[size_t(i)] = std::pow(max_inv_rho + ramp[size_t(i)] * (min_inv_rho - max_inv_rho), rho);
    } else {
      const std::vector<double> l = np_linspace(std::log(hi), std::log(lo), n);
      for (int64_t i = 0; i < n; ++i) shifted[size_t(i)] = std::exp(l[size_t(i)]);
    }
  }

  const float nf = float(n_train);
  sigmas_.assign(size_t(n) + 1, 0.0f);
  timesteps_.assign(size_t(n), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    float sig = float(shifted[size_t(i)]);
    if (cfg_.invert_sigmas) sig = 1.0f - sig;
    sigmas_[size_t(i)] = sig;
    timesteps_[size_t(i)] = sig * nf;
  }
  sigmas_[size_t(n)] = cfg_.invert_sigmas ? 1.0f : 0.0f;
  num_inference_steps_ = n;
  step_index_.reset();
  begin_index_.reset();
  return ok_status();
}

Tensor FlowMatchEulerScheduler::timesteps_tensor() const {
  return Tensor::from_f32({int64_t(timesteps_.size())}, timesteps_);
}

Tensor FlowMatchEulerScheduler::sigmas_tensor() const { return Tensor::from_f32({int64_t(sigmas_.size())}, sigmas_); }

Result<int64_t> FlowMatchEulerScheduler::index_for_timestep(float timestep) const {
  std::vector<int64_t> hits;
  for (size_t i = 0; i < timesteps_.size(); ++i)
    if (timesteps_[i] == timestep) hits.push_back(int64_t(i));
  if (hits.empty())
    return make_error("FlowMatchEulerDiscreteScheduler: timestep " + std::to_string(timestep) +
                      " is not one of the scheduler's timesteps");
  return hits[hits.size() > 1 ? 1 : 0];
}

namespace {

Status check_same_shape(const Tensor& a, const char* an, const Tensor& b, const char* bn) {
  if (a.shape() != b.shape())
    return make_error(std::string("FlowMatchEulerDiscreteScheduler: ") + an + " " + shape_str(a.shape()) + " and " +
                      bn + " " + shape_str(b.shape()) + " differ in shape");
  return ok_status();
}

}  // namespace

Result<Tensor> FlowMatchEulerScheduler::step(const Tensor& model_output, float timestep, const Tensor& sample,
                                             TorchGenerator* generator) {
  const std::string who = "FlowMatchEulerDiscreteScheduler.step: ";
  if (num_inference_steps_ == 0) return make_error(who + "set_timesteps() has not been called");
  MD_RETURN_IF_ERROR(check_same_shape(model_output, "model_output", sample, "sample"));
  if (!is_float_dtype(model_output.dtype()) || !is_float_dtype(sample.dtype()))
    return make_error(who + "model_output and sample must be floating-point tensors");
  if (cfg_.stochastic_sampling && generator == nullptr)
    return make_error(who + "stochastic_sampling needs a generator for its noise");
  if (!step_index_) {
    if (begin_index_) {
      step_index_ = *begin_index_;
    } else {
      MD_TRY(int64_t idx, index_for_timestep(timestep));
      step_index_ = idx;
    }
  }
  const int64_t idx = *step_index_;
  if (idx < 0 || idx + 1 >= int64_t(sigmas_.size()))
    return make_error(who + "step index " + std::to_string(idx) + " is past the end of the " +
                      std::to_string(num_inference_steps_) + "-step schedule");
  const float sigma = sigmas_[size_t(idx)], sigma_next = sigmas_[size_t(idx) + 1];
  const DType out_dt = model_output.dtype() == DType::F64 ? DType::F32 : model_output.dtype();
  // sample.to(float32) and model_output are read as float32 by the ops; 1.0f * v is v exactly, so
  // axpby(1, x, c, y) is x + c * y and axpby(1, x, -1, p) is x - p, each rounded as torch rounds them.
  Tensor result;
  if (cfg_.stochastic_sampling) {
    const Tensor p = round_product_to(ops::scale(model_output, sigma), out_dt);
    const Tensor noise = generator->randn(sample.shape());
    const float keep = 1.0f - sigma_next;
    const Tensor x0 = ops::axpby(1.0f, sample, -1.0f, p);
    result = ops::axpby(keep, x0, sigma_next, noise);
  } else {
    const float dt = sigma_next - sigma;
    const Tensor p = round_product_to(ops::scale(model_output, dt), out_dt);
    result = ops::axpby(1.0f, sample, 1.0f, p);
  }
  step_index_ = idx + 1;
  return out_dt == DType::F32 ? result : result.to(out_dt);
}

Result<Tensor> FlowMatchEulerScheduler::scale_noise(const Tensor& sample, float timestep, const Tensor& noise) const {
  MD_RETURN_IF_ERROR(check_same_shape(sample, "sample", noise, "noise"));
  if (!is_float_dtype(sample.dtype()) || !is_float_dtype(noise.dtype()))
    return make_error("FlowMatchEulerDiscreteScheduler.scale_noise: sample and noise must be floating-point");
  int64_t idx = 0;
  if (!begin_index_) {
    MD_TRY(idx, index_for_timestep(timestep));
  } else {
    idx = step_index_ ? *step_index_ : *begin_index_;
  }
  if (idx < 0 || idx >= int64_t(sigmas_.size()))
    return make_error("FlowMatchEulerDiscreteScheduler.scale_noise: index " + std::to_string(idx) +
                      " is outside the schedule");
  const float sigma = sigmas_[size_t(idx)];
  const float keep = 1.0f - sigma;
  const Tensor result = ops::axpby(sigma, noise, keep, sample);  // sigma * noise + (1 - sigma) * sample
  return sample.dtype() == DType::F32 ? result : result.to(sample.dtype());
}

Result<int64_t> retrieve_timesteps(FlowMatchEulerScheduler& scheduler, std::optional<int64_t> num_inference_steps,
                                   const std::optional<std::vector<double>>& timesteps,
                                   const std::optional<std::vector<double>>& sigmas, std::optional<double> mu) {
  if (timesteps && sigmas) return make_error("retrieve_timesteps: only one of `timesteps` or `sigmas` can be passed");
  if (timesteps || sigmas) {
    MD_RETURN_IF_ERROR(scheduler.set_timesteps(std::nullopt, sigmas, mu, timesteps));
  } else {
    MD_RETURN_IF_ERROR(scheduler.set_timesteps(num_inference_steps, std::nullopt, mu));
  }
  return int64_t(scheduler.timesteps().size());
}

}  // namespace meshdit
