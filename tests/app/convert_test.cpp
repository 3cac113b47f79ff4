// `meshdit convert`: a crafted PyTorch .bin converted to safetensors reads back tensor for tensor (bytes as
// stored, or cast by --dtype); errors leave no output behind.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "../io/torch_checkpoint_writer.h"
#include "../test_util.h"
#include "app/convert_cmd.h"
#include "core/image_metrics.h"
#include "io/gguf.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "models/registry.h"

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
  c.output = dir.str() + "/out.npz";
  auto st = convert_checkpoint(c, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("unknown output format '.npz' (known: .safetensors, .gguf)"), std::string::npos);
  // GGUF output is for transformers: this .bin is none.
  c.output = dir.str() + "/out.gguf";
  st = convert_checkpoint(c, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("fits no known transformer layout"), std::string::npos) << st.error().message;
  c.type = "q8_0";
  c.output = dir.str() + "/out.safetensors";
  st = convert_checkpoint(c, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("--type 'q8_0' is for a GGUF output"), std::string::npos) << st.error().message;
  c.type = "";
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

// --- GGUF output ------------------------------------------------------------------------------------------------

std::string tiny_shapes() { return test::repo_dir() + "/models/tiny-shapes"; }

Result<GgufFile> parse_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return parse_gguf(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
}

const GgufTensor* tensor_named(const GgufFile& g, const std::string& name) {
  for (const auto& t : g.tensors)
    if (t.name == name) return &t;
  return nullptr;
}

// The tensors of GGUF file `src` (parsed as `g`) copied as stored into `dst`, under `prefix`, with `metadata`.
void rewrite(const std::string& src, const GgufFile& g, const std::string& dst, const std::string& prefix,
             std::vector<std::pair<std::string, GgufValue>> metadata) {
  std::ifstream f(src, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<GgufWriter::Entry> entries;
  for (const auto& t : g.tensors) entries.push_back({prefix + t.name, t.type, t.shape});
  auto w = GgufWriter::create(dst, std::move(metadata), entries);
  ASSERT_TRUE(w.ok()) << w.error().message;
  for (const auto& t : g.tensors) ASSERT_TRUE((*w)->write(bytes.data() + g.data_offset + t.offset, t.bytes).ok());
  ASSERT_TRUE((*w)->finish().ok());
}

// A 64x64, 4-step image of the built-in model with `extra` options; its samples in [0, 1].
std::vector<float> generate(const test::TempDir& dir, const std::string& name, const std::string& extra) {
  const std::string out = dir.str() + "/" + name + ".png";
  std::string log;
  const int rc = test::run_command(std::string(MESHDIT_CLI) +
                                       " generate --no-progress --prompt 'a large red circle in the center on a blue "
                                       "background' --seed 42 --width 64 --height 64 --steps 4 -o " +
                                       out + " " + extra,
                                   &log);
  EXPECT_EQ(rc, 0) << log;
  int w = 0, h = 0;
  PngText text;
  auto px = read_png(out, &w, &h, &text);
  EXPECT_TRUE(px.ok()) << (px.ok() ? "" : px.error().message);
  return px.ok() ? unit_samples(*px) : std::vector<float>{};
}

double psnr_of(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.size() != 64 * 64 * 3) return 0;
  return psnr(ImageView{a.data(), 64, 64, 3}, ImageView{b.data(), 64, 64, 3});
}

TEST(ConvertGguf, TinyShapesToQ8_0LoadsAndGeneratesCloseToBf16) {
  test::TempDir dir;
  ConvertCommand c;
  c.source = tiny_shapes();  // the pipeline folder: its transformer
  c.output = dir.str() + "/tiny-q8_0.gguf";
  c.type = "q8_0";
  const Status st = convert_checkpoint(c, nullptr);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_FALSE(fs::exists(c.output + ".partial"));

  // city96's layout: the architecture named, BFL's tensor names, embedders/final layer/vectors in float.
  auto g = parse_file(c.output);
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->string_value("general.architecture"), "flux");
  const GgufTensor* qkv = tensor_named(*g, "double_blocks.0.img_attn.qkv.weight");
  ASSERT_NE(qkv, nullptr);
  EXPECT_EQ(qkv->type, QuantType::Q8_0);
  EXPECT_EQ(qkv->shape, (Shape{384, 128}));
  ASSERT_NE(tensor_named(*g, "img_in.weight"), nullptr);
  EXPECT_EQ(tensor_named(*g, "img_in.weight")->type, QuantType::BF16);
  ASSERT_NE(tensor_named(*g, "final_layer.linear.weight"), nullptr);
  EXPECT_EQ(tensor_named(*g, "final_layer.linear.weight")->type, QuantType::BF16);
  EXPECT_EQ(tensor_named(*g, "double_blocks.0.img_attn.qkv.bias")->type, QuantType::F32);

  // It opens as a Flux transformer in the BFL layout (its config comes from a folder: the inference of a Flux config
  // knows only FLUX.1's RoPE axes).
  std::string layout;
  auto ck = open_transformer_checkpoint(c.output, &layout);
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_EQ(layout, "flux-bfl");
  ASSERT_NE(transformer_arch_of(*ck, layout), nullptr);
  EXPECT_EQ(transformer_arch_of(*ck, layout)->name, "flux");

  // stable-diffusion.cpp's flavour of the same tensors: no metadata, under "model.diffusion_model.".
  const std::string sdcpp = dir.str() + "/tiny-sdcpp.gguf";
  rewrite(c.output, *g, sdcpp, "model.diffusion_model.", {});
  // The same tensors claiming another architecture: refused, naming both.
  const std::string wrong = dir.str() + "/tiny-as-sd3.gguf";
  rewrite(c.output, *g, wrong, "", {{"general.architecture", GgufValue::string("sd3")}});
  auto wrong_ck = open_transformer_checkpoint(wrong, &layout);
  ASSERT_TRUE(wrong_ck.ok()) << wrong_ck.error().message;
  const Status bad = check_gguf_architecture(*wrong_ck, *transformer_arch_of(*wrong_ck, layout), layout);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("GGUF architecture 'sd3', but its tensors are a flux transformer's (flux-bfl"),
            std::string::npos)
      << bad.error().message;

  const auto bf16 = generate(dir, "bf16", "");
  const auto q8 = generate(dir, "q8", "--transformer " + c.output);
  const auto sd = generate(dir, "sdcpp", "--transformer " + sdcpp);
  const double p = psnr_of(bf16, q8);
  std::printf("tiny-shapes 64x64 4 steps: q8_0 vs bf16 PSNR %.2f dB\n", p);
  EXPECT_GT(p, 30.0);
  EXPECT_EQ(q8, sd);  // the same tensors under the other naming: the same pixels
}

TEST(ConvertGguf, ErrorsNameTheProblem) {
  test::TempDir dir;
  ConvertCommand c;
  c.source = tiny_shapes();
  c.output = dir.str() + "/x.gguf";
  c.type = "q4_k_m";
  auto st = convert_checkpoint(c, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("--type 'q4_k_m': expected one of q8_0"), std::string::npos) << st.error().message;
  EXPECT_FALSE(fs::exists(c.output));

  // A GGUF file of an architecture no registered model reads: refused by name, with the supported ones.
  const std::string ltx = dir.str() + "/ltx.gguf";
  auto w = GgufWriter::create(ltx, {{"general.architecture", GgufValue::string("ltxv")}},
                              {{"transformer_blocks.0.attn1.to_q.weight", QuantType::F32, {32, 32}}});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->write(Tensor::zeros({32, 32})).ok());
  ASSERT_TRUE((*w)->finish().ok());
  auto o = open_transformer(ltx);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.error().message.find("GGUF architecture 'ltxv' is not supported (supported: "), std::string::npos)
      << o.error().message;
  EXPECT_NE(o.error().message.find("flux"), std::string::npos) << o.error().message;
}

TEST(ConvertGguf, KeepsWhatCity96Keeps) {
  const std::vector<std::string> flux{"img_in.", "final_layer."};
  EXPECT_TRUE(gguf_keeps_float(flux, "double_blocks.0.img_attn.qkv.bias", {9216}, QuantType::Q8_0));
  EXPECT_TRUE(gguf_keeps_float(flux, "img_in.weight", {3072, 64}, QuantType::Q8_0));
  EXPECT_TRUE(gguf_keeps_float(flux, "final_layer.linear.weight", {64, 3072}, QuantType::Q8_0));
  EXPECT_TRUE(gguf_keeps_float(flux, "double_blocks.0.img_mlp.2.weight", {3072, 128}, QuantType::Q4_K));  // 128 < 256
  EXPECT_TRUE(gguf_keeps_float(flux, "tiny.weight", {32, 32}, QuantType::Q8_0));                          // 1024 values
  EXPECT_FALSE(gguf_keeps_float(flux, "double_blocks.0.img_mlp.2.weight", {3072, 12288}, QuantType::Q4_K));
  EXPECT_FALSE(gguf_keeps_float(flux, "double_blocks.0.xfinal_layer.weight", {64, 3072}, QuantType::Q8_0));
  EXPECT_TRUE(gguf_keeps_float({"modulation"}, "blocks.3.modulation", {1, 6, 5120}, QuantType::Q8_0));
}

}  // namespace
