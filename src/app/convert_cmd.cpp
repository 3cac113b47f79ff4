#include "app/convert_cmd.h"

#include <cstdio>
#include <filesystem>

#include "io/checkpoint.h"
#include "io/safetensors.h"

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

}  // namespace

Result<std::unique_ptr<TensorSink>> sink_for(const std::string& path, const std::string& write_to) {
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".safetensors") return std::unique_ptr<TensorSink>(new SafetensorsSink(write_to));
  return make_error(path + ": unknown output format '" + ext + "' (known: .safetensors)");
}

Status convert_checkpoint(const ConvertCommand& c, std::FILE* progress) {
  bool to_dtype = c.dtype != "keep";
  DType target = DType::BF16;
  if (c.dtype == "f32")
    target = DType::F32;
  else if (c.dtype != "bf16" && c.dtype != "keep")
    return make_error("--dtype must be keep, bf16 or f32, got '" + c.dtype + "'");
  std::error_code same_ec;
  if (fs::equivalent(c.output, c.source, same_ec))
    return make_error(c.output + ": the output would overwrite the source");
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
