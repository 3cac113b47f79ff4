// `meshdit plan`: the command-line front end of make_plan (app/plan.h). add_plan_command registers the
// subcommand and runs it from its CLI11 callback, so main.cpp needs one line; a failing plan exits non-zero
// through CLI::RuntimeError (which app.exit() turns into the status without printing).
#pragma once
#include <CLI/CLI.hpp>
#include <memory>

#include "app/plan.h"
#include "models/registry.h"

namespace meshdit {

struct PlanCommand {
  PlanRequest request;
  bool json = false;
  bool per_rank = false;
};

// Prints the plan (table or JSON) to stdout; an error is one line on stderr and status 1.
int run_plan(const PlanCommand& cmd);

inline CLI::App* add_plan_command(CLI::App& app) {
  auto cmd = std::make_shared<PlanCommand>();
  auto* sub = app.add_subcommand(
      "plan",
      "Predict, per rank of a device mesh, the weights, peak activations, bytes of each collective per "
      "denoising step and the step time of a transformer (no model is loaded)");
  PlanRequest& r = cmd->request;
  // The models and the defaults come from the registry: a new model shows here by registering.
  std::string presets, classes, sizes, texts;
  for (const auto& a : transformer_archs()) {
    for (const auto& p : a.presets) presets += (presets.empty() ? "" : ", ") + p.name;
    for (const auto& c : a.classes) classes += (classes.empty() ? "" : ", ") + c;
    const auto& d = a.defaults;
    sizes += (sizes.empty() ? "" : "; ") + a.name + " " + std::to_string(d.width) + "x" + std::to_string(d.height) +
             (d.frames > 1 ? ", " + std::to_string(d.frames) + " frames" : "");
    texts += (texts.empty() ? "" : ", ") + a.name + " " + std::to_string(d.text_tokens);
  }
  sub->add_option("--model", r.model,
                  presets + " (real configs), or a diffusers pipeline or transformer folder (" + classes + ")")
      ->capture_default_str();
  sub->add_option("--mesh", r.mesh, "device mesh RxC (e.g. 2x4), or N for 1xN")->capture_default_str();
  sub->add_option("--parallel", r.parallel,
                  "override the automatic parallel config: cfg=N,sp=N,tp=N,sp_mode=ring|ulysses,vae=N");
  sub->add_option("--width", r.width, "image width in pixels (default: the model's: " + sizes + ")");
  sub->add_option("--height", r.height, "image height in pixels (default: the model's)");
  sub->add_option("--frames", r.frames, "video frames (video models; default: the model's)");
  sub->add_option("--text-tokens", r.text_tokens, "text tokens (default: the model's: " + texts + ")");
  sub->add_option("--tflops", r.tflops,
                  "sustained TFLOP/s per rank (default 0.2: the measured CPU figure for 2 cores, bench/README.md, "
                  "SD3.5-Large block 143-263 GFLOP/s)")
      ->capture_default_str();
  sub->add_option("--link-gbps", r.link_gbps, "link bandwidth per rank in GB/s (1e9 bytes/s)")->capture_default_str();
  sub->add_option("--dtype-bytes", r.dtype_bytes, "bytes per weight element (2: bf16)")->capture_default_str();
  sub->add_option("--act-bytes", r.act_bytes, "bytes per activation and message element (4: the engine's f32)")
      ->capture_default_str();
  sub->add_flag("--json", cmd->json, "print the plan as JSON");
  sub->add_flag("--per-rank", cmd->per_rank, "one table row per rank (default: identical ranks grouped)");
  sub->footer(
      "Model: TP shards attention q/k/v/out, feed-forward and adaLN modulation linears 1/tp (embedders, final "
      "layer, norms replicated); SP splits image tokens (text replicated), ring attention (sp-1 K/V passes per "
      "attention, overlapped with it) or Ulysses (4 all-to-alls per attention); CFG splits the guidance batch. "
      "Step time = FLOPs / --tflops + collective bytes x ring factor / --link-gbps. See src/app/plan.h.");
  sub->callback([cmd]() {
    const int rc = run_plan(*cmd);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
  return sub;
}

}  // namespace meshdit
