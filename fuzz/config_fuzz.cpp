// Feeds arbitrary bytes as a config.json: SD3Config::from_json_text parses them as load_json does and
// reads every key through ConfigReader. Every ConfigReader overload is then run on every key, so the
// type and range checks are exercised for the field types other models use.
#include <cstdint>
#include <string>
#include <vector>

#include "io/json_config.h"
#include "models/transformers/sd3.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto cfg = meshdit::SD3Config::from_json_text(text, "fuzz/config.json");
  if (cfg.ok()) {
    const meshdit::SD3Config& c = cfg.value();
    // Accepted sizes are positive and small enough for the products the loader forms.
    if (c.patch_size < 1 || c.num_layers < 1 || c.inner_dim() < 1 || c.inner_dim() > (int64_t(1) << 30))
      __builtin_trap();
  }

  auto j = meshdit::parse_json(text, "fuzz/config.json");
  if (!j.ok()) return 0;
  meshdit::ConfigReader r(j.value(), "fuzz/config.json");
  if (j.value().is_object()) {
    for (auto it = j.value().begin(); it != j.value().end(); ++it) {
      const std::string key = it.key();
      int i = 0;
      int64_t l = 0;
      float f = 0;
      double d = 0;
      bool b = false;
      std::string s;
      std::vector<int> v;
      r.get(key.c_str(), i);
      r.get(key.c_str(), l);
      r.get(key.c_str(), f);
      r.get(key.c_str(), d);
      r.get(key.c_str(), b);
      r.get(key.c_str(), s);
      r.get(key.c_str(), v);
    }
  }
  (void)r.status();
  (void)meshdit::json_brief(j.value());
  return 0;
}
