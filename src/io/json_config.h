// JSON files (config.json, model_index.json, meta.json) and typed config structs. A config struct holds
// its documented defaults; ConfigReader overwrites a field when the key is present and records an error
// naming the file and key when the value has the wrong type or does not fit the field.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"

namespace meshdit {

using Json = nlohmann::json;

Result<std::string> read_text_file(const std::string& path);
// Parses JSON text; `name` (the file) prefixes any error.
Result<Json> parse_json(const std::string& text, const std::string& name);
Result<Json> load_json(const std::string& path);

// A short rendering of a value for error messages: at most one level of nesting is printed (dump() recurses
// and a hostile file can nest a million levels deep) and long text is cut.
std::string json_brief(const Json& v);

class ConfigReader {
 public:
  ConfigReader(const Json& j, std::string file) : j_(j), file_(std::move(file)) {}

  void get(const char* key, int& out) { read_int(key, out); }
  void get(const char* key, int64_t& out) { read_int(key, out); }
  void get(const char* key, float& out) {
    read(key, out, "a number that fits a float32", [](const Json& v) {
      return v.is_number() && std::fabs(v.get<double>()) <= std::numeric_limits<float>::max();
    });
  }
  void get(const char* key, double& out) { read(key, out, "a number", [](const Json& v) { return v.is_number(); }); }
  void get(const char* key, bool& out) { read(key, out, "a boolean", [](const Json& v) { return v.is_boolean(); }); }
  void get(const char* key, std::string& out) { read(key, out, "a string", [](const Json& v) { return v.is_string(); }); }
  void get(const char* key, std::vector<int>& out) {
    read(key, out, "a list of 32-bit integers", [](const Json& v) {
      if (!v.is_array()) return false;
      for (const auto& e : v)
        if (!fits<int>(e)) return false;
      return true;
    });
  }
  void get(const char* key, std::vector<float>& out) {
    read(key, out, "a list of float32 numbers", [](const Json& v) {
      if (!v.is_array()) return false;
      for (const auto& e : v)
        if (!e.is_number() || std::fabs(e.get<double>()) > std::numeric_limits<float>::max()) return false;
      return true;
    });
  }
  void get(const char* key, std::vector<bool>& out) {
    read(key, out, "a list of booleans", [](const Json& v) {
      if (!v.is_array()) return false;
      for (const auto& e : v)
        if (!e.is_boolean()) return false;
      return true;
    });
  }
  // Present and not null.
  bool has(const char* key) const { return j_.is_object() && j_.contains(key) && !j_[key].is_null(); }
  // Records a semantic error (a value of the right type that is out of range).
  void fail(const std::string& key, const std::string& why) { add(key, why); }
  Status status() const;

 private:
  // An integer JSON value that T holds exactly.
  template <class T>
  static bool fits(const Json& v) {
    if (v.is_number_unsigned()) return v.get<uint64_t>() <= uint64_t(std::numeric_limits<T>::max());
    if (!v.is_number_integer()) return false;
    const int64_t i = v.get<int64_t>();
    return i >= int64_t(std::numeric_limits<T>::min()) && i <= int64_t(std::numeric_limits<T>::max());
  }
  template <class T>
  void read_int(const char* key, T& out) {
    if (has(key) && j_[key].is_number_integer() && !fits<T>(j_[key])) {
      add(key, "is out of range for a " + std::to_string(8 * sizeof(T)) + "-bit integer: " + json_brief(j_[key]));
      return;
    }
    read(key, out, "an integer", [](const Json& v) { return v.is_number_integer(); });
  }
  template <class T, class Pred>
  void read(const char* key, T& out, const char* kind, Pred ok) {
    if (!has(key)) return;  // missing: keep the documented default
    const Json& v = j_[key];
    if (!ok(v)) {
      add(key, std::string("should be ") + kind + ", got " + json_brief(v));
      return;
    }
    out = v.get<T>();
  }
  void add(const std::string& key, const std::string& why) {
    errors_ += (errors_.empty() ? "" : "; ") + std::string("key '") + key + "' " + why;
  }
  const Json& j_;
  std::string file_;
  std::string errors_;
};

}  // namespace meshdit
