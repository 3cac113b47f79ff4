// `meshdit bench`: timings of the transformer alone, on random inputs of the shapes a generation uses, and
// a generator of random bf16 checkpoints in the single-file layouts (real widths, fewer blocks).
#include "app/bench_cmd.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <random>

#include "core/thread_pool.h"
#include "core/torch_rng.h"
#include "io/safetensors.h"
#include "models/registry.h"
#include "parallel/mpi_comm.h"

namespace meshdit {
namespace {

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

using Entry = std::pair<std::string, Shape>;

std::vector<Entry> flux_bfl_layout(int64_t doubles, int64_t singles, bool guidance) {
  const int64_t D = 3072, M = 4 * D, hd = 128;
  std::vector<Entry> e;
  auto lin = [&](const std::string& n, int64_t out, int64_t in) {
    e.push_back({n + ".weight", {out, in}});
    e.push_back({n + ".bias", {out}});
  };
  lin("img_in", D, 64);
  lin("txt_in", D, 4096);
  lin("time_in.in_layer", D, 256);
  lin("time_in.out_layer", D, D);
  lin("vector_in.in_layer", D, 768);
  lin("vector_in.out_layer", D, D);
  if (guidance) {
    lin("guidance_in.in_layer", D, 256);
    lin("guidance_in.out_layer", D, D);
  }
  for (int64_t i = 0; i < doubles; ++i) {
    const std::string p = "double_blocks." + std::to_string(i) + ".";
    for (const char* s : {"img", "txt"}) {
      const std::string q = p + s;
      lin(q + "_mod.lin", 6 * D, D);
      lin(q + "_attn.qkv", 3 * D, D);
      e.push_back({q + "_attn.norm.query_norm.scale", {hd}});
      e.push_back({q + "_attn.norm.key_norm.scale", {hd}});
      lin(q + "_attn.proj", D, D);
      lin(q + "_mlp.0", M, D);
      lin(q + "_mlp.2", D, M);
    }
  }
  for (int64_t i = 0; i < singles; ++i) {
    const std::string p = "single_blocks." + std::to_string(i) + ".";
    lin(p + "linear1", 3 * D + M, D);
    lin(p + "linear2", D, D + M);
    e.push_back({p + "norm.query_norm.scale", {hd}});
    e.push_back({p + "norm.key_norm.scale", {hd}});
    lin(p + "modulation.lin", 3 * D, D);
  }
  lin("final_layer.linear", 64, D);
  lin("final_layer.adaLN_modulation.1", 2 * D, D);
  return e;
}

std::vector<Entry> sd35_large_sai_layout(int64_t blocks) {
  const int64_t D = 2432, hd = 64, pmax = 192;
  std::vector<Entry> e;
  auto lin = [&](const std::string& n, int64_t out, int64_t in) {
    e.push_back({n + ".weight", {out, in}});
    e.push_back({n + ".bias", {out}});
  };
  e.push_back({"x_embedder.proj.weight", {D, 16, 2, 2}});
  e.push_back({"x_embedder.proj.bias", {D}});
  e.push_back({"pos_embed", {1, pmax * pmax, D}});
  lin("t_embedder.mlp.0", D, 256);
  lin("t_embedder.mlp.2", D, D);
  lin("y_embedder.mlp.0", D, 2048);
  lin("y_embedder.mlp.2", D, D);
  lin("context_embedder", D, 4096);
  for (int64_t i = 0; i < blocks; ++i) {
    const bool last = i == blocks - 1;
    for (const char* s : {"x_block", "context_block"}) {
      const std::string p = "joint_blocks." + std::to_string(i) + "." + s + ".";
      const bool pre_only = last && std::string(s) == "context_block";
      lin(p + "adaLN_modulation.1", (pre_only ? 2 : 6) * D, D);
      lin(p + "attn.qkv", 3 * D, D);
      e.push_back({p + "attn.ln_q.weight", {hd}});
      e.push_back({p + "attn.ln_k.weight", {hd}});
      if (!pre_only) {
        lin(p + "attn.proj", D, D);
        lin(p + "mlp.fc1", 4 * D, D);
        lin(p + "mlp.fc2", D, 4 * D);
      }
    }
  }
  lin("final_layer.linear", 2 * 2 * 16, D);
  lin("final_layer.adaLN_modulation.1", 2 * D, D);
  return e;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]));
}

}  // namespace

int run_make_random_checkpoint(const std::string& arch, int64_t doubles, int64_t singles, const std::string& out) {
  std::vector<Entry> layout;
  if (arch == "flux-dev" || arch == "flux-schnell")
    layout = flux_bfl_layout(doubles, singles, arch == "flux-dev");
  else if (arch == "sd35-large")
    layout = sd35_large_sai_layout(doubles);
  else
    return fail("unknown --arch '" + arch + "' (flux-dev, flux-schnell, sd35-large)");
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t seed = 1;
  for (const auto& [name, shape] : layout) {
    const bool norm = name.find("norm") != std::string::npos || name.find("ln_") != std::string::npos;
    tensors.push_back({name, random_bf16(shape, seed++, norm)});
  }
  if (auto st = save_safetensors(out, tensors); !st.ok()) return fail(st.error().message);
  std::fprintf(stderr, "wrote %s (%zu tensors)\n", out.c_str(), tensors.size());
  return 0;
}

// Resident memory of this process in MB from /proc/self/status: file-backed (mapped weights touched) and
// anonymous (copies, activations).
struct Rss {
  double file_mb = 0, anon_mb = 0;
};
Rss resident() {
  Rss r;
  std::ifstream f("/proc/self/status");
  std::string key;
  double kb = 0;
  while (f >> key) {
    if (key == "RssFile:" && f >> kb)
      r.file_mb = kb / 1024;
    else if (key == "RssAnon:" && f >> kb)
      r.anon_mb = kb / 1024;
  }
  return r;
}

void print_rss_per_rank(Communicator& world, const char* when) {
  const Rss r = resident();
  char buf[160];
  std::snprintf(buf, sizeof buf, "rank %d %s: RSS mapped weights %.1f MB, anonymous %.1f MB", world.rank(), when,
                r.file_mb, r.anon_mb);
  const auto all = world.gather_strings(buf, 0);
  for (const auto& line : all) std::printf("%s\n", line.c_str());
}

int run_bench_transformer(const BenchTransformerCommand& cmd) {
  if (cmd.threads > 0) set_num_threads(cmd.threads);
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
  auto tokens = arch.image_tokens(opened->config, cmd.width, cmd.height, 1);
  if (!tokens.ok()) return fail(tokens.error().message);
  const int64_t N = *tokens, L = cmd.text_tokens;
  auto mesh = make_mesh(shape, cmd.parallel,
                        ModelTraits{"transformer", arch.dims(opened->config).heads, false, N});
  if (!mesh.ok()) return fail(mesh.error().message);
  if (lead && shape.size() > 1) std::printf("mesh %s: %s\n", shape.str().c_str(), mesh->config().str().c_str());
  const ParallelContext par = mesh->context();
  auto model = arch.load(opened->ck, opened->config, &par);
  if (!model.ok()) return fail(model.error().message);
  const TensorMap inputs = arch.random_inputs(opened->config, cmd.width, cmd.height, L);
  const double flops = arch.flops(opened->config, N, L);
  std::fprintf(stderr, "%s (%s layout): %s; %lldx%lld -> %lld image + %lld text tokens\n", arch.name.c_str(),
               opened->layout.c_str(), arch.describe(opened->config).c_str(), (long long)cmd.width,
               (long long)cmd.height, (long long)N, (long long)L);
  std::shared_ptr<Transformer> m = *model;
  std::vector<double> times;
  auto forward = [&]() { return m->forward(inputs); };
  std::printf("threads %d, %.1f GFLOP per forward\n", num_threads(), flops / 1e9);
  print_rss_per_rank(*world, "after load");
  for (int64_t i = 0; i < cmd.steps; ++i) {
    world->barrier();
    const auto t0 = std::chrono::steady_clock::now();
    auto r = forward();
    if (!r.ok()) return fail(r.error().message);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    times.push_back(s);
    std::printf("step %lld %.3f s %.1f GFLOP/s\n", (long long)(i + 1), s, flops / s / 1e9);
    std::fflush(stdout);
  }
  print_rss_per_rank(*world, "after the steps");
  const std::vector<double> tail(times.size() > 1 ? times.begin() + 1 : times.begin(), times.end());
  const double med = median(tail);
  std::printf("GFLOP/s %.1f\n", flops / med / 1e9);
  std::printf("s_per_step %.4f\n", med);
  return 0;
}

}  // namespace meshdit
