// `meshdit convert`: any checkpoint Checkpoint opens (a PyTorch .bin read without running its pickle, a
// safetensors or GGUF file, a sharded index, a folder) written as one file of another format, chosen by the
// output's extension: .safetensors through TensorSink (every tensor, names as stored), or .gguf: a transformer
// (a diffusers pipeline folder, its transformer folder or a single file in any registered layout) written as
// city96's ComfyUI-GGUF tools write one: general.architecture set, tensors named as the model's single-file
// layout names them (BFL's for Flux, Stability's for SD3; diffusers names for a model without one), weights
// quantized to --type except what those tools keep in float.
#pragma once
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/quant.h"
#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

struct ConvertCommand {
  std::string source;
  std::string output;
  std::string prefix;          // keep only tensors under it, removing it from their names
  std::string dtype = "keep";  // keep, bf16 or f32: the floating-point tensors' dtype in the output
  std::string type;            // GGUF output: the weights' ggml type ("q8_0", "q4_k", ...); "" = as stored
  bool progress = true;
};

// A destination format: told every tensor's name, dtype and shape up front, then given the tensors in that
// order, one at a time.
class TensorSink {
 public:
  struct Spec {
    std::string name;
    DType dtype;
    Shape shape;
  };
  virtual ~TensorSink() = default;
  virtual Status begin(const std::vector<Spec>& specs) = 0;
  virtual Status add(const Tensor& t) = 0;
  virtual Status finish() = 0;
};

// The sink for the format of `path`, by its extension (.safetensors), writing to `write_to`; an unknown
// extension is an error naming the known ones.
Result<std::unique_ptr<TensorSink>> sink_for(const std::string& path, const std::string& write_to);

// The ggml type a GGUF output's weights can be written in ("q8_0", "q4_k", "bf16", ...: llama.cpp's file types),
// or an error quoting `name` and listing them.
Result<QuantType> gguf_type_named(const std::string& name);

// Whether city96's tools keep a tensor (its stored name and shape) in float rather than quantizing it to `type`:
// vectors and anything of at most 1024 values, names with one of the model's `keep` parts at a name component's
// start (TransformerArch::gguf_keep_float: embedders, final layer, Wan's modulation), and rows that are not whole
// blocks of `type`.
bool gguf_keeps_float(const std::vector<std::string>& keep, const std::string& name, const Shape& shape,
                      QuantType type);

// Converts; `progress` (may be null) gets one line per tensor. The output is written to OUTPUT.partial and
// renamed when complete, so a failed conversion leaves no truncated file behind.
Status convert_checkpoint(const ConvertCommand& c, std::FILE* progress);

// The CLI entry: prints the error and returns 1, or 0.
int run_convert(const ConvertCommand& c);

}  // namespace meshdit
