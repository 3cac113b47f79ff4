// JSON files (config.json, model_index.json, meta.json) and typed config structs. A config struct holds
// its documented defaults; ConfigReader overwrites a field when the key is present and records an error
// naming the file and key when the value has the wrong type.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"

namespace meshdit {

using Json = nlohmann::json;

Result<Json> load_json(const std::string& path);

class ConfigReader {
 public:
  ConfigReader(const Json& j, std::string file) : j_(j), file_(std::move(file)) {}

  void get(const char* key, int& out) { read(key, out, "an integer", [](const Json& v) { return v.is_number_integer(); }); }
  void get(const char* key, int64_t& out) { read(key, out, "an integer", [](const Json& v) { return v.is_number_integer(); }); }
  void get(const char* key, float& out) { read(key, out, "a number", [](const Json& v) { return v.is_number(); }); }
  void get(const char* key, double& out) { read(key, out, "a number", [](const Json& v) { return v.is_number(); }); }
  void get(const char* key, bool& out) { read(key, out, "a boolean", [](const Json& v) { return v.is_boolean(); }); }
  void get(const char* key, std::string& out) { read(key, out, "a string", [](const Json& v) { return v.is_string(); }); }
  void get(const char* key, std::vector<int>& out) {
    read(key, out, "a list of integers", [](const Json& v) {
      if (!v.is_array()) return false;
      for (const auto& e : v)
        if (!e.is_number_integer()) return false;
      return true;
    });
  }
  // Present and not null.
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  // Records a semantic error (a value of the right type that is out of range).
  void fail(const std::string& key, const std::string& why) { add(key, why); }
  Status status() const;

 private:
  template <class T, class Pred>
  void read(const char* key, T& out, const char* kind, Pred ok) {
    if (!has(key)) return;  // missing: keep the documented default
    const Json& v = j_[key];
    if (!ok(v)) {
      add(key, std::string("should be ") + kind + ", got " + v.dump());
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
