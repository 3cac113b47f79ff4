// See unipc.h. Compiled with -ffp-contract=off (CMakeLists.txt): numpy and torch round every operation,
// so no multiply-add may be fused here.
#include "schedulers/unipc.h"

#include <algorithm>
#include <cmath>

#include "backend/model_ops.h"
#include "backend/ops.h"
#include "schedulers/dtype_rules.h"
#include "schedulers/flow_match.h"

namespace meshdit {

namespace {
const char* const kName = "UniPCMultistepScheduler";
}

// ---- config -------------------------------------------------------------------------------------------------

Result<UniPCConfig> UniPCConfig::from_json(const Json& j, const std::string& file) {
  UniPCConfig c;
  ConfigReader r(j, file);
  r.get("num_train_timesteps", c.num_train_timesteps);
  r.get("beta_start", c.beta_start);
  r.get("beta_end", c.beta_end);
  r.get("beta_schedule", c.beta_schedule);
  r.get("solver_order", c.solver_order);
  r.get("prediction_type", c.prediction_type);
  r.get("thresholding", c.thresholding);
  r.get("dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
  r.get("sample_max_value", c.sample_max_value);
  r.get("predict_x0", c.predict_x0);
  r.get("solver_type", c.solver_type);
  r.get("lower_order_final", c.lower_order_final);
  r.get("disable_corrector", c.disable_corrector);
  r.get("use_karras_sigmas", c.use_karras_sigmas);
  r.get("use_exponential_sigmas", c.use_exponential_sigmas);
  r.get("use_beta_sigmas", c.use_beta_sigmas);
  r.get("use_flow_sigmas", c.use_flow_sigmas);
  r.get("flow_shift", c.flow_shift);
  r.get("timestep_spacing", c.timestep_spacing);
  r.get("steps_offset", c.steps_offset);
  r.get("final_sigmas_type", c.final_sigmas_type);
  r.get("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  r.get("use_dynamic_shifting", c.use_dynamic_shifting);
  r.get("time_shift_type", c.time_shift_type);
  if (r.has("shift_terminal")) {
    double v = 0;
    r.get("shift_terminal", v);
    c.shift_terminal = v;
  }

  if (r.has("num_train_timesteps") && c.num_train_timesteps < 1)
    r.fail("num_train_timesteps", "should be at least 1, got " + std::to_string(c.num_train_timesteps));
  if (c.solver_order < 1) r.fail("solver_order", "should be at least 1, got " + std::to_string(c.solver_order));
  if (c.beta_schedule != "linear" && c.beta_schedule != "scaled_linear" && c.beta_schedule != "squaredcos_cap_v2")
    r.fail("beta_schedule", "'" + c.beta_schedule + "' is not implemented for " + kName);
  if (c.solver_type == "midpoint" || c.solver_type == "heun" || c.solver_type == "logrho") c.solver_type = "bh2";
  if (c.solver_type != "bh1" && c.solver_type != "bh2")
    r.fail("solver_type", "'" + c.solver_type + "' is not implemented (bh1 or bh2)");
  const std::string& p = c.prediction_type;
  if (p != "epsilon" && p != "sample" && p != "v_prediction" && p != "flow_prediction")
    r.fail("prediction_type", "'" + p + "' must be one of epsilon, sample, v_prediction, flow_prediction");
  else if (p == "flow_prediction" && !c.predict_x0)
    r.fail("prediction_type", "flow_prediction needs predict_x0 (the solver works on the data prediction)");
  if (c.thresholding) r.fail("thresholding", "is not implemented (dynamic thresholding)");
  if (r.has("solver_p")) r.fail("solver_p", "is not implemented (a scheduler as the predictor)");
  if (int(c.use_beta_sigmas) + int(c.use_exponential_sigmas) + int(c.use_karras_sigmas) > 1)
    r.fail("use_karras_sigmas", "only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be used");
  else if (c.use_karras_sigmas)
    r.fail("use_karras_sigmas", "is not implemented");
  else if (c.use_exponential_sigmas)
    r.fail("use_exponential_sigmas", "is not implemented");
  else if (c.use_beta_sigmas)
    r.fail("use_beta_sigmas", "is not implemented");
  if (c.shift_terminal && !c.use_flow_sigmas)
    r.fail("shift_terminal", "is only supported when use_flow_sigmas is true");
  if (c.shift_terminal && *c.shift_terminal == 1.0)
    r.fail("shift_terminal", "must not be 1 (the schedule is stretched by 1 / (1 - shift_terminal))");
  if (!c.use_flow_sigmas)
    r.fail("use_flow_sigmas", "is false: only flow sigmas are implemented (the VP beta schedule is not)");
  if (c.flow_shift <= 0) r.fail("flow_shift", "must be positive (a sigma of 0 has no log-SNR)");
  if (c.timestep_spacing != "linspace" && c.timestep_spacing != "leading" && c.timestep_spacing != "trailing")
    r.fail("timestep_spacing", "'" + c.timestep_spacing + "' must be one of linspace, leading, trailing");
  if (c.final_sigmas_type != "zero" && c.final_sigmas_type != "sigma_min")
    r.fail("final_sigmas_type", "must be one of 'zero' or 'sigma_min', got '" + c.final_sigmas_type + "'");
  if (c.time_shift_type != "exponential" && c.time_shift_type != "linear")
    r.fail("time_shift_type", "must either be 'exponential' or 'linear', got '" + c.time_shift_type + "'");
  MD_RETURN_IF_ERROR(r.status());
  return c;
}

Result<UniPCConfig> UniPCConfig::load(const std::string& path) {
  MD_TRY(Json j, load_json(path));
  return from_json(j, path);
}

// ---- schedule -------------------------------------------------------------------------------------------------

Result<UniPCMultistepScheduler> UniPCMultistepScheduler::create(const UniPCConfig& cfg) {
  // The config may be built in code: the checks from_json makes on a file, again.
  Json j = {{"num_train_timesteps", cfg.num_train_timesteps},
            {"beta_schedule", cfg.beta_schedule},
            {"solver_order", cfg.solver_order},
            {"prediction_type", cfg.prediction_type},
            {"thresholding", cfg.thresholding},
            {"predict_x0", cfg.predict_x0},
            {"solver_type", cfg.solver_type},
            {"use_karras_sigmas", cfg.use_karras_sigmas},
            {"use_exponential_sigmas", cfg.use_exponential_sigmas},
            {"use_beta_sigmas", cfg.use_beta_sigmas},
            {"use_flow_sigmas", cfg.use_flow_sigmas},
            {"flow_shift", cfg.flow_shift},
            {"timestep_spacing", cfg.timestep_spacing},
            {"final_sigmas_type", cfg.final_sigmas_type},
            {"time_shift_type", cfg.time_shift_type}};
  if (cfg.shift_terminal) j["shift_terminal"] = *cfg.shift_terminal;
  MD_TRY(UniPCConfig checked, UniPCConfig::from_json(j, std::string(kName) + " config"));
  UniPCMultistepScheduler s;
  s.cfg_ = cfg;
  s.cfg_.solver_type = checked.solver_type;
  return s;
}

Status UniPCMultistepScheduler::set_timesteps(std::optional<int64_t> num_inference_steps,
                                              const std::optional<std::vector<double>>& sigmas,
                                              std::optional<double> mu) {
  const std::string who = std::string(kName) + ".set_timesteps: ";
  if (cfg_.use_dynamic_shifting && !mu)
    return make_error(who + "`mu` must be passed when use_dynamic_shifting is true");
  if (!(cfg_.flow_shift > 0)) return make_error(who + "flow_shift must be positive");
  int64_t n = 0;
  if (sigmas) {
    n = int64_t(sigmas->size());  // diffusers takes the count from the list and ignores num_inference_steps
  } else if (num_inference_steps) {
    n = *num_inference_steps;
  } else {
    return make_error(who + "one of num_inference_steps or sigmas is required");
  }
  if (n < 1) return make_error(who + "needs at least one inference step, got " + std::to_string(n));

  // numpy float64 throughout, as diffusers computes the flow schedule.
  const double N = double(cfg_.num_train_timesteps);
  std::vector<double> s;
  if (sigmas) {
    s = *sigmas;
  } else {
    s = np_linspace(1.0, 1.0 / N, n + 1);
    s.pop_back();
  }
  MD_RETURN_IF_ERROR(shift_flow_sigmas(s, cfg_.flow_shift, cfg_.use_dynamic_shifting ? mu : std::nullopt,
                                       cfg_.time_shift_type == "exponential", cfg_.shift_terminal, kName));
  // A first sigma of 1 is alpha 0, whose log the first steps would take.
  const double eps = 1e-6;
  if (std::fabs(s[0] - 1.0) < eps) s[0] -= eps;
  for (double x : s)
    if (!(x > 0.0 && x < 1.0))
      return make_error(who + "sigma " + std::to_string(x) + " is outside (0, 1): its log-SNR is not finite");

  timesteps_.assign(size_t(n), 0);
  sigmas_.assign(size_t(n) + 1, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    timesteps_[size_t(i)] = int64_t(s[size_t(i)] * N);  // astype(int64): toward zero
    sigmas_[size_t(i)] = float(s[size_t(i)]);
  }
  sigmas_[size_t(n)] = cfg_.final_sigmas_type == "sigma_min" ? float(s.back()) : 0.0f;

  model_outputs_.assign(size_t(cfg_.solver_order), Tensor());
  last_sample_ = Tensor();
  lower_order_nums_ = 0;
  this_order_ = 0;
  step_index_.reset();
  begin_index_.reset();
  return ok_status();
}

std::vector<float> UniPCMultistepScheduler::timesteps() const {
  return std::vector<float>(timesteps_.begin(), timesteps_.end());
}

Tensor UniPCMultistepScheduler::timesteps_tensor() const {
  return Tensor::from_i64({int64_t(timesteps_.size())}, timesteps_);
}

Tensor UniPCMultistepScheduler::sigmas_tensor() const { return Tensor::from_f32({int64_t(sigmas_.size())}, sigmas_); }

int64_t UniPCMultistepScheduler::index_for_timestep(float timestep) const {
  std::vector<int64_t> hits;
  for (size_t i = 0; i < timesteps_.size(); ++i)
    if (float(timesteps_[i]) == timestep) hits.push_back(int64_t(i));
  if (hits.empty()) return int64_t(timesteps_.size()) - 1;
  return hits[hits.size() > 1 ? 1 : 0];
}

// ---- step -----------------------------------------------------------------------------------------------------

namespace {

// The float32 scalars of diffusers' 0-dim tensors.
struct AlphaSigma {
  float alpha, sigma;
};

// _sigma_to_alpha_sigma_t with flow sigmas: x_t = (1 - sigma) x_0 + sigma noise.
AlphaSigma alpha_sigma(float sigma) { return {1.0f - sigma, sigma}; }

float lambda_of(AlphaSigma a) { return std::log(a.alpha) - std::log(a.sigma); }

// torch.linalg.solve on the small R rho = b systems (order <= solver_order): Gaussian elimination with partial
// pivoting, in double, rounded to float32 as the solution tensor is.
std::vector<float> solve(std::vector<std::vector<float>> R, std::vector<float> b) {
  const size_t n = b.size();
  std::vector<std::vector<double>> a(n, std::vector<double>(n + 1));
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) a[i][j] = R[i][j];
    a[i][n] = b[i];
  }
  for (size_t c = 0; c < n; ++c) {
    size_t piv = c;
    for (size_t i = c + 1; i < n; ++i)
      if (std::fabs(a[i][c]) > std::fabs(a[piv][c])) piv = i;
    std::swap(a[c], a[piv]);
    for (size_t i = c + 1; i < n; ++i) {
      const double f = a[i][c] / a[c][c];
      for (size_t j = c; j <= n; ++j) a[i][j] -= f * a[c][j];
    }
  }
  std::vector<double> x(n);
  for (size_t i = n; i-- > 0;) {
    double v = a[i][n];
    for (size_t j = i + 1; j < n; ++j) v -= a[i][j] * x[j];
    x[i] = v / a[i][i];
  }
  return std::vector<float>(x.begin(), x.end());
}

// The B(h) coefficients shared by UniP and UniC: h_phi_1, B(h), and the rows R (powers of the rk ratios) and
// right-hand side b of the order conditions.
struct Coeffs {
  float h_phi_1 = 0, B_h = 0;
  std::vector<std::vector<float>> R;
  std::vector<float> b;
};

Coeffs coefficients(float h, const std::vector<float>& rks, int64_t order, bool predict_x0, bool bh1) {
  Coeffs c;
  const float hh = predict_x0 ? -h : h;
  c.h_phi_1 = std::expm1(hh);
  float h_phi_k = c.h_phi_1 / hh - 1.0f;
  int64_t factorial_i = 1;
  c.B_h = bh1 ? hh : std::expm1(hh);
  for (int64_t i = 1; i <= order; ++i) {
    std::vector<float> row;
    for (float rk : rks) row.push_back(i == 1 ? 1.0f : i == 2 ? rk : std::pow(rk, float(i - 1)));
    c.R.push_back(row);
    c.b.push_back(h_phi_k * float(factorial_i) / c.B_h);
    factorial_i *= i + 1;
    h_phi_k = h_phi_k / hh - float(1.0 / double(factorial_i));
  }
  return c;
}

// sum_k w[k] * d[k] (torch.einsum("k,bkc...->bc...")).
Tensor weighted_sum(const std::vector<float>& w, const std::vector<Tensor>& d) {
  Tensor acc = ops::scale(d[0], w[0]);
  for (size_t k = 1; k < d.size(); ++k) acc = ops::axpby(1.0f, acc, w[k], d[k]);
  return acc;
}

}  // namespace

Tensor UniPCMultistepScheduler::convert_model_output(const Tensor& model_output, const Tensor& sample) const {
  const float sigma = sigmas_[size_t(*step_index_)];
  const AlphaSigma as = alpha_sigma(sigma);
  const std::string& p = cfg_.prediction_type;
  if (cfg_.predict_x0) {
    if (p == "flow_prediction" || p == "epsilon") {
      // flow: sample - sigma * v; epsilon: (sample - sigma_t * eps) / alpha_t.
      const Tensor prod = round_product_to(ops::scale(model_output, as.sigma), model_output.dtype());
      const Tensor x0 = ops::axpby(1.0f, sample, -1.0f, prod);
      return p == "epsilon" ? ops::div_add(x0, as.alpha, 0.0f) : x0;
    }
    if (p == "sample") return model_output.dtype() == DType::F32 ? model_output : model_output.to(DType::F32);
    return ops::axpby(as.alpha, sample, -as.sigma, model_output);  // v_prediction
  }
  if (p == "epsilon") return model_output.dtype() == DType::F32 ? model_output : model_output.to(DType::F32);
  if (p == "sample") return ops::div_add(ops::axpby(1.0f, sample, -as.alpha, model_output), as.sigma, 0.0f);
  return ops::axpby(as.alpha, model_output, as.sigma, sample);  // v_prediction
}

// multistep_uni_p_bh_update: from the sample at sigmas[i] to sigmas[i + 1] with the last `order` converted
// outputs.
Tensor UniPCMultistepScheduler::predictor(const Tensor& x, int64_t order) const {
  const int64_t idx = *step_index_;
  const size_t last = model_outputs_.size() - 1;
  const Tensor& m0 = model_outputs_[last];
  const AlphaSigma t = alpha_sigma(sigmas_[size_t(idx + 1)]), s0 = alpha_sigma(sigmas_[size_t(idx)]);
  const float lambda_t = lambda_of(t), lambda_s0 = lambda_of(s0);
  const float h = lambda_t - lambda_s0;
  std::vector<float> rks;
  std::vector<Tensor> D1s;
  for (int64_t i = 1; i < order; ++i) {
    const float rk = (lambda_of(alpha_sigma(sigmas_[size_t(idx - i)])) - lambda_s0) / h;
    rks.push_back(rk);
    D1s.push_back(ops::div_add(ops::axpby(1.0f, model_outputs_[last - size_t(i)], -1.0f, m0), rk, 0.0f));
  }
  rks.push_back(1.0f);
  const Coeffs c = coefficients(h, rks, order, cfg_.predict_x0, cfg_.solver_type == "bh1");
  std::vector<float> rhos_p;
  if (order == 2) {
    rhos_p = {0.5f};
  } else if (order > 2) {
    std::vector<std::vector<float>> R;
    for (int64_t i = 0; i + 1 < order; ++i) R.emplace_back(c.R[size_t(i)].begin(), c.R[size_t(i)].end() - 1);
    rhos_p = solve(R, std::vector<float>(c.b.begin(), c.b.end() - 1));
  }
  // x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0 (data prediction), or the noise-prediction form.
  const float a = cfg_.predict_x0 ? t.sigma / s0.sigma : t.alpha / s0.alpha;
  const float w = cfg_.predict_x0 ? t.alpha : t.sigma;
  Tensor x_t = ops::axpby(a, x, -(w * c.h_phi_1), m0);
  if (!D1s.empty()) x_t = ops::axpby(1.0f, x_t, -(w * c.B_h), weighted_sum(rhos_p, D1s));
  return x_t;
}

// multistep_uni_c_bh_update: the corrected sample at sigmas[i], recomputed from the sample the last predictor
// started from (x, at sigmas[i - 1]) with the model's output at sigmas[i] (model_t) added to the history; the
// predicted sample itself enters only through model_t.
Tensor UniPCMultistepScheduler::corrector(const Tensor& model_t, const Tensor& x, int64_t order) const {
  const int64_t idx = *step_index_;
  const size_t last = model_outputs_.size() - 1;
  const Tensor& m0 = model_outputs_[last];
  const AlphaSigma t = alpha_sigma(sigmas_[size_t(idx)]), s0 = alpha_sigma(sigmas_[size_t(idx - 1)]);
  const float lambda_t = lambda_of(t), lambda_s0 = lambda_of(s0);
  const float h = lambda_t - lambda_s0;
  std::vector<float> rks;
  std::vector<Tensor> D1s;
  for (int64_t i = 1; i < order; ++i) {
    const float rk = (lambda_of(alpha_sigma(sigmas_[size_t(idx - (i + 1))])) - lambda_s0) / h;
    rks.push_back(rk);
    D1s.push_back(ops::div_add(ops::axpby(1.0f, model_outputs_[last - size_t(i)], -1.0f, m0), rk, 0.0f));
  }
  rks.push_back(1.0f);
  const Coeffs c = coefficients(h, rks, order, cfg_.predict_x0, cfg_.solver_type == "bh1");
  const std::vector<float> rhos_c = order == 1 ? std::vector<float>{0.5f} : solve(c.R, c.b);
  const float a = cfg_.predict_x0 ? t.sigma / s0.sigma : t.alpha / s0.alpha;
  const float w = cfg_.predict_x0 ? t.alpha : t.sigma;
  const Tensor x_t_ = ops::axpby(a, x, -(w * c.h_phi_1), m0);
  const Tensor D1_t = ops::axpby(1.0f, model_t, -1.0f, m0);
  // corr_res + rhos_c[-1] * D1_t; corr_res is the Python 0 without history terms.
  const Tensor res = D1s.empty()
                         ? ops::scale(D1_t, rhos_c.back())
                         : ops::axpby(1.0f, weighted_sum(std::vector<float>(rhos_c.begin(), rhos_c.end() - 1), D1s),
                                      rhos_c.back(), D1_t);
  return ops::axpby(1.0f, x_t_, -(w * c.B_h), res);
}

Result<Tensor> UniPCMultistepScheduler::step(const Tensor& model_output, float timestep, const Tensor& sample) {
  const std::string who = std::string(kName) + ".step: ";
  if (timesteps_.empty()) return make_error(who + "set_timesteps() has not been called");
  if (model_output.shape() != sample.shape())
    return make_error(who + "model_output " + shape_str(model_output.shape()) + " and sample " +
                      shape_str(sample.shape()) + " differ in shape");
  if (!is_float_dtype(model_output.dtype()) || !is_float_dtype(sample.dtype()))
    return make_error(who + "model_output and sample must be floating-point tensors");
  if (!step_index_) step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(timestep);
  const int64_t idx = *step_index_;
  const int64_t n = int64_t(timesteps_.size());
  if (idx < 0 || idx >= n)
    return make_error(who + "step index " + std::to_string(idx) + " is past the end of the " + std::to_string(n) +
                      "-step schedule");
  const bool use_corrector = idx > 0 && last_sample_.defined() &&
                             std::find(cfg_.disable_corrector.begin(), cfg_.disable_corrector.end(), int(idx - 1)) ==
                                 cfg_.disable_corrector.end();

  const Tensor converted = convert_model_output(model_output, sample);
  Tensor x = sample.dtype() == DType::F32 ? sample : sample.to(DType::F32);
  if (use_corrector) x = corrector(converted, last_sample_, this_order_);

  std::rotate(model_outputs_.begin(), model_outputs_.begin() + 1, model_outputs_.end());
  model_outputs_.back() = converted;

  int64_t order = cfg_.lower_order_final ? std::min(cfg_.solver_order, n - idx) : cfg_.solver_order;
  this_order_ = std::min(order, lower_order_nums_ + 1);  // warm-up: one more past output per step
  last_sample_ = x;
  Tensor prev = predictor(x, this_order_);
  if (lower_order_nums_ < cfg_.solver_order) ++lower_order_nums_;
  step_index_ = idx + 1;
  const DType out = sample.dtype() == DType::F64 ? DType::F32 : sample.dtype();
  return out == DType::F32 ? prev : prev.to(out);
}

}  // namespace meshdit
