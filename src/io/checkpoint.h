// A checkpoint is a set of named tensors spread over one or more safetensors files: a single file, a
// sharded set described by *.safetensors.index.json, or a diffusers component folder holding either.
// Lookups return memory-mapped views; a missing tensor or a wrong shape is an error naming both.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace meshdit {

class Checkpoint {
 public:
  static Result<Checkpoint> open_file(const std::string& path);
  static Result<Checkpoint> open_index(const std::string& index_json);
  // A folder: the one *.safetensors.index.json it holds, else its *.safetensors files (all of them).
  static Result<Checkpoint> open_dir(const std::string& dir);
  // A file or a folder.
  static Result<Checkpoint> open(const std::string& path);

  bool has(const std::string& name) const { return where_.count(name) != 0; }
  std::vector<std::string> names() const;
  Result<Tensor> get(const std::string& name) const;
  // A weight: also checks the shape, and that the dtype is one the kernels take (F32, F16, BF16).
  Result<Tensor> get(const std::string& name, const Shape& expect) const;
  // Shape of a tensor without touching its data (for inferring configs from weights).
  Result<Shape> shape_of(const std::string& name) const;
  const std::string& origin() const { return origin_; }

 private:
  Status add_file(const std::string& path);
  std::string origin_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;
};

// model_index.json of a diffusers pipeline folder.
struct DiffusersFolder {
  std::string dir;
  std::string class_name;                                                    // e.g. "FluxPipeline"
  std::map<std::string, std::pair<std::string, std::string>> components;  // name -> (library, class)
  static Result<DiffusersFolder> open(const std::string& dir);
  std::string path(const std::string& component) const { return dir + "/" + component; }
};

bool path_exists(const std::string& p);
bool is_directory(const std::string& p);

}  // namespace meshdit
