// Feeds arbitrary bytes to the GGUF parser. A file it accepts must satisfy what the loader relies on: every
// tensor's bytes inside the file, its byte count what its type and dims need, its shape (orig_shape included) the
// stored element count; and dequantizing it (as Checkpoint does) reads only those bytes.
#include <cstdint>
#include <cstring>
#include <vector>

#include "backend/cpu/quant.h"
#include "io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = meshdit::parse_gguf(data, size, "fuzz.gguf");
  if (!r.ok()) return 0;
  const meshdit::GgufFile& g = r.value();
  for (const auto& t : g.tensors) {
    if (g.data_offset > size || t.offset > size - g.data_offset || t.bytes > size - g.data_offset - t.offset)
      __builtin_trap();
    const int64_t n = meshdit::shape_numel(t.stored);
    if (n <= 0 || meshdit::shape_numel(t.shape) != n) __builtin_trap();
    if (t.stored.back() % meshdit::quant_block_size(t.type) != 0) __builtin_trap();
    if (t.bytes != meshdit::quant_row_bytes(t.type, n)) __builtin_trap();
    if (t.offset % g.alignment != 0) __builtin_trap();
    // Copies the tensor's bytes exactly (AddressSanitizer checks the bounds), then dequantizes small float and
    // block tensors from the copy, as SafetensorsFile::get does from the mapping.
    std::vector<uint8_t> copy(t.bytes);
    if (t.bytes) std::memcpy(copy.data(), data + g.data_offset + t.offset, copy.size());
    const bool readable = meshdit::quant_is_block(t.type) || t.type == meshdit::QuantType::F32 ||
                          t.type == meshdit::QuantType::F16 || t.type == meshdit::QuantType::BF16;
    if (readable && n <= (1 << 16)) {
      std::vector<float> out(static_cast<size_t>(n));
      meshdit::dequantize_row(t.type, copy.data(), out.data(), n);
    }
  }
  auto h = meshdit::gguf_to_header(g, "fuzz.gguf");
  if (h.ok())
    for (const auto& t : h->tensors)
      if (t.end < t.begin || t.end > size - h->data_offset) __builtin_trap();
  return 0;
}
