// safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
// then the raw data. Files are memory-mapped read-only; a Tensor from get() is a view into the mapping, so
// a checkpoint is never copied as a whole. Every field of the header is validated before use.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;  // byte offsets into the data section
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in data order
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + header length
};

// Parses and validates a whole file image (header + data). `what` names the file in messages.
Result<SafetensorsHeader> parse_safetensors(const uint8_t* bytes, uint64_t size, const std::string& what);

class MappedFile;

class SafetensorsFile {
 public:
  static Result<std::shared_ptr<SafetensorsFile>> open(const std::string& path);
  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  std::vector<std::string> names() const;
  Result<Tensor> get(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// Writes tensors (any dtype, contiguous or not) to a safetensors file.
Status save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace meshdit
