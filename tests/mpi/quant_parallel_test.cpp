// A GGUF transformer on a mesh: its weights stay block-quantized on every rank, tensor parallelism splits them on
// whole rows (column-parallel linears) and whole blocks (row-parallel ones), and the images are those of one
// device running the same file. A split that would cut a block is refused on every rank, naming the tensor.
#include <gtest/gtest.h>

#include "../test_util.h"
#include "app/convert_cmd.h"
#include "app/runners.h"
#include "mesh_generate.h"

using namespace meshdit;

namespace {

// The built-in model's transformer as a city96-style GGUF of `type`, in a folder of this rank's own.
std::string builtin_as_gguf(const test::TempDir& dir, const std::string& type) {
  ConvertCommand c;
  c.source = builtin_model_dir();
  c.output = dir.str() + "/tiny-" + type + ".gguf";
  c.type = type;
  c.progress = false;
  const Status st = convert_checkpoint(c, nullptr);
  EXPECT_TRUE(st.ok()) << st.error().message;
  return c.output;
}

GenerateOptions options() {
  GenerateOptions o;
  o.prompt = {"a large red circle in the center on a blue background"};
  o.height = o.width = 64;
  o.steps = 3;
  o.seed = 7;
  return o;
}

void expect_close(const Tensor& ref, const Tensor& got, const std::string& what) {
  ASSERT_TRUE(ref.defined() && got.defined()) << what;
  ASSERT_EQ(ref.shape(), got.shape()) << what;
  EXPECT_LT(test::rel_l2(got, ref), 1e-4) << what;  // the same weights; only the summation order differs
}

// Q8_0 (blocks of 32): the tiny model's 128-wide inputs split on blocks for every tp the mesh allows.
TEST(QuantizedOnMesh, Q8_0TensorParallelIsOneDevicesImage) {
  register_builtin_runners();
  test::TempDir dir("quant-mesh");
  LoadOptions load;
  load.transformer_file = builtin_as_gguf(dir, "q8_0");
  const Tensor ref = test::generate_on_mesh(builtin_model_dir(), options(), nullptr, load);
  for (const char* mode :
       test::world_size() == 4 ? std::vector<const char*>{"tp=4", "tp=2,sp=2"} : std::vector<const char*>{"tp=2"})
    expect_close(ref, test::generate_on_mesh(builtin_model_dir(), options(), mode, load),
                 std::string("q8_0 --parallel ") + mode);
}

// Q4_K (blocks of 256): only the 512-wide feed-forward inputs are quantized (the 128-wide rows stay float, as
// convert leaves rows that are not whole blocks); tp=2 splits them at 256, tp=4 would cut at 128.
TEST(QuantizedOnMesh, Q4_KSplitsOnBlocksOrNamesTheCut) {
  register_builtin_runners();
  test::TempDir dir("quant-mesh");
  LoadOptions load;
  load.transformer_file = builtin_as_gguf(dir, "q4_k");
  if (test::world_size() == 2) {
    const Tensor ref = test::generate_on_mesh(builtin_model_dir(), options(), nullptr, load);
    expect_close(ref, test::generate_on_mesh(builtin_model_dir(), options(), "tp=2", load), "q4_k --parallel tp=2");
    return;
  }
  std::string error;
  const Tensor none = test::generate_on_mesh(builtin_model_dir(), options(), "tp=4", load, &error);
  EXPECT_FALSE(none.defined());
  EXPECT_NE(error.find("is stored as Q4_K, in blocks of 256 columns"), std::string::npos) << error;
  EXPECT_NE(error.find("not on a block boundary"), std::string::npos) << error;
}

}  // namespace
