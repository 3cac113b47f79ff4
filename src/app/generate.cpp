// `meshdit generate`: prompt(s) in, PNG(s) out (a video pipeline: MP4s and/or PNG frame folders), with a
// progress bar, per-stage timings and a trace.
#include "app/generate.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "app/device_option.h"
#include "app/generation.h"
#include "app/info_cmd.h"
#include "app/runners.h"
#include "app/video_output.h"
#include "backend/precision.h"
#include "core/progress.h"
#include "core/thread_pool.h"
#include "core/trace.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "io/video.h"
#include "parallel/mpi_comm.h"
#include "pipelines/pipeline.h"

namespace fs = std::filesystem;

namespace meshdit {
namespace {

std::string g_rank_prefix;  // "[rank r] " under mpirun

int fail(const std::string& msg) {
  std::fprintf(stderr, "%smeshdit generate: %s\n", g_rank_prefix.c_str(), msg.c_str());
  return 1;
}

double peak_rss_mb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;
}

// One line redrawn in place: "<label> 3/20 [=====>     ] 0.41 s/<unit>, ETA 7.0 s".
void progress_bar(const char* label, const char* unit, int64_t done, int64_t total, double unit_s, double elapsed_s) {
  const int width = 30;
  const int filled = int(width * done / total);
  std::string bar(size_t(filled), '=');
  if (filled < width) bar += '>' + std::string(size_t(width - filled - 1), ' ');
  const double eta = elapsed_s / double(done) * double(total - done);
  std::fprintf(stderr, "\r%s %3lld/%lld [%s] %.2f s/%s, ETA %.1f s ", label, (long long)done, (long long)total,
               bar.c_str(), unit_s, unit, eta);
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

// Draws the bar of a stage that reports progress (core/progress.h: 0 at its start, then each unit done).
class StageBar {
 public:
  void operator()(const char* stage, int64_t done, int64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (done == 0) {
      start_ = last_ = now;
      return;
    }
    const double unit = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    progress_bar(stage, "chunk", done, total, unit, std::chrono::duration<double>(now - start_).count());
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_ = start_;
};

Json cache_json(const CacheReport& r) {
  Json calls = Json::array();
  for (const auto& c : r.calls)
    calls.push_back({{"step", c.step}, {"cache", c.cache}, {"cached", c.cached}, {"diff", c.diff}});
  return {{"options", r.options},
          {"calls", calls},
          {"cached_calls", r.cached_calls()},
          {"blocks_total", r.blocks_total},
          {"blocks_run", r.blocks_run}};
}

Status write_timings(const std::string& path, const GenerateCommand& cmd, double total_s, const CacheReport* cache) {
  Json stages = Json::object();
  Json steps = Json::array();
  Json vae_chunks = Json::array();
  for (const auto& e : Trace::instance().events()) {
    const double s = double(e.dur_us) / 1e6;
    if (std::string(e.category) == "stage") stages[e.name] = stages.value(e.name, 0.0) + s;
    if (std::string(e.category) == "step") steps.push_back(s);
    if (std::string(e.category) == "vae_chunk") vae_chunks.push_back(s);
  }
  Json j = {{"model", cmd.model.empty() ? builtin_model_dir() : cmd.model},
            {"threads", num_threads()},
            {"cpu", cpu_kernel_summary()},
            {"gemm", gemm_kernel_summary()},
            {"precision", precision_name(compute_precision())},
            {"stages_s", stages},
            {"steps_s", steps},
            {"vae_chunks_s", vae_chunks},
            {"total_s", total_s},
            {"peak_rss_mb", peak_rss_mb()}};
  if (cache) j["cache"] = cache_json(*cache);
  std::ofstream f(path);
  if (!f) return make_error(path + ": cannot open for writing");
  f << j.dump(2) << "\n";
  return f ? ok_status() : Status(make_error(path + ": write failed"));
}

// --latents FILE or FILE:NAME. A path that exists as given is the file, so a file name with ':' still works.
struct LatentsSource {
  std::string file, tensor = "latents";
  std::string str() const { return file + ":" + tensor; }
};

LatentsSource parse_latents(const std::string& arg) {
  const auto colon = arg.rfind(':');
  if (path_exists(arg) || colon == std::string::npos || colon == 0 || colon + 1 == arg.size()) return {arg};
  return {arg.substr(0, colon), arg.substr(colon + 1)};
}

Result<Tensor> load_latents(const LatentsSource& src) {
  MD_TRY(std::shared_ptr<SafetensorsFile> f, SafetensorsFile::open(src.file));
  if (!f->has(src.tensor)) {
    std::string names;
    for (const auto& n : f->names()) names += (names.empty() ? "" : ", ") + n;
    return make_error(src.file + ": no tensor '" + src.tensor + "' (it has: " + (names.empty() ? "none" : names) +
                      "); name another with --latents FILE:NAME");
  }
  MD_TRY(Tensor t, f->get(src.tensor));
  if (t.dtype() != DType::F32 && t.dtype() != DType::F16 && t.dtype() != DType::BF16 && t.dtype() != DType::F64)
    return make_error(src.str() + ": latents must be floating point, not " + dtype_name(t.dtype()));
  return t.to(DType::F32);
}

}  // namespace

int run_generate(const GenerateCommand& cmd) {
  Span total("run", "generate");
  auto world = world_communicator();
  const int rank = world->rank();
  const bool lead = rank == 0;
  if (world->size() > 1) g_rank_prefix = "[rank " + std::to_string(rank) + "] ";
  auto parsed_mesh = MeshShape::parse_or_row(cmd.mesh, world->size());
  if (!parsed_mesh.ok()) return fail(parsed_mesh.error().message);
  const MeshShape shape = *parsed_mesh;
  const bool builtin = cmd.model.empty();
  const std::string model = builtin ? builtin_model_dir() : cmd.model;
  if (cmd.prompts.empty()) return fail("give a prompt with --prompt");
  auto precision =
      cmd.precision.empty() ? Result<Precision>(default_compute_precision()) : parse_precision(cmd.precision);
  if (!precision.ok()) return fail("--precision: " + precision.error().message);
  // For this run only: a caller in the same process (tests, a server) keeps its own precision.
  const ScopedPrecision run_precision(*precision);
  if (!cmd.timings_path.empty() || !cmd.trace_path.empty()) {
    Trace::instance().enable(true);
    Trace::instance().set_metadata("gemm", gemm_kernel_summary());
    Trace::instance().set_metadata("cpu", cpu_kernel_summary());
    Trace::instance().set_metadata("threads", std::to_string(num_threads()));
    Trace::instance().set_metadata("precision", precision_description(compute_precision()));
  }
  warn_if_gemm_below_cpu();

  // A missing latents file or tensor is found before the model loads; its shape needs the loaded pipeline.
  const LatentsSource latents_src = parse_latents(cmd.latents);
  Tensor latents;
  if (!cmd.latents.empty()) {
    auto t = load_latents(latents_src);
    if (!t.ok()) return fail(t.error().context("--latents").message);
    latents = *t;
  }

  if (!cmd.transformer.empty() && !path_exists(cmd.transformer))
    return fail("--transformer " + cmd.transformer + ": no such file or folder");

  auto entry = pipeline_for_folder(model);
  if (!entry.ok()) return fail(entry.error().message);
  const VideoPipelineInfo* video = video_pipeline_info((*entry)->class_name);
  if (auto st = check_generate_output((*entry)->class_name, cmd.output, cmd.frames_dir, cmd.num_frames); !st.ok())
    return fail(st.error().message);
  // A video pipeline given only --frames-dir writes no .mp4.
  const std::string output = !cmd.output.empty()      ? cmd.output
                             : !video                 ? "out.png"
                             : cmd.frames_dir.empty() ? "out.mp4"
                                                      : "";
  // Built without FFmpeg: an .mp4 is refused now, not after the frames are made.
  if (is_mp4_path(output))
    if (auto st = mp4_output_available(output); !st.ok()) return fail(st.error().message);

  // Refuse an unwritable output before minutes of work, not after.
  const size_t n_images = cmd.prompts.size() * size_t(std::max<int64_t>(1, cmd.batch));
  for (size_t i = 0; i < n_images && lead; ++i) {
    const std::string out = numbered_path(output, i, n_images);
    if (out.empty()) break;
    const bool existed = path_exists(out);
    std::ofstream probe(out, std::ios::app);
    if (!probe) return fail(out + ": output path is not writable");
    probe.close();
    if (!existed) fs::remove(out);
  }
  for (size_t i = 0; i < n_images && lead && !cmd.frames_dir.empty(); ++i) {
    const std::string dir = numbered_path(cmd.frames_dir, i, n_images);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return fail("--frames-dir " + dir + ": cannot create the folder: " + ec.message());
  }

  LoadOptions from;
  from.transformer_file = cmd.transformer;
  from.device = device_option(cmd.device);
  GenerateOptions o;
  o.prompt = cmd.prompts;
  o.negative_prompt = cmd.negative_prompts;
  o.num_images_per_prompt = cmd.batch;
  o.num_frames = cmd.num_frames;
  o.height = cmd.height;
  o.width = cmd.width;
  o.steps = cmd.steps;
  if (cmd.guidance >= 0) o.guidance_scale = cmd.guidance;
  if (cmd.guidance_2 >= 0) o.guidance_scale_2 = cmd.guidance_2;
  if (cmd.true_cfg >= 0) o.true_cfg_scale = cmd.true_cfg;
  o.seed = cmd.seed;
  o.max_sequence_length = cmd.max_sequence_length;
  o.vae_tiling = cmd.vae_tiling;
  auto cache_options = parse_cache_options(cmd.cache);
  if (!cache_options.ok()) return fail(cache_options.error().message);
  o.cache = *cache_options;
  CacheReport cache_report;
  if (o.cache.enabled()) o.cache_report = &cache_report;
  o = with_builtin_defaults(o, builtin);
  auto loaded = load_pipeline(cmd.model, shape, cmd.parallel, o, from);
  if (!loaded.ok()) return fail(loaded.error().message);
  const Pipeline& pipe = *loaded->pipeline;
  o = pipe.with_defaults(o);
  if (auto st = pipe.validate(o); !st.ok()) return fail(st.error().message);
  // Checked apart from the other options so that a shape that does not fit names the file it came from.
  o.latents = latents;
  if (auto st = pipe.validate(o); !st.ok()) return fail(st.error().context("--latents " + latents_src.str()).message);

  if (lead) {
    const std::string noise = cmd.latents.empty() ? "seed " + std::to_string(o.seed) : "latents " + latents_src.str();
    const std::string what = video ? " video(s) of " + std::to_string(o.num_frames) + " frames" : " image(s)";
    std::fprintf(stderr, "meshdit: %s%s, %lld%s %lldx%lld, %lld steps, %s, %d threads, precision %s", model.c_str(),
                 cmd.transformer.empty() ? "" : (" with transformer " + cmd.transformer).c_str(), (long long)n_images,
                 what.c_str(), (long long)o.width, (long long)o.height, (long long)o.steps, noise.c_str(),
                 num_threads(), precision_description(compute_precision()).c_str());
    if (shape.size() > 1)
      std::fprintf(stderr, " per rank, mesh %s: %s", shape.str().c_str(), loaded->mesh.config().str().c_str());
    if (o.cache.enabled()) std::fprintf(stderr, ", cache %s", cache_options_str(o.cache).c_str());
    std::fputc('\n', stderr);
  }
  Span gen_span("run", "denoise + decode");
  StepCallback cb = nullptr;
  if (cmd.progress && lead)
    cb = [&](int64_t i, int64_t n, double s) { progress_bar("step", "step", i + 1, n, s, gen_span.elapsed_s()); };
  // A video's decode takes minutes at full size: its frame chunks get a bar of their own.
  StageBar stage_bar;
  ScopedProgressListener stage_progress(cmd.progress && lead ? ProgressListener(std::ref(stage_bar)) : nullptr);
  auto images = pipe.generate(o, nullptr, cb);
  if (!images.ok()) return fail(images.error().message);
  if (lead && o.cache.enabled()) {
    std::string cached;
    for (const auto& c : cache_report.calls)
      if (c.cached)
        cached +=
            (cached.empty() ? "" : " ") + std::to_string(c.step) + (c.cache == "shared" ? "" : c.cache.substr(0, 1));
    // Under CFG parallel each rank runs its own guidance branch (or half of the batch) and reports its calls.
    std::fprintf(stderr, "cache: %lld of %zu model calls cached (steps %s), blocks run %lld of %lld (%.1f%%)%s\n",
                 (long long)cache_report.cached_calls(), cache_report.calls.size(),
                 cached.empty() ? "none" : cached.c_str(), (long long)cache_report.blocks_run,
                 (long long)cache_report.blocks_total,
                 100.0 * double(cache_report.blocks_run) / double(std::max<int64_t>(1, cache_report.blocks_total)),
                 loaded->mesh.config().cfg > 1 ? ", on rank 0's guidance branch" : "");
  }

  if (lead && video) {
    Span save("stage", "save video");
    auto written = write_video_output(output, images.value(), video->fps, cmd.frames_dir);
    if (!written.ok()) return fail(written.error().message);
    for (const auto& w : *written) std::fprintf(stderr, "wrote %s\n", w.c_str());
  } else if (lead) {
    Span save("stage", "save png");
    const Tensor& im = images.value();
    for (int64_t b = 0; b < im.size(0); ++b) {
      const std::string out = numbered_path(output, size_t(b), n_images);
      PngText extra;
      if (!cmd.transformer.empty()) extra.push_back({"transformer", cmd.transformer});
      if (!cmd.latents.empty()) extra.push_back({"latents", latents_src.str()});
      const PngText text = png_parameters(o, model, b, extra);
      std::vector<uint8_t> rgb = to_rgb8(im.select(0, b));
      if (auto st = write_png(out, rgb.data(), int(o.width), int(o.height), text); !st.ok())
        return fail(st.error().message);
      std::fprintf(stderr, "wrote %s\n", out.c_str());
    }
  }
  const double total_s = total.elapsed_s();
  if (!cmd.timings_path.empty() && lead) {
    if (auto st = write_timings(cmd.timings_path, cmd, total_s, o.cache.enabled() ? &cache_report : nullptr); !st.ok())
      return fail(st.error().message);
    std::fprintf(stderr, "timings: %s (total %.2f s, peak RSS %.0f MB)\n", cmd.timings_path.c_str(), total_s,
                 peak_rss_mb());
  }
  if (!cmd.trace_path.empty()) {
    // One file, one track per rank: every rank's events go to rank 0.
    const auto per_rank = world->gather_strings(Trace::instance().chrome_events(rank), 0);
    if (lead) {
      if (auto st = Trace::write_chrome_merged(cmd.trace_path, per_rank); !st.ok()) return fail(st.error().message);
      std::fprintf(stderr, "trace: %s (%zu rank%s; open in https://ui.perfetto.dev)\n", cmd.trace_path.c_str(),
                   per_rank.size(), per_rank.size() == 1 ? "" : "s");
    }
  }
  return 0;
}

}  // namespace meshdit
