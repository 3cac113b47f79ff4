#include "app/check.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "app/convert_cmd.h"
#include "app/device_option.h"
#include "backend/ops.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/registry.h"

namespace meshdit {
namespace {

std::map<std::string, CaseRunner>& registry() {
  static std::map<std::string, CaseRunner> r;
  return r;
}

Result<TensorMap> load_all(const std::string& path) {
  MD_TRY(auto f, SafetensorsFile::open(path));
  TensorMap m;
  for (const auto& n : f->names()) {
    MD_TRY(Tensor t, f->get(n));
    m[n] = t;
  }
  return m;
}

Tolerance tolerance_for(const Json& meta, const std::string& name, const Tensor& ref) {
  Tolerance t;
  if (ref.dtype() == DType::I64 || ref.dtype() == DType::I32) t.exact = true;
  if (meta.contains("tolerance") && meta["tolerance"].contains(name)) {
    const Json& e = meta["tolerance"][name];
    if (e.contains("exact") && e["exact"].is_boolean()) t.exact = e["exact"].get<bool>();
    if (e.contains("rel_l2") && e["rel_l2"].is_number()) t.rel_l2 = e["rel_l2"].get<double>();
    if (e.contains("max_abs") && e["max_abs"].is_number()) t.max_abs = e["max_abs"].get<double>();
  }
  return t;
}

}  // namespace

Result<Tensor> CaseContext::input(const std::string& name) const {
  auto it = inputs.find(name);
  if (it == inputs.end()) return make_error(dir + "/inputs.safetensors: missing input '" + name + "'");
  return it->second;
}

Result<Tensor> CaseContext::device_input(const std::string& name) const {
  MD_TRY(Tensor t, input(name));
  ran_on_device = device != Device::CPU;
  return ops::to_device(t, device);
}

void CaseContext::place(Checkpoint& ck) const {
  ck.place_on(device);
  ran_on_device = device != Device::CPU;
}

Result<Checkpoint> CaseContext::open_weights(const std::string& path) const {
  MD_TRY(Checkpoint ck, Checkpoint::open(path));
  place(ck);
  return ck;
}

void register_case_runner(const std::string& cls, CaseRunner runner) { registry()[cls] = std::move(runner); }

std::vector<std::string> supported_case_classes() {
  std::vector<std::string> v;
  for (const auto& kv : registry()) v.push_back(kv.first);
  return v;
}

Result<std::string> case_class(const std::string& dir) {
  MD_TRY(Json meta, load_json(dir + "/meta.json"));
  if (meta.contains("class") && meta["class"].is_string()) return meta["class"].get<std::string>();
  // Tokenizer cases key "class" (or "classes") by tokenizer name; the family is the name before
  // "Tokenizer", lower-cased: "CLIPTokenizer_pad_bang" -> "tokenizer.clip", "T5TokenizerFast" -> "tokenizer.t5".
  if (meta.contains("kind") && meta["kind"] == "tokenizer") {
    for (const char* key : {"class", "classes"}) {
      if (!meta.contains(key) || !meta[key].is_object()) continue;
      for (auto it = meta[key].begin(); it != meta[key].end(); ++it) {
        const size_t pos = it.key().find("Tokenizer");
        if (pos == 0 || pos == std::string::npos) continue;
        std::string family = it.key().substr(0, pos);
        for (char& ch : family) ch = char(std::tolower(static_cast<unsigned char>(ch)));
        return "tokenizer." + family;
      }
    }
    return std::string("tokenizer");
  }
  if (meta.contains("kind") && meta["kind"].is_string()) return meta["kind"].get<std::string>();
  if (meta.contains("pipeline") && meta["pipeline"].is_string()) return meta["pipeline"].get<std::string>();
  return make_error(dir + "/meta.json: no \"class\" or \"kind\" to say what the case tests");
}

bool is_case_supported(const std::string& dir) {
  auto c = case_class(dir);
  return c.ok() && registry().count(c.value()) != 0;
}

Comparison compare_tensor(const std::string& name, const Tensor& got, const Tensor& ref, const Tolerance& tol) {
  Comparison c;
  c.name = name;
  c.tol = tol;
  c.produced = got.defined();
  if (!c.produced) {
    c.note = "not produced";
    return c;
  }
  if (got.numel() != ref.numel() || (got.shape() != ref.shape() && got.dim() == ref.dim())) {
    c.note = "shape " + shape_str(got.shape()) + ", expected " + shape_str(ref.shape());
    return c;
  }
  std::vector<float> g = got.to_vector(), r = ref.to_vector();
  double err2 = 0, ref2 = 0, mx = 0;
  bool nan = false;
  for (size_t i = 0; i < g.size(); ++i) {
    const double d = double(g[i]) - double(r[i]);
    if (std::isnan(g[i]) != std::isnan(r[i])) nan = true;
    mx = std::max(mx, std::fabs(d));
    err2 += d * d;
    ref2 += double(r[i]) * double(r[i]);
  }
  c.max_abs = mx;
  c.rel_l2 = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  if (nan) {
    c.note = "NaN where the reference has none";
    return c;
  }
  c.pass = tol.exact ? mx == 0 : (c.max_abs <= tol.max_abs && c.rel_l2 <= tol.rel_l2);
  return c;
}

Bf16Tolerance bf16_tolerance_for_class(const std::string& cls) {
  const auto ends_with = [&](const std::string& s) {
    return cls.size() >= s.size() && cls.compare(cls.size() - s.size(), s.size(), s) == 0;
  };
  if (ends_with("Pipeline")) return {6e-2, 3e-1};
  if (cls.find("Autoencoder") != std::string::npos) return {2e-2, 1.5e-1};
  return {2e-2, 5e-2};
}

Tolerance bf16_tolerance(const Tolerance& f32_tol, const Tensor& ref, const Bf16Tolerance& b) {
  if (f32_tol.exact || !ref.defined()) return f32_tol;
  double peak = 0;
  for (float v : ref.to_vector()) peak = std::max(peak, double(std::fabs(v)));
  Tolerance t = f32_tol;
  t.rel_l2 = std::max(t.rel_l2, b.rel_l2);
  t.max_abs = std::max(t.max_abs, b.max_abs_scale * peak);
  return t;
}

bool CheckReport::pass() const {
  if (!quantized.empty()) return false;
  int compared = 0;
  for (const auto& o : outputs) {
    if (!o.pass) return false;
    compared += !o.skipped;
  }
  return compared > 0;
}

bool CheckReport::failed() const {
  if (quantized.empty()) return !pass();
  int compared = 0;
  for (const auto& o : outputs) {
    if (o.skipped) continue;
    if (!o.produced || !o.note.empty()) return true;
    ++compared;
  }
  return compared == 0;
}

std::string CheckReport::format() const {
  std::ostringstream os;
  os << dir << " (" << cls << ")";
  if (!device_note.empty()) os << " on " << device_note;
  os << "\n";
  size_t width = 6;
  for (const auto& o : outputs) width = std::max(width, o.name.size());
  int passed = 0;
  char buf[512];
  for (const auto& o : outputs) {
    passed += o.pass;
    if (o.skipped) {
      std::snprintf(buf, sizeof buf, "  %-*s  %s  SKIP\n", int(width), o.name.c_str(), o.note.c_str());
    } else if (!o.produced || !o.note.empty()) {
      std::snprintf(buf, sizeof buf, "  %-*s  %s  FAIL\n", int(width), o.name.c_str(), o.note.c_str());
    } else if (!quantized.empty()) {
      std::snprintf(buf, sizeof buf, "  %-*s  max_abs %.3e  rel_l2 %.3e\n", int(width), o.name.c_str(), o.max_abs,
                    o.rel_l2);
    } else if (o.tol.exact) {
      std::snprintf(buf, sizeof buf, "  %-*s  max_abs %.3e (exact)  %s\n", int(width), o.name.c_str(), o.max_abs,
                    o.pass ? "PASS" : "FAIL");
    } else {
      std::snprintf(buf, sizeof buf, "  %-*s  max_abs %.3e (tol %.3e)  rel_l2 %.3e (tol %.3e)  %s\n", int(width),
                    o.name.c_str(), o.max_abs, o.tol.max_abs, o.rel_l2, o.tol.rel_l2, o.pass ? "PASS" : "FAIL");
    }
    os << buf;
  }
  if (!quantized.empty())
    os << (failed() ? "FAIL: " : "") << "quantized (" << quantized << "): tolerances not applied\n";
  else
    os << (pass() ? "PASS" : "FAIL") << ": " << passed << "/" << outputs.size() << " outputs within tolerance\n";
  return os.str();
}

void CaseContext::skip_outputs(const std::function<bool(const std::string&)>& which, const std::string& why) const {
  const Json& outs = meta["outputs"];
  for (auto it = outs.begin(); it != outs.end(); ++it)
    if (which(it.key())) not_on_mesh[it.key()] = why;
}

Result<const Mesh*> CaseContext::mesh(const ModelTraits& traits) const {
  if (!mesh_) {
    MD_TRY(Mesh m, make_mesh(mesh_shape, parallel, traits));
    mesh_ = std::make_shared<Mesh>(std::move(m));
  }
  return mesh_.get();
}

Result<CheckReport> run_check(const std::string& dir, const CheckOptions& opts) {
  if (!is_directory(dir)) return make_error(dir + ": no such case folder");
  MD_TRY(std::string cls, case_class(dir));
  auto it = registry().find(cls);
  if (it == registry().end()) {
    std::string list;
    for (const auto& s : supported_case_classes()) list += "\n  " + s;
    return make_error(dir + ": class '" + cls + "' is not implemented yet; supported classes:" + list);
  }
  if (!opts.quantize.empty()) {
    auto type = gguf_type_named(opts.quantize);
    if (!type.ok()) return make_error("--quantize " + type.error().message);
    const TransformerArch* arch = find_transformer_arch_for_case(cls);
    if (!arch || arch->gguf_architectures.empty()) {
      std::string known;
      for (const auto& a : transformer_archs())
        if (!a.gguf_architectures.empty()) known += (known.empty() ? "" : ", ") + a.name;
      return make_error(dir + ": --quantize: class '" + cls +
                        "' is not a transformer with GGUF files (quantized cases: " + known + ")");
    }
  }
  if (opts.device != Device::CPU) {
    MD_RETURN_IF_ERROR(require_device(opts.device));
    if (opts.mesh.size() > 1)
      return make_error(std::string("--device ") + device_name(opts.device) +
                        ": a check on a mesh runs on CPU ranks only (the NCCL communicator is not wired to check)");
  }
  const ScopedPrecision precision(opts.precision);
  CaseContext ctx;
  ctx.device = opts.device;
  ctx.quantize = opts.quantize;
  ctx.dir = dir;
  ctx.mesh_shape = opts.mesh;
  ctx.parallel = opts.parallel;
  MD_TRY(ctx.meta, load_json(dir + "/meta.json"));
  if (path_exists(dir + "/inputs.safetensors")) {
    MD_TRY(ctx.inputs, load_all(dir + "/inputs.safetensors"));
  }
  // Most cases split inputs and outputs; an end-to-end case may keep both in one file, and then every
  // tensor in it is also a reference (the initial noise included).
  const std::string combined = dir + "/outputs_and_inputs.safetensors";
  const bool one_file = !path_exists(dir + "/outputs.safetensors") && path_exists(combined);
  MD_TRY(TensorMap refs, load_all(one_file ? combined : dir + "/outputs.safetensors"));
  if (one_file) ctx.inputs = refs;
  MD_TRY(TensorMap got, it->second(ctx));
  // Compared on the host: the references are there.
  for (auto& kv : got)
    if (kv.second.defined() && kv.second.device() != Device::CPU) kv.second = ops::to_device(kv.second, Device::CPU);
  if (opts.mesh.size() > 1 && !ctx.mesh_)
    return make_error(dir + ": class '" + cls + "' does not run on a mesh yet (run it without --mesh)");
  CheckReport rep;
  rep.dir = dir;
  rep.cls = cls;
  if (opts.device != Device::CPU)
    rep.device_note = ctx.ran_on_device ? std::string(device_name(opts.device))
                                        : std::string("the host: this component has no ") + device_name(opts.device) +
                                              " path (it does no tensor work, or its runner does not place it yet)";
  if (!opts.quantize.empty()) {
    if (ctx.quantized.empty()) return make_error(dir + ": class '" + cls + "' ran without quantizing its weights");
    rep.quantized = ctx.quantized;
  }
  for (const auto& [name, ref] : refs) {
    auto g = got.find(name);
    if (ctx.not_on_mesh.count(name)) {
      Comparison skip;
      skip.name = name;
      skip.skipped = skip.pass = true;
      skip.note = "skipped on mesh " + opts.mesh.str() + ": " + ctx.not_on_mesh[name];
      rep.outputs.push_back(skip);
      continue;
    }
    auto stated = ctx.tolerances.find(name);
    Tolerance tol = stated != ctx.tolerances.end() ? stated->second : tolerance_for(ctx.meta, name, ref);
    if (opts.precision == Precision::BF16) tol = bf16_tolerance(tol, ref, bf16_tolerance_for_class(cls));
    rep.outputs.push_back(compare_tensor(name, g == got.end() ? Tensor() : g->second, ref, tol));
  }
  return rep;
}

}  // namespace meshdit
