#include "pipelines/denoise.h"

#include <array>
#include <cmath>
#include <map>
#include <memory>

#include "backend/graphed_forward.h"
#include "backend/model_ops.h"
#include "backend/ops.h"
#include "core/allocator.h"
#include "core/step_watch.h"
#include "core/trace.h"
#include "parallel/collectives.h"

namespace meshdit {
namespace {

struct BranchPair {
  Tensor cond, uncond;
};

}  // namespace

Tensor rescale_noise_cfg(const Tensor& noise_cfg, const Tensor& noise_pred_text, float phi) {
  const Tensor rescaled = ops::scale_rows_by_ratio(noise_cfg, ops::row_std(noise_pred_text), ops::row_std(noise_cfg));
  // phi * rescaled + (1 - phi) * noise_cfg, each product rounded as diffusers rounds it (1 - phi in double).
  return ops::add(ops::affine(rescaled, phi, 0.0f), ops::affine(noise_cfg, float(1.0 - double(phi)), 0.0f));
}

// Qwen-Image's true CFG keeps each token's prediction at the norm of the conditional one.
Tensor keep_norm(const Tensor& comb, const Tensor& cond) {
  const int64_t D = comb.size(-1), R = comb.numel() / D;
  const Tensor c = comb.contiguous().reshape({R, D}), p = cond.contiguous().reshape({R, D});
  return ops::scale_rows_by_ratio(c, ops::row_l2(p), ops::row_l2(c)).reshape(comb.shape());
}

Tensor guide(const Tensor& cond, const Tensor& uncond, float scale, const Guidance& g) {
  Tensor v = ops::lerp(uncond, cond, scale);
  if (g.keep_cond_norm) v = keep_norm(v, cond);
  if (g.rescale > 0.0f) v = rescale_noise_cfg(v, cond, g.rescale);
  return v;
}

const Expert& expert_at(const DenoiseSetup& setup, float t) {
  return setup.boundary && t < *setup.boundary ? setup.experts[1] : setup.experts[0];
}

Result<Tensor> denoise(const DenoiseSetup& setup, StepScheduler& scheduler, Tensor latents, Communicator& cfg_group,
                       TensorMap* record, const StepCallback& on_step) {
  if (setup.experts.size() != (setup.boundary ? 2u : 1u))
    return make_error("denoise: " + std::to_string(setup.experts.size()) + " experts with" +
                      (setup.boundary ? "" : "out") + " a boundary timestep");
  // The host buffer cache keeps freed activations resident for the next step; what the text encoders freed gives
  // its pages back here, so the loop's peak is its own.
  release_host_cache();
  const bool guided = setup.guidance.mode != CfgMode::None;
  if (guided && cfg_group.size() > 2)
    return make_error("a cfg group of " + std::to_string(cfg_group.size()) + " ranks: guidance has two halves");
  const bool split = guided && cfg_group.size() == 2;
  if (split && record) return make_error("recording intermediates is not supported with cfg=2");

  // Step caches: one per branch for two calls a step (each compares with its own last computed call), one
  // for a batched pair. A batched pair split over the cfg group is still one batch: its decision is made
  // over both ranks' sums.
  int64_t step = 0;
  std::map<Branch, std::unique_ptr<StepCache>> caches;
  if (setup.cache_report) setup.cache_report->options = cache_options_str(setup.cache);
  auto cache_for = [&](Branch b) -> StepCache* {
    if (!setup.cache.enabled()) return nullptr;
    const bool own = setup.guidance.mode == CfgMode::TwoCalls;
    const Branch key = own ? b : Branch::Pair;
    auto& c = caches[key];
    if (!c) {
      const char* name = !own ? "shared" : b == Branch::Cond ? "cond" : "uncond";
      c = std::make_unique<StepCache>(setup.cache, name, split && !own ? &cfg_group : nullptr, setup.cache_report);
    }
    c->set_step(step);
    return c.get();
  };

  // CUDA graphs (backend/graphed_forward.h), one per expert and branch: the model call a predictor passes
  // through graphed_call is captured after its first call and replayed. Not with step caching, whose block
  // decisions are taken on the host between blocks, nor on a mesh (a split cfg group; device pipelines refuse
  // the others). MESHDIT_CUDA_GRAPHS=0 turns them off.
  const bool use_graphs = latents.device() == Device::CUDA && !setup.cache.enabled() && cfg_group.size() == 1;
  std::map<std::pair<const Expert*, Branch>, std::unique_ptr<GraphedForward>> graphs;
  auto graph_for = [&](const Expert& e, Branch b) -> GraphedForward* {
    if (!use_graphs) return nullptr;
    auto& g = graphs[{&e, b}];
    if (!g) {
      const char* branch = b == Branch::Cond ? "" : b == Branch::Uncond ? " (negative prompt)" : " (batched CFG)";
      g = std::make_unique<GraphedForward>(e.name + branch, Device::CUDA);
    }
    return g.get();
  };

  int64_t calls = 0;
  auto predict = [&](const Expert& e, const Tensor& x, float t, Branch b) -> Result<Tensor> {
    ScopedStepCache scope(cache_for(b));
    ScopedGraph graph_scope(graph_for(e, b));
    TensorMap inputs;
    MD_TRY(Tensor v, e.predict(x, t, b, record ? &inputs : nullptr));
    if (record) {
      // Clones: a recording must keep what the model saw, whatever later reuses the buffers.
      const std::string prefix = e.name + ".call" + std::to_string(calls) + ".";
      for (const auto& [name, tensor] : inputs) (*record)[prefix + name] = tensor.clone();
      (*record)[prefix + "sample"] = v.clone();
    }
    ++calls;
    return v;
  };
  // A cfg group's rank r holds order[r]: the batch order for a batched model, the call order otherwise,
  // so the gathered pair is laid out as the unsplit run produces it.
  const std::array<Branch, 2> order = setup.guidance.mode == CfgMode::Batched
                                          ? std::array<Branch, 2>{Branch::Uncond, Branch::Cond}
                                          : std::array<Branch, 2>{Branch::Cond, Branch::Uncond};
  auto predict_both = [&](const Expert& e, const Tensor& x, float t) -> Result<BranchPair> {
    if (!split && setup.guidance.mode == CfgMode::TwoCalls) {
      MD_TRY(Tensor cond, predict(e, x, t, Branch::Cond));
      MD_TRY(Tensor uncond, predict(e, x, t, Branch::Uncond));
      return BranchPair{cond, uncond};
    }
    const int64_t B = x.size(0);
    Tensor pair;  // [2B, ...] in `order`
    if (split) {
      MD_TRY(Tensor mine, predict(e, x, t, order[size_t(cfg_group.rank())]));
      pair = all_gather(mine, 0, cfg_group);
    } else {
      MD_TRY(pair, predict(e, concat({x, x}, 0), t, Branch::Pair));
    }
    Tensor a = pair.slice(0, 0, B).contiguous(), b = pair.slice(0, B, 2 * B).contiguous();
    return order[0] == Branch::Cond ? BranchPair{a, b} : BranchPair{b, a};
  };

  const std::vector<float> timesteps = scheduler.timesteps();
  const int64_t steps = int64_t(timesteps.size());
  if (record) (*record)["scheduler.timesteps"] = scheduler.timesteps_tensor();
  const Expert* last_expert = nullptr;
  for (int64_t i = 0; i < steps; ++i) {
    Span span("step", "denoise step " + std::to_string(i));
    const float t = timesteps[size_t(i)];
    const Expert& expert = expert_at(setup, t);
    // Another expert's blocks: nothing cached from the first one applies.
    if (last_expert && &expert != last_expert)
      for (auto& [branch, cache] : caches) cache->reset();
    last_expert = &expert;
    step = i;
    Tensor v;
    if (guided) {
      MD_TRY(BranchPair p, predict_both(expert, latents, t));
      v = guide(p.cond, p.uncond, expert.guidance_scale, setup.guidance);
    } else {
      MD_TRY(v, predict(expert, latents, t, Branch::Cond));
    }
    MD_TRY(latents, scheduler.step(v, t, latents));
    if (record) (*record)["latents.step" + std::to_string(i)] = latents;
    if (on_step) on_step(i, steps, span.elapsed_s());
    MD_RETURN_IF_ERROR(notify_step(i, steps, latents));
  }
  // The activations kept for the next step are of no use to the VAE, whose buffers have other sizes.
  release_host_cache();
  return latents;
}

}  // namespace meshdit
