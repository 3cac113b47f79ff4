#include "pipelines/pipeline.h"

#include <mutex>

#include "io/checkpoint.h"
#include "pipelines/motif.h"  // is_motif_folder: Motif-Image folders have no model_index.json

namespace meshdit {

// Each pipeline file defines its entry; naming them here is what links them into a program. A static
// library contributes only the object files something references, so a self-registering static object in
// flux.cpp would silently vanish from the CLI.
PipelineEntry flux_pipeline_entry();
PipelineEntry sd3_pipeline_entry();
PipelineEntry qwenimage_pipeline_entry();
PipelineEntry wan_pipeline_entry();
PipelineEntry mochi_pipeline_entry();
PipelineEntry motif_pipeline_entry();

namespace {

std::map<std::string, PipelineEntry>& registry() {
  static std::map<std::string, PipelineEntry> r;
  static std::once_flag builtins;
  std::call_once(builtins, [] {
    for (PipelineEntry e : {flux_pipeline_entry(), sd3_pipeline_entry(), qwenimage_pipeline_entry(),
                            wan_pipeline_entry(), mochi_pipeline_entry(), motif_pipeline_entry()})
      r[e.class_name] = std::move(e);
  });
  return r;
}

}  // namespace

void register_pipeline(PipelineEntry entry) {
  auto& r = registry();
  r[entry.class_name] = std::move(entry);
}

std::vector<std::string> pipeline_classes() {
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

Result<const PipelineEntry*> find_pipeline(const std::string& class_name) {
  const auto& r = registry();
  if (auto it = r.find(class_name); it != r.end()) return &it->second;
  std::string list;
  for (const auto& name : pipeline_classes()) list += (list.empty() ? "" : ", ") + name;
  return make_error("pipeline class '" + class_name + "' is not supported (supported: " + list + ")");
}

Result<const PipelineEntry*> pipeline_for_folder(const std::string& dir) {
  // Motif-Image ships no model_index.json (no diffusers class exists): its folder is recognised by its layout.
  if (is_motif_folder(dir)) return find_pipeline("MotifImagePipeline");
  MD_TRY(DiffusersFolder folder, DiffusersFolder::open(dir));
  auto entry = find_pipeline(folder.class_name);
  if (!entry.ok()) return entry.error().context(dir + "/model_index.json");
  return entry;
}

}  // namespace meshdit
