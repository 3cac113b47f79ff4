#include "app/convert_cmd.h"

#include <cstdio>
#include <filesystem>

#include "io/checkpoint.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "io/single_file.h"
#include "models/registry.h"

namespace fs = std::filesystem;

namespace meshdit {
namespace {

class SafetensorsSink : public TensorSink {
 public:
  explicit SafetensorsSink(std::string path) : path_(std::move(path)) {}
  Status begin(const std::vector<Spec>& specs) override {
    std::vector<SafetensorsWriter::Entry> entries;
    for (const auto& s : specs) entries.push_back({s.name, s.dtype, s.shape});
    MD_TRY(writer_, SafetensorsWriter::create(path_, entries, {{"format", "pt"}}));
    return ok_status();
  }
  Status add(const Tensor& t) override { return writer_->write(t); }
  Status finish() override { return writer_->finish(); }

 private:
  std::string path_;
  std::unique_ptr<SafetensorsWriter> writer_;
};

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

std::string human_bytes(uint64_t bytes) {
  char b[32];
  if (bytes >= (1ull << 30))
    std::snprintf(b, sizeof b, "%.2f GiB", double(bytes) / double(1ull << 30));
  else
    std::snprintf(b, sizeof b, "%.1f MiB", double(bytes) / double(1ull << 20));
  return b;
}

// The types `--type` takes: the float types and the block types llama.cpp writes files in (not Q8_K, an
// intermediate of its dot products).
bool gguf_output_type(QuantType t) {
  switch (t) {
    case QuantType::F32:
    case QuantType::F16:
    case QuantType::BF16:
    case QuantType::Q4_0:
    case QuantType::Q4_1:
    case QuantType::Q5_0:
    case QuantType::Q5_1:
    case QuantType::Q8_0:
    case QuantType::Q2_K:
    case QuantType::Q3_K:
    case QuantType::Q4_K:
    case QuantType::Q5_K:
    case QuantType::Q6_K:
      return true;
    default:
      return false;
  }
}

QuantType float_type_of(DType d) {
  return d == DType::F16 ? QuantType::F16 : d == DType::BF16 ? QuantType::BF16 : QuantType::F32;
}

// One tensor of the output: the diffusers tensors whose rows it stacks (or whose halves it swaps), its type.
struct GgufPlan {
  StoredTensor source;
  Shape shape;
  QuantType type = QuantType::F32;
};

Status convert_to_gguf(const ConvertCommand& c, std::FILE* progress) {
  if (!c.prefix.empty()) return make_error("--prefix: a GGUF output is a transformer, found by its layout; not used");
  if (c.dtype != "keep") return make_error("--dtype: for a GGUF output give --type instead");
  bool as_stored = c.type.empty();
  QuantType type = QuantType::F32;
  if (!as_stored) {
    auto t = gguf_type_named(c.type);
    if (!t.ok()) return make_error("--type " + t.error().message);
    type = *t;
  }
  // A pipeline folder: its transformer.
  std::string source = c.source;
  if (is_directory(source) && path_exists(source + "/model_index.json")) source += "/transformer";
  std::string layout;
  MD_TRY(Checkpoint ck, open_transformer_checkpoint(source, &layout));
  const TransformerArch* arch = transformer_arch_of(ck, layout);
  if (!arch) return make_error(c.source + ": no registered transformer matches its tensors");
  if (arch->gguf_architectures.empty()) {
    std::string known;
    for (const auto& a : transformer_archs())
      if (!a.gguf_architectures.empty()) known += (known.empty() ? "" : ", ") + a.name;
    return make_error(c.source + ": a " + arch->name +
                      " transformer has no GGUF architecture name (GGUF output: " + known + ")");
  }
  // Names as the model's single-file layout has them (city96 converts from those files), else diffusers'.
  std::vector<GgufPlan> plan;
  const std::vector<std::string> names = ck.names();
  if (!arch->layouts.empty()) {
    MD_TRY(auto stored, stored_tensors(arch->layouts[0], names));
    for (auto& t : stored) plan.push_back({std::move(t), {}, QuantType::F32});
  } else {
    for (const auto& n : names) plan.push_back({StoredTensor{n, {n}, false}, {}, QuantType::F32});
  }
  std::vector<GgufWriter::Entry> entries;
  uint64_t total = 0, quantized = 0;
  for (auto& p : plan) {
    DType dtype = DType::F32;
    for (size_t i = 0; i < p.source.parts.size(); ++i) {
      MD_TRY(Shape s, ck.shape_of(p.source.parts[i]));
      MD_TRY(Tensor t, ck.get(p.source.parts[i]));  // a view (a GGUF source's quantized tensor: dequantized)
      if (i == 0) {
        p.shape = s;
        dtype = t.dtype();
      } else {
        p.shape[0] += s[0];
      }
    }
    if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
      return make_error(c.source + ": tensor '" + p.source.parts[0] + "' has dtype " + dtype_name(dtype) +
                        "; a GGUF transformer holds float tensors");
    const QuantType stored = float_type_of(dtype);
    if (as_stored)
      p.type = stored;
    else if (gguf_keeps_float(arch->gguf_keep_float, p.source.name, p.shape, type))
      p.type = p.shape.size() <= 1 ? QuantType::F32 : stored;
    else
      p.type = type;
    if (quant_is_block(p.type)) ++quantized;
    total += quant_row_bytes(p.type, shape_numel(p.shape));
    entries.push_back({p.source.name, p.type, p.shape});
  }
  const std::string partial = c.output + ".partial";
  std::vector<std::pair<std::string, GgufValue>> meta{
      {"general.architecture", GgufValue::string(arch->gguf_architectures[0])},
      {"general.quantization_version", GgufValue::u32(2)}};
  MD_TRY(auto w, GgufWriter::create(partial, std::move(meta), entries));
  auto cleanup = [&](Error e) {
    w.reset();
    std::error_code ec;
    fs::remove(partial, ec);
    return e;
  };
  uint64_t done = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const GgufPlan& p = plan[i];
    std::vector<Tensor> parts;
    for (const auto& name : p.source.parts) {
      auto t = ck.get(name);
      if (!t.ok()) return cleanup(t.error());
      parts.push_back(*t);
    }
    Tensor t = parts.size() == 1 ? parts[0] : concat(parts, 0);
    if (p.source.swap_halves) {
      const int64_t h = t.size(0) / 2;
      t = concat({t.slice(0, h, 2 * h), t.slice(0, 0, h)}, 0);
    }
    if (auto st = w->write(t); !st.ok()) return cleanup(st.error());
    done += quant_row_bytes(p.type, shape_numel(p.shape));
    if (progress)
      std::fprintf(progress, "[%zu/%zu] %s %s %s (%s of %s)\n", i + 1, plan.size(), p.source.name.c_str(),
                   quant_type_name(p.type), shape_str(p.shape).c_str(), human_bytes(done).c_str(),
                   human_bytes(total).c_str());
  }
  if (auto st = w->finish(); !st.ok()) return cleanup(st.error());
  std::error_code ec;
  fs::rename(partial, c.output, ec);
  if (ec) return cleanup(make_error(c.output + ": cannot rename " + partial + " to it: " + ec.message()));
  if (progress)
    std::fprintf(progress, "%s: %s, %llu of %zu tensors %s\n", c.output.c_str(), arch->gguf_architectures[0].c_str(),
                 (unsigned long long)quantized, plan.size(), as_stored ? "(as stored)" : quant_type_name(type));
  return ok_status();
}

}  // namespace

Result<QuantType> gguf_type_named(const std::string& name) {
  QuantType type = QuantType::F32;
  if (!quant_type_from_name(name, &type) || !gguf_output_type(type))
    return make_error("'" + name +
                      "': expected one of q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q5_1, q5_0, q4_1, q4_0, bf16, f16, f32");
  return type;
}

bool gguf_keeps_float(const std::vector<std::string>& keep, const std::string& name, const Shape& shape,
                      QuantType type) {
  if (shape.size() <= 1 || shape_numel(shape) <= 1024) return true;
  if (shape.back() % quant_block_size(type) != 0) return true;
  for (const auto& part : keep)
    for (size_t at = name.find(part); at != std::string::npos; at = name.find(part, at + 1))
      if (at == 0 || name[at - 1] == '.') return true;
  return false;
}

Result<std::unique_ptr<TensorSink>> sink_for(const std::string& path, const std::string& write_to) {
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".safetensors") return std::unique_ptr<TensorSink>(new SafetensorsSink(write_to));
  return make_error(path + ": unknown output format '" + ext + "' (known: .safetensors, .gguf)");
}

Status convert_checkpoint(const ConvertCommand& c, std::FILE* progress) {
  std::error_code same_ec;
  if (fs::equivalent(c.output, c.source, same_ec))
    return make_error(c.output + ": the output would overwrite the source");
  if (fs::path(c.output).extension() == ".gguf") return convert_to_gguf(c, progress);
  if (!c.type.empty()) return make_error("--type '" + c.type + "' is for a GGUF output (-o FILE.gguf)");
  bool to_dtype = c.dtype != "keep";
  DType target = DType::BF16;
  if (c.dtype == "f32")
    target = DType::F32;
  else if (c.dtype != "bf16" && c.dtype != "keep")
    return make_error("--dtype must be keep, bf16 or f32, got '" + c.dtype + "'");
  const std::string partial = c.output + ".partial";
  MD_TRY(auto sink, sink_for(c.output, partial));
  MD_TRY(Checkpoint ck, Checkpoint::open(c.source, c.prefix));
  const std::vector<std::string> names = ck.stored_names();
  if (names.empty())
    return make_error(c.source + ": no tensors" + (c.prefix.empty() ? "" : " under the prefix '" + c.prefix + "'"));
  std::vector<TensorSink::Spec> specs;
  uint64_t total = 0;
  for (const auto& n : names) {
    MD_TRY(Tensor t, ck.get_stored(n));
    const DType d = to_dtype && is_float(t.dtype()) ? target : t.dtype();
    specs.push_back({n, d, t.shape()});
    total += uint64_t(t.numel()) * dtype_size(d);
  }
  auto cleanup = [&](Error e) {
    std::error_code ec;
    fs::remove(partial, ec);
    return e;
  };
  if (auto st = sink->begin(specs); !st.ok()) return cleanup(st.error());
  uint64_t done = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    auto t = ck.get_stored(names[i]);
    if (!t.ok()) return cleanup(t.error());
    const Tensor out = t->dtype() == specs[i].dtype ? *t : t->to(specs[i].dtype);
    if (auto st = sink->add(out); !st.ok()) return cleanup(st.error());
    done += out.nbytes();
    if (progress)
      std::fprintf(progress, "[%zu/%zu] %s %s %s (%s of %s)\n", i + 1, names.size(), names[i].c_str(),
                   dtype_name(specs[i].dtype), shape_str(specs[i].shape).c_str(), human_bytes(done).c_str(),
                   human_bytes(total).c_str());
  }
  if (auto st = sink->finish(); !st.ok()) return cleanup(st.error());
  std::error_code ec;
  fs::rename(partial, c.output, ec);
  if (ec) return cleanup(make_error(c.output + ": cannot rename " + partial + " to it: " + ec.message()));
  return ok_status();
}

int run_convert(const ConvertCommand& c) {
  const Status st = convert_checkpoint(c, c.progress ? stderr : nullptr);
  if (!st.ok()) {
    std::fprintf(stderr, "meshdit convert: %s\n", st.error().message.c_str());
    return 1;
  }
  std::fprintf(stderr, "meshdit convert: wrote %s\n", c.output.c_str());
  return 0;
}

}  // namespace meshdit
