#include "app/generation.h"

#include <algorithm>

#include "app/device_option.h"
#include "app/runners.h"

namespace meshdit {

Result<LoadedPipeline> load_pipeline(const std::string& model, const MeshShape& shape, const std::string& parallel,
                                     const GenerateOptions& shape_options, const LoadOptions& from) {
  LoadedPipeline lp;
  lp.builtin = model.empty();
  lp.model = lp.builtin ? builtin_model_dir() : model;
  lp.transformer = from.transformer_file;
  MD_TRY(const PipelineEntry* entry, pipeline_for_folder(lp.model));
  lp.class_name = entry->class_name;
  if (from.device != Device::CPU) {
    if (!entry->runs_on_device)
      return make_error(lp.model + ": " + entry->class_name + " does not place its components on " +
                        device_name(from.device) + " yet; run it without --device");
    MD_RETURN_IF_ERROR(require_device(from.device));
    if (shape.size() > 1)
      return make_error(std::string("--device ") + device_name(from.device) +
                        ": generation on a mesh runs on CPU ranks (the NCCL communicator is not wired to pipelines)");
  }
  MD_TRY(ModelTraits traits, entry->traits(lp.model, shape_options, from));
  MD_TRY(lp.mesh, make_mesh(shape, parallel, traits));
  MD_TRY(lp.pipeline, entry->load(lp.model, lp.mesh, from));
  return lp;
}

GenerateOptions with_builtin_defaults(GenerateOptions o, bool builtin) {
  if (!builtin) return o;
  if (o.height == 0) o.height = 128;
  if (o.width == 0) o.width = 128;
  if (o.steps == 0) o.steps = 20;
  return o;
}

PngText png_parameters(const GenerateOptions& o, const std::string& model, int64_t index, const PngText& extra) {
  const size_t prompt_index = size_t(index / std::max<int64_t>(1, o.num_images_per_prompt));
  PngText text = {{"Software", "meshdit"},
                  {"prompt", prompt_index < o.prompt.size() ? o.prompt[prompt_index] : ""},
                  {"model", model},
                  {"seed", std::to_string(o.seed)},
                  {"batch_index", std::to_string(index)},
                  {"steps", std::to_string(o.steps)}};
  if (o.guidance_scale) text.push_back({"guidance_scale", std::to_string(*o.guidance_scale)});
  if (o.guidance_scale_2) text.push_back({"guidance_scale_2", std::to_string(*o.guidance_scale_2)});
  text.push_back({"width", std::to_string(o.width)});
  text.push_back({"height", std::to_string(o.height)});
  if (prompt_index < o.negative_prompt.size()) text.push_back({"negative_prompt", o.negative_prompt[prompt_index]});
  text.insert(text.end(), extra.begin(), extra.end());
  if (o.cache.enabled()) text.push_back({"cache", cache_options_str(o.cache)});
  return text;
}

Result<std::vector<std::vector<uint8_t>>> encode_pngs(const Tensor& images, const GenerateOptions& o,
                                                      const std::string& model, const PngText& extra) {
  std::vector<std::vector<uint8_t>> out;
  for (int64_t b = 0; b < images.size(0); ++b) {
    const Tensor im = images.select(0, b);
    const std::vector<uint8_t> rgb = to_rgb8(im);
    MD_TRY(std::vector<uint8_t> png,
           encode_png(rgb.data(), int(im.size(1)), int(im.size(0)), png_parameters(o, model, b, extra)));
    out.push_back(std::move(png));
  }
  return out;
}

}  // namespace meshdit
