#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/png.h"
#include "parallel/comm.h"

namespace meshdit::test {

// ../shared/fixtures beside the checkout when it exists (CI has it), else the copy under tests/fixtures.
std::string fixtures_dir();
std::string shared_fixtures_dir();  // "" when absent
std::string repo_dir();
std::vector<std::string> case_names(const std::string& dir);
Tensor random_tensor(const Shape& shape, unsigned seed, float scale = 1.0f);
// Tensor `tensor` of file `file` (inputs.safetensors, outputs.safetensors) of fixture case `case_name`, as
// contiguous float32; a missing file or tensor aborts naming it (a broken checkout, not a test result).
Tensor fixture_tensor(const std::string& case_name, const std::string& file, const std::string& tensor);
// |got - ref| / |ref| over all elements (L2 norms, summed in float64): how check compares outputs.
double rel_l2(const Tensor& got, const Tensor& ref);
// Rank `rank` of a group of `size` that answers only rank() and size(): for the geometry of a split on one
// process (a ShapeOnlyComm): any collective on it aborts.
std::unique_ptr<Communicator> geometry_comm(int rank, int size);

// A safetensors file with the given BF16 shapes whose data section is a hole: the header is real, the file has its
// full size, and no data is written (a sparse file, so multi-GB models cost nothing on disk). Only the header and
// the few tensors a test reads are ever touched. Returns the path.
std::string write_header_only(const std::filesystem::path& p, const std::vector<std::pair<std::string, Shape>>& shapes);
// Standard base64 (as the serve API's b64_json / images fields carry files) back to bytes; other characters
// (padding, line breaks) are skipped.
std::vector<uint8_t> unbase64(const std::string& s);
// The 8-bit RGB pixels of PNG bytes (through a scratch file: read_png reads files); a PNG that does not decode
// fails the running test and gives no pixels. `text`, when given, receives its text chunks.
std::vector<uint8_t> png_pixels(const std::vector<uint8_t>& png, int* w = nullptr, int* h = nullptr,
                                PngText* text = nullptr);
// Runs a shell command, returns its exit status and captures stdout+stderr.
int run_command(const std::string& cmd, std::string* output);
// A fresh, empty folder under the system temp dir whose name carries this process's id: ctest runs test
// processes in parallel, so a fixed name would let one test delete another's files.
std::filesystem::path scratch_dir(const std::string& name);

// A scratch_dir named after the running test (suite, name, and `tag`), removed when this goes out of scope.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  // Writes `text` to the file `name` in the folder.
  void write(const std::string& name, const std::string& text) const;

 private:
  std::filesystem::path path_;
};

}  // namespace meshdit::test
