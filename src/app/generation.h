// What `meshdit generate` and `meshdit serve` share: finding and loading a pipeline on a mesh, the built-in
// model's defaults, and the PNGs with the generation's parameters as text chunks. generate runs one
// generation and exits; serve loads once and runs many.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "io/png.h"
#include "parallel/mesh.h"
#include "pipelines/pipeline.h"

namespace meshdit {

// A pipeline loaded on this rank's share of a mesh.
struct LoadedPipeline {
  std::string model;        // the folder it came from (the built-in model's resolved)
  bool builtin = false;     // models/tiny-shapes, taken when no folder was named
  std::string class_name;   // model_index.json's _class_name
  std::string transformer;  // LoadOptions::transformer_file; "" = the folder's
  std::unique_ptr<Pipeline> pipeline;
  Mesh mesh = Mesh::single();
};

// Looks `model` ("" = the built-in model) up in the pipeline registry, configures the mesh for a generation
// like `shape_options` (the traits' sizes decide the automatic parallel config) and loads every rank's shards.
Result<LoadedPipeline> load_pipeline(const std::string& model, const MeshShape& shape, const std::string& parallel,
                                     const GenerateOptions& shape_options, const LoadOptions& from);

// The built-in model was trained at 128 x 128 with 20 steps: its unset size and steps get those (before the
// pipeline's own defaults, which are Flux.1-dev's).
GenerateOptions with_builtin_defaults(GenerateOptions o, bool builtin);

// The text chunks of image `index` of a generation with (defaulted) options `o`: the software, prompt,
// model, seed, batch index, steps, guidance, size, negative prompt and cache when used, then `extra`.
PngText png_parameters(const GenerateOptions& o, const std::string& model, int64_t index, const PngText& extra = {});

// The generated images [B, H, W, 3] in [0, 1] as PNG files' bytes, each with png_parameters.
Result<std::vector<std::vector<uint8_t>>> encode_pngs(const Tensor& images, const GenerateOptions& o,
                                                      const std::string& model, const PngText& extra = {});

}  // namespace meshdit
