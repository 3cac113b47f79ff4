// Damaged inputs: every corruption of a checkpoint, a config or a case folder must give an error value
// that names the file (and the tensor or key), and `meshdit check` must print that one message on stderr
// and exit with status 1, never crash. Each test corrupts a copy of a real fixture in a temp folder.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../test_util.h"
#include "app/check.h"
#include "app/runners.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/transformers/sd3.h"

namespace fs = std::filesystem;
using namespace meshdit;
using Json = nlohmann::json;

namespace {

using test::TempDir;

const char* const kCase = "sd35_large_transformer";
const char* const kWeights = "diffusion_pytorch_model.safetensors";

std::string case_dir() { return test::fixtures_dir() + "/" + kCase; }

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_bytes(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(s.data(), std::streamsize(s.size()));
}

// A safetensors image split into its JSON header and its data section.
struct Parts {
  Json header;
  std::string data;
};

uint64_t header_len(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  return n;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char((n >> (8 * i)) & 0xff);
  return s;
}

Parts split(const std::string& bytes) {
  const uint64_t n = header_len(bytes);
  return {Json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}

std::string join(const std::string& header_text, const std::string& data) {
  return le64(header_text.size()) + header_text + data;
}

std::string join(const Parts& p) { return join(p.header.dump(), p.data); }

// Copies the case folder into `tmp` and applies `corrupt` to the named file there; returns the file's path.
fs::path copy_case_and_corrupt(const TempDir& tmp, const std::string& file,
                               const std::function<std::string(const std::string&)>& corrupt) {
  fs::copy(case_dir(), tmp.path(), fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  const fs::path p = tmp.path() / file;
  write_bytes(p, corrupt(read_bytes(p)));
  return p;
}

// Rewrites the JSON header of a safetensors image, keeping its data section.
std::function<std::string(const std::string&)> edit_header(const std::function<void(Json&)>& edit) {
  return [edit](const std::string& bytes) {
    Parts p = split(bytes);
    edit(p.header);
    return join(p);
  };
}

void expect_mentions(const std::string& message, const std::vector<std::string>& needles) {
  for (const auto& n : needles) EXPECT_NE(message.find(n), std::string::npos) << "'" << n << "' not in: " << message;
}

// Runs `meshdit check <dir>`: it must exit with status 1 (not a signal, not an abort), print nothing on
// stdout, and one line on stderr that mentions every needle.
void expect_cli_fails(const std::string& dir, const std::vector<std::string>& needles) {
  const std::string err_file =
      (fs::temp_directory_path() / ("meshdit_bad_input_" + std::to_string(getpid()) + "_stderr.txt")).string();
  std::string out;
  // The parentheses keep stderr in the file; run_command's own 2>&1 then only merges the subshell's.
  const int rc =
      test::run_command("(\"" + std::string(MESHDIT_CLI) + "\" check \"" + dir + "\" 2>\"" + err_file + "\")", &out);
  const std::string err = read_bytes(err_file);
  fs::remove(err_file);
  EXPECT_EQ(rc, 1) << "stdout: " << out << "\nstderr: " << err;
  EXPECT_EQ(out, "") << "stdout should be empty";
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "expected one line on stderr, got:\n" << err;
  EXPECT_EQ(err.rfind("meshdit check: ", 0), 0u) << err;
  for (const char* bad : {"internal error", "Sanitizer", "terminate", "Segmentation", "Aborted"})
    EXPECT_EQ(err.find(bad), std::string::npos) << err;
  expect_mentions(err, needles);
}

// A corruption of the weights file: the file alone must be rejected by SafetensorsFile::open, and the case
// folder holding it by the CLI, both naming the file and `needles`.
void expect_weights_rejected(const std::function<std::string(const std::string&)>& corrupt,
                             std::vector<std::string> needles) {
  TempDir tmp("case");
  const fs::path p = copy_case_and_corrupt(tmp, kWeights, corrupt);
  needles.push_back(p.string());
  auto f = SafetensorsFile::open(p.string());
  ASSERT_FALSE(f.ok()) << "corrupted file was accepted";
  expect_mentions(f.error().message, needles);
  expect_cli_fails(tmp.str(), needles);
}

// The model loaded the way the CLI's runner loads it, from a case folder.
Status load_sd3(const std::string& dir) {
  MD_TRY(SD3Config cfg, SD3Config::from_json(dir + "/config.json"));
  MD_TRY(Checkpoint ck, Checkpoint::open(dir + "/" + kWeights));
  MD_TRY(SD3Transformer model, SD3Transformer::load(ck, cfg));
  (void)model;
  return ok_status();
}

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    register_builtin_runners();
    ASSERT_TRUE(fs::is_directory(case_dir())) << case_dir();
    original_ = read_bytes(fs::path(case_dir()) / kWeights);
    parts_ = split(original_);
  }
  std::string original_;
  Parts parts_;
};

TEST_F(BadInput, IntactCopyPasses) {
  TempDir tmp("case");
  copy_case_and_corrupt(tmp, kWeights, [](const std::string& s) { return s; });
  EXPECT_TRUE(load_sd3(tmp.str()).ok());
  std::string out;
  const std::string cmd = std::string("\"") + MESHDIT_CLI + "\" check -q \"" + tmp.str() + "\"";
  EXPECT_EQ(test::run_command(cmd, &out), 0) << out;
}

// --- safetensors container ---------------------------------------------------------------------------------

TEST_F(BadInput, TruncatedInDataSection) {
  const uint64_t data_begin = 8 + header_len(original_);
  const uint64_t cut = original_.size() - 1000;  // inside the last tensors' data
  // The first tensor, in header order, whose data no longer fits is the one named.
  std::string victim;
  for (auto it = parts_.header.begin(); it != parts_.header.end() && victim.empty(); ++it)
    if (it.key() != "__metadata__" && it.value()["data_offsets"][1].get<uint64_t>() > cut - data_begin)
      victim = it.key();
  ASSERT_FALSE(victim.empty());
  expect_weights_rejected([cut](const std::string& s) { return s.substr(0, cut); },
                          {"tensor '" + victim + "'", "out of range", "truncated"});
}

TEST_F(BadInput, TruncatedInHeader) {
  const uint64_t cut = 8 + header_len(original_) / 2;
  expect_weights_rejected([cut](const std::string& s) { return s.substr(0, cut); },
                          {"runs past the end of the file", "truncated"});
}

TEST_F(BadInput, ShorterThanLengthField) {
  expect_weights_rejected([](const std::string& s) { return s.substr(0, 5); }, {"truncated: 5 bytes"});
}

TEST_F(BadInput, EmptyFile) {
  expect_weights_rejected([](const std::string&) { return std::string(); }, {"truncated: 0 bytes"});
}

TEST_F(BadInput, HeaderLengthPastEndOfFile) {
  expect_weights_rejected([](const std::string& s) { return le64(s.size()) + s.substr(8); },
                          {"header length", "runs past the end of the file"});
}

TEST_F(BadInput, HeaderLengthOverLimit) {
  expect_weights_rejected([](const std::string& s) { return le64(uint64_t(1) << 40) + s.substr(8); },
                          {"exceeds the 100 MB limit"});
}

TEST_F(BadInput, InvalidJsonHeader) {
  expect_weights_rejected(
      [](const std::string& s) {
        std::string h = s.substr(8, header_len(s));
        h[h.size() / 2] = '#';
        return join(h, s.substr(8 + header_len(s)));
      },
      {"invalid JSON header"});
}

TEST_F(BadInput, HeaderNotAnObject) {
  expect_weights_rejected([this](const std::string&) { return join("[1, 2, 3]", parts_.data); },
                          {"header is not a JSON object"});
}

TEST_F(BadInput, UnknownDtype) {
  expect_weights_rejected(edit_header([](Json& h) { h["proj_out.weight"]["dtype"] = "F8_E9M9"; }),
                          {"tensor 'proj_out.weight'", "unknown dtype 'F8_E9M9'"});
}

TEST_F(BadInput, DataOffsetsOutOfRange) {
  const uint64_t size = parts_.data.size();
  expect_weights_rejected(edit_header([size](Json& h) {
                            h["proj_out.weight"]["data_offsets"] = {size, size + 8192};
                          }),
                          {"tensor 'proj_out.weight'", "out of range", std::to_string(size) + " bytes"});
}

TEST_F(BadInput, ReversedOffsets) {
  expect_weights_rejected(edit_header([](Json& h) {
                            auto& o = h["proj_out.weight"]["data_offsets"];
                            o = {o[1], o[0]};
                          }),
                          {"tensor 'proj_out.weight'", "reversed"});
}

TEST_F(BadInput, NegativeOffset) {
  expect_weights_rejected(edit_header([](Json& h) { h["proj_out.weight"]["data_offsets"][0] = -8; }),
                          {"tensor 'proj_out.weight'", "data_offsets[0] must be a non-negative integer"});
}

TEST_F(BadInput, OverlappingTensors) {
  // norm_out.linear.weight and proj_out.weight are both [64, 32] F32: point one at the other's bytes.
  ASSERT_EQ(parts_.header["norm_out.linear.weight"]["shape"], parts_.header["proj_out.weight"]["shape"]);
  expect_weights_rejected(
      edit_header([](Json& h) { h["proj_out.weight"]["data_offsets"] = h["norm_out.linear.weight"]["data_offsets"]; }),
      {"'norm_out.linear.weight'", "'proj_out.weight'", "overlap"});
}

TEST_F(BadInput, ShapeDisagreesWithOffsets) {
  expect_weights_rejected(edit_header([](Json& h) {
                            h["proj_out.weight"]["shape"] = {64, 31};
                          }),
                          {"tensor 'proj_out.weight'", "[64, 31]", "needs 7936 bytes", "span 8192"});
}

TEST_F(BadInput, ShapeByteSizeOverflows) {
  // 2^62 float32 elements are 2^64 bytes, which wraps to 0 in 64 bits and would match offsets [0, 0].
  expect_weights_rejected(edit_header([](Json& h) {
                            h["proj_out.weight"]["shape"] = {uint64_t(1) << 62};
                            h["proj_out.weight"]["data_offsets"] = {0, 0};
                          }),
                          {"tensor 'proj_out.weight'", "is too large"});
}

TEST_F(BadInput, ShapeEntryBeyondInt64WithZeroDim) {
  expect_weights_rejected(edit_header([](Json& h) {
                            h["proj_out.weight"]["shape"] = {0, ~uint64_t(0)};
                            h["proj_out.weight"]["data_offsets"] = {0, 0};
                          }),
                          {"tensor 'proj_out.weight'", "is too large"});
}

TEST_F(BadInput, DeeplyNestedShapeEntry) {
  // Error messages must not recurse into the value (a million levels would overflow the stack).
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  expect_weights_rejected(
      [this, &deep](const std::string&) {
        Json h = parts_.header;
        h["proj_out.weight"]["shape"] = "DEEP";
        std::string text = h.dump();
        text.replace(text.find("\"DEEP\""), 6, "[" + deep + "]");
        return join(text, parts_.data);
      },
      {"tensor 'proj_out.weight'", "shape entry must be a non-negative integer"});
}

// --- the model's view: names and shapes -------------------------------------------------------------------

TEST_F(BadInput, MissingTensor) {
  TempDir tmp("case");
  const fs::path p = copy_case_and_corrupt(tmp, kWeights, edit_header([](Json& h) {
                                             h["proj_out.weight_renamed"] = h["proj_out.weight"];
                                             h.erase("proj_out.weight");
                                           }));
  const std::vector<std::string> needles = {p.string(), "missing tensor 'proj_out.weight'"};
  ASSERT_TRUE(SafetensorsFile::open(p.string()).ok()) << "the file itself is valid";
  Status st = load_sd3(tmp.str());
  ASSERT_FALSE(st.ok());
  expect_mentions(st.error().message, needles);
  expect_cli_fails(tmp.str(), needles);
}

TEST_F(BadInput, TensorShapeDiffersFromConfig) {
  TempDir tmp("case");
  const fs::path p = copy_case_and_corrupt(tmp, kWeights, edit_header([](Json& h) {
                                             h["proj_out.weight"]["shape"] = {32, 64};
                                           }));  // same bytes
  const std::vector<std::string> needles = {p.string(), "tensor 'proj_out.weight'", "has shape [32, 64]",
                                            "expected [64, 32]"};
  Status st = load_sd3(tmp.str());
  ASSERT_FALSE(st.ok());
  expect_mentions(st.error().message, needles);
  expect_cli_fails(tmp.str(), needles);
}

TEST_F(BadInput, ConfigDisagreesWithWeights) {
  TempDir tmp("case");
  copy_case_and_corrupt(tmp, "config.json", [](const std::string& s) {
    Json j = Json::parse(s);
    j["caption_projection_dim"] = 40;
    return j.dump();
  });
  const std::vector<std::string> needles = {(tmp.path() / kWeights).string(), "tensor 'context_embedder.weight'",
                                            "has shape [32, 48]", "expected [40, 48]"};
  Status st = load_sd3(tmp.str());
  ASSERT_FALSE(st.ok());
  expect_mentions(st.error().message, needles);
  expect_cli_fails(tmp.str(), needles);
}

TEST_F(BadInput, IntegerWeightDtype) {
  // I32 has the size of F32, so the shape still matches; the kernels take only float weights.
  TempDir tmp("case");
  const fs::path p =
      copy_case_and_corrupt(tmp, kWeights, edit_header([](Json& h) { h["proj_out.weight"]["dtype"] = "I32"; }));
  const std::vector<std::string> needles = {p.string(), "tensor 'proj_out.weight'", "dtype I32"};
  Status st = load_sd3(tmp.str());
  ASSERT_FALSE(st.ok());
  expect_mentions(st.error().message, needles);
  expect_cli_fails(tmp.str(), needles);
}

TEST_F(BadInput, TruncatedOutputsFile) {
  TempDir tmp("case");
  const fs::path p =
      copy_case_and_corrupt(tmp, "outputs.safetensors", [](const std::string& s) { return s.substr(0, s.size() / 2); });
  expect_cli_fails(tmp.str(), {p.string(), "out of range"});
}

// --- config.json ----------------------------------------------------------------------------------------------

void expect_config_rejected(const std::function<std::string(const std::string&)>& corrupt,
                            std::vector<std::string> needles) {
  TempDir tmp("case");
  const fs::path p = copy_case_and_corrupt(tmp, "config.json", corrupt);
  needles.push_back(p.string());
  auto cfg = SD3Config::from_json(p.string());
  ASSERT_FALSE(cfg.ok()) << "corrupted config was accepted";
  expect_mentions(cfg.error().message, needles);
  expect_cli_fails(tmp.str(), needles);
}

std::function<std::string(const std::string&)> set_config(const char* key, Json value) {
  return [key, value](const std::string& s) {
    Json j = Json::parse(s);
    j[key] = value;
    return j.dump(2);
  };
}

TEST_F(BadInput, ConfigInvalidJson) {
  expect_config_rejected([](const std::string& s) { return s.substr(0, s.size() / 2); }, {"invalid JSON"});
}

TEST_F(BadInput, ConfigWrongType) {
  expect_config_rejected(set_config("num_layers", "two"), {"key 'num_layers' should be an integer, got \"two\""});
}

TEST_F(BadInput, ConfigWrongListElementType) {
  expect_config_rejected(set_config("dual_attention_layers", Json::array({0, "1"})),
                         {"key 'dual_attention_layers' should be a list of 32-bit integers"});
}

TEST_F(BadInput, ConfigIntegerOutOfRange) {
  // 2^32 + 2 would wrap to patch_size 2 and load the model silently.
  expect_config_rejected(set_config("patch_size", (uint64_t(1) << 32) + 2),
                         {"key 'patch_size' is out of range for a 32-bit integer: 4294967298"});
}

TEST_F(BadInput, ConfigNonPositiveSize) {
  expect_config_rejected(set_config("num_attention_heads", 0), {"key 'num_attention_heads' must be between 1 and"});
}

TEST_F(BadInput, ConfigNotAnObject) {
  expect_config_rejected([](const std::string&) { return "[1, 2]"; }, {"should hold a JSON object, got array"});
}

TEST_F(BadInput, ConfigDeeplyNestedValue) {
  expect_config_rejected(
      [](const std::string&) {
        return "{\"num_layers\": " + std::string(1000000, '[') + std::string(1000000, ']') + "}";
      },
      {"key 'num_layers' should be an integer, got an array of 1 elements"});
}

// --- case folder ------------------------------------------------------------------------------------------------

TEST_F(BadInput, MissingCaseFolder) {
  TempDir tmp("parent");
  const std::string dir = (tmp.path() / "no_such_case").string();
  auto rep = run_check(dir);
  ASSERT_FALSE(rep.ok());
  expect_mentions(rep.error().message, {dir, "no such case folder"});
  expect_cli_fails(dir, {dir, "no such case folder"});
}

TEST_F(BadInput, MissingWeightsFile) {
  TempDir tmp("case");
  copy_case_and_corrupt(tmp, "config.json", [](const std::string& s) { return s; });
  fs::remove(tmp.path() / kWeights);
  expect_cli_fails(tmp.str(), {(tmp.path() / kWeights).string(), "no such file"});
}

// --- sharded checkpoints ---------------------------------------------------------------------------------------

// Splits the fixture's weights into two shards with an index beside them; returns the tensor names.
std::vector<std::string> write_sharded(const fs::path& dir) {
  auto f = SafetensorsFile::open(case_dir() + "/" + kWeights);
  EXPECT_TRUE(f.ok()) << f.error().message;
  const std::vector<std::string> names = (*f)->names();
  std::vector<std::pair<std::string, Tensor>> shard[2];
  Json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", Json::object()}};
  for (size_t i = 0; i < names.size(); ++i) {
    const int s = i < names.size() / 2 ? 0 : 1;
    shard[s].emplace_back(names[i], (*f)->get(names[i]).value());
    index["weight_map"][names[i]] = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
  }
  for (int s = 0; s < 2; ++s) {
    Status st =
        save_safetensors((dir / ("model-0000" + std::to_string(s + 1) + "-of-00002.safetensors")).string(), shard[s]);
    EXPECT_TRUE(st.ok()) << st.error().message;
  }
  write_bytes(dir / "model.safetensors.index.json", index.dump(2));
  return names;
}

TEST_F(BadInput, ShardedCheckpointLoads) {
  TempDir tmp("shards");
  const std::vector<std::string> names = write_sharded(tmp.path());
  auto ck = Checkpoint::open_dir(tmp.str());
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_EQ(ck->names(), names);
  auto whole = Checkpoint::open_file(case_dir() + "/" + kWeights);
  ASSERT_TRUE(whole.ok());
  for (const auto& n : names) {
    Tensor a = ck->get(n).value(), b = whole->get(n).value();
    ASSERT_EQ(a.shape(), b.shape()) << n;
    EXPECT_EQ(a.to_vector(), b.to_vector()) << n;
  }
  auto cfg = SD3Config::from_json(case_dir() + "/config.json");
  ASSERT_TRUE(cfg.ok());
  EXPECT_TRUE(SD3Transformer::load(*ck, *cfg).ok());
}

// diffusers variants side by side (genmo/mochi-1-preview ships the f32 weights and a bf16 variant in each
// component folder): the bf16 variant is opened, sharded (index.bf16.json) or in one file; a folder with only
// the plain weights, or only a variant, opens those.
TEST_F(BadInput, Bf16VariantIsPreferredBesideThePlainWeights) {
  TempDir tmp("variants");
  const std::vector<std::string> names = write_sharded(tmp.path());
  // The same tensors as a bf16 variant, sharded as diffusers names it.
  auto plain = Checkpoint::open_dir(tmp.str());
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  std::vector<std::pair<std::string, Tensor>> shard[2];
  Json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", Json::object()}};
  for (size_t i = 0; i < names.size(); ++i) {
    const int k = i < names.size() / 2 ? 0 : 1;
    shard[k].emplace_back(names[i], plain->get(names[i]).value().to(DType::BF16));
    index["weight_map"][names[i]] = "model.bf16-0000" + std::to_string(k + 1) + "-of-00002.safetensors";
  }
  for (int k = 0; k < 2; ++k)
    ASSERT_TRUE(
        save_safetensors((tmp.path() / ("model.bf16-0000" + std::to_string(k + 1) + "-of-00002.safetensors")).string(),
                         shard[k])
            .ok());
  write_bytes(tmp.path() / "model.safetensors.index.bf16.json", index.dump(2));
  auto ck = Checkpoint::open_dir(tmp.str());
  ASSERT_TRUE(ck.ok()) << ck.error().message;
  EXPECT_EQ(ck->names(), names);
  for (const auto& n : names) EXPECT_EQ(ck->get(n).value().dtype(), DType::BF16) << n;
  // Only the variant: the same.
  fs::remove(tmp.path() / "model.safetensors.index.json");
  for (int k = 1; k <= 2; ++k) fs::remove(tmp.path() / ("model-0000" + std::to_string(k) + "-of-00002.safetensors"));
  auto only = Checkpoint::open_dir(tmp.str());
  ASSERT_TRUE(only.ok()) << only.error().message;
  EXPECT_EQ(only->names(), names);
  EXPECT_EQ(only->get(names[0]).value().dtype(), DType::BF16);
}

TEST_F(BadInput, ShardedMissingShard) {
  TempDir tmp("shards");
  write_sharded(tmp.path());
  fs::remove(tmp.path() / "model-00002-of-00002.safetensors");
  auto ck = Checkpoint::open_dir(tmp.str());
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message, {(tmp.path() / "model.safetensors.index.json").string(),
                                       "shard model-00002-of-00002.safetensors is missing"});
}

TEST_F(BadInput, ShardedTensorAbsentFromItsShard) {
  TempDir tmp("shards");
  write_sharded(tmp.path());
  const fs::path index = tmp.path() / "model.safetensors.index.json";
  Json j = Json::parse(read_bytes(index));
  j["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors";
  write_bytes(index, j.dump(2));
  auto ck = Checkpoint::open_dir(tmp.str());
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message,
                  {index.string(), "tensor 'extra.weight' is not in its shard model-00001-of-00002.safetensors"});
}

TEST_F(BadInput, ShardedCorruptShard) {
  TempDir tmp("shards");
  write_sharded(tmp.path());
  const fs::path shard = tmp.path() / "model-00001-of-00002.safetensors";
  const std::string s = read_bytes(shard);
  write_bytes(shard, s.substr(0, s.size() - 100));
  auto ck = Checkpoint::open_dir(tmp.str());
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message, {shard.string(), "out of range"});
}

TEST_F(BadInput, ShardedIndexWithoutWeightMap) {
  TempDir tmp("shards");
  write_sharded(tmp.path());
  const fs::path index = tmp.path() / "model.safetensors.index.json";
  write_bytes(index, "{\"metadata\": {}}");
  auto ck = Checkpoint::open_dir(tmp.str());
  ASSERT_FALSE(ck.ok());
  expect_mentions(ck.error().message, {index.string(), "no \"weight_map\" object"});
}

}  // namespace
