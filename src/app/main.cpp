// meshdit: the command-line front end. Each subcommand parses its flags, calls the library, prints one
// clear message on error and exits non-zero.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "app/bench_cache_cmd.h"
#include "app/bench_cmd.h"
#include "app/check.h"
#include "app/convert_cmd.h"
#include "app/device_option.h"
#include "app/generate.h"
#include "app/info_cmd.h"
#include "app/plan_cmd.h"
#include "app/runners.h"
#include "app/serve.h"
#include "core/thread_pool.h"
#include "parallel/mpi_comm.h"
#include "pipelines/pipeline.h"

namespace {

constexpr const char* kPrecisionHelp =
    "f32 or bf16: bf16 runs every linear on bf16 operands (weights and activations rounded) with f32 "
    "accumulation, about 2x the f32 rate on CPUs with AVX512_BF16 or AMX; attention, norms, softmax, RoPE and "
    "residuals stay f32. Default: bf16 where the CPU has native bf16 dot products, else f32 (bf16 is emulated "
    "there, same numbers, no faster). `meshdit info` says which";

// Under mpirun every rank runs every case; rank 0 reports, and the exit status is the worst of all ranks.
int cmd_check(const std::vector<std::string>& dirs, bool quiet, const std::string& mesh, const std::string& parallel,
              const std::string& precision, const std::string& quantize, const std::string& device) {
  meshdit::register_builtin_runners();
  auto world = meshdit::world_communicator();
  const int rank = world->rank();
  const std::string who = world->size() > 1 ? "[rank " + std::to_string(rank) + "] " : "";
  meshdit::CheckOptions opts;
  auto shape = meshdit::MeshShape::parse_or_row(mesh, world->size());
  if (!shape.ok()) {
    if (rank == 0) std::fprintf(stderr, "meshdit check: %s\n", shape.error().message.c_str());
    return 1;
  }
  opts.mesh = *shape;
  opts.parallel = parallel;
  opts.quantize = quantize;
  opts.device = meshdit::device_option(device);
  if (!precision.empty()) {
    auto p = meshdit::parse_precision(precision);
    if (!p.ok()) {
      if (rank == 0) std::fprintf(stderr, "meshdit check: --precision: %s\n", p.error().message.c_str());
      return 1;
    }
    opts.precision = *p;
  }
  int failed = 0;
  for (const auto& d : dirs) {
    auto rep = meshdit::run_check(d, opts);
    // Every rank runs the case: rank 0 prints each distinct error once, naming the ranks that hit it.
    const auto errors = world->gather_strings(rep.ok() ? "" : rep.error().message, 0);
    if (rank == 0) {
      std::map<std::string, std::string> ranks_of;
      for (size_t r = 0; r < errors.size(); ++r)
        if (!errors[r].empty()) ranks_of[errors[r]] += (ranks_of[errors[r]].empty() ? "" : ",") + std::to_string(r);
      for (const auto& [msg, ranks] : ranks_of)
        std::fprintf(stderr, "%smeshdit check: %s\n", world->size() > 1 ? ("[rank " + ranks + "] ").c_str() : "",
                     msg.c_str());
    }
    if (!rep.ok()) {
      ++failed;
      continue;
    }
    // Quantized weights: the figures are the result (printed even with -q), and no tolerance is claimed.
    const bool pass = !rep->failed();
    if (rank == 0 || !pass) {
      if (!quiet || !pass || !quantize.empty())
        std::fputs((who + rep->format()).c_str(), stdout);
      else
        std::printf("PASS %s\n", d.c_str());
    }
    failed += !pass;
  }
  std::vector<float> f{float(failed)};
  world->all_reduce_sum(f.data(), 1);
  if (dirs.size() > 1 && rank == 0)
    std::printf("%zu %s, %d failed\n", dirs.size() - size_t(failed), quantize.empty() ? "passed" : "ran", failed);
  return f[0] > 0 ? 1 : 0;
}

// --mesh and --parallel: the same two options on every command that runs on a mesh.
void add_mesh_options(CLI::App* cmd, std::string& mesh, std::string& parallel) {
  cmd->add_option("--mesh", mesh,
                  "device mesh RxC (or N for 1xN), run under mpirun with R*C ranks (default: 1 x the number of "
                  "ranks); the parallel config is chosen for the model and mesh (see `meshdit plan`)");
  cmd->add_option("--parallel", parallel,
                  "override the automatic parallel config: cfg=N,sp=N,tp=N,sp_mode=ring|ulysses,vae=N "
                  "(cfg/tp not named = 1, sp not named = the remaining ranks)");
}

}  // namespace

int run(int argc, char** argv);

int main(int argc, char** argv) {
  if (auto st = meshdit::mpi::init(&argc, &argv); !st.ok()) {
    std::fprintf(stderr, "meshdit: %s\n", st.error().message.c_str());
    return 1;
  }
  const int rc = run(argc, argv);
  meshdit::mpi::finalize();
  return rc;
}

int run(int argc, char** argv) {
  CLI::App app{"meshdit: diffusion transformer inference on CPUs and GPUs, one device or a mesh", "meshdit"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads for the kernels (default: all cores, or MESHDIT_THREADS)")
      ->check(CLI::PositiveNumber);

  auto* check = app.add_subcommand("check",
                                   "Run a component on a reference case folder (meta.json, inputs.safetensors, "
                                   "outputs.safetensors) and compare every output at the case's tolerance");
  std::vector<std::string> dirs;
  bool quiet = false;
  check->add_option("case-dir", dirs, "one or more case folders")->required();
  check->add_flag("-q,--quiet", quiet, "one line per passing case");
  std::string check_mesh, check_parallel;
  add_mesh_options(check, check_mesh, check_parallel);
  std::string check_precision = "f32";
  check
      ->add_option("--precision", check_precision,
                   "f32 (default: the cases' tolerances are f32's) or bf16: every linear on bf16 operands with f32 "
                   "accumulation, each output then held to at least rel_l2 2e-2 and max_abs 5e-2 x the reference's "
                   "largest magnitude (VAEs: 15e-2 x; pipelines: rel_l2 6e-2, 15e-2 x); exact outputs stay exact")
      ->check(CLI::IsMember({"f32", "bf16"}));
  std::string check_quantize;
  check->add_option("--quantize", check_quantize,
                    "run a transformer case from its weights quantized to TYPE (q8_0, q4_k, ...: `meshdit convert "
                    "--type`'s types) through a temporary GGUF file written as convert writes one; prints each "
                    "output's error against the f32 reference without applying the case's tolerances");
  std::string check_device = "cpu";
  check
      ->add_option("--device", check_device,
                   "cpu (default) or cuda: the component's weights and inputs on that device, outputs compared on the "
                   "host; components without device work (tokenizers, schedulers) run on the host and the report "
                   "says so")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  check->footer(
      "Exit status 0 only if every output of every case is within tolerance (with --quantize: if every case "
      "ran and produced its outputs).\n"
      "On a mesh: mpirun -np 4 meshdit check --mesh 2x2 CASE (intermediate hooks of a sharded model are skipped).");

  auto* gen =
      app.add_subcommand("generate", "Generate images (PNG files) or videos (MP4, PNG frames) from text prompts");
  std::string pipelines;  // the model_index.json classes generate serves, from the pipeline registry
  for (const auto& c : meshdit::pipeline_classes()) pipelines += (pipelines.empty() ? "" : ", ") + c;
  meshdit::GenerateCommand g;
  gen->add_option("--model", g.model,
                  "diffusers pipeline folder (model_index.json + subfolders) as downloaded: " + pipelines +
                      "; default: the built-in tiny-shapes model (128x128, 20 steps)");
  gen->add_option("--device", g.device,
                  "cpu (default) or cuda: every component's weights and work on that device (tokenizers and the "
                  "scheduler's bookkeeping stay on the host); every registered pipeline; on cuda Flux's steps "
                  "replay as a CUDA graph after the first (MESHDIT_CUDA_GRAPHS=0: off)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  gen->add_option("--transformer", g.transformer,
                  "transformer checkpoint to use instead of the folder's transformer/: a single file as released "
                  "(Stability's sd3.5_large.safetensors, BFL's flux1-dev.safetensors, a ComfyUI all-in-one) or "
                  "diffusers-named; tokenizers, text encoders, VAE and scheduler still come from --model. Its "
                  "config: a config.json beside the file, else --model's transformer/config.json, else inferred "
                  "from its tensors. It must be the architecture --model's pipeline uses");
  gen->add_option("-p,--prompt", g.prompts, "text prompt; repeat for several images")->required();
  gen->add_option(
      "--negative-prompt", g.negative_prompts,
      "one per prompt: the unconditional branch of classifier-free guidance (SD3.5, Wan: with --guidance > 1; "
      "Flux: with --true-cfg > 1)");
  gen->add_option("--steps", g.steps, "denoising steps (default: the model's, 28 for Flux and SD3.5)")
      ->check(CLI::PositiveNumber);
  gen->add_option("--guidance", g.guidance,
                  "guidance scale (default: the model's): classifier-free guidance for SD3.5 (7.0) and Wan2.2's "
                  "high-noise expert (4.0), the distilled guidance embedding for FLUX.1-dev (3.5)");
  gen->add_option("--guidance-2", g.guidance_2,
                  "Wan2.2: the low-noise expert's classifier-free guidance scale (default 3.0; --guidance when only "
                  "that is given)");
  gen->add_option(
      "--true-cfg", g.true_cfg,
      "true classifier-free guidance scale, used with --negative-prompt (1 = off; default: the model's, 1 for Flux, "
      "4 for Qwen-Image)");
  gen->add_option("--seed", g.seed, "noise seed; images equal diffusers' for the same seed (torch CPU generator)");
  gen->add_option("--latents", g.latents,
                  "initial noise instead of --seed's: a safetensors FILE holding a tensor named 'latents', or "
                  "FILE:NAME for another name; packed as diffusers' pipeline takes its latents= argument "
                  "(Flux: [prompts x batch, (H/16)*(W/16), 64]; SD3: [prompts x batch, 16, H/8, W/8])");
  gen->add_option("--width", g.width, "image width in pixels, a multiple of 16 (default: the model's)");
  gen->add_option("--height", g.height, "image height in pixels, a multiple of 16 (default: the model's)");
  gen->add_option("--batch", g.batch, "images per prompt")->check(CLI::PositiveNumber);
  gen->add_option("--max-sequence-length", g.max_sequence_length, "T5 tokens (default 512)");
  gen->add_option("-o,--output", g.output,
                  "output PNG (default out.png), or MP4 for a video pipeline (H.264, default out.mp4); several "
                  "images or videos become NAME-0.png, NAME-1.png, ...");
  gen->add_option("--frames", g.num_frames,
                  "video pipelines: frames to generate, 1 + 4k for Wan2.2 (default: the model's)")
      ->check(CLI::PositiveNumber);
  gen->add_option("--frames-dir", g.frames_dir,
                  "video pipelines: also write every frame as DIR/frame-0000.png, ... (without -o: no MP4)");
  gen->add_option("--timings", g.timings_path, "write per-stage and per-step times and peak memory as JSON");
  gen->add_option("--trace", g.trace_path, "write a Chrome trace (open in Perfetto) of stages, steps and kernels");
  gen->add_flag("!--no-progress", g.progress, "no progress bar");
  gen->add_option("--precision", g.precision, kPrecisionHelp)->check(CLI::IsMember({"f32", "bf16"}));
  add_mesh_options(gen, g.mesh, g.parallel);
  gen->add_flag("--vae-tiling", g.vae_tiling,
                "decode the image in overlapping tiles (bounded memory for large images; tiles are blended)");
  gen->add_option("--cache", g.cache,
                  "step caching: none (default), fbcache, dbcache or dbcache+taylorseer, optionally with\n"
                  "':' and fields: F8B0 (first/last blocks always run; F4B0/F1B1 per block stack, e.g. Flux's\n"
                  "double/single), threshold=0.08 (relative change of the first blocks' residual below which\n"
                  "the middle blocks are skipped), warmup=8 (calls never cached), max_cached=N,\n"
                  "max_consecutive=N, order=1|2 (TaylorSeer). E.g. --cache dbcache:F8B0,threshold=0.12");

  auto* serve = app.add_subcommand(
      "serve",
      "Load the pipeline once and serve it over HTTP: OpenAI /v1/images/generations, AUTOMATIC1111 "
      "/sdapi/v1/txt2img, jobs with live progress (/v1/jobs), a web page at /; stops on SIGINT/SIGTERM");
  meshdit::ServeCommand sv;
  serve->add_option("--model", sv.model,
                    "diffusers pipeline folder (as generate's --model); default: the built-in tiny-shapes model");
  serve->add_option("--transformer", sv.transformer, "transformer checkpoint instead of the folder's (as generate's)");
  serve->add_option("--host", sv.host, "address to listen on (default 127.0.0.1: this machine only)");
  serve->add_option("--port", sv.port, "TCP port (default 8080; 0: any free port)")->check(CLI::Range(0, 65535));
  serve->add_option("--api-key", sv.api_key,
                    "require 'Authorization: Bearer KEY' on every route but /health and the page");
  serve->add_option("--queue", sv.queue, "jobs that may wait behind the running one (default 16)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--max-body", sv.max_body_bytes, "largest request body in bytes (default 4 MiB)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--max-side", sv.limits.max_side, "largest width or height a request may ask (default 2048)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--max-steps", sv.limits.max_steps, "most steps a request may ask (default 200)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--preview-every", sv.preview_every, "steps between a job's previews (default 2)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--precision", sv.precision, kPrecisionHelp)->check(CLI::IsMember({"f32", "bf16"}));
  serve->add_flag("!--quiet", sv.verbose, "no line per request on stderr");
  add_mesh_options(serve, sv.mesh, sv.parallel);

  auto* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  auto* bench_tr = bench->add_subcommand(
      "transformer", "Time forwards of a transformer alone on random inputs of a W x H generation's shapes");
  meshdit::BenchTransformerCommand bt;
  bench_tr->add_option("checkpoint", bt.path, "transformer file or folder (diffusers, BFL or Stability layout)")
      ->required();
  bench_tr->add_option("--width", bt.width, "image width (pixels)");
  bench_tr->add_option("--height", bt.height, "image height (pixels)");
  bench_tr->add_option("--text-tokens", bt.text_tokens, "text tokens");
  bench_tr->add_option("--frames", bt.frames, "video frames for Wan (4k+1) and Mochi (6k+1) transformers (default 1)")
      ->check(CLI::PositiveNumber);
  bench_tr->add_option("--steps", bt.steps, "forwards to time; the median of steps 2..N is reported")
      ->check(CLI::PositiveNumber);
  bench_tr->add_option("--threads", bt.threads, "CPU threads");
  bench_tr
      ->add_option("--precision", bt.precision,
                   std::string(kPrecisionHelp) +
                       "; fp8: every linear on e4m3 weights and activations (per-tensor scales), the rest as bf16 "
                       "(cuBLASLt's FP8 GEMM on a GPU, emulated on the CPU: slow)")
      ->check(CLI::IsMember({"f32", "bf16", "fp8"}));
  bench_tr
      ->add_option("--reference-precision", bt.reference_precision,
                   "after the steps, one forward of the same inputs in this precision and the relative L2 error of "
                   "the output against it (`rel_l2 ...`), e.g. --precision fp8 --reference-precision bf16")
      ->check(CLI::IsMember({"f32", "bf16", "fp8"}));
  bench_tr->add_flag("--profile", bt.profile,
                     "after the steps, the time of steps 2..N per kernel (linear, attention, norms, ...) and outside "
                     "them");
  bench_tr->add_option("--trace", bt.trace_path, "write a Chrome trace of the run (open it in Perfetto)");
  bench_tr
      ->add_option("--device", bt.device,
                   "cpu (default) or cuda: weights and inputs on that device; a step ends when its output is back "
                   "on the host. On cuda the forward is captured as a CUDA graph at step 2, checked at step 3 and "
                   "replayed from step 4 (MESHDIT_CUDA_GRAPHS=0: off)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  add_mesh_options(bench_tr, bt.mesh, bt.parallel);
  auto* bench_attn = bench->add_subcommand(
      "attention", "Time one attention call (q against a K/V chunk, merged into a running state) on random inputs");
  meshdit::BenchAttentionCommand ba;
  bench_attn->add_option("--device", ba.device, "cpu (default) or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  bench_attn->add_option("--precision", ba.precision, kPrecisionHelp)->check(CLI::IsMember({"f32", "bf16"}));
  bench_attn->add_option("--batch", ba.batch, "batch (default 1)")->check(CLI::PositiveNumber);
  bench_attn->add_option("--heads", ba.heads, "heads (default 24)")->check(CLI::PositiveNumber);
  bench_attn->add_option("--q-tokens", ba.q_tokens, "query tokens (default 4096)")->check(CLI::PositiveNumber);
  bench_attn->add_option("--k-tokens", ba.k_tokens, "key tokens (default: the query tokens)")
      ->check(CLI::PositiveNumber);
  bench_attn->add_option("--head-dim", ba.head_dim, "head dim (default 128)")->check(CLI::PositiveNumber);
  bench_attn->add_option("--iters", ba.iters, "timed calls, after one warm-up call (default 10)")
      ->check(CLI::PositiveNumber);
  bench_attn->add_option("--threads", ba.threads, "CPU threads");
  auto* bench_peak = bench->add_subcommand(
      "peak",
      "Measure this CPU's arithmetic peak (f32 FMA on AVX2 and AVX-512, bf16 dot products), one thread and all "
      "threads at once: the ceiling the GEMM and attention GFLOP/s of the other benchmarks are read against");
  int peak_threads = 0;
  bench_peak->add_option("--threads", peak_threads, "threads running at once (default: the pool's thread count)");
  auto* bench_rand = bench->add_subcommand("random-checkpoint",
                                           "Write a random bf16 transformer at real width in a single-file layout");
  std::string arch = "flux-dev", rand_out;
  int64_t doubles = 2, singles = 4;
  bench_rand->add_option("--arch", arch, "a model preset: " + meshdit::random_checkpoint_presets());
  bench_rand->add_option("--double", doubles, "blocks of the first stack (Flux's double-stream, SD3's joint blocks)");
  bench_rand->add_option("--single", singles, "blocks of the second stack (Flux's single-stream blocks)");
  bench_rand->add_option("-o,--output", rand_out, "output .safetensors")->required();
  std::string rand_config;
  auto* rand_config_opt = bench_rand->add_option(
      "--config", rand_config,
      "a diffusers config.json of the --arch model, used instead of the preset's (its block counts too), e.g. a "
      "real-width transformer with the text width of a small text encoder; the file then has diffusers' names, for "
      "that config's folder");

  auto* bench_cache = bench->add_subcommand(
      "cache",
      "Step caching's speed and image quality: one generation uncached, then one per --mode with the "
      "same seed (PSNR/SSIM against the uncached image), the pipeline loaded once");
  meshdit::BenchCacheCommand bc;
  bench_cache->add_option("--model", bc.model, "diffusers pipeline folder (default: the built-in model)");
  bench_cache->add_option("--transformer", bc.transformer,
                          "a transformer checkpoint used instead of <model>/transformer (e.g. a random real-width "
                          "one from `bench random-checkpoint`)");
  bench_cache->add_option("--prompt", bc.prompt, "prompt");
  bench_cache->add_option("--width", bc.width, "width (default: the model's)");
  bench_cache->add_option("--height", bc.height, "height (default: the model's)");
  bench_cache->add_option("--steps", bc.steps, "denoising steps (default: the model's)");
  bench_cache->add_option("--frames", bc.frames, "video pipelines: frames");
  bench_cache->add_option("--seed", bc.seed, "seed");
  bench_cache->add_option("--mode", bc.modes,
                          "a --cache spec to measure (repeatable); default: fbcache, dbcache:F8B0 and "
                          "dbcache+taylorseer:F8B0 at thresholds 0.05-0.2");
  bench_cache->add_option("--save", bc.save_dir, "write each mode's first image as DIR/<row>.png");

  meshdit::add_plan_command(app);  // runs from its callback

  auto* conv = app.add_subcommand(
      "convert",
      "Convert a checkpoint (a PyTorch .bin/.pt read without running its pickle, safetensors, GGUF, a "
      "folder) to a .safetensors file, or a transformer to a city96-style .gguf file (quantized by --type)");
  meshdit::ConvertCommand cv;
  conv->add_option("source", cv.source, "checkpoint file, sharded index or folder")->required();
  conv->add_option("-o,--output", cv.output, "output file; its extension picks the format (.safetensors, .gguf)")
      ->required();
  conv->add_option("--prefix", cv.prefix, "keep only tensors whose names start with it, removing it (e.g. dit.)");
  conv->add_option("--dtype", cv.dtype, "keep (default), bf16 or f32: floating-point tensors' dtype in the output")
      ->check(CLI::IsMember({"keep", "bf16", "f32"}));
  conv->add_option("--type", cv.type,
                   "GGUF output: q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q5_0, q5_1, q4_0, q4_1, bf16, f16 or f32 for the "
                   "weights (1-D tensors, embedders, final layer, modulation and rows that are not whole blocks keep "
                   "their float type); default: as stored");
  conv->add_flag("!--no-progress", cv.progress, "no line per tensor on stderr");

  auto* classes = app.add_subcommand("classes", "List the component classes `check` can run");
  auto* compare = app.add_subcommand("compare",
                                     "PSNR and SSIM of two PNGs of one size (e.g. a cached or quantized "
                                     "generation against the exact one of the same seed)");
  std::string compare_a, compare_b;
  compare->add_option("a", compare_a, "first PNG")->required();
  compare->add_option("b", compare_b, "second PNG")->required();
  auto* info = app.add_subcommand(
      "info",
      "Print the CPU (model, ISA flags), the GEMM library and the kernels it chose, threads, MPI and NCCL; "
      "exit 1 when the GEMM runs below what the CPU supports");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (threads > 0) meshdit::set_num_threads(threads);
  if (*check) return cmd_check(dirs, quiet, check_mesh, check_parallel, check_precision, check_quantize, check_device);
  if (*gen) return meshdit::run_generate(g);
  if (*serve) return meshdit::run_serve(sv);
  if (*bench_tr) return meshdit::run_bench_transformer(bt);
  if (*bench_attn) return meshdit::run_bench_attention(ba);
  if (*bench_peak) return meshdit::run_bench_peak(peak_threads);
  if (*bench_cache) return meshdit::run_bench_cache(bc);
  if (*compare) return meshdit::run_compare(compare_a, compare_b);
  if (*bench_rand) {
    if (*rand_config_opt && (bench_rand->count("--double") || bench_rand->count("--single"))) {
      std::fprintf(stderr, "error: --config gives the block counts; --double/--single cannot be used with it\n");
      return 2;
    }
    return meshdit::run_make_random_checkpoint(arch, doubles, singles, rand_out, rand_config);
  }
  if (*info) return meshdit::run_info();
  if (*conv) return meshdit::run_convert(cv);
  if (*classes) {
    meshdit::register_builtin_runners();
    for (const auto& c : meshdit::supported_case_classes()) std::printf("%s\n", c.c_str());
    return 0;
  }
  return 0;
}
