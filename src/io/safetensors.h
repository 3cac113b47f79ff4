// safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
// then the raw data. Files are memory-mapped read-only; a Tensor from get() is a view into the mapping, so
// a checkpoint is never copied as a whole. Every field of the header is validated before use.
#pragma once
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "backend/cpu/quant.h"
#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;  // byte offsets into the data section
  // A GGUF tensor's ggml type as stored. A block type (Q8_0, Q4_K, ...) is dequantized to `dtype` by get().
  std::optional<QuantType> ggml_type;
  bool quantized() const { return ggml_type && quant_is_block(*ggml_type); }
  // An FP8 safetensors tensor (F8_E4M3, torch's float8_e4m3fn, or F8_E5M2), one byte a value: get() decodes it to
  // `dtype` (BF16), times its scale when the file has one (see SafetensorsFile).
  enum class Fp8 : uint8_t { None, E4M3, E5M2 };
  Fp8 fp8 = Fp8::None;
  int scale_index = -1;  // the tensor in the header holding its weight scale (one value, or one per row)
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in data order
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + header length
};

// Parses and validates a whole file image (header + data). `what` names the file in messages.
Result<SafetensorsHeader> parse_safetensors(const uint8_t* bytes, uint64_t size, const std::string& what);

// A whole file memory-mapped read-only; tensors viewing it keep it alive.
class MappedFile {
 public:
  ~MappedFile();
  static Result<std::shared_ptr<MappedFile>> open(const std::string& path);
  const uint8_t* data() const { return static_cast<const uint8_t*>(data_); }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

class SafetensorsFile {
 public:
  static Result<std::shared_ptr<SafetensorsFile>> open(const std::string& path);
  // Tensors another reader located in `map` (a PyTorch zip checkpoint: io/torch_checkpoint.h), already
  // validated against the mapping: each at bytes [data_offset + begin, data_offset + end). Spans may overlap
  // (tensors sharing a storage).
  static std::shared_ptr<SafetensorsFile> from_header(const std::string& path, std::shared_ptr<MappedFile> map,
                                                      SafetensorsHeader header);
  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  // An FP8 weight's scale or marker, not a tensor of its own (header() still lists it).
  bool hidden(const std::string& name) const { return hidden_.count(name) != 0; }
  std::vector<std::string> names() const;
  // A view into the mapping; a block-quantized GGUF tensor, or an FP8 one, is decoded into a new tensor of its dtype.
  //
  // FP8 checkpoints as released carry their scales beside the weights: `X.weight` in F8_E4M3 with `X.weight_scale`
  // or `X.scale_weight` (one float, or one per output row), and optionally `X.input_scale` / `X.scale_input` (the
  // activations' scale for an FP8 product) and a `scaled_fp8` marker (ComfyUI). On opening, the scales are tied to
  // their weights and hidden with the marker, so the file lists the same tensors as its bf16 original: get() gives
  // the weight times its scale, and the input scales (meaningful only to FP8 products, which the CPU does not run)
  // are not read.
  Result<Tensor> get(const std::string& name) const;
  // A block-quantized GGUF tensor as stored, without dequantizing: its rows (every dim but the last) as bytes,
  // U8 [rows, bytes per row], a view into the mapping. An error for a tensor that is not block-quantized.
  Result<Tensor> get_blocks(const std::string& name) const;

 private:
  // A plain (float or integer) tensor in place: a view into the mapping, or a copy when misaligned.
  Tensor view(const TensorInfo& info) const;
  Result<Tensor> dequantize(size_t index, const uint8_t* p) const;
  Result<std::vector<float>> fp8_scale(const TensorInfo& info) const;
  void tie_fp8_scales();
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
  std::set<std::string> hidden_;  // FP8 scales and markers, read through their weights only
  // Dequantized tensors while anything still holds one: the aliases of a fused tensor (q, k, v as row ranges)
  // share one copy instead of each keeping a whole one alive.
  mutable std::mutex dequant_mu_;
  mutable std::map<size_t, std::weak_ptr<void>> dequantized_;
};

// Writes a safetensors file one tensor at a time: the header (every name, dtype and shape, in order) first,
// then each tensor's data as it is given, so a converter holds one tensor in memory at a time.
class SafetensorsWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
  };
  static Result<std::unique_ptr<SafetensorsWriter>> create(const std::string& path, const std::vector<Entry>& entries,
                                                           const std::map<std::string, std::string>& metadata = {});
  // The next entry's data: a tensor of its dtype and shape (any strides).
  Status write(const Tensor& t);
  // Checks that every entry was written and flushes.
  Status finish();

 private:
  std::string path_;
  std::vector<Entry> entries_;
  size_t next_ = 0;
  std::ofstream out_;
};

// Writes tensors (any dtype, contiguous or not) to a safetensors file.
Status save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace meshdit
