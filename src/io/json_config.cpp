#include "io/json_config.h"

#include <fstream>
#include <sstream>

namespace meshdit {

Result<std::string> read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error(path + ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return make_error(path + ": read failed");
  return ss.str();
}

Result<Json> parse_json(const std::string& text, const std::string& name) {
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return make_error(name + ": invalid JSON: " + e.what());
  }
}

Result<Json> load_json(const std::string& path) {
  MD_TRY(std::string text, read_text_file(path));
  return parse_json(text, path);
}

std::string json_brief(const Json& v) {
  constexpr size_t kMax = 80;
  bool flat = true;  // no container inside a container
  if (v.is_structured())
    for (const auto& e : v)
      if (e.is_structured()) flat = false;
  std::string s;
  if (flat)
    s = v.dump();
  else
    s = v.is_array() ? "an array of " + std::to_string(v.size()) + " elements"
                     : "an object of " + std::to_string(v.size()) + " keys";
  if (s.size() > kMax) {
    size_t cut = kMax;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 sequence
    s = s.substr(0, cut) + "...";
  }
  return s;
}

Status ConfigReader::status() const {
  if (!j_.is_object()) return make_error(file_ + ": should hold a JSON object, got " + std::string(j_.type_name()));
  if (errors_.empty()) return ok_status();
  return make_error(file_ + ": " + errors_);
}

}  // namespace meshdit
