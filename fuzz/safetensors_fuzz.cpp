// Feeds arbitrary bytes to the safetensors parser. A file it accepts must satisfy what the loader relies
// on: every tensor inside the data section, its byte span equal to its shape's size, no two overlapping.
#include <cstdint>
#include <cstring>
#include <vector>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = meshdit::parse_safetensors(data, size, "fuzz.safetensors");
  if (!r.ok()) return 0;
  const meshdit::SafetensorsHeader& h = r.value();
  if (h.data_offset < 8 || h.data_offset > size) __builtin_trap();
  const uint64_t data_size = size - h.data_offset;
  uint64_t furthest = 0;
  for (const auto& t : h.tensors) {
    if (t.begin > t.end || t.end > data_size) __builtin_trap();
    // The size in 128 bits, saturated at 2^64, so a shape whose byte count wraps around 2^64 cannot pass
    // for a small one.
    const unsigned __int128 kCap = (unsigned __int128)1 << 64;
    unsigned __int128 bytes = meshdit::dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) __builtin_trap();
      bytes *= uint64_t(d);
      if (bytes > kCap) bytes = kCap;
    }
    if (bytes != t.end - t.begin) __builtin_trap();
    if (t.end == t.begin) continue;
    if (t.begin < furthest) __builtin_trap();  // tensors are sorted by offset and must not overlap
    furthest = t.end;
    // Touch the tensor's bytes as SafetensorsFile::get's view would (AddressSanitizer checks the bounds).
    std::vector<uint8_t> copy(t.end - t.begin);
    std::memcpy(copy.data(), data + h.data_offset + t.begin, copy.size());
  }
  return 0;
}
