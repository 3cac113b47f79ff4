#include "app/serve_request.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>

#include "core/memory_info.h"

namespace meshdit {
namespace {

using Json = nlohmann::json;

Error field_error(const std::string& field, const std::string& msg) { return make_error(field + ": " + msg); }

std::string type_name(const Json& v) { return v.is_number_integer() ? "integer" : v.type_name(); }

Result<Json> parse_object(const std::string& body) {
  Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Parsed again for the position of the fault: the non-throwing parse only says that it failed.
    std::string why = "not valid JSON";
    try {
      const Json again = Json::parse(body);
      (void)again;
    } catch (const Json::parse_error& e) {
      why = "malformed JSON at byte " + std::to_string(e.byte);
    }
    return field_error("body", why);
  }
  if (!j.is_object()) return field_error("body", "must be a JSON object, not " + std::string(j.type_name()));
  return j;
}

Status check_known(const Json& j, const std::set<std::string>& known) {
  for (const auto& item : j.items()) {
    const std::string& key = item.key();
    if (known.count(key)) continue;
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    return field_error(key, "unknown field (this endpoint takes: " + list + ")");
  }
  return ok_status();
}

Result<std::string> get_text(const Json& j, const std::string& field, const ServeLimits& limits, bool required) {
  if (!j.contains(field)) {
    if (required) return field_error(field, "required");
    return std::string();
  }
  const Json& v = j[field];
  if (!v.is_string()) return field_error(field, "must be a string, not " + type_name(v));
  const std::string s = v.get<std::string>();
  if (required && s.empty()) return field_error(field, "must not be empty");
  if (s.size() > limits.max_prompt_bytes)
    return field_error(
        field, std::to_string(s.size()) + " bytes, over the limit of " + std::to_string(limits.max_prompt_bytes));
  return s;
}

// An integer field in [lo, hi]; absent: `fallback`.
Result<int64_t> get_int(const Json& j, const std::string& field, int64_t lo, int64_t hi, int64_t fallback) {
  if (!j.contains(field)) return fallback;
  const Json& v = j[field];
  if (!v.is_number_integer()) return field_error(field, "must be an integer, not " + type_name(v));
  // Non-negative integers parse as unsigned: one above int64's range is out of range, not wrapped.
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi))
    return field_error(field, std::to_string(v.get<uint64_t>()) + " is out of range [" + std::to_string(lo) + ", " +
                                  std::to_string(hi) + "]");
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    return field_error(field,
                       std::to_string(x) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

Result<std::optional<float>> get_number(const Json& j, const std::string& field, double lo, double hi) {
  if (!j.contains(field) || j[field].is_null()) return std::optional<float>();
  const Json& v = j[field];
  if (!v.is_number()) return field_error(field, "must be a number, not " + type_name(v));
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%g is out of range [%g, %g]", x, lo, hi);
    return field_error(field, buf);
  }
  return std::optional<float>(float(x));
}

Result<int64_t> check_side(const std::string& field, int64_t v, const ServeLimits& limits) {
  if (v < 16 || v > limits.max_side)
    return field_error(field, std::to_string(v) + " is out of range [16, " + std::to_string(limits.max_side) + "]");
  if (v % 16 != 0) return field_error(field, std::to_string(v) + " is not a multiple of 16");
  return v;
}

// Seed: absent or -1: drawn here; otherwise an integer in [0, 2^64).
Status read_seed(const Json& j, const std::string& field, ImageRequest& r) {
  if (!j.contains(field) || j[field].is_null() ||
      (j[field].is_number_integer() && j[field].get<int64_t>() == -1 && !j[field].is_number_unsigned())) {
    // 32 bits: a seed a browser's JavaScript numbers carry exactly.
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    r.options.seed = rng() & 0xffffffffu;
    r.random_seed = true;
    return ok_status();
  }
  const Json& v = j[field];
  if (!v.is_number_integer()) return field_error(field, "must be an integer (-1: random), not " + type_name(v));
  if (!v.is_number_unsigned()) return field_error(field, "must be -1 (random) or at least 0");
  r.options.seed = v.get<uint64_t>();
  return ok_status();
}

Status read_cache(const Json& j, ImageRequest& r) {
  if (!j.contains("cache")) return ok_status();
  if (!j["cache"].is_string()) return field_error("cache", "must be a string, not " + type_name(j["cache"]));
  auto c = parse_cache_options(j["cache"].get<std::string>());
  if (!c.ok()) return field_error("cache", c.error().message);
  r.options.cache = *c;
  return ok_status();
}

Status check_memory(const ImageRequest& r, const std::string& field, const ServeLimits& limits) {
  const GenerateOptions& o = r.options;
  const double need = estimate_generation_bytes(o.width, o.height, o.num_images_per_prompt);
  const double have = limits.memory_bytes > 0 ? limits.memory_bytes : available_memory_bytes();
  if (have > 0 && need > have) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%lldx%lld x %lld image(s) needs about %.1f GiB (estimate), %.1f GiB available",
                  (long long)o.width, (long long)o.height, (long long)o.num_images_per_prompt, need / 1073741824.0,
                  have / 1073741824.0);
    return field_error(field, buf);
  }
  return ok_status();
}

}  // namespace

double estimate_generation_bytes(int64_t width, int64_t height, int64_t images) {
  const double pixels = double(width) * double(height) * double(std::max<int64_t>(1, images));
  const double vae = pixels * 128 * 4 * 3;
  const double tokens = pixels / 256;
  const double transformer = tokens * 3072 * 4 * 16;  // a Flux-wide residual stream and its block temporaries
  return vae + transformer;
}

std::string error_field(const Error& e) {
  const auto at = e.message.find(": ");
  return at == std::string::npos ? "body" : e.message.substr(0, at);
}

std::string error_detail(const Error& e) {
  const auto at = e.message.find(": ");
  return at == std::string::npos ? e.message : e.message.substr(at + 2);
}

Result<ImageRequest> parse_openai_request(const std::string& body, const RequestDefaults& defaults,
                                          const ServeLimits& limits) {
  MD_TRY(Json j, parse_object(body));
  // model and user are part of OpenAI's request; the server has one model and keeps no users.
  MD_RETURN_IF_ERROR(check_known(j, {"prompt", "negative_prompt", "n", "size", "response_format", "steps", "guidance",
                                     "seed", "true_cfg", "cache", "frames", "model", "user"}));
  for (const char* f : {"model", "user"})
    if (j.contains(f) && !j[f].is_string()) return field_error(f, "must be a string, not " + type_name(j[f]));
  ImageRequest r;
  GenerateOptions& o = r.options;
  MD_TRY(std::string prompt, get_text(j, "prompt", limits, true));
  MD_TRY(std::string negative, get_text(j, "negative_prompt", limits, false));
  o.prompt = {prompt};
  if (j.contains("negative_prompt")) o.negative_prompt = {negative};
  MD_TRY(o.num_images_per_prompt, get_int(j, "n", 1, limits.max_images, 1));
  if (j.contains("response_format")) {
    const Json& v = j["response_format"];
    if (!v.is_string()) return field_error("response_format", "must be a string, not " + type_name(v));
    if (v.get<std::string>() != "b64_json")
      return field_error(
          "response_format",
          "'" + v.get<std::string>() + "' is not supported: only b64_json (the server keeps no files to link)");
  }
  o.width = defaults.width;
  o.height = defaults.height;
  if (j.contains("size")) {
    const Json& v = j["size"];
    if (!v.is_string()) return field_error("size", "must be a string WIDTHxHEIGHT, not " + type_name(v));
    const std::string s = v.get<std::string>();
    long long w = 0, h = 0;
    char tail = 0;
    if (std::sscanf(s.c_str(), "%lldx%lld%c", &w, &h, &tail) != 2 || s.find_first_not_of("0123456789x") != s.npos)
      return field_error("size", "'" + s.substr(0, 64) + "' is not WIDTHxHEIGHT (e.g. 1024x768)");
    MD_TRY(o.width, check_side("size", w, limits));
    MD_TRY(o.height, check_side("size", h, limits));
  }
  MD_TRY(o.steps, get_int(j, "steps", 1, limits.max_steps, defaults.steps));
  // Video pipelines: the frame count (the pipeline checks that its VAE makes it); 0: the model's.
  MD_TRY(o.num_frames, get_int(j, "frames", 1, limits.max_frames, 0));
  MD_TRY(o.guidance_scale, get_number(j, "guidance", 0, 100));
  MD_TRY(o.true_cfg_scale, get_number(j, "true_cfg", 0, 100));
  MD_RETURN_IF_ERROR(read_seed(j, "seed", r));
  MD_RETURN_IF_ERROR(read_cache(j, r));
  MD_RETURN_IF_ERROR(check_memory(r, "size", limits));
  return r;
}

Result<ImageRequest> parse_a1111_request(const std::string& body, const RequestDefaults& defaults,
                                         const ServeLimits& limits) {
  MD_TRY(Json j, parse_object(body));
  MD_RETURN_IF_ERROR(check_known(j, {"prompt", "negative_prompt", "width", "height", "steps", "cfg_scale", "seed",
                                     "batch_size", "n_iter", "send_images", "save_images", "cache"}));
  ImageRequest r;
  GenerateOptions& o = r.options;
  MD_TRY(std::string prompt, get_text(j, "prompt", limits, true));
  MD_TRY(std::string negative, get_text(j, "negative_prompt", limits, false));
  o.prompt = {prompt};
  // A1111 clients send "" when there is none; an empty negative prompt is none.
  if (!negative.empty()) o.negative_prompt = {negative};
  MD_TRY(o.num_images_per_prompt, get_int(j, "batch_size", 1, limits.max_images, 1));
  MD_TRY(int64_t n_iter, get_int(j, "n_iter", 1, 1, 1));
  (void)n_iter;
  using Flag = std::pair<const char*, bool>;
  for (const auto& [f, want] : {Flag{"send_images", true}, Flag{"save_images", false}}) {
    if (!j.contains(f)) continue;
    if (!j[f].is_boolean()) return field_error(f, "must be a boolean, not " + type_name(j[f]));
    if (j[f].get<bool>() != want)
      return field_error(
          f, want ? "must be true: images come back in the response" : "must be false: the server never writes files");
  }
  MD_TRY(int64_t w, get_int(j, "width", 16, limits.max_side, defaults.width));
  MD_TRY(int64_t h, get_int(j, "height", 16, limits.max_side, defaults.height));
  MD_TRY(o.width, check_side("width", w, limits));
  MD_TRY(o.height, check_side("height", h, limits));
  MD_TRY(o.steps, get_int(j, "steps", 1, limits.max_steps, defaults.steps));
  MD_TRY(o.guidance_scale, get_number(j, "cfg_scale", 0, 100));
  MD_RETURN_IF_ERROR(read_seed(j, "seed", r));
  MD_RETURN_IF_ERROR(read_cache(j, r));
  MD_RETURN_IF_ERROR(check_memory(r, "width", limits));
  return r;
}

}  // namespace meshdit
