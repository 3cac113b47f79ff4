// `meshdit convert`: any checkpoint Checkpoint opens (a PyTorch .bin read without running its pickle, a
// safetensors file, a sharded index, a folder) written as one file of another format. The output format
// is chosen by the output's extension, through TensorSink: safetensors now; GGUF is meant to be one more sink.
#pragma once
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

struct ConvertCommand {
  std::string source;
  std::string output;
  std::string prefix;          // keep only tensors under it, removing it from their names
  std::string dtype = "keep";  // keep, bf16 or f32: the floating-point tensors' dtype in the output
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

// Converts; `progress` (may be null) gets one line per tensor. The output is written to OUTPUT.partial and
// renamed when complete, so a failed conversion leaves no truncated file behind.
Status convert_checkpoint(const ConvertCommand& c, std::FILE* progress);

// The CLI entry: prints the error and returns 1, or 0.
int run_convert(const ConvertCommand& c);

}  // namespace meshdit
