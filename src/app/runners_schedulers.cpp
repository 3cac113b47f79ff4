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
#include "schedulers/motif.h"
#include "schedulers/unipc.h"

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

// UniPC as WanPipeline sets it up: each named run is (steps, flow_shift), with the expert the pipeline picks
// per step at boundary_ratio; the run named by run_schedule steps through the fixed model outputs
// (inputs "model_outputs" [steps, ...]) from "sample0".
Result<TensorMap> run_unipc(const CaseContext& c) {
  MD_TRY(UniPCConfig cfg, UniPCConfig::load(c.dir + "/scheduler_config.json"));
  const std::string where = c.dir + "/meta.json";
  if (!c.meta.contains("non_tensor_args") || !c.meta["non_tensor_args"].is_object())
    return make_error(where + ": no non_tensor_args");
  const Json& args = c.meta["non_tensor_args"];
  if (!args.contains("runs") || !args["runs"].is_object()) return make_error(where + ": no non_tensor_args.runs");
  std::optional<double> boundary_ratio;
  if (args.contains("boundary_ratio") && args["boundary_ratio"].is_number())
    boundary_ratio = args["boundary_ratio"].get<double>();
  auto setup = [&](const Json& run, const std::string& name) -> Result<UniPCMultistepScheduler> {
    const std::string at = where + ": run '" + name + "'";
    MD_TRY(int64_t steps, json_int(run, "num_inference_steps", at));
    UniPCConfig rc = cfg;
    if (run.contains("flow_shift")) {
      if (!run["flow_shift"].is_number()) return make_error(at + ": 'flow_shift' should be a number");
      rc.flow_shift = run["flow_shift"].get<double>();
    }
    MD_TRY(UniPCMultistepScheduler sched, UniPCMultistepScheduler::create(rc));
    MD_RETURN_IF_ERROR(sched.set_timesteps(steps));
    return sched;
  };
  TensorMap out;
  for (const auto& [name, run] : args["runs"].items()) {
    MD_TRY(UniPCMultistepScheduler sched, setup(run, name));
    out[name + ".timesteps"] = sched.timesteps_tensor();
    out[name + ".sigmas"] = sched.sigmas_tensor();
    // WanPipeline: transformer (high noise) for t >= boundary_ratio * num_train_timesteps, else transformer_2.
    if (boundary_ratio && run.contains("expert_per_step") && run["expert_per_step"].is_array()) {
      const Json& want = run["expert_per_step"];
      const double boundary = *boundary_ratio * double(cfg.num_train_timesteps);
      const auto& ts = sched.timesteps_i64();
      if (want.size() != ts.size())
        return make_error(where + ": run '" + name + "' records " + std::to_string(want.size()) + " experts for " +
                          std::to_string(ts.size()) + " steps");
      for (size_t i = 0; i < ts.size(); ++i) {
        const std::string got = double(ts[i]) >= boundary ? "transformer" : "transformer_2";
        if (!want[i].is_string() || want[i].get<std::string>() != got)
          return make_error(where + ": run '" + name + "' step " + std::to_string(i) + " (t = " +
                            std::to_string(ts[i]) + ") picks " + got + ", the reference " + json_brief(want[i]));
      }
    }
  }
  if (args.contains("run_schedule") && args["run_schedule"].is_string()) {
    const std::string name = args["run_schedule"].get<std::string>();
    if (!args["runs"].contains(name)) return make_error(where + ": run_schedule '" + name + "' is not a run");
    MD_TRY(UniPCMultistepScheduler sched, setup(args["runs"][name], name));
    MD_TRY(Tensor sample, c.input("sample0"));
    MD_TRY(Tensor outputs, c.input("model_outputs"));
    const int64_t steps = sched.num_inference_steps();
    if (outputs.dim() < 1 || outputs.size(0) != steps)
      return make_error(where + ": model_outputs " + shape_str(outputs.shape()) + " should hold " +
                        std::to_string(steps) + " steps");
    std::vector<Tensor> samples;
    Shape row{1};
    row.insert(row.end(), sample.shape().begin(), sample.shape().end());
    const std::vector<float> ts = sched.timesteps();
    for (int64_t i = 0; i < steps; ++i) {
      Tensor mo = outputs.slice(0, i, i + 1).reshape(sample.shape());
      MD_TRY(sample, sched.step(mo, ts[size_t(i)], sample));
      samples.push_back(sample.reshape(row));
    }
    out["run.prev_samples"] = concat(samples, 0);
  }
  return out;
}

// Motif-Image's inline sampler: both schedules for each count of steps_list, then one guided Euler sequence on
// the linear-quadratic schedule of euler_steps with the given cond/uncond outputs, and the negative branch
// each step picks.
Result<TensorMap> run_motif_sampler(const CaseContext& c) {
  const std::string where = c.dir + "/meta.json";
  if (!c.meta.contains("non_tensor_args") || !c.meta["non_tensor_args"].is_object())
    return make_error(where + ": no non_tensor_args");
  const Json& args = c.meta["non_tensor_args"];
  MD_TRY(int64_t emulating, json_int(args, "linear_quadratic_emulating_steps", where));
  MD_TRY(int64_t euler_steps, json_int(args, "euler_steps", where));
  if (!args.contains("steps_list") || !args["steps_list"].is_array())
    return make_error(where + ": 'steps_list' should be a list of step counts");
  for (const char* key : {"guidance_scale", "negative_strategy_switch_t"})
    if (!args.contains(key) || !args[key].is_number()) return make_error(where + ": '" + key + "' should be a number");
  // Guidance everywhere (the clip_t window [0, 1]) and no std rescale are all this sampler implements.
  if (args.contains("rescale_cfg") && (!args["rescale_cfg"].is_number() || args["rescale_cfg"].get<double>() > 0))
    return make_error(where + ": rescale_cfg " + json_brief(args["rescale_cfg"]) + " is not supported");
  if (args.contains("clip_t") && args["clip_t"] != Json::array({0.0, 1.0}))
    return make_error(where + ": clip_t " + json_brief(args["clip_t"]) + " other than [0, 1] is not supported");
  MotifSamplerConfig cfg;
  cfg.emulating_steps = emulating;
  cfg.guidance_scale = args["guidance_scale"].get<float>();
  cfg.negative_switch_t = args["negative_strategy_switch_t"].get<double>();
  TensorMap out;
  for (const auto& steps : args["steps_list"]) {
    if (!steps.is_number_integer()) return make_error(where + ": steps_list holds " + json_brief(steps));
    const int64_t n = steps.get<int64_t>();
    for (const auto& [name, schedule] :
         {std::pair{std::string("linear"), MotifSchedule::Linear},
          std::pair{"linear_quadratic_N" + std::to_string(emulating), MotifSchedule::LinearQuadratic}}) {
      MotifSamplerConfig sc = cfg;
      sc.schedule = schedule;
      MD_TRY(MotifSampler s, MotifSampler::create(sc, n));
      const std::string key = name + ".steps" + std::to_string(n);
      out[key + ".sigmas"] = s.sigmas_tensor();
      // The case rounds every sigma, the terminal 0 included (one more than the steps' timesteps()).
      std::vector<int64_t> all;
      for (float sigma : s.sigmas()) all.push_back(motif_timestep(sigma));
      out[key + ".timesteps"] = Tensor::from_i64({int64_t(all.size())}, all);
    }
  }
  MD_TRY(MotifSampler s, MotifSampler::create(cfg, euler_steps));
  MD_TRY(Tensor latents, c.input("initial_latents"));
  MD_TRY(Tensor cond, c.input("cond_dx"));
  MD_TRY(Tensor uncond, c.input("uncond_dx"));
  if (cond.dim() < 1 || cond.size(0) != euler_steps || uncond.shape() != cond.shape())
    return make_error(where + ": cond_dx / uncond_dx " + shape_str(cond.shape()) + " should hold " +
                      std::to_string(euler_steps) + " steps");
  std::vector<int64_t> negative;
  for (int64_t i = 0; i < euler_steps; ++i) {
    auto at = [&](const Tensor& t) { return t.slice(0, i, i + 1).contiguous().reshape(latents.shape()); };
    MD_TRY(latents, s.step(i, latents, at(cond), at(uncond)));
    out["euler.step" + std::to_string(i) + ".latents"] = latents;
    negative.push_back(s.negative_for(i, /*has_negative_prompt=*/false) == MotifNegative::EmptyPrompt ? 1 : 0);
  }
  out["euler.negative_is_empty_prompt"] = Tensor::from_i64({euler_steps}, negative);
  out["euler.timesteps"] = s.timesteps_tensor();
  return out;
}

}  // namespace

void register_scheduler_runners() {
  register_case_runner("motif_ref MotifImage.sample (inline schedule + Euler)", run_motif_sampler);
  register_case_runner("diffusers.FlowMatchEulerDiscreteScheduler", run_flow_match);
  register_case_runner("diffusers.UniPCMultistepScheduler", run_unipc);
}

}  // namespace meshdit
