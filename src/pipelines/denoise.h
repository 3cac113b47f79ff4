// The sampling loop every pipeline shares, and the guidance arithmetic in it:
//
//   for each timestep t of the scheduler:
//     pick the expert for t (Wan2.2: the high-noise transformer above a boundary timestep, the low-noise
//       transformer_2 below it, each with its own guidance scale)
//     v = the expert's prediction for the prompt; with guidance also for the negative prompt, either as one
//       call on the batch [uncond; cond] or as two calls, and then
//       v = uncond + w (cond - uncond)                      classifier-free guidance (Ho & Salimans)
//       v = phi v std(cond)/std(v) + (1 - phi) v             guidance_rescale (Lin et al. 2023, sec. 3.4)
//       v = v |cond| / |v| per token                         Qwen-Image's norm-preserving true CFG
//     x = scheduler.step(v, t, x)
//
// What is specific to a model (its embeddings, position ids, how it scales t, latent packing) stays in the
// pipeline, inside its Predictor.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "parallel/comm.h"
#include "pipelines/pipeline.h"

namespace meshdit {

// Which conditioning one model call gets.
enum class Branch {
  Cond,    // the prompt
  Uncond,  // the negative (or empty) prompt
  Pair,    // both in one batch [uncond; cond]; the latents come repeated to match
};

enum class CfgMode {
  None,      // one call on the prompt; guidance scales are not used
  Batched,   // one call on the batch [uncond; cond] (SD3, Mochi)
  TwoCalls,  // a call on the prompt, then one on the negative prompt (Flux and Qwen-Image true CFG, Wan)
};

// A model's prediction (what its scheduler steps with) for `latents` at the scheduler's timestep `t` under
// `branch`. A pipeline closes over its embeddings and ids and turns t into its model's timestep input. With
// `inputs` given it adds the tensors it called the model with, named as the model's forward arguments
// (recorded as <expert>.call<i>.<name>). Under CfgMode::Batched on a cfg group of two ranks each rank calls
// with Cond or Uncond alone, so a batched predictor answers those too.
using Predictor = std::function<Result<Tensor>(const Tensor& latents, float t, Branch branch, TensorMap* inputs)>;

struct Expert {
  std::string name = "transformer";  // the component's name in recordings
  Predictor predict;
  float guidance_scale = 1.0f;  // w while this expert denoises
};

struct Guidance {
  CfgMode mode = CfgMode::None;
  float rescale = 0.0f;         // guidance_rescale phi; 0: off
  bool keep_cond_norm = false;  // Qwen-Image
};

struct DenoiseSetup {
  std::vector<Expert> experts;  // one, or two switched at `boundary`
  // experts[0] for timesteps t >= boundary, experts[1] below (Wan2.2: boundary_ratio * num_train_timesteps).
  std::optional<float> boundary;
  Guidance guidance;
  // Step caching (layers/block_cache.h): one cache per branch under CfgMode::TwoCalls (the prompt and the
  // negative prompt each get their own), one for the batch otherwise; reset when the expert changes.
  CacheOptions cache;
  CacheReport* cache_report = nullptr;  // receives every call's decision and the blocks run
};

// The scheduler as the loop uses it, its timesteps already set.
class StepScheduler {
 public:
  virtual ~StepScheduler() = default;
  virtual std::vector<float> timesteps() const = 0;
  virtual Tensor timesteps_tensor() const = 0;  // recorded as scheduler.timesteps
  virtual Result<Tensor> step(const Tensor& model_output, float t, const Tensor& sample) = 0;
};

// Any scheduler class with timesteps(), timesteps_tensor() and step(model_output, t, sample).
template <class S>
class SchedulerRef final : public StepScheduler {
 public:
  explicit SchedulerRef(S& s) : s_(s) {}
  std::vector<float> timesteps() const override { return s_.timesteps(); }
  Tensor timesteps_tensor() const override { return s_.timesteps_tensor(); }
  Result<Tensor> step(const Tensor& model_output, float t, const Tensor& sample) override {
    return s_.step(model_output, t, sample);
  }

 private:
  S& s_;
};

// Denoises `latents` over every timestep of `scheduler` -> the final latents.
// CFG parallel: with guidance on a `cfg_group` of two ranks, each rank runs one branch (its half of the
// guidance batch) and one all-gather per step gives both ranks both predictions; a group of one runs both.
// `record` (not with a split cfg group) receives scheduler.timesteps, <expert>.call<i>.<input> and .sample
// for every model call i, and latents.step<i> after every step. `on_step` follows every step.
Result<Tensor> denoise(const DenoiseSetup& setup, StepScheduler& scheduler, Tensor latents, Communicator& cfg_group,
                       TensorMap* record = nullptr, const StepCallback& on_step = nullptr);

// The expert of `setup` that denoises timestep t.
const Expert& expert_at(const DenoiseSetup& setup, float t);

// The guided prediction from the two branches' predictions (same shapes): uncond + scale (cond - uncond),
// then g's rescales. g.mode is not consulted.
Tensor guide(const Tensor& cond, const Tensor& uncond, float scale, const Guidance& g);
// diffusers' rescale_noise_cfg: noise_cfg scaled per sample by std(noise_pred_text) / std(noise_cfg) (std
// over all but the batch dimension, Bessel-corrected), mixed phi : (1 - phi) with noise_cfg.
Tensor rescale_noise_cfg(const Tensor& noise_cfg, const Tensor& noise_pred_text, float phi);
// comb * (|cond| / |comb|), norms over the last dimension (QwenImagePipeline's true CFG).
Tensor keep_norm(const Tensor& comb, const Tensor& cond);

}  // namespace meshdit
