// GGUF (ggml's file format, versions 2 and 3): "GGUF", a version, the tensor and metadata counts, the metadata
// as typed key/value pairs, one info record per tensor (name, dims innermost first, ggml type, offset), then the
// data section at the next multiple of general.alignment (default 32), each tensor at an aligned offset in it.
// Diffusion checkpoints come in two flavours: city96's ComfyUI-GGUF (general.architecture "flux", "sd3", "wan",
// ... and the original BFL/Stability/Wan tensor names; 5-D tensors stored with fewer dims and their shape in
// "comfy.gguf.orig_shape.<name>") and stable-diffusion.cpp's (no metadata, names under "model.diffusion_model.").
//
// Every field is validated before use, so a truncated or crafted file is an error naming what is wrong, never a
// read outside the mapping. Checkpoint (io/checkpoint.h) opens a GGUF file wherever it opens a safetensors one:
// float tensors are views into the mapping, block-quantized ones are dequantized when taken.
#pragma once
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/quant.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace meshdit {

// A metadata value. Integers (and bools) are held as int64 (a u64 above INT64_MAX is kept as its bits), floats as
// double; an array holds elements of one type.
struct GgufValue {
  enum class Type : uint32_t { U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64 };
  Type type = Type::U32;
  Type elem = Type::U32;  // arrays: the elements' type
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;

  static GgufValue string(std::string s);
  static GgufValue u32(uint32_t v);
  static GgufValue i32_array(const std::vector<int64_t>& v);
  bool is_string() const { return type == Type::String; }
  bool is_integer_array() const;
};
const char* gguf_type_name(GgufValue::Type t);

struct GgufTensor {
  std::string name;
  QuantType type = QuantType::F32;
  Shape shape;          // outermost first (ours); from orig_shape when the file gives one
  Shape stored;         // the dims as stored, reversed to outermost first
  uint64_t offset = 0;  // into the data section
  uint64_t bytes = 0;
};

struct GgufFile {
  uint32_t version = 3;
  uint64_t alignment = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata;  // in file order
  std::vector<GgufTensor> tensors;                          // in file order
  uint64_t data_offset = 0;                                 // of the data section, from the file's start
  const GgufValue* find(const std::string& key) const;
  // A string value, or "" when absent or not a string.
  std::string string_value(const std::string& key) const;
};

// Whether these are a GGUF file's first bytes.
bool is_gguf_file(const uint8_t* bytes, uint64_t size);

// Parses and validates a whole file image. `what` names the file in messages.
Result<GgufFile> parse_gguf(const uint8_t* bytes, uint64_t size, const std::string& what);

// The tensors as the checkpoint layer reads them: float and integer types as stored (I8 and I16 are refused),
// block types with their ggml type and the dtype they dequantize to (BF16 for weights of 2 or more dims, F32 for
// vectors). String metadata values become the header's metadata ("general.architecture").
Result<SafetensorsHeader> gguf_to_header(const GgufFile& g, const std::string& what);

// Writes a GGUF v3 file one tensor at a time: the header (metadata, then every tensor's info, offsets computed
// from the declared types and shapes) first, then each tensor's encoded bytes as given. A tensor of more than 4
// dims is stored with its innermost dims merged and its shape in "comfy.gguf.orig_shape.<name>", as city96's
// tools do.
class GgufWriter {
 public:
  struct Entry {
    std::string name;
    QuantType type;
    Shape shape;  // outermost first
  };
  static Result<std::unique_ptr<GgufWriter>> create(const std::string& path,
                                                    std::vector<std::pair<std::string, GgufValue>> metadata,
                                                    const std::vector<Entry>& entries, uint64_t alignment = 32);
  // The bytes the next entry takes (quant_row_bytes of its element count).
  uint64_t next_bytes() const;
  // The next entry's data, already encoded in its type.
  Status write(const void* data, uint64_t bytes);
  // The next entry from a float tensor of its shape (any float dtype, any strides), encoded here.
  Status write(const Tensor& t);
  Status finish();

 private:
  std::string path_;
  std::vector<Entry> entries_;
  uint64_t alignment_ = 32;
  size_t next_ = 0;
  uint64_t written_ = 0;  // bytes of the data section so far
  std::ofstream out_;
};

}  // namespace meshdit
