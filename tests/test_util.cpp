#include "test_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "io/checkpoint.h"

namespace fs = std::filesystem;

namespace meshdit::test {

std::vector<uint8_t> unbase64(const std::string& s) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
  };
  std::vector<uint8_t> out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    const int v = val(c);
    if (v < 0) continue;
    acc = acc << 6 | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(uint8_t(acc >> bits & 0xff));
    }
  }
  return out;
}

std::vector<uint8_t> png_pixels(const std::vector<uint8_t>& png, int* w, int* h, PngText* text) {
  const TempDir dir("png");
  const std::string path = (dir.path() / "x.png").string();
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
  int pw = 0, ph = 0;
  auto px = read_png(path, w ? w : &pw, h ? h : &ph, text);
  EXPECT_TRUE(px.ok()) << px.error().message;
  return px.ok() ? *px : std::vector<uint8_t>{};
}

std::string repo_dir() { return MESHDIT_SOURCE_DIR; }

std::string shared_fixtures_dir() {
  if (const char* e = std::getenv("MESHDIT_SHARED_FIXTURES")) return e;
  fs::path p = fs::path(MESHDIT_SOURCE_DIR).parent_path() / "shared" / "fixtures";
  return fs::is_directory(p) ? p.string() : "";
}

std::string fixtures_dir() {
  std::string s = shared_fixtures_dir();
  return s.empty() ? repo_dir() + "/tests/fixtures" : s;
}

Tensor fixture_tensor(const std::string& case_name, const std::string& file, const std::string& tensor) {
  auto f = Checkpoint::open(fixtures_dir() + "/" + case_name + "/" + file);
  MD_CHECK(f.ok(), f.ok() ? "" : f.error().message);
  auto t = f->get(tensor);
  MD_CHECK(t.ok(), t.ok() ? "" : t.error().message);
  return t->to(DType::F32).contiguous();
}


std::vector<std::string> case_names(const std::string& dir) {
  std::vector<std::string> v;
  if (!fs::is_directory(dir)) return v;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && fs::exists(e.path() / "meta.json")) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

std::unique_ptr<Communicator> geometry_comm(int rank, int size) { return std::make_unique<ShapeOnlyComm>(size, rank); }

std::string write_header_only(const fs::path& p, const std::vector<std::pair<std::string, Shape>>& shapes) {
  nlohmann::json h = nlohmann::json::object();
  uint64_t at = 0;
  for (const auto& [name, shape] : shapes) {
    const uint64_t bytes = uint64_t(shape_numel(shape)) * 2;
    h[name] = {{"dtype", "BF16"}, {"shape", shape}, {"data_offsets", {at, at + bytes}}};
    at += bytes;
  }
  std::string text = h.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[size_t(i)] = char((uint64_t(text.size()) >> (8 * i)) & 0xff);
  {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << len << text;
  }
  fs::resize_file(p, 8 + text.size() + at);
  return p.string();
}



}  // namespace meshdit::test

namespace meshdit::test {

std::filesystem::path scratch_dir(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path d = fs::temp_directory_path() / ("meshdit_" + name + "_" + std::to_string(getpid()));
  std::error_code ec;
  fs::remove_all(d, ec);
  fs::create_directories(d);
  return d;
}

TempDir::TempDir(const std::string& tag) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "_" + info->name() : "test";
  for (char& ch : name)
    if (ch == '/') ch = '_';  // parameterised tests
  path_ = scratch_dir(name + (tag.empty() ? "" : "_" + tag));
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void TempDir::write(const std::string& name, const std::string& text) const {
  std::ofstream(path_ / name, std::ios::binary) << text;
}

}  // namespace meshdit::test
