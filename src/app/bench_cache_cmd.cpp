#include "app/bench_cache_cmd.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "app/runners.h"
#include "core/image_metrics.h"
#include "core/thread_pool.h"
#include "io/png.h"
#include "parallel/mesh.h"
#include "parallel/mpi_comm.h"
#include "pipelines/pipeline.h"

namespace meshdit {
namespace {

int fail(const std::string& what, const std::string& msg) {
  std::fprintf(stderr, "meshdit %s: %s\n", what.c_str(), msg.c_str());
  return 1;
}

// The images as 8-bit samples back in [0, 1]: what a PNG holds, so the metrics are those of the files.
std::vector<float> as_png_samples(const Tensor& images) {
  std::vector<float> all;
  for (int64_t b = 0; b < images.size(0); ++b) {
    const std::vector<float> f = unit_samples(to_rgb8(images.select(0, b)));
    all.insert(all.end(), f.begin(), f.end());
  }
  return all;
}

}  // namespace

std::vector<std::string> default_cache_sweep() {
  return {"fbcache:threshold=0.05",
          "fbcache:threshold=0.1",
          "fbcache:threshold=0.2",
          "dbcache:F8B0,threshold=0.05",
          "dbcache:F8B0,threshold=0.1",
          "dbcache:F8B0,threshold=0.2",
          "dbcache+taylorseer:F8B0,threshold=0.1",
          "dbcache+taylorseer:F8B0,threshold=0.2"};
}

int run_bench_cache(const BenchCacheCommand& cmd) {
  const std::string what = "bench cache";
  auto world = world_communicator();
  if (world->size() > 1) return fail(what, "runs on one process (the mesh tests cover caching on several ranks)");
  const bool builtin = cmd.model.empty();
  const std::string model = builtin ? builtin_model_dir() : cmd.model;
  std::vector<CacheOptions> modes;
  for (const std::string& spec : cmd.modes.empty() ? default_cache_sweep() : cmd.modes) {
    auto o = parse_cache_options(spec);
    if (!o.ok()) return fail(what, o.error().message);
    modes.push_back(*o);
  }
  auto entry = pipeline_for_folder(model);
  if (!entry.ok()) return fail(what, entry.error().message);
  LoadOptions from;
  from.transformer_file = cmd.transformer;
  GenerateOptions o;
  o.prompt = {cmd.prompt};
  o.width = cmd.width;
  o.height = cmd.height;
  o.steps = cmd.steps;
  o.num_frames = cmd.frames;
  o.seed = cmd.seed;
  if (builtin) {  // the built-in model's own size and steps
    if (o.height == 0) o.height = 128;
    if (o.width == 0) o.width = 128;
    if (o.steps == 0) o.steps = 20;
  }
  auto traits = (*entry)->traits(model, o, from);
  if (!traits.ok()) return fail(what, traits.error().message);
  auto mesh = make_mesh(MeshShape{1, 1}, "", *traits);
  if (!mesh.ok()) return fail(what, mesh.error().message);
  auto loaded = (*entry)->load(model, *mesh, from);
  if (!loaded.ok()) return fail(what, loaded.error().message);
  const Pipeline& pipe = **loaded;
  o = pipe.with_defaults(o);
  if (auto st = pipe.validate(o); !st.ok()) return fail(what, st.error().message);

  std::fprintf(stderr, "meshdit bench cache: %s%s, %lldx%lld, %lld steps, seed %llu, %d threads\n", model.c_str(),
               cmd.transformer.empty() ? "" : (" with transformer " + cmd.transformer).c_str(), (long long)o.width,
               (long long)o.height, (long long)o.steps, (unsigned long long)o.seed, num_threads());
  struct Row {
    std::string mode;
    double seconds = 0, psnr = 0, ssim = 0;
    CacheReport report;
  };
  // An untimed two-step run first: the first generation pages in the weights and fills the buffer cache, which
  // would otherwise count against the uncached reference and inflate every speed-up.
  {
    GenerateOptions warm = o;
    warm.steps = 2;
    std::fprintf(stderr, "  warm-up (2 steps, untimed) ...\n");
    if (auto w = pipe.generate(warm); !w.ok()) return fail(what, w.error().context("warm-up").message);
  }
  std::vector<Row> rows;
  std::vector<float> reference;
  int64_t W = 0, H = 0, frames = 0;
  for (size_t m = 0; m <= modes.size(); ++m) {
    Row row;
    GenerateOptions run = o;
    run.cache = m == 0 ? CacheOptions{} : modes[m - 1];
    run.cache_report = &row.report;
    row.mode = cache_options_str(run.cache);
    std::fprintf(stderr, "  %s ...\n", row.mode.c_str());
    const auto t0 = std::chrono::steady_clock::now();
    auto images = pipe.generate(run);
    row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!images.ok()) return fail(what, images.error().context(row.mode).message);
    const Tensor& im = *images;  // [B, H, W, 3] (a video: its frames as the batch)
    const std::vector<float> samples = as_png_samples(im);
    if (m == 0) {
      reference = samples;
      frames = im.size(0), H = im.size(1), W = im.size(2);
      row.psnr = std::numeric_limits<double>::infinity();
      row.ssim = 1;
    } else {
      // Frames stacked as one tall image: the metrics of a video over all its frames.
      const ImageView a{reference.data(), W, H * frames, 3}, b{samples.data(), W, H * frames, 3};
      row.psnr = psnr(a, b);
      row.ssim = ssim(a, b);
    }
    if (!cmd.save_dir.empty()) {
      std::filesystem::create_directories(cmd.save_dir);
      const std::string path = cmd.save_dir + "/" + std::to_string(m) + ".png";
      const std::vector<uint8_t> rgb = to_rgb8(im.select(0, 0));
      if (auto st = write_png(path, rgb.data(), int(W), int(H), {{"cache", row.mode}}); !st.ok())
        return fail(what, st.error().message);
    }
    rows.push_back(std::move(row));
  }
  // The uncached run again, last: the faster of its two timings is the reference, so that a slow first run
  // (a machine still settling) does not inflate every speed-up.
  {
    std::fprintf(stderr, "  none (again) ...\n");
    const auto t0 = std::chrono::steady_clock::now();
    if (auto again = pipe.generate(o); !again.ok()) return fail(what, again.error().context("none").message);
    rows[0].seconds =
        std::min(rows[0].seconds, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }

  std::printf("| cache | s/image | speed-up | cached calls | blocks run | PSNR dB | SSIM |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    const int64_t calls = int64_t(r.report.calls.size());
    const std::string blocks = r.report.blocks_total
                                   ? std::to_string(r.report.blocks_run) + "/" + std::to_string(r.report.blocks_total)
                                   : "all";
    char psnr_s[32];
    std::snprintf(psnr_s, sizeof psnr_s, std::isinf(r.psnr) ? "exact" : "%.2f", r.psnr);
    std::printf("| %s | %.2f | %.2fx | %s | %s | %s | %.4f |\n", r.mode.c_str(), r.seconds, rows[0].seconds / r.seconds,
                calls ? (std::to_string(r.report.cached_calls()) + "/" + std::to_string(calls)).c_str() : "-",
                blocks.c_str(), psnr_s, r.ssim);
  }
  return 0;
}

int run_compare(const std::string& a, const std::string& b) {
  int wa = 0, ha = 0, wb = 0, hb = 0;
  auto pa = read_png(a, &wa, &ha);
  if (!pa.ok()) return fail("compare", pa.error().message);
  auto pb = read_png(b, &wb, &hb);
  if (!pb.ok()) return fail("compare", pb.error().message);
  if (wa != wb || ha != hb)
    return fail("compare", a + " is " + std::to_string(wa) + "x" + std::to_string(ha) + ", " + b + " is " +
                               std::to_string(wb) + "x" + std::to_string(hb));
  const std::vector<float> fa = unit_samples(*pa), fb = unit_samples(*pb);
  const ImageView va{fa.data(), wa, ha, 3}, vb{fb.data(), wb, hb, 3};
  const double p = psnr(va, vb);
  if (std::isinf(p))
    std::printf("PSNR inf dB (identical pixels), SSIM %.6f\n", ssim(va, vb));
  else
    std::printf("PSNR %.2f dB, SSIM %.6f\n", p, ssim(va, vb));
  return 0;
}

}  // namespace meshdit
