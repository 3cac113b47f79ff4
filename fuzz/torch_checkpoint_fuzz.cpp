// Feeds arbitrary bytes to the PyTorch checkpoint reader. The first byte picks what the rest is: even, a
// whole file (zip parsing); odd, a data.pkl that this harness wraps in a valid zip with a few storage
// records, so mutations reach the unpickler instead of stopping at the zip's CRC. A file it accepts must
// satisfy what Checkpoint relies on: every tensor inside the file, its span equal to its shape's size.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../tests/io/torch_checkpoint_writer.h"
#include "io/torch_checkpoint.h"

namespace {

void check(const uint8_t* data, size_t size) {
  auto r = meshdit::parse_torch_checkpoint(data, size, "fuzz.bin");
  if (!r.ok()) return;
  for (const auto& t : r.value().tensors) {
    if (t.begin > t.end || t.end > size) __builtin_trap();
    unsigned __int128 bytes = meshdit::dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) __builtin_trap();
      bytes *= uint64_t(d);
      if (bytes > ((unsigned __int128)1 << 64)) bytes = (unsigned __int128)1 << 64;
    }
    if (bytes != t.end - t.begin) __builtin_trap();
    // Touch the tensor's bytes as the loader's view would (AddressSanitizer checks the bounds).
    std::vector<uint8_t> copy(t.end - t.begin);
    if (!copy.empty()) std::memcpy(copy.data(), data + t.begin, copy.size());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if ((data[0] & 1) == 0) {
    check(data + 1, size - 1);
    return 0;
  }
  const std::string pickle(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::string file = meshdit::test::write_torch_checkpoint(
      pickle, {{"0", std::string(24, '\1')}, {"1", std::string(16, '\2')}, {"2", std::string(2, '\3')}});
  // A copy of exactly the file's size, so reads past its end are caught.
  std::vector<uint8_t> buf(file.begin(), file.end());
  check(buf.data(), buf.size());
  return 0;
}
