// Check runners for whole pipelines: the float64 reference cases (pipe_*) and the built-in model's
// end-to-end case (tiny_shapes_pipeline).
#include <unistd.h>

#include <filesystem>

#include "app/check.h"
#include "app/runners.h"
#include "core/torch_rng.h"
#include "io/checkpoint.h"
#include "pipelines/flux.h"
#include "pipelines/pipeline.h"

namespace meshdit {

std::string builtin_model_dir() {
  if (const char* e = std::getenv("MESHDIT_BUILTIN_MODEL")) return e;
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) {
    buf[n] = 0;
    const auto p = std::filesystem::path(buf).parent_path().parent_path() / "models" / "tiny-shapes";
    if (is_directory(p.string())) return p.string();
  }
  return std::string(MESHDIT_SOURCE_DIR) + "/models/tiny-shapes";
}

namespace {

std::vector<std::string> strings(const Json& j) {
  std::vector<std::string> v;
  if (j.is_string()) v.push_back(j.get<std::string>());
  if (j.is_array())
    for (const auto& e : j) v.push_back(e.get<std::string>());
  return v;
}

// non_tensor_args -> GenerateOptions. Every key must mean something here: an argument silently dropped
// would compare a different call with the reference.
Result<GenerateOptions> options_from_args(const CaseContext& c) {
  const Json& a = c.meta["non_tensor_args"];
  GenerateOptions o;
  for (auto it = a.begin(); it != a.end(); ++it) {
    const std::string& k = it.key();
    const Json& v = it.value();
    if (k == "prompt") {
      o.prompt = strings(v);
    } else if (k == "negative_prompt") {
      o.negative_prompt = strings(v);
    } else if (k == "num_images_per_prompt") {
      o.num_images_per_prompt = v.get<int64_t>();
    } else if (k == "height") {
      o.height = v.get<int64_t>();
    } else if (k == "width") {
      o.width = v.get<int64_t>();
    } else if (k == "num_frames") {
      o.num_frames = v.get<int64_t>();
    } else if (k == "num_inference_steps") {
      o.steps = v.get<int64_t>();
    } else if (k == "guidance_scale") {
      o.guidance_scale = v.get<float>();
    } else if (k == "guidance_scale_2") {
      o.guidance_scale_2 = v.get<float>();
    } else if (k == "guidance_rescale") {
      o.guidance_rescale = v.get<float>();
    } else if (k == "true_cfg_scale") {
      o.true_cfg_scale = v.get<float>();
    } else if (k == "max_sequence_length") {
      o.max_sequence_length = v.get<int64_t>();
    } else if (k == "output_type") {
      if (v != "np") return make_error(c.dir + "/meta.json: output_type " + v.dump() + " (only \"np\" is compared)");
    } else if (k == "latents") {
      MD_TRY(o.latents, c.input("latents"));
    } else {
      return make_error(c.dir + "/meta.json: non_tensor_args \"" + k + "\" is not a generate option");
    }
  }
  return o;
}

// `check --device`: the components on the case's device when the pipeline places them (else on the host, and the
// report says so).
LoadOptions placed(const CaseContext& c, const PipelineEntry& entry) {
  LoadOptions from;
  if (entry.runs_on_device) {
    from.device = c.device;
    c.ran_on_device = c.device != Device::CPU;
  }
  return from;
}

// diffusers.<PipelineClass>: any registered pipeline on its float64 reference case, every intermediate the
// pipeline records compared.
Result<TensorMap> run_pipeline_case(const CaseContext& c, const std::string& class_name) {
  MD_TRY(const PipelineEntry* entry, find_pipeline(class_name));
  MD_TRY(GenerateOptions o, options_from_args(c));
  MD_TRY(ModelTraits traits, entry->traits(c.dir, o, {}));
  MD_TRY(const Mesh* mesh, c.mesh(traits));
  MD_TRY(std::unique_ptr<Pipeline> pipe, entry->load(c.dir, *mesh, placed(c, *entry)));
  // The reference names its final output after what the pipeline makes.
  const std::string result = c.meta["outputs"].contains("video") ? "video" : "image";
  TensorMap out;
  // Recorded intermediates are whole tensors on every rank, except under cfg=2 (each rank runs half).
  const bool record = mesh->config().cfg == 1;
  MD_TRY(out[result], pipe->generate(o, record ? &out : nullptr));
  if (!record) {
    c.skip_outputs([result](const std::string& n) { return n != result; },
                   "each CFG rank runs half of the transformer calls");
  }
  return out;
}

// tiny_shapes_pipeline: the README states the tolerance (max_abs 1e-2 on images: the reference ran in
// float32 on a GPU with TF32 convolutions) and that `latents` is torch.randn(..., seed 42).
Result<TensorMap> run_builtin_case(const CaseContext& c) {
  const std::string model = c.meta.value("model", std::string("tiny-shapes"));
  if (model != "tiny-shapes") return make_error(c.dir + "/meta.json: unknown model '" + model + "'");
  MD_TRY(Tensor ref_latents, c.input("latents"));
  GenerateOptions o;
  o.prompt = strings(c.meta["prompts"]);
  o.height = c.meta["height"].get<int64_t>();
  o.width = c.meta["width"].get<int64_t>();
  o.steps = c.meta["num_inference_steps"].get<int64_t>();
  o.guidance_scale = c.meta["guidance_scale"].get<float>();
  o.max_sequence_length = c.meta["max_sequence_length"].get<int64_t>();
  MD_TRY(const PipelineEntry* entry, pipeline_for_folder(builtin_model_dir()));
  MD_TRY(ModelTraits traits, entry->traits(builtin_model_dir(), o, {}));
  MD_TRY(const Mesh* mesh, c.mesh(traits));
  MD_TRY(std::unique_ptr<Pipeline> pipe, entry->load(builtin_model_dir(), *mesh, placed(c, *entry)));
  TensorMap out;
  out["latents"] = torch_randn(ref_latents.shape(), 42);
  // The built-in model is a Flux model: the case gives its noise unpacked.
  o.latents = flux_pack_latents(out["latents"]);
  MD_TRY(out["images"], pipe->generate(o));
  c.tolerances["latents"] = Tolerance{0, 0, true};
  c.tolerances["images"] = Tolerance{1e-2, 1e-2, false};
  return out;
}

}  // namespace

void register_pipeline_runners() {
  for (const std::string& cls : pipeline_classes())
    register_case_runner("diffusers." + cls, [cls](const CaseContext& c) { return run_pipeline_case(c, cls); });
  register_case_runner("FluxPipeline", run_builtin_case);
}

}  // namespace meshdit
