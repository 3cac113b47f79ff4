// `meshdit convert`: a crafted PyTorch .bin converted to safetensors reads back tensor for tensor (bytes as
// stored, or cast by --dtype); errors leave no output behind.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "../io/torch_checkpoint_writer.h"
#include "../test_util.h"
#include "app/convert_cmd.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using namespace meshdit;
using test::Pickle;

namespace {

const std::vector<uint16_t> kA{0x3f80, 0x4000, 0x4040, 0xbf80, 0x0000, 0x3e00};  // bf16
const std::vector<float> kB{1.5f, -2.25f, 1.00390625f, 65504.f};
const std::vector<int64_t> kIds{3, -7};
const std::vector<uint16_t> kW{0x3c00, 0x4000, 0xc000};  // f16

std::string write_bin(const fs::path& dir) {
  Pickle p;
  p.proto(2).global("collections", "OrderedDict").binput(0).empty_tuple().reduce().binput(1).mark();
  p.str("dit.a").tensor("BFloat16Storage", "0", 6, 0, {2, 3}, {3, 1});
  p.str("dit.b").tensor("FloatStorage", "1", 4, 0, {4}, {1});
  p.str("dit.ids").tensor("LongStorage", "2", 2, 0, {2}, {1});
  p.str("vae.w").tensor("HalfStorage", "3", 3, 0, {3}, {1});
  p.op('u').stop();
  const std::string bytes = test::write_torch_checkpoint(
      p.bytes,
      {{"0", test::bytes_of(kA)}, {"1", test::bytes_of(kB)}, {"2", test::bytes_of(kIds)}, {"3", test::bytes_of(kW)}});
  const std::string path = (dir / "motif.bin").string();
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}

template <class T>
std::vector<T> values(const SafetensorsFile& f, const std::string& name, DType dtype, const Shape& shape) {
  auto t = f.get(name);
  EXPECT_TRUE(t.ok()) << name;
  if (!t.ok()) return {};
  EXPECT_EQ(t->dtype(), dtype) << name;
  EXPECT_EQ(t->shape(), shape) << name;
  std::vector<T> v(size_t(t->numel()));
  std::memcpy(v.data(), t->raw(), v.size() * sizeof(T));
  return v;
}

TEST(Convert, TorchBinToSafetensorsKeepsEveryTensorExactly) {
  test::TempDir dir;
  ConvertCommand c;
  c.source = write_bin(dir.path());
  c.output = dir.str() + "/dit.safetensors";
  c.prefix = "dit.";
  const Status st = convert_checkpoint(c, nullptr);
  ASSERT_TRUE(st.ok()) << st.error().message;
  auto f = SafetensorsFile::open(c.output);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ((*f)->names(), (std::vector<std::string>{"a", "b", "ids"}));
  EXPECT_EQ(values<uint16_t>(**f, "a", DType::BF16, {2, 3}), kA);
  EXPECT_EQ(values<float>(**f, "b", DType::F32, {4}), kB);
  EXPECT_EQ(values<int64_t>(**f, "ids", DType::I64, {2}), kIds);
  EXPECT_FALSE(fs::exists(c.output + ".partial"));
}

TEST(Convert, DtypeCastsFloatTensorsOnly) {
  test::TempDir dir;
  ConvertCommand c;
  c.source = write_bin(dir.path());
  c.output = dir.str() + "/f32.safetensors";
  c.dtype = "f32";
  ASSERT_TRUE(convert_checkpoint(c, nullptr).ok());
  auto f = SafetensorsFile::open(c.output);
  ASSERT_TRUE(f.ok());
  std::vector<float> a;
  for (uint16_t h : kA) a.push_back(bf16_to_f32(h));
  EXPECT_EQ(values<float>(**f, "dit.a", DType::F32, {2, 3}), a);
  std::vector<float> w;
  for (uint16_t h : kW) w.push_back(f16_to_f32(h));
  EXPECT_EQ(values<float>(**f, "vae.w", DType::F32, {3}), w);
  EXPECT_EQ(values<int64_t>(**f, "dit.ids", DType::I64, {2}), kIds);  // not a float: as stored

  c.output = dir.str() + "/bf16.safetensors";
  c.dtype = "bf16";
  ASSERT_TRUE(convert_checkpoint(c, nullptr).ok());
  auto g = SafetensorsFile::open(c.output);
  ASSERT_TRUE(g.ok());
  std::vector<uint16_t> b;
  for (float x : kB) b.push_back(f32_to_bf16(x));
  EXPECT_EQ(values<uint16_t>(**g, "dit.b", DType::BF16, {4}), b);
  EXPECT_EQ(values<uint16_t>(**g, "dit.a", DType::BF16, {2, 3}), kA);
}

TEST(Convert, ErrorsNameTheProblemAndLeaveNoOutput) {
  test::TempDir dir;
  ConvertCommand c;
  c.source = write_bin(dir.path());
  c.output = dir.str() + "/out.gguf";
  auto st = convert_checkpoint(c, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("unknown output format '.gguf' (known: .safetensors)"), std::string::npos);
  c.output = dir.str() + "/out.safetensors";
  c.prefix = "text_encoder.";
  st = convert_checkpoint(c, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("no tensors under the prefix 'text_encoder.'"), std::string::npos);
  // A pickle that would run code: refused, nothing written.
  Pickle evil;
  evil.proto(2).global("posix", "system").mark().str("touch pwned").tuple().reduce().stop();
  const std::string bytes = test::write_torch_checkpoint(evil.bytes, {});
  c.source = dir.str() + "/evil.bin";
  std::ofstream(c.source, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  c.prefix = "";
  st = convert_checkpoint(c, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("evil.bin: archive/data.pkl: global 'posix.system' is not allowed"),
            std::string::npos)
      << st.error().message;
  EXPECT_FALSE(fs::exists(c.output));
  EXPECT_FALSE(fs::exists(c.output + ".partial"));
  c.output = c.source;
  EXPECT_FALSE(convert_checkpoint(c, nullptr).ok());
}

TEST(Convert, CommandLine) {
  test::TempDir dir;
  const std::string src = write_bin(dir.path());
  const std::string out = dir.str() + "/cli.safetensors";
  std::string log;
  ASSERT_EQ(test::run_command(std::string(MESHDIT_CLI) + " convert " + src + " -o " + out + " --prefix dit.", &log), 0)
      << log;
  EXPECT_NE(log.find("[3/3] ids I64 [2]"), std::string::npos) << log;
  auto f = SafetensorsFile::open(out);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->names().size(), 3u);
  EXPECT_NE(test::run_command(std::string(MESHDIT_CLI) + " convert " + src + " -o " + out + " --dtype f16", &log), 0);
  ASSERT_EQ(test::run_command(std::string(MESHDIT_CLI) + " convert --help", &log), 0);
  EXPECT_NE(log.find("--prefix"), std::string::npos) << log;
}

}  // namespace
