#include "pipelines/components.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "backend/backend.h"
#include "core/memory_info.h"
#include "models/registry.h"

namespace meshdit {

Result<TransformerSource> open_transformer_file(const std::string& dir, const std::string& file) {
  MD_TRY(DiffusersFolder folder, DiffusersFolder::open(dir));
  const auto comp = folder.components.find("transformer");
  if (comp == folder.components.end())
    return make_error(dir + "/model_index.json: " + folder.class_name +
                      " has no transformer component to replace with " + file);
  const std::string& wanted_class = comp->second.second;
  const TransformerArch* wanted = find_transformer_arch(wanted_class);
  if (!wanted)
    return make_error(dir + "/model_index.json: transformer class '" + wanted_class +
                      "' is not a registered transformer, so " + file + " cannot stand in for it");
  TransformerSource t;
  t.file = file;
  std::string layout;
  MD_TRY(t.ck, open_transformer_checkpoint(file, &layout));
  const TransformerArch* arch = transformer_arch_of(t.ck, layout);
  if (!arch) return make_error(file + ": no registered transformer matches its tensors");
  MD_RETURN_IF_ERROR(check_gguf_architecture(t.ck, *arch, layout));
  if (arch != wanted)
    return make_error(file + ": a " + arch->name + " transformer (" + layout + " layout), but " + dir + " is a " +
                      folder.class_name + " whose transformer is " + wanted_class + " (" + wanted->name + ")");
  // A single file rarely has a config beside it; the folder's is the one made for its pipeline (inference cannot
  // recover every field, e.g. sample_size).
  const std::string beside = config_json_beside(file), folder_cfg = folder.path("transformer") + "/config.json";
  if (path_exists(beside)) {
    MD_TRY(t.config, arch->parse_config(beside));
  } else if (path_exists(folder_cfg)) {
    MD_TRY(t.config, arch->parse_config(folder_cfg));
  } else if (arch->infer_config) {
    auto inferred = arch->infer_config(t.ck);
    if (!inferred.ok())
      return inferred.error().context(file + ": no config.json beside it or in " + dir + "/transformer");
    t.config = std::move(*inferred);
  } else {
    return make_error(file + ": no config.json beside it or in " + dir + "/transformer, and a " + arch->name +
                      " config cannot be inferred from its tensors");
  }
  return t;
}

Status place_checked(Checkpoint& ck, Device dev, const std::string& what, bool denoiser) {
  if (dev != Device::CPU) {
    const Backend* b = find_backend(dev);
    if (b == nullptr) return make_error(what + ": no " + device_name(dev) + " backend in this process");
    const uint64_t need = ck.placed_bytes();
    const size_t have = b->free_memory ? b->free_memory() : 0;
    if (have > 0 && need > have) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "its weights take %.2f GiB on %s and %.2f GiB is free there",
                    double(need) / 1073741824.0, device_name(dev), double(have) / 1073741824.0);
      return make_error(what + ": " + buf +
                        " (nothing was copied; a smaller or quantized checkpoint, or a GPU with "
                        "more memory, is needed)");
    }
  }
  ck.place_on(dev);
  if (dev == Device::CPU) ck.copy_into_memory(denoiser && copy_weights_into_memory(ck.placed_bytes()));
  return ok_status();
}

bool copy_weights_into_memory(uint64_t weight_bytes) {
  const char* env = std::getenv("MESHDIT_WEIGHTS");
  const std::string mode = env ? env : "auto";
  if (mode == "map") return false;
  if (mode == "memory") return true;
  if (mode != "auto") {
    static bool said = false;
    if (!said) std::fprintf(stderr, "warning: MESHDIT_WEIGHTS=%s is not map, memory or auto: auto\n", mode.c_str());
    said = true;
  }
  // Ranks launched on one host (mpirun) share the file's pages through the page cache: a copy per rank would
  // multiply the memory of every weight they all hold (tensor-parallel shards are copies anyway).
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"})
    if (const char* n = std::getenv(v); n && std::atoi(n) > 1) return false;
  // Half of what can be had without swapping, so that activations, the text encoders that come and go and the
  // page cache's copy of the file keep room; above that the weights stay mapped (pageable) as before.
  return double(weight_bytes) <= 0.5 * available_memory_bytes();
}

Tensor repeat_rows(const Tensor& t, int64_t n) {
  if (n == 1) return t;
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < t.size(0); ++i)
    for (int64_t r = 0; r < n; ++r) parts.push_back(t.slice(0, i, i + 1));
  return concat(parts, 0);
}

Status validate_image_options(const GenerateOptions& o, const std::string& name, int64_t m, int64_t max_sequence) {
  MD_RETURN_IF_ERROR(validate_generation_options(o, m, max_sequence));
  // Options of other pipelines that this one's __call__ does not take: refused rather than ignored.
  if (o.num_frames) return make_error(name + " makes images: num_frames is not an option");
  if (o.guidance_scale_2) return make_error(name + " has one transformer: guidance_scale_2 is not an option");
  if (o.guidance_rescale != 0.0f) return make_error(name + " has no guidance_rescale");
  return ok_status();
}

Status validate_generation_options(const GenerateOptions& o, int64_t m, int64_t max_sequence) {
  if (o.prompt.empty()) return make_error("no prompt given");
  if (o.height <= 0 || o.width <= 0 || o.height % m || o.width % m)
    return make_error("width and height must be positive multiples of " + std::to_string(m) + " (got " +
                      std::to_string(o.width) + "x" + std::to_string(o.height) + ")");
  if (o.steps < 1) return make_error("steps must be at least 1");
  if (o.num_images_per_prompt < 1) return make_error("batch must be at least 1");
  if (o.max_sequence_length < 1 || o.max_sequence_length > max_sequence)
    return make_error("max_sequence_length must be in [1, " + std::to_string(max_sequence) + "]");
  if (!o.negative_prompt.empty() && o.negative_prompt.size() != o.prompt.size())
    return make_error("give one negative prompt per prompt");
  return ok_status();
}

Status validate_latents(const GenerateOptions& o, const Shape& expect, const std::string& layout) {
  if (!o.latents.defined() || o.latents.shape() == expect) return ok_status();
  return make_error("latents " + shape_str(o.latents.shape()) + " do not fit " + std::to_string(o.prompt.size()) +
                    " prompt(s) x " + std::to_string(o.num_images_per_prompt) + " image(s) per prompt at " +
                    std::to_string(o.width) + "x" + std::to_string(o.height) + ": expected " + shape_str(expect) +
                    " (" + layout + ")");
}

}  // namespace meshdit

namespace meshdit {

namespace {

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / double(1 << 30));
  return buf;
}

}  // namespace

double transformer_activation_bytes(const std::string& class_name, const std::any& config, const ParallelConfig& pc,
                                    int64_t N, int64_t L, int64_t b) {
  const TransformerArch* arch = find_transformer_arch(class_name);
  if (!arch || !arch->cost) return 0;
  RankShape r;
  r.pc = pc;
  r.N = N;
  r.L = L;
  r.n = (N + pc.sp - 1) / pc.sp;
  r.b = b;
  return double(arch->cost(config, r).act_elems) * 4.0;
}

Status check_video_memory(const GenerateOptions& o, int64_t tokens, const VideoMemoryNeed& need) {
  const double have = available_memory_bytes();
  if (have <= 0 || need.total() <= have) return ok_status();
  return make_error("a " + std::to_string(o.width) + "x" + std::to_string(o.height) + ", " +
                    std::to_string(o.num_frames) + "-frame video (" + std::to_string(tokens) +
                    " tokens a step) needs about " + gib(need.total()) + " on this rank (transformer activations " +
                    gib(need.transformer) + ", VAE decode " + gib(need.vae) + ", the video " + gib(need.video) +
                    "), and " + gib(have) +
                    " is available: generate fewer frames or a smaller size, or split it over a mesh "
                    "(mpirun with --mesh; sp divides the tokens)");
}

}  // namespace meshdit
