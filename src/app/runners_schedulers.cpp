// Scheduler cases: meta.json "non_tensor_args" records the scheduler config, a set of named setups (steps,
// size, mu, which custom sigmas the pipeline passes) and the setup on which a sequence of step() calls is run
// with the fixed model outputs of inputs.safetensors.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>

#include "app/check.h"
#include "app/runners.h"
#include "schedulers/flow_match.h"

namespace meshdit {
namespace {

Result<int64_t> json_int(const Json& obj, const char* key, const std::string& where) {
  if (!obj.is_object() || !obj.contains(key) || !obj[key].is_number_integer())
    return make_error(where + ": '" + key + "' should be an integer");
  return obj[key].get<int64_t>();
}

// The sigmas a pipeline passes, from the meta's description of them.
Result<std::optional<std::vector<double>>> pipeline_sigmas(const Json& setup, int64_t steps, const std::string& where) {
  if (!setup.contains("sigmas_passed") || setup["sigmas_passed"].is_null()) return std::optional<std::vector<double>>();
  if (!setup["sigmas_passed"].is_string()) return make_error(where + ": 'sigmas_passed' should be a string or null");
  const std::string kind = setup["sigmas_passed"].get<std::string>();
  if (kind == "np.linspace(1.0, 1/steps, steps)") return std::optional(flux_pipeline_sigmas(steps));
  const std::string lq = "linear_quadratic_schedule(steps, threshold_noise=";
  if (kind.rfind(lq, 0) == 0 && kind.back() == ')') {
    const std::string num = kind.substr(lq.size(), kind.size() - lq.size() - 1);
    char* end = nullptr;
    const double threshold = std::strtod(num.c_str(), &end);
    if (end == num.c_str() || *end != '\0')
      return make_error(where + ": cannot read threshold_noise in '" + kind + "'");
    return std::optional(linear_quadratic_schedule(steps, threshold));
  }
  return make_error(where + ": unknown sigmas_passed '" + kind + "'");
}

// Sets the scheduler up as the pipeline does for one named setup (retrieve_timesteps with the pipeline's
// sigmas and mu).
Status apply_setup(FlowMatchEulerScheduler& sched, const Json& setup, const std::string& where) {
  MD_TRY(int64_t steps, json_int(setup, "num_inference_steps", where));
  MD_TRY(auto sigmas, pipeline_sigmas(setup, steps, where));
  std::optional<double> mu;
  const FlowMatchConfig& cfg = sched.config();
  if (setup.contains("image_seq_len") && setup["image_seq_len"].is_number()) {
    mu = calculate_shift(setup["image_seq_len"].get<double>(), cfg.base_image_seq_len, cfg.max_image_seq_len,
                         cfg.base_shift, cfg.max_shift);
    if (setup.contains("mu") && setup["mu"].is_number()) {
      const double rec = setup["mu"].get<double>();
      if (std::fabs(rec - *mu) > 1e-12 * std::max(1.0, std::fabs(rec)))
        return make_error(where + ": calculate_shift gives mu " + std::to_string(*mu) + ", the case recorded " +
                          std::to_string(rec));
    }
  } else if (setup.contains("mu") && setup["mu"].is_number()) {
    mu = setup["mu"].get<double>();
  }
  MD_TRY(int64_t n, retrieve_timesteps(sched, steps, std::nullopt, sigmas, mu));
  if (n != steps)
    return make_error(where + ": the schedule has " + std::to_string(n) + " steps, expected " + std::to_string(steps));
  return ok_status();
}

Result<TensorMap> run_flow_match(const CaseContext& c) {
  MD_TRY(FlowMatchConfig cfg, FlowMatchConfig::load(c.dir + "/scheduler_config.json"));
  const std::string where = c.dir + "/meta.json";
  if (!c.meta.contains("non_tensor_args") || !c.meta["non_tensor_args"].is_object())
    return make_error(where + ": no non_tensor_args");
  const Json& args = c.meta["non_tensor_args"];
  if (!args.contains("setup") || !args["setup"].is_object()) return make_error(where + ": no non_tensor_args.setup");
  TensorMap out;
  for (const auto& [name, setup] : args["setup"].items()) {
    MD_TRY(FlowMatchEulerScheduler sched, FlowMatchEulerScheduler::create(cfg));
    MD_RETURN_IF_ERROR(apply_setup(sched, setup, where + ": setup '" + name + "'"));
    out[name + ".timesteps"] = sched.timesteps_tensor();
    out[name + ".sigmas"] = sched.sigmas_tensor();
  }
  if (args.contains("step_sequence_run") && args["step_sequence_run"].is_string()) {
    const std::string run = args["step_sequence_run"].get<std::string>();
    if (!args["setup"].contains(run)) return make_error(where + ": step_sequence_run '" + run + "' is not a setup");
    MD_TRY(FlowMatchEulerScheduler sched, FlowMatchEulerScheduler::create(cfg));
    MD_RETURN_IF_ERROR(apply_setup(sched, args["setup"][run], where + ": setup '" + run + "'"));
    MD_TRY(Tensor sample, c.input("sample0"));
    for (int i = 0; c.inputs.count("model_output." + std::to_string(i)); ++i) {
      if (size_t(i) >= sched.timesteps().size()) return make_error(where + ": more model outputs than steps");
      const std::string key = "step." + std::to_string(i);
      const float t = sched.timesteps()[size_t(i)];
      MD_TRY(Tensor mo, c.input("model_output." + std::to_string(i)));
      MD_TRY(sample, sched.step(mo, t, sample));
      out[key + ".prev_sample"] = sample;
      out[key + ".timestep"] = Tensor::from_f32({1}, {t});
    }
  }
  return out;
}

}  // namespace

void register_scheduler_runners() { register_case_runner("diffusers.FlowMatchEulerDiscreteScheduler", run_flow_match); }

}  // namespace meshdit
