#include "io/json_config.h"

#include <fstream>
#include <sstream>

namespace meshdit {

Result<Json> load_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) return make_error(path + ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return Json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    return make_error(path + ": invalid JSON: " + e.what());
  }
}

Status ConfigReader::status() const {
  if (errors_.empty()) return ok_status();
  return make_error(file_ + ": " + errors_);
}

}  // namespace meshdit
