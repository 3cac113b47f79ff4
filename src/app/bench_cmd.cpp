// `meshdit bench`: timings of the transformer alone, on random inputs of the shapes a generation uses, of one
// attention call, and a generator of random bf16 checkpoints in the single-file layouts (real widths, fewer blocks).
#include "app/bench_cmd.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>

#include "app/device_option.h"
#include "app/info_cmd.h"
#include "backend/backend.h"
#include "backend/cpu/cpu_info.h"
#include "backend/cpu/peak.h"
#include "backend/graphed_forward.h"
#include "backend/ops.h"
#include "backend/precision.h"
#include "core/allocator.h"
#include "core/memory_info.h"
#include "core/thread_pool.h"
#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/safetensors.h"
#include "models/registry.h"
#include "parallel/mpi_comm.h"
#include "pipelines/components.h"

namespace meshdit {
namespace {

double process_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "meshdit bench: %s\n", msg.c_str());
  return 1;
}

// Random bf16 values of scale 1/sqrt(fan_in) (norm scales around 1), fast enough for billions of values.
Tensor random_bf16(const Shape& shape, uint64_t seed, bool norm_scale) {
  Tensor t = Tensor::empty(shape, DType::BF16);
  const int64_t fan_in = shape.size() >= 2 ? shape_numel(shape) / shape[0] : 1;
  const float scale = norm_scale ? 0.1f : 1.0f / std::sqrt(float(fan_in));
  uint16_t* p = t.data<uint16_t>();
  const int64_t n = t.numel();
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int tid) {
        uint64_t s = seed * 0x9E3779B97F4A7C15ull + uint64_t(tid) * 0xBF58476D1CE4E5B9ull + uint64_t(i0);
        for (int64_t i = i0; i < i1; ++i) {
          s ^= s << 13;
          s ^= s >> 7;
          s ^= s << 17;
          const float u = float(s >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;  // uniform [-1, 1)
          p[i] = f32_to_bf16(norm_scale ? 1.0f + u * scale : u * scale * 1.7320508f);
        }
      },
      1 << 16);
  return t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]));
}

}  // namespace

Result<RandomCheckpointSpec> random_checkpoint_spec(const std::string& preset, int64_t blocks, int64_t single_blocks,
                                                    const std::string& config_json) {
  if (blocks < 0 || single_blocks < 0) return make_error("--double/--single must not be negative");
  RandomCheckpointSpec r;
  for (const auto& a : transformer_archs())
    for (const auto& p : a.presets)
      if (p.name == preset) {
        r.arch = &a;
        r.config = p.config();
      }
  if (!r.arch) return make_error("unknown --arch '" + preset + "' (" + random_checkpoint_presets() + ")");
  if (!r.arch->with_blocks || (r.arch->layouts.empty() && !r.arch->infer_config))
    return make_error("--arch " + preset + ": the " + r.arch->name + " model has no single-file layout to write (" +
                      random_checkpoint_presets() + ")");
  if (config_json.empty()) {
    r.config = r.arch->with_blocks(r.config, blocks, single_blocks);
  } else {
    if (!r.arch->parse_config) return make_error("--config: the " + r.arch->name + " model reads no config.json");
    MD_TRY(r.config, r.arch->parse_config(config_json));
  }
  MD_TRY(WeightLog spec, weight_spec(*r.arch, r.config, /*tp=*/1, /*tp_rank=*/0, DType::BF16));
  NamedShapes diffusers;
  for (const auto& w : spec) diffusers.emplace_back(w.name, w.shape);
  // A --config file is a diffusers config.json, and the checkpoint goes beside it (a pipeline folder's
  // transformer/, whose weights are read by diffusers names): diffusers names then, as for a model without a
  // single-file layout (loaded back by diffusers_detect and infer_config).
  if (r.arch->layouts.empty() || !config_json.empty()) {
    r.tensors = std::move(diffusers);
  } else {
    r.layout = &r.arch->layouts[0];
    MD_TRY(r.tensors, single_file_shapes(*r.layout, diffusers));
  }
  return r;
}

std::string random_checkpoint_presets() {
  std::string s;
  for (const auto& a : transformer_archs()) {
    if (!a.with_blocks || (a.layouts.empty() && !a.infer_config)) continue;
    std::string names;
    for (const auto& p : a.presets) names += (names.empty() ? "" : ", ") + p.name;
    const std::string layout = a.layouts.empty() ? "diffusers" : a.layouts[0].name;
    if (!names.empty()) s += (s.empty() ? "" : "; ") + names + " (" + layout + " layout)";
  }
  return s;
}

int run_make_random_checkpoint(const std::string& preset, int64_t blocks, int64_t single_blocks, const std::string& out,
                               const std::string& config_json) {
  auto spec = random_checkpoint_spec(preset, blocks, single_blocks, config_json);
  if (!spec.ok()) return fail(spec.error().message);
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t seed = 1;  // one per tensor in the layout's order, so a file's values depend on nothing else
  for (const auto& [name, shape] : spec->tensors) {
    const bool norm = name.find("norm") != std::string::npos || name.find("ln_") != std::string::npos;
    tensors.push_back({name, random_bf16(shape, seed++, norm)});
  }
  if (auto st = save_safetensors(out, tensors); !st.ok()) return fail(st.error().message);
  std::fprintf(stderr, "wrote %s (%zu tensors, %s layout)\n", out.c_str(), tensors.size(), spec->layout_name().c_str());
  return 0;
}

void print_rss_per_rank(Communicator& world, const char* when) {
  const ProcessMemory r = process_memory();
  char buf[160];
  std::snprintf(buf, sizeof buf, "rank %d %s: RSS mapped weights %.1f MB, anonymous %.1f MB, peak %.1f MB",
                world.rank(), when, r.file_mb, r.anon_mb, r.peak_mb);
  const auto all = world.gather_strings(buf, 0);
  for (const auto& line : all) std::printf("%s\n", line.c_str());
}

// Seconds of steps 2..N (all of them when there is one).
double sum_tail(const std::vector<double>& times) {
  double s = 0;
  for (size_t i = times.size() > 1 ? 1 : 0; i < times.size(); ++i) s += times[i];
  return s;
}

// Where the profiled steps went: the kernel spans (ops that mark themselves, on the calling thread, so each
// is the wall time of the whole parallel call) by name, and what is left outside them (element-wise ops,
// copies, concat, the pool's dispatch).
void print_profile(int64_t from_us, int64_t steps, double step_s_total) {
  std::map<std::string, std::pair<double, int64_t>> by_name;  // ms, calls
  for (const TraceEvent& e : Trace::instance().events()) {
    if (e.start_us < from_us || std::string(e.category) != "kernel") continue;
    auto& [ms, calls] = by_name[e.name];
    ms += double(e.dur_us) / 1000.0;
    ++calls;
  }
  std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  const double step_ms = step_s_total * 1000.0 / double(steps);
  double kernels_ms = 0;
  std::printf("profile (per step, mean of %lld steps; kernel spans on the calling thread):\n", (long long)steps);
  for (const auto& [name, v] : rows) {
    const double ms = v.first / double(steps);
    kernels_ms += ms;
    std::printf("  %-20s %9.1f ms %5.1f %%  %lld calls\n", name.c_str(), ms, 100.0 * ms / step_ms,
                (long long)(v.second / steps));
  }
  std::printf("  %-20s %9.1f ms %5.1f %%\n", "(outside kernels)", step_ms - kernels_ms,
              100.0 * (step_ms - kernels_ms) / step_ms);
}

// Minor page faults of this process so far: fresh memory touched (the host buffer cache's reason to be).
long minor_faults() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

int run_bench_transformer(const BenchTransformerCommand& cmd) {
  if (cmd.threads > 0) set_num_threads(cmd.threads);
  auto precision =
      cmd.precision.empty() ? Result<Precision>(default_compute_precision()) : parse_precision(cmd.precision);
  if (!precision.ok()) return fail("--precision: " + precision.error().message);
  std::optional<Precision> reference;
  if (!cmd.reference_precision.empty()) {
    auto r = parse_precision(cmd.reference_precision);
    if (!r.ok()) return fail("--reference-precision: " + r.error().message);
    reference = *r;
  }
  const ScopedPrecision run_precision(*precision);  // this run only
  const Device dev = device_option(cmd.device);
  if (auto st = require_device(dev); !st.ok()) return fail(st.error().message);
  auto world = world_communicator();
  const bool lead = world->rank() == 0;
  auto parsed_mesh = MeshShape::parse_or_row(cmd.mesh, world->size());
  if (!parsed_mesh.ok()) return fail(parsed_mesh.error().message);
  const MeshShape shape = *parsed_mesh;
  if (!lead && !std::freopen("/dev/null", "w", stdout)) return fail("cannot silence stdout");  // rank 0 reports
  auto opened = open_transformer(cmd.path);
  if (!opened.ok()) return fail(opened.error().message);
  const TransformerArch& arch = *opened->arch;
  if (!arch.load) return fail(cmd.path + ": the " + arch.name + " transformer's forward has not landed yet");
  auto tokens = arch.image_tokens(opened->config, cmd.width, cmd.height, cmd.frames);
  if (!tokens.ok()) return fail(tokens.error().message);
  const int64_t N = *tokens, L = cmd.text_tokens;
  ModelTraits traits{"transformer", arch.dims(opened->config).heads, false, N};
  traits.pad_heads = arch.pad_heads;
  auto mesh = make_mesh(shape, cmd.parallel, traits);
  if (!mesh.ok()) return fail(mesh.error().message);
  if (lead && shape.size() > 1) std::printf("mesh %s: %s\n", shape.str().c_str(), mesh->config().str().c_str());
  if (dev != Device::CPU && shape.size() > 1)
    return fail("--device " + cmd.device + ": the benchmark runs on one device (a mesh runs on CPU ranks)");
  const ParallelContext par = mesh->context();
  opened->ck.place_on(dev);
  if (dev == Device::CPU) {
    opened->ck.copy_into_memory(copy_weights_into_memory(opened->ck.placed_bytes()));
    std::printf("weights %s\n",
                opened->ck.copies_into_memory()
                    ? "copied into memory on 2 MiB pages (MESHDIT_WEIGHTS=map: read through the mapping)"
                    : "read through the file's mapping (MESHDIT_WEIGHTS=memory: copied into memory)");
  }
  auto model = arch.load(opened->ck, opened->config, &par);
  if (!model.ok()) return fail(model.error().message);
  TensorMap inputs = arch.random_inputs(opened->config, cmd.width, cmd.height, cmd.frames, L);
  for (auto& kv : inputs) kv.second = ops::to_device(kv.second, dev);
  const double flops = arch.flops(opened->config, N, L);
  std::fprintf(stderr, "%s (%s layout): %s; %lldx%lld -> %lld image + %lld text tokens\n", arch.name.c_str(),
               opened->layout.c_str(), arch.describe(opened->config).c_str(), (long long)cmd.width,
               (long long)cmd.height, (long long)N, (long long)L);
  std::shared_ptr<Transformer> m = *model;
  std::vector<double> times, cpu_times;
  Tensor last_output;  // on the host: the reference's comparison
  // On CUDA the forward is captured as a graph at step 2 and replayed from step 4 (backend/graphed_forward.h;
  // steps 2 and 3 run eagerly too, 3 checking the replay), unless MESHDIT_CUDA_GRAPHS=0. Every input goes
  // through the graph's static buffers, as in the denoising loop.
  GraphedForward graphed("transformer", dev);
  std::vector<std::string> input_names;
  std::vector<Tensor> input_values;
  for (const auto& [name, t] : inputs) {
    input_names.push_back(name);
    input_values.push_back(t);
  }
  const GraphFn model_call = [&](const std::vector<Tensor>& in) -> Result<Tensor> {
    TensorMap named;
    for (size_t k = 0; k < in.size(); ++k) named[input_names[k]] = in[k];
    return m->forward(named);
  };
  // On a device the kernels run asynchronously: the step is timed until its output is on the host.
  auto forward = [&]() -> Result<Tensor> {
    MD_TRY(Tensor y, graphed(input_values, model_call));
    return dev == Device::CPU ? y : ops::to_device(y, Device::CPU);
  };
  std::printf("threads %d, %.1f GFLOP per forward\n", num_threads(), flops / 1e9);
  if (dev == Device::CPU)
    std::printf("gemm %s\n", gemm_kernel_summary().c_str());
  else
    std::printf("device %s (%s backend)\n", device_name(dev), backend_for(dev).name);
  std::printf("precision %s\n", precision_description(compute_precision()).c_str());
  warn_if_gemm_below_cpu();
  print_rss_per_rank(*world, "after load");
  const bool tracing = cmd.profile || !cmd.trace_path.empty();
  int64_t profile_from_us = 0;  // the events of steps 2..N (step 1 builds primitives and faults weights in)
  if (tracing) Trace::instance().enable(true);
  for (int64_t i = 0; i < cmd.steps; ++i) {
    world->barrier();
    if (i == 1 || cmd.steps == 1) profile_from_us = Trace::instance().now_us();
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = process_cpu_s();
    const long f0 = minor_faults();
    auto r = forward();
    if (!r.ok()) return fail(r.error().message);
    if (reference) last_output = *r;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double cpu = process_cpu_s() - c0;
    times.push_back(s);
    cpu_times.push_back(cpu);
    // On a shared machine the wall time measures the other jobs too; GFLOP per CPU-second x threads is
    // what the step would reach with the cores to itself (our pool blocks instead of spinning).
    std::printf("step %lld %.3f s %.1f GFLOP/s, cpu %.3f s (%.1f GFLOP/s at %d busy threads), %ld page faults%s\n",
                (long long)(i + 1), s, flops / s / 1e9, cpu, flops / cpu * num_threads() / 1e9, num_threads(),
                minor_faults() - f0, graphed.last_replayed() ? ", CUDA graph replay" : "");
    std::fflush(stdout);
  }
  print_rss_per_rank(*world, "after the steps");
  if (reference) {
    // Untimed, after the steps (its products would otherwise share the timed ones' caches and profile).
    // Eagerly: a graph replay would rerun the kernels captured in the timed precision.
    const ScopedPrecision ref_precision(*reference);
    auto r = [&]() -> Result<Tensor> {
      MD_TRY(Tensor y, m->forward(inputs));
      return dev == Device::CPU ? y : ops::to_device(y, Device::CPU);
    }();
    if (!r.ok()) return fail("the reference forward: " + r.error().message);
    const std::vector<float> got = last_output.to_vector(), want = r->to_vector();
    if (got.size() != want.size()) return fail("the reference forward's output has another size");
    double err = 0, norm = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      err += (double(got[i]) - double(want[i])) * (double(got[i]) - double(want[i]));
      norm += double(want[i]) * double(want[i]);
    }
    std::printf("rel_l2 %.3e (%s against %s)\n", norm > 0 ? std::sqrt(err / norm) : std::sqrt(err),
                precision_name(*precision), precision_name(*reference));
  }
  if (cmd.profile) print_profile(profile_from_us, cmd.steps > 1 ? cmd.steps - 1 : 1, sum_tail(times));
  if (!cmd.trace_path.empty()) {
    const auto per_rank = world->gather_strings(Trace::instance().chrome_events(world->rank()), 0);
    if (lead) {
      if (auto st = Trace::write_chrome_merged(cmd.trace_path, per_rank); !st.ok()) return fail(st.error().message);
      std::printf("trace %s\n", cmd.trace_path.c_str());
    }
  }
  const HostCacheStats hc = host_cache_stats();
  std::printf(
      "host buffer cache: %.1f MB committed, %.1f MB of it freed and waiting (limit %.0f MB), %llu reused, "
      "%llu fresh, %llu evicted\n",
      double(hc.committed_bytes) / 1048576.0, double(hc.cached_bytes) / 1048576.0, double(hc.limit_bytes) / 1048576.0,
      (unsigned long long)hc.hits, (unsigned long long)hc.misses, (unsigned long long)hc.evictions);
  std::printf("host tensors: %.1f MB held now, at most %.1f MB at once\n", double(hc.live_bytes) / 1048576.0,
              double(hc.peak_live_bytes) / 1048576.0);
  const std::vector<double> tail(times.size() > 1 ? times.begin() + 1 : times.begin(), times.end());
  const double med = median(tail);
  std::printf("GFLOP/s %.1f\n", flops / med / 1e9);
  std::printf("s_per_step %.4f\n", med);
  const std::vector<double> cpu_tail(cpu_times.size() > 1 ? cpu_times.begin() + 1 : cpu_times.begin(), cpu_times.end());
  std::printf("cpu_s_per_step %.4f\n", median(cpu_tail));
  return 0;
}

int run_bench_attention(const BenchAttentionCommand& cmd) {
  if (cmd.threads > 0) set_num_threads(cmd.threads);
  auto precision =
      cmd.precision.empty() ? Result<Precision>(default_compute_precision()) : parse_precision(cmd.precision);
  if (!precision.ok()) return fail("--precision: " + precision.error().message);
  const ScopedPrecision run_precision(*precision);
  const Device dev = device_option(cmd.device);
  if (auto st = require_device(dev); !st.ok()) return fail(st.error().message);
  const int64_t B = cmd.batch, H = cmd.heads, Lq = cmd.q_tokens, D = cmd.head_dim, iters = cmd.iters;
  const int64_t Lk = cmd.k_tokens > 0 ? cmd.k_tokens : Lq;
  if (B <= 0 || H <= 0 || Lq <= 0 || D <= 0 || iters <= 0 || cmd.k_tokens < 0)
    return fail("attention: --batch, --heads, --q-tokens, --head-dim and --iters must be positive");
  // Uniform values of variance 1 (scores of spread ~1 after the 1/sqrt(D) scale).
  auto random = [&](int64_t L, uint64_t seed) {
    const Tensor t = random_bf16({B * L * H, D}, seed, false).reshape({B, L, H, D}).to(DType::F32);
    return ops::to_device(ops::affine(t, std::sqrt(float(D)), 0.0f), dev);
  };
  const Tensor q = random(Lq, 1), k = random(Lk, 2), v = random(Lk, 3);
  const float scale = 1.0f / std::sqrt(float(D));
  const double flops = 4.0 * double(B) * double(H) * double(Lq) * double(Lk) * double(D);
  std::printf("attention B=%lld H=%lld Lq=%lld Lk=%lld D=%lld, %.3f GFLOP per call\n", (long long)B, (long long)H,
              (long long)Lq, (long long)Lk, (long long)D, flops / 1e9);
  if (dev == Device::CPU)
    std::printf("threads %d\n", num_threads());
  else
    std::printf("device %s (%s backend)\n", device_name(dev), backend_for(dev).name);
  std::printf("precision %s\n", precision_description(compute_precision()).c_str());
  // Every call merges into one state (its sum grows, nothing else changes): no allocation or fill is timed.
  AttentionState st = ops::attention_begin(q);
  auto drain = [&] { (void)ops::to_device(st.max, Device::CPU); };  // on a device: waits for its queue
  ops::attention_accumulate(q, k, v, scale, st);                    // warm-up: kernel setup, scratch buffers
  drain();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i) ops::attention_accumulate(q, k, v, scale, st);
  drain();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(iters);
  std::printf("ms_per_call %.4f\n", s * 1e3);
  std::printf("TFLOP/s %.3f\n", flops / s / 1e12);
  if (dev == Device::CUDA) {
    constexpr double kH200Bf16 = 790e12;  // dense bf16 tensor-core peak (issue #13's ceiling)
    std::printf("fraction_of_h200_bf16_peak %.3f\n", flops / s / kH200Bf16);
  }
  return 0;
}

int run_bench_peak(int threads) {
  const int n = threads > 0 ? threads : num_threads();
  const auto& cpu = cpu::cpu_info();
  std::printf("cpu %s (%d logical CPUs), %d threads at once\n", cpu.model.c_str(), cpu.logical_cpus, n);
  const std::vector<cpu::PeakRate> peaks = cpu::measure_peaks(n);
  if (peaks.empty()) return fail("bench peak: this CPU has neither AVX2+FMA nor AVX-512: nothing to measure");
  for (const cpu::PeakRate& p : peaks)
    std::printf("peak %-32s 1 thread %7.1f GFLOP/s, %d threads %7.1f GFLOP/s\n", p.what.c_str(), p.one_thread, n,
                p.all_threads);
  return 0;
}

}  // namespace meshdit
