// PyTorch zip checkpoints (io/torch_checkpoint.h), written byte by byte by torch_checkpoint_writer.h: a good
// file reads back exactly through Checkpoint (prefix stripped, shared storages as views), in every zip and
// pickle variant torch writes; every malicious or damaged file gives one error naming what is wrong.
#include "io/torch_checkpoint.h"

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <random>

#include "../test_util.h"
#include "io/checkpoint.h"
#include "torch_checkpoint_writer.h"

using namespace meshdit;
using test::Pickle;

namespace {

const std::vector<uint16_t> kA{0x3f80, 0x4000, 0x4040, 0xbf80, 0x0000, 0x7f80};  // bf16 1, 2, 3, -1, 0, inf
const std::vector<float> kB{1.5f, -2.25f, 3e-8f, 65504.f};
const std::vector<uint16_t> kC{1, 2, 3, 0x3f80, 0x4000};  // dit.c is its last two
const std::vector<float> kD{1, 2, 3, 4, 5, 6, 7, 8};      // dit.d the first four, dit.e the last four
const std::vector<float> kScale{0.125f};
const std::vector<uint16_t> kW{0x3c00, 0x4000, 0xc000};  // f16 1, 2, -2

// The state dict torch.save writes for these tensors: an OrderedDict filled by SETITEMS, then BUILD with its
// _metadata; `extra` goes in as one more key.
std::string good_pickle(const std::function<void(Pickle&)>& extra = nullptr) {
  Pickle p;
  p.proto(2).global("collections", "OrderedDict").binput(0).empty_tuple().reduce().binput(1).mark();
  p.str("dit.a").tensor("BFloat16Storage", "0", 6, 0, {2, 3}, {3, 1});
  p.str("dit.b").tensor("FloatStorage", "1", 4, 0, {4}, {1});
  p.str("dit.c").tensor("BFloat16Storage", "2", 5, 3, {2}, {1});
  p.str("dit.d").tensor("FloatStorage", "3", 8, 0, {1, 1, 2, 2}, {4, 4, 2, 1});
  // dit.e by hand: the same storage, the hooks' OrderedDict through the memo (BINGET) as pickle shares globals.
  p.str("dit.e").global("torch._utils", "_rebuild_tensor_v2").mark();
  p.mark().str("storage").global("torch", "FloatStorage").str("3").str("cpu").integer(8).tuple().op('Q');
  p.integer(4).ints_tuple({4}).ints_tuple({1}).op(char(0x89)).binget(0).empty_tuple().reduce().tuple().reduce();
  p.str("dit.row").tensor("FloatStorage", "1", 4, 0, {1, 4}, {99, 1});  // a size-1 dim may have any stride
  p.str("dit.scale").tensor("FloatStorage", "4", 1, 0, {}, {});
  p.str("vae.w").tensor("HalfStorage", "5", 3, 0, {3}, {1});
  p.str("step").integer(7);  // not a tensor: skipped
  if (extra) extra(p);
  p.op('u');
  p.op('}').mark().str("_metadata").ordered_dict().op('u').op('b');
  p.stop();
  return p.bytes;
}

std::vector<std::pair<std::string, std::string>> good_storages() {
  return {{"0", test::bytes_of(kA)},    {"1", test::bytes_of(kB)},     {"2", test::bytes_of(kC)},
          {"3", test::bytes_of(kD)},    {"4", test::bytes_of(kScale)}, {"5", test::bytes_of(kW)},
          {"6", std::string(16, '\0')}, {"7", std::string(6, '\1')}};  // 6 and 7 for the tests' extra tensors
}

std::string good_file(const test::ZipOptions& opt = {}) {
  return test::write_torch_checkpoint(good_pickle(), good_storages(), opt);
}

// The error parse_torch_checkpoint gives, or "" when the file parses.
std::string error_of(const std::string& file, const std::string& prefix = "") {
  auto r = parse_torch_checkpoint(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "t.bin", prefix);
  return r.ok() ? "" : r.error().message;
}

std::string pickle_error(const std::string& pickle) {
  return error_of(test::write_torch_checkpoint(pickle, good_storages()));
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

template <class T>
std::vector<T> values(const Tensor& t) {
  std::vector<T> v(size_t(t.numel()));
  std::memcpy(v.data(), t.raw(), v.size() * sizeof(T));
  return v;
}

void expect_good(const Checkpoint& ck) {
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c", "d", "e", "row", "scale"}));
  auto a = ck.get("a", {2, 3});
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(a->dtype(), DType::BF16);
  EXPECT_EQ(values<uint16_t>(*a), kA);
  auto b = ck.get("b", {4});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dtype(), DType::F32);
  EXPECT_EQ(values<float>(*b), kB);
  auto c = ck.get("c", {2});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(values<uint16_t>(*c), (std::vector<uint16_t>{0x3f80, 0x4000}));
  auto d = ck.get("d", {1, 1, 2, 2});
  auto e = ck.get("e", {4});
  ASSERT_TRUE(d.ok() && e.ok());
  EXPECT_EQ(values<float>(*d), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(values<float>(*e), (std::vector<float>{5, 6, 7, 8}));
  // One storage, two views of the same mapped bytes: nothing was copied.
  EXPECT_EQ(static_cast<const char*>(e->raw()), static_cast<const char*>(d->raw()) + 16);
  EXPECT_TRUE(d->read_only());
  auto row = ck.get("row", {1, 4});
  ASSERT_TRUE(row.ok());
  EXPECT_EQ(values<float>(*row), kB);
  auto s = ck.get("scale", {});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(values<float>(*s), kScale);
}

TEST(TorchCheckpoint, ReadsAStateDictThroughCheckpointWithThePrefixStripped) {
  test::TempDir dir;
  const std::string path = dir.str() + "/model.bin";
  write_file(path, good_file());
  auto ck = Checkpoint::open(path, "dit.");
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  expect_good(*ck);
  // Without a prefix: every tensor under its own name, the F16 one included; the int value is not a tensor.
  auto all = Checkpoint::open(path);
  ASSERT_TRUE(all.ok()) << all.error().message;
  EXPECT_EQ(all->names().size(), 8u);
  auto w = all->get("vae.w", {3});
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->dtype(), DType::F16);
  EXPECT_EQ(values<uint16_t>(*w), kW);
  EXPECT_FALSE(all->has("step"));
}

TEST(TorchCheckpoint, ReadsZip64DataDescriptorsAndPickleProtocol4) {
  for (const test::ZipOptions opt : {test::ZipOptions{true, -1, false}, test::ZipOptions{false, -1, true}}) {
    const std::string f = good_file(opt);
    EXPECT_EQ(error_of(f), "") << opt.zip64;
    test::TempDir dir(opt.zip64 ? "zip64" : "dd");
    write_file(dir.str() + "/m.pt", f);
    auto ck = Checkpoint::open(dir.str() + "/m.pt", "dit.");
    ASSERT_TRUE(ck.ok()) << ck.error().message;
    expect_good(*ck);
  }
  // Protocol 4 as Python 3.8+ pickles by default: FRAME, SHORT_BINUNICODE, STACK_GLOBAL, MEMOIZE.
  auto sbu = [](Pickle& p, const std::string& s) { p.op(char(0x8c)).raw(std::string(1, char(s.size()))).raw(s); };
  Pickle q;
  q.proto(4).op(char(0x95)).raw(std::string(8, '\0'));
  sbu(q, "collections");
  sbu(q, "OrderedDict");
  q.op(char(0x93)).op(char(0x94)).empty_tuple().reduce().op(char(0x94));
  sbu(q, "dit.b");
  q.tensor("FloatStorage", "1", 4, 0, {4}, {1}).op('s').stop();
  const std::string f = test::write_torch_checkpoint(q.bytes, good_storages());
  auto h = parse_torch_checkpoint(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "t.bin", "dit.");
  ASSERT_TRUE(h.ok()) << h.error().message;
  ASSERT_EQ(h->tensors.size(), 1u);
  EXPECT_EQ(h->tensors[0].name, "b");
  EXPECT_EQ(h->tensors[0].shape, Shape{4});
}

TEST(TorchCheckpoint, RefusesEveryGlobalButTensorRebuilds) {
  for (const auto& [module, name] :
       std::vector<std::pair<std::string, std::string>>{{"posix", "system"},
                                                        {"os", "system"},
                                                        {"builtins", "eval"},
                                                        {"__builtin__", "getattr"},
                                                        {"torch._utils", "_rebuild_qtensor"},
                                                        {"torch", "load"}}) {
    Pickle p;
    p.proto(2).global(module, name).mark().str("echo pwned").tuple().reduce().stop();
    EXPECT_NE(pickle_error(p.bytes).find("data.pkl: global '" + module + "." + name +
                                         "' is not allowed (only torch tensor rebuilds)"),
              std::string::npos)
        << pickle_error(p.bytes);
  }
  // The same through STACK_GLOBAL, and a __reduce__ hidden as a dict value.
  Pickle s;
  s.proto(4).str("builtins").str("exec").op(char(0x93)).stop();
  EXPECT_NE(pickle_error(s.bytes).find("global 'builtins.exec' is not allowed"), std::string::npos);
  const std::string inside = pickle_error(good_pickle(
      [](Pickle& p) { p.str("dit.evil").global("posix", "system").mark().str("rm -rf /").tuple().reduce(); }));
  EXPECT_NE(inside.find("global 'posix.system' is not allowed"), std::string::npos) << inside;
}

TEST(TorchCheckpoint, RefusesOpcodesTorchDoesNotWrite) {
  const std::vector<std::pair<std::string, std::string>> cases{
      {Pickle().proto(2).raw("ios\nsystem\n").stop().bytes, "opcode 0x69 ('i') is not allowed"},
      {Pickle().proto(2).empty_tuple().op(char(0x81)).stop().bytes, "opcode 0x81 is not allowed"},
      {Pickle().proto(2).op('I').raw("1\n").stop().bytes, "opcode 0x49 ('I') is not allowed"},
      {Pickle().proto(6).stop().bytes, "protocol 6"},
      {Pickle().proto(2).global("torch", "FloatStorage").empty_tuple().reduce().stop().bytes, "not callable"},
      {Pickle().proto(2).integer(1).empty_tuple().reduce().stop().bytes, "REDUCE calls a int"},
      {Pickle().proto(2).reduce().stop().bytes, "empty stack"},
      {Pickle().proto(2).binget(3).stop().bytes, "memo entry 3 was never stored"},
      {Pickle().proto(2).op(']').binput(0).binget(0).op('a').stop().bytes, "holds a list, not a dict"},
      {Pickle().proto(2).str("x").op('}').op('b').stop().bytes, "BUILD on a str"},
      {Pickle().proto(2).op('}').op('}').stop().bytes, "STOP with 2 values"},
      {Pickle().proto(2).op('}').bytes, "ends without STOP"},
      {Pickle().proto(2).op('X').raw("\xff\xff\xff\x7f").stop().bytes, "truncated"},
      {Pickle().proto(2).op(char(0x8a)).raw("\x09").stop().bytes, "does not fit 64 bits"},
      {Pickle().proto(2).op('}').mark().str("k").op('u').stop().bytes, "odd number"},
      {Pickle().proto(2).op('}').mark().str("k").tuple().op('Q').stop().bytes, "persistent id is not"},
  };
  for (const auto& [pickle, expect] : cases) {
    const std::string e = pickle_error(pickle);
    EXPECT_NE(e.find(expect), std::string::npos) << "got: " << e << "\nexpected: " << expect;
    EXPECT_NE(e.find("t.bin: archive/data.pkl: "), std::string::npos) << e;
  }
  // A dict that contains itself (through the memo) is walked once, not forever.
  EXPECT_EQ(pickle_error(Pickle().proto(2).op('}').binput(0).str("me").binget(0).op('s').stop().bytes), "");
}

TEST(TorchCheckpoint, RefusesTensorsOutsideOrUnlikeTheirStorage) {
  auto with = [](const std::string& name, const std::string& type, const std::string& key, int64_t numel,
                 int64_t offset, const Shape& shape, const Shape& stride) {
    return pickle_error(good_pickle([&](Pickle& p) { p.str(name).tensor(type, key, numel, offset, shape, stride); }));
  };
  const std::vector<std::pair<std::string, std::string>> cases{
      {with("t", "FloatStorage", "1", 4, 0, {2, 2}, {1, 2}), "is not contiguous (stride 2 in dim 1, expected 1)"},
      {with("t", "FloatStorage", "1", 4, 0, {4, 4}, {4, 1}), "runs past its storage '1' of 4 elements"},
      {with("t", "FloatStorage", "1", 4, 3, {2}, {1}), "at offset 3 runs past its storage"},
      {with("t", "FloatStorage", "1", 4, -1, {2}, {1}), "at offset -1"},
      {with("t", "FloatStorage", "6", 100, 0, {2}, {1}), "need 400 bytes but its record has 16"},
      {with("t", "FloatStorage", "9", 1, 0, {1}, {1}), "record data/9 is not in the archive"},
      {with("t", "FloatStorage", "1", int64_t(1) << 62, 0, {1}, {1}), "numel 4611686018427387904 is out of range"},
      {with("t", "FloatStorage", "1", 4, 0, {int64_t(1) << 40, int64_t(1) << 40}, {int64_t(1) << 40, 1}),
       "size is too large"},
      {with("t", "FloatStorage", "1", 2, 0, {1}, {1}), "named twice with different types or sizes"},
      {with("t", "FloatStorage", "1", 4, 0, {2}, {1, 1}), "size has 1 dims but stride 2"},
      {with("mask", "BoolStorage", "7", 6, 0, {6}, {1}), "tensor 'mask' is a torch.BoolStorage"},
  };
  for (const auto& [e, expect] : cases)
    EXPECT_NE(e.find(expect), std::string::npos) << "got: " << e << "\nexpected: " << expect;
  // A tensor of a type meshdit does not read is fine when the prefix leaves it out.
  const std::string f = test::write_torch_checkpoint(
      good_pickle([](Pickle& p) { p.str("mask").tensor("BoolStorage", "7", 6, 0, {6}, {1}); }), good_storages());
  EXPECT_EQ(error_of(f, "dit."), "");
}

uint64_t read_le(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n; i-- > 0;) v = v << 8 | uint8_t(s[at + size_t(i)]);
  return v;
}
void write_le(std::string& s, size_t at, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s[at + size_t(i)] = char((v >> (8 * i)) & 0xff);
}

TEST(TorchCheckpoint, RefusesDamagedZipArchives) {
  const std::string good = good_file();
  ASSERT_EQ(error_of(good), "");
  const size_t eocd = good.size() - 22;
  const size_t cd = read_le(good, eocd + 16, 4);
  // Cut anywhere: always an error, never a crash (ASan runs this too).
  for (size_t n = 0; n < good.size(); ++n) EXPECT_NE(error_of(good.substr(0, n)), "") << "cut at " << n;
  const std::vector<std::pair<std::function<void(std::string&)>, std::string>> cases{
      {[&](std::string& f) { write_le(f, eocd + 16, good.size() + 100, 4); }, "central directory"},
      {[&](std::string& f) { write_le(f, eocd + 12, 0xfffffff0u, 4); }, "runs past the end of the file"},
      {[&](std::string& f) { write_le(f, eocd + 10, 60000, 2); }, "cannot fit a central directory"},
      {[&](std::string& f) { write_le(f, cd + 42, good.size() + 1000, 4); }, "local header offset"},
      {[&](std::string& f) { write_le(f, cd + 42, 7, 4); }, "is not a local header"},
      {[&](std::string& f) {
         write_le(f, cd + 20, 0x7fffffff, 4);
         write_le(f, cd + 24, 0x7fffffff, 4);
       },
       "run past the end of the file"},
      {[&](std::string& f) { write_le(f, cd + 20, 5, 4); }, "compressed size 5"},
      {[&](std::string& f) { write_le(f, cd + 8, 1, 2); }, "is encrypted"},
      {[&](std::string& f) { write_le(f, cd + 28, 0xffff, 2); }, "runs past the central directory"},
      {[&](std::string& f) { write_le(f, eocd + 4, 1, 2); }, "multi-disk"},
      {[&](std::string& f) { write_le(f, eocd + 10, 0xffff, 2); }, "no ZIP64 locator"},
  };
  for (const auto& [damage, expect] : cases) {
    std::string f = good;
    damage(f);
    const std::string e = error_of(f);
    EXPECT_NE(e.find(expect), std::string::npos) << "got: " << e << "\nexpected: " << expect;
  }
  // A byte of data.pkl changed: its CRC says so.
  std::string flipped = good;
  const size_t pkl = good.find(std::string{char(0x80), char(2)});
  flipped[pkl + 10] ^= 0x20;
  EXPECT_NE(error_of(flipped).find("CRC mismatch"), std::string::npos) << error_of(flipped);
  // A compressed record names itself.
  test::ZipOptions deflate;
  deflate.compress_entry = 2;
  EXPECT_NE(error_of(good_file(deflate)).find("zip entry 'archive/data/0' is compressed (method 8, deflate)"),
            std::string::npos)
      << error_of(good_file(deflate));
  // ZIP64 end record pointing nowhere.
  std::string z = good_file({true, -1, false});
  write_le(z, z.size() - 22 - 20 + 8, z.size(), 8);
  EXPECT_NE(error_of(z).find("ZIP64 end-of-central-directory offset"), std::string::npos) << error_of(z);
  // Big-endian archives, zips that are not checkpoints, legacy checkpoints.
  EXPECT_NE(
      error_of(test::write_torch_checkpoint(good_pickle(), good_storages(), {}, "big")).find("byteorder is 'big'"),
      std::string::npos);
  EXPECT_NE(error_of(test::write_zip({{"readme.txt", "hi"}})).find("no <archive>/data.pkl"), std::string::npos);
  const std::string legacy("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02}q\x00.", 22);
  EXPECT_NE(error_of(legacy).find("legacy (pre-1.6, non-zip) PyTorch checkpoint"), std::string::npos);
  test::TempDir dir;
  write_file(dir.str() + "/old.pt", legacy);
  auto ck = Checkpoint::open(dir.str() + "/old.pt");
  ASSERT_FALSE(ck.ok());
  EXPECT_NE(ck.error().message.find("old.pt: a legacy"), std::string::npos) << ck.error().message;
}

TEST(TorchCheckpoint, SurvivesRandomDamage) {
  const std::string good = good_file();
  std::mt19937 rng(7);
  int ok = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string f = good;
    const int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) f[rng() % f.size()] = char(rng());
    ok += error_of(f, "dit.").empty();
  }
  EXPECT_GT(ok, 0);  // flips in storage bytes or padding are harmless
}

TEST(TorchCheckpoint, DiffusersFolderWithOnlyABinReadsIt) {
  test::TempDir dir;
  write_file(dir.str() + "/diffusion_pytorch_model.bin", good_file());
  auto ck = Checkpoint::open(dir.str(), "dit.");
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  expect_good(*ck);
}

}  // namespace
