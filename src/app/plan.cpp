#include "app/plan.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "io/checkpoint.h"
#include "io/json_config.h"
#include "models/registry.h"
#include "pipelines/motif.h"

namespace meshdit {

int64_t PlanWeight::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t PlanWeight::local_numel(int tp) const {
  if (shard == PlanShard::Replicated || tp == 1 || shape.empty()) return numel();
  const size_t dim = shard == PlanShard::Column ? 0 : 1;
  if (dim >= shape.size()) return numel();
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) n *= i == dim ? (shape[i] + tp - 1) / tp : shape[i];
  return n;
}

int64_t PlanRank::sent_bytes() const {
  int64_t s = 0;
  for (const auto& c : comm) s += c.sent_bytes;
  return s;
}

double PlanRank::comm_s() const {
  double s = 0;
  for (const auto& c : comm) s += c.seconds;
  return s;
}

namespace {

// A model as `plan` sees it: its registry entry and config.
struct Model {
  const TransformerArch* arch = nullptr;
  std::any config;
  std::string name;
};

std::string join_names() {
  std::string s;
  for (const auto& n : plan_model_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// A built-in name, or a diffusers pipeline folder (transformer/config.json) or transformer folder.
Result<Model> resolve_model(const std::string& spec) {
  for (const auto& a : transformer_archs())
    for (const auto& p : a.presets)
      if (p.name == spec) return Model{&a, p.config(), spec};
  if (!is_directory(spec))
    return make_error("--model " + spec + ": not a built-in model (" + join_names() + ") and not a folder");
  if (is_motif_folder(spec)) {  // Motif-Image as released: no model_index.json, its DiT config found as generate does
    MD_TRY(MotifConfig c, motif_folder_config(spec));
    return Model{find_transformer_arch("motif_ref.motif.modeling_dit.MotifDiT"), std::any(c), spec};
  }
  std::string cfg_path = spec + "/config.json";
  if (path_exists(spec + "/model_index.json")) cfg_path = spec + "/transformer/config.json";
  if (!path_exists(cfg_path))
    return make_error("--model " + spec + ": no " + cfg_path +
                      " (expected a diffusers pipeline folder or its transformer folder)");
  MD_TRY(Json j, load_json(cfg_path));
  const std::string cls = j.is_object() && j.contains("_class_name") && j["_class_name"].is_string()
                              ? j["_class_name"].get<std::string>()
                              : "";
  const TransformerArch* arch = find_transformer_arch(cls);
  if (!arch && cls.empty()) {
    // A config without _class_name (Motif's MotifImageConfig): the checkpoint beside it says which model it is.
    const std::string dir = cfg_path.substr(0, cfg_path.size() - std::string("/config.json").size());
    const std::string file = dir + "/diffusion_pytorch_model.safetensors";
    if (auto opened = open_transformer(path_exists(file) ? file : dir); opened.ok())
      return Model{opened->arch, opened->config, spec};
  }
  if (!arch) {
    std::string known;
    for (const auto& a : transformer_archs())
      for (const auto& c : a.classes) known += (known.empty() ? "" : ", ") + c;
    return make_error(cfg_path + ": _class_name '" + cls + "' is not supported by `plan` (" + known + ")");
  }
  MD_TRY(std::any config, arch->parse_config(cfg_path));
  return Model{arch, std::move(config), spec};
}

// ---------------------------------------------------------------------------------------------------------
// Per-rank costs.

int64_t shard_size(int64_t N, int sp, int i) { return N / sp + (i < N % sp ? 1 : 0); }

// The weights of TP rank `tp_index` (the loader's own record) and the FLOPs of its linears per step.
struct RankWeights {
  int64_t bytes = 0;
  std::vector<WeightRecord> spec;
};

double linear_flops(const Model& m, const std::vector<WeightRecord>& spec, const RankShape& r) {
  double f = 0;
  for (const auto& w : spec) {
    if (w.shape.size() < 2) continue;
    int64_t rows = 0;
    switch (m.arch->rows_of(w.name)) {
      case Rows::None:
        continue;
      case Rows::Image:
        rows = r.n;
        break;
      case Rows::Text:
        rows = r.L;
        break;
      case Rows::Joint:
        rows = r.L + r.n;
        break;
      case Rows::One:
        rows = 1;
        break;
    }
    f += 2.0 * double(r.b) * double(rows) * double(w.local_numel());
  }
  return f;
}

// Collectives of one rank per step, from the model's per-forward counts. b = the rank's batch.
std::vector<PlanComm> rank_comm(const ForwardCost& k, const RankShape& r, int64_t batch, int64_t out_tok, int64_t dim,
                                int sp_i, int ab, double bytes_per_s) {
  const ParallelConfig& pc = r.pc;
  const int tp = pc.tp, sp = pc.sp, cf = pc.cfg;
  const int64_t n = r.n, b = r.b, Dt = dim / tp;
  std::vector<PlanComm> out;
  // Every kind is listed; one that this config does not use (group of 1, or the other SP mode) has 0 calls.
  auto add = [&](const char* kind, const char* group, int size, int64_t calls, int64_t payload, double factor,
                 bool overlapped = false, bool used = true) {
    PlanComm c;
    c.kind = kind;
    c.group = group;
    c.group_size = size;
    if (size > 1 && used) {
      c.calls = calls;
      c.payload_bytes = payload;
      c.factor = factor;
      c.sent_bytes = int64_t(double(payload) * factor + 0.5);
      c.seconds = double(c.sent_bytes) / bytes_per_s;
      c.overlapped = overlapped;
    }
    out.push_back(c);
  };
  const double ar = 2.0 * (tp - 1) / tp, ag_tp = double(tp - 1) / tp, ag_sp = double(sp - 1) / sp;
  add("tp_all_reduce", "tp", tp, k.tp_all_reduce_calls, b * k.tp_all_reduce_elems * ab, ar);
  if (k.has_qk_norm_all_reduce)
    add("tp_qk_norm_all_reduce", "tp", tp, k.qk_norm_all_reduce_calls, b * k.qk_norm_all_reduce_bytes, ar);
  if (k.has_adaln_gather) add("adaln_all_gather", "tp", tp, k.adaln_gather_calls, b * k.adaln_gather_elems * ab, ag_tp);
  const int64_t att = k.sp_attentions;
  const bool ring = pc.sp_mode == SpMode::Ring;
  // Ring: sp-1 passes per attention; rank i sends shards i, i-1, ..., i-sp+2: all but shard i+1.
  const int64_t passed = r.N - (sp > 1 ? shard_size(r.N, sp, (sp_i + 1) % sp) : r.N);
  add("sp_ring_kv", "sp", sp, att * (sp - 1), b * att * 2 * passed * Dt * ab, 1.0, true, ring);
  // Ulysses: q, k, v to head shards and the output back: 4 all-to-alls of the local [n, dim/tp] per attention.
  add("sp_ulysses_all_to_all", "sp", sp, 4 * att, b * att * 4 * n * Dt * ab, ag_sp, false, !ring);
  add("sp_final_gather", "sp", sp, 1, b * r.N * out_tok * ab, ag_sp);
  add("cfg_combine_all_gather", "cfg", cf, 1, batch * r.N * out_tok * ab, double(cf - 1) / cf);
  return out;
}

// Every rank of `mesh` under `pc`; returns the slowest step.
Result<double> plan_ranks(const Model& m, int64_t N, int64_t L, int64_t batch, const MeshShape& mesh,
                          const ParallelConfig& pc, const PlanRequest& req, std::vector<PlanRank>* out) {
  const double flops_per_s = req.tflops * 1e12, bytes_per_s = req.link_gbps * 1e9;
  const int64_t b = batch / pc.cfg;  // cfg=2: each half runs one sample
  const ModelDims dims = m.arch->dims(m.config);
  std::vector<RankWeights> per_tp(size_t(pc.tp));
  for (int t = 0; t < pc.tp; ++t) {
    MD_TRY(per_tp[size_t(t)].spec, weight_spec(*m.arch, m.config, pc.tp, t));
    for (const auto& w : per_tp[size_t(t)].spec) per_tp[size_t(t)].bytes += w.local_numel() * req.dtype_bytes;
  }
  double worst = 0;
  for (int r = 0; r < mesh.size(); ++r) {
    PlanRank pr;
    pr.rank = r;
    pr.row = r / mesh.cols;
    pr.col = r % mesh.cols;
    pr.tp_index = r % pc.tp;
    pr.sp_index = (r / pc.tp) % pc.sp;
    pr.cfg_index = r / (pc.tp * pc.sp);
    pr.image_tokens = shard_size(N, pc.sp, pr.sp_index);
    const RankWeights& w = per_tp[size_t(pr.tp_index)];
    pr.weight_bytes = w.bytes;
    const RankShape shape{N, L, pr.image_tokens, b, pc};
    const ForwardCost c = m.arch->cost(m.config, shape);
    pr.activation_bytes = c.act_elems * req.act_bytes;
    pr.flops = linear_flops(m, w.spec, shape) + double(c.sp_attentions) * c.attn_flops + c.other_attn_flops;
    pr.compute_s = pr.flops / flops_per_s;
    pr.comm = rank_comm(c, shape, batch, dims.out_tok, dims.dim, pr.sp_index, req.act_bytes, bytes_per_s);
    for (const auto& k : pr.comm) {
      if (!k.overlapped) {
        pr.comm_serial_s += k.seconds;
      } else if (c.sp_attentions > 0) {
        // Each attention: max(its compute, its K/V passes) = compute + what the passes exceed it by.
        const double per_att = k.seconds / double(c.sp_attentions), att_s = c.attn_flops / flops_per_s;
        pr.comm_exposed_s += double(c.sp_attentions) * std::max(0.0, per_att - att_s);
      }
    }
    pr.step_s = pr.compute_s + pr.comm_serial_s + pr.comm_exposed_s;
    worst = std::max(worst, pr.step_s);
    if (out) out->push_back(std::move(pr));
  }
  return worst;
}

std::string fmt_bytes(double b) {
  char buf[64];
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", b, unit[u]);
  return buf;
}

std::string fmt_s(double s) {
  char buf[64];
  if (s == 0) return "0";
  if (s < 1e-3)
    std::snprintf(buf, sizeof buf, "%.1f us", s * 1e6);
  else if (s < 1)
    std::snprintf(buf, sizeof buf, "%.1f ms", s * 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
}

std::string ranges(const std::vector<int>& r) {
  std::string s;
  for (size_t i = 0; i < r.size();) {
    size_t j = i;
    while (j + 1 < r.size() && r[j + 1] == r[j] + 1) ++j;
    if (!s.empty()) s += ',';
    s += std::to_string(r[i]);
    if (j > i) {
      s += '-';
      s += std::to_string(r[j]);
    }
    i = j + 1;
  }
  return s;
}

}  // namespace

std::vector<std::string> plan_model_names() {
  std::vector<std::string> v;
  for (const auto& a : transformer_archs())
    for (const auto& p : a.presets) v.push_back(p.name);
  return v;
}

Result<Plan> make_plan(const PlanRequest& req) {
  if (!(req.tflops > 0)) return make_error("--tflops must be positive");
  if (!(req.link_gbps > 0)) return make_error("--link-gbps must be positive");
  for (int b : {req.dtype_bytes, req.act_bytes})
    if (b != 1 && b != 2 && b != 4 && b != 8) return make_error("--dtype-bytes/--act-bytes must be 1, 2, 4 or 8");
  if (req.width < 0 || req.height < 0 || req.frames < 0 || req.text_tokens < 0)
    return make_error("--width, --height, --frames and --text-tokens must be positive");
  MD_TRY(Model m, resolve_model(req.model));
  MD_TRY(MeshShape mesh, MeshShape::parse(req.mesh));
  const PlanDefaults& d = m.arch->defaults;

  Plan p;
  p.request = req;
  p.model = m.name;
  p.description = m.arch->describe(m.config);
  p.arch = m.arch->name;
  p.width = req.width ? req.width : d.width;
  p.height = req.height ? req.height : d.height;
  p.frames = req.frames ? req.frames : d.frames;
  p.text_tokens = req.text_tokens ? req.text_tokens : d.text_tokens;
  MD_TRY(p.image_tokens, m.arch->image_tokens(m.config, p.width, p.height, p.frames));
  if (p.text_tokens < 1) return make_error("--text-tokens must be positive");

  const ModelDims dims = m.arch->dims(m.config);
  p.batch = d.cfg_batch ? 2 : 1;
  p.dim = dims.dim;
  p.heads = dims.heads;
  p.head_dim = dims.head_dim;
  MD_TRY(WeightLog spec, weight_spec(*m.arch, m.config, 1, 0));
  for (const auto& w : spec) {
    PlanWeight pw{w.name, w.shape, PlanShard::Replicated, PlanTokens::None};
    p.weights.push_back(pw);
    p.params += w.local_numel();
  }
  p.total_weight_bytes = p.params * req.dtype_bytes;

  // The same traits a run builds, so the same errors.
  ModelTraits traits{m.name, dims.heads, d.cfg_batch, p.image_tokens};
  traits.pad_heads = m.arch->pad_heads;
  MD_TRY(ParallelConfig pc, resolve_parallel_config(mesh, req.parallel, traits));
  if (dims.dim % pc.tp != 0)
    return make_error("parallel config " + pc.str() + ": dim " + std::to_string(dims.dim) + " not divisible by tp");
  p.mesh = mesh;
  p.parallel = pc;
  p.automatic = req.parallel.empty();
  // How each weight splits: from the loader at the smallest TP degree the heads allow (a weight sharded at one
  // degree is sharded at all).
  int64_t split = 2;
  while (split <= dims.heads && dims.heads % split) ++split;
  WeightLog two;
  if (split <= dims.heads) {
    MD_TRY(two, weight_spec(*m.arch, m.config, int(split), 0));
  }
  for (size_t i = 0; i < p.weights.size() && i < two.size(); ++i) {
    p.weights[i].shard = two[i].shard == Shard::Rows   ? PlanShard::Column
                         : two[i].shard == Shard::Cols ? PlanShard::Row
                                                       : PlanShard::Replicated;
    const Rows rows = m.arch->rows_of(p.weights[i].name);
    p.weights[i].tokens = rows == Rows::Image   ? PlanTokens::Image
                          : rows == Rows::Text  ? PlanTokens::Text
                          : rows == Rows::Joint ? PlanTokens::Joint
                          : rows == Rows::One   ? PlanTokens::One
                                                : PlanTokens::None;
  }
  MD_TRY(p.step_s, plan_ranks(m, p.image_tokens, p.text_tokens, p.batch, mesh, pc, req, &p.ranks));
  std::vector<PlanRank> one;
  MD_TRY(p.single_device_step_s,
         plan_ranks(m, p.image_tokens, p.text_tokens, p.batch, MeshShape{1, 1}, ParallelConfig{}, req, &one));
  p.single_device_activation_bytes = one[0].activation_bytes;
  return p;
}

std::string Plan::table(bool per_rank) const {
  std::ostringstream o;
  char buf[512];
  o << "meshdit plan: " << model << " (" << description << ")\n";
  std::snprintf(buf, sizeof buf, "  %lldx%lld%s: %lld image tokens + %lld text tokens, batch %lld per step\n",
                (long long)width, (long long)height,
                frames > 1 ? (", " + std::to_string(frames) + " frames").c_str() : "", (long long)image_tokens,
                (long long)text_tokens, (long long)batch);
  o << buf;
  o << "  weights " << fmt_bytes(double(total_weight_bytes)) << " (" << params / 1000000 << " M params x "
    << request.dtype_bytes << " B)\n";
  o << "mesh " << mesh.str() << " (" << mesh.size() << (mesh.size() == 1 ? " rank), " : " ranks), ")
    << (automatic ? "automatic" : "overridden") << " config " << parallel.str() << "\n";
  std::snprintf(buf, sizeof buf,
                "assumes %.3g TFLOP/s per rank%s, links %.3g GB/s, activations/messages %d B, weights %d B;\n"
                "  collectives serial (ring all-reduce 2(n-1)/n, gathers/all-to-all (n-1)/n), ring K/V passes "
                "overlap their attention (max), no latency\n",
                request.tflops, request.tflops == 0.2 ? " (default: measured CPU, 2 cores, bench/README.md)" : "",
                request.link_gbps, request.act_bytes, request.dtype_bytes);
  o << buf;

  // Ranks, identical ones grouped.
  struct Row {
    std::vector<int> ranks;
    const PlanRank* r;
  };
  std::vector<Row> rows;
  auto same = [](const PlanRank& a, const PlanRank& b) {
    return a.image_tokens == b.image_tokens && a.weight_bytes == b.weight_bytes &&
           a.activation_bytes == b.activation_bytes && a.sent_bytes() == b.sent_bytes() && a.flops == b.flops &&
           a.step_s == b.step_s;
  };
  for (const auto& r : ranks) {
    bool placed = false;
    if (!per_rank)
      for (auto& row : rows)
        if (same(*row.r, r)) {
          row.ranks.push_back(r.rank);
          placed = true;
          break;
        }
    if (!placed) rows.push_back({{r.rank}, &r});
  }
  std::snprintf(buf, sizeof buf, "\n%-12s %8s %11s %11s %11s %9s %9s %9s %9s %9s\n", "ranks", "img tok", "weights",
                "act peak", "sent/step", "TFLOP", "compute", "comm", "exposed", "step");
  o << buf;
  for (const auto& row : rows) {
    const PlanRank& r = *row.r;
    std::snprintf(buf, sizeof buf, "%-12s %8lld %11s %11s %11s %9.2f %9s %9s %9s %9s\n", ranges(row.ranks).c_str(),
                  (long long)r.image_tokens, fmt_bytes(double(r.weight_bytes)).c_str(),
                  fmt_bytes(double(r.activation_bytes)).c_str(), fmt_bytes(double(r.sent_bytes())).c_str(),
                  r.flops / 1e12, fmt_s(r.compute_s).c_str(), fmt_s(r.comm_s()).c_str(),
                  fmt_s(r.comm_serial_s + r.comm_exposed_s).c_str(), fmt_s(r.step_s).c_str());
    o << buf;
  }
  o << "  (comm: all collective time; exposed: what adds to compute, i.e. serial collectives + ring passes "
       "beyond their attention)\n";

  if (mesh.size() > 1) {
    o << "\nlayout (rank = (cfg*sp + sp_i)*tp + tp_i, mesh position r/C, r%C): cell = rank cfg.sp.tp\n";
    for (int i = 0; i < mesh.rows; ++i) {
      o << "  ";
      for (int j = 0; j < mesh.cols; ++j) {
        const PlanRank& r = ranks[size_t(i * mesh.cols + j)];
        std::snprintf(buf, sizeof buf, "%3d %d.%d.%d  ", r.rank, r.cfg_index, r.sp_index, r.tp_index);
        o << buf;
      }
      o << "\n";
    }
  }

  const PlanRank* worst = &ranks[0];
  for (const auto& r : ranks)
    if (r.step_s > worst->step_s) worst = &r;
  o << "\ncollectives per step (rank " << worst->rank << "):\n";
  bool any = false;
  for (const auto& c : worst->comm) {
    if (c.calls == 0) continue;
    if (!any) {
      std::snprintf(buf, sizeof buf, "  %-24s %-6s %6s %11s %7s %11s %9s\n", "kind", "group", "calls", "payload",
                    "factor", "sent", "time");
      o << buf;
    }
    any = true;
    const std::string grp = c.group + "=" + std::to_string(c.group_size);
    std::snprintf(buf, sizeof buf, "  %-24s %-6s %6lld %11s %7.3f %11s %9s%s\n", c.kind.c_str(), grp.c_str(),
                  (long long)c.calls, fmt_bytes(double(c.payload_bytes)).c_str(), c.factor,
                  fmt_bytes(double(c.sent_bytes)).c_str(), fmt_s(c.seconds).c_str(),
                  c.overlapped ? "  (overlaps attention)" : "");
    o << buf;
  }
  if (!any) o << "  none\n";
  std::snprintf(buf, sizeof buf,
                "\npredicted step: %s (compute %s + collectives %s + ring exposed %s); 1x1: %s -> speedup %.2fx on "
                "%d rank%s\n",
                fmt_s(step_s).c_str(), fmt_s(worst->compute_s).c_str(), fmt_s(worst->comm_serial_s).c_str(),
                fmt_s(worst->comm_exposed_s).c_str(), fmt_s(single_device_step_s).c_str(),
                step_s > 0 ? single_device_step_s / step_s : 0.0, mesh.size(), mesh.size() == 1 ? "" : "s");
  o << buf;
  return o.str();
}

std::string Plan::json() const {
  Json j;
  j["model"] = model;
  j["arch"] = arch;
  j["description"] = description;
  j["width"] = width;
  j["height"] = height;
  j["frames"] = frames;
  j["image_tokens"] = image_tokens;
  j["text_tokens"] = text_tokens;
  j["batch"] = batch;
  j["dim"] = dim;
  j["heads"] = heads;
  j["head_dim"] = head_dim;
  j["params"] = params;
  j["total_weight_bytes"] = total_weight_bytes;
  j["mesh"] = mesh.str();
  j["parallel"] = {{"cfg", parallel.cfg},  {"sp", parallel.sp},
                   {"tp", parallel.tp},    {"sp_mode", sp_mode_name(parallel.sp_mode)},
                   {"vae", parallel.vae},  {"automatic", automatic},
                   {"str", parallel.str()}};
  j["assumptions"] = {{"tflops_per_rank", request.tflops},
                      {"link_gbytes_per_s", request.link_gbps},
                      {"weight_bytes_per_element", request.dtype_bytes},
                      {"activation_bytes_per_element", request.act_bytes},
                      {"overlap", "ring K/V passes overlap their attention (max); other collectives serial"}};
  Json rs = Json::array();
  for (const auto& r : ranks) {
    Json jr;
    jr["rank"] = r.rank;
    jr["row"] = r.row;
    jr["col"] = r.col;
    jr["cfg_index"] = r.cfg_index;
    jr["sp_index"] = r.sp_index;
    jr["tp_index"] = r.tp_index;
    jr["image_tokens"] = r.image_tokens;
    jr["weight_bytes"] = r.weight_bytes;
    jr["activation_bytes"] = r.activation_bytes;
    jr["sent_bytes"] = r.sent_bytes();
    jr["flops"] = r.flops;
    jr["compute_s"] = r.compute_s;
    jr["comm_s"] = r.comm_s();
    jr["comm_serial_s"] = r.comm_serial_s;
    jr["comm_exposed_s"] = r.comm_exposed_s;
    jr["step_s"] = r.step_s;
    Json cs = Json::array();
    for (const auto& c : r.comm)
      cs.push_back({{"kind", c.kind},
                    {"group", c.group},
                    {"group_size", c.group_size},
                    {"calls", c.calls},
                    {"payload_bytes", c.payload_bytes},
                    {"factor", c.factor},
                    {"sent_bytes", c.sent_bytes},
                    {"seconds", c.seconds},
                    {"overlapped", c.overlapped}});
    jr["comm"] = cs;
    rs.push_back(jr);
  }
  j["ranks"] = rs;
  j["step_s"] = step_s;
  j["single_device_step_s"] = single_device_step_s;
  j["single_device_activation_bytes"] = single_device_activation_bytes;
  j["speedup"] = step_s > 0 ? single_device_step_s / step_s : 0.0;
  return j.dump(2) + "\n";
}

}  // namespace meshdit
