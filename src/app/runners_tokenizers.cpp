// Tokenizer cases (tok_*): ids.json holds the strings; every output "<variant>.input_ids" /
// "<variant>.attention_mask" is the batch tokenised as the pipelines call it (padding="max_length",
// truncation=True), the variant's pad token taken from meta.json "class"."<variant>".pad_token.
#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>

#include "app/check.h"
#include "app/runners.h"
#include "encoders/tokenizers/clip_tokenizer.h"
#include "encoders/tokenizers/t5_tokenizer.h"

namespace meshdit {
namespace {

bool has_file(const CaseContext& c, const char* name) {
  std::error_code ec;
  return std::filesystem::is_regular_file(c.dir + "/" + name, ec);
}

Result<std::vector<std::string>> case_strings(const CaseContext& c) {
  const std::string path = c.dir + "/ids.json";
  MD_TRY(Json ids, load_json(path));
  if (!ids.is_object() || !ids.contains("strings") || !ids["strings"].is_array())
    return make_error(path + ": no \"strings\" array");
  std::vector<std::string> out;
  for (const auto& s : ids["strings"]) {
    if (!s.is_string()) return make_error(path + ": \"strings\" holds a non-string: " + s.dump());
    out.push_back(s.get<std::string>());
  }
  return out;
}

Result<int> case_max_length(const CaseContext& c) {
  const Json& args = c.meta.contains("non_tensor_args") ? c.meta["non_tensor_args"] : Json::object();
  if (!args.is_object() || !args.contains("max_length") || !args["max_length"].is_number_integer())
    return make_error(c.dir + "/meta.json: non_tensor_args.max_length should be an integer");
  return args["max_length"].get<int>();
}

// "CLIPTokenizer.input_ids" -> variant "CLIPTokenizer" (meta.json "outputs" keys).
std::vector<std::string> case_variants(const CaseContext& c) {
  std::vector<std::string> v;
  if (!c.meta.contains("outputs") || !c.meta["outputs"].is_object()) return v;
  for (auto it = c.meta["outputs"].begin(); it != c.meta["outputs"].end(); ++it) {
    const size_t dot = it.key().rfind('.');
    if (dot == std::string::npos) continue;
    const std::string name = it.key().substr(0, dot);
    if (std::find(v.begin(), v.end(), name) == v.end()) v.push_back(name);
  }
  return v;
}

std::optional<std::string> variant_pad_token(const CaseContext& c, const std::string& variant) {
  const Json& cls = c.meta.contains("class") ? c.meta["class"] : Json();
  if (cls.is_object() && cls.contains(variant) && cls[variant].is_object() && cls[variant].contains("pad_token") &&
      cls[variant]["pad_token"].is_string())
    return cls[variant]["pad_token"].get<std::string>();
  return std::nullopt;
}

Status add_outputs(const Tokenizer& tok, const std::string& variant, const std::vector<std::string>& strings,
                   int max_length, TensorMap& out) {
  MD_TRY(TokenizedBatch b, tok.encode(strings, max_length, /*pad=*/true));
  out[variant + ".input_ids"] = b.input_ids;
  out[variant + ".attention_mask"] = b.attention_mask;
  return ok_status();
}

Result<TensorMap> run_clip_tokenizer(const CaseContext& c) {
  if (!has_file(c, "vocab.json") || !has_file(c, "merges.txt"))
    return make_error(c.dir + ": a CLIP tokenizer case needs vocab.json and merges.txt");
  MD_TRY(std::vector<std::string> strings, case_strings(c));
  MD_TRY(int max_length, case_max_length(c));
  std::map<std::string, ClipTokenizer> by_pad;  // one load per distinct pad token
  TensorMap out;
  for (const auto& variant : case_variants(c)) {
    ClipTokenizerOptions opt;
    opt.pad_token = variant_pad_token(c, variant);
    const std::string key = opt.pad_token.value_or("");
    auto it = by_pad.find(key);
    if (it == by_pad.end()) {
      MD_TRY(ClipTokenizer tok, ClipTokenizer::load(c.dir, opt));
      it = by_pad.emplace(key, std::move(tok)).first;
    }
    MD_RETURN_IF_ERROR(add_outputs(it->second, variant, strings, max_length, out));
  }
  return out;
}

Result<TensorMap> run_t5_tokenizer(const CaseContext& c) {
  if (!has_file(c, "spiece.model")) return make_error(c.dir + ": a T5 tokenizer case needs spiece.model");
  MD_TRY(std::vector<std::string> strings, case_strings(c));
  MD_TRY(int max_length, case_max_length(c));
  MD_TRY(T5Tokenizer tok, T5Tokenizer::load(c.dir));
  TensorMap out;
  for (const auto& variant : case_variants(c)) {
    const auto pad = variant_pad_token(c, variant);
    if (pad && *pad != "<pad>")
      return make_error(c.dir + "/meta.json: " + variant + " pads with '" + *pad + "'; only <pad> is supported");
    MD_RETURN_IF_ERROR(add_outputs(tok, variant, strings, max_length, out));
  }
  return out;
}

// A tokenizer case whose meta.json names no tokenizer family: decided by its files.
Result<TensorMap> run_tokenizer_by_files(const CaseContext& c) {
  if (has_file(c, "spiece.model")) return run_t5_tokenizer(c);
  if (has_file(c, "vocab.json") && has_file(c, "merges.txt")) {
    // Qwen2 (and GPT-2 style) BPE folders hold the same files; only CLIP's is implemented.
    std::string cls = "CLIPTokenizer";
    if (has_file(c, "tokenizer_config.json")) {
      MD_TRY(Json cfg, load_json(c.dir + "/tokenizer_config.json"));
      if (cfg.contains("tokenizer_class") && cfg["tokenizer_class"].is_string())
        cls = cfg["tokenizer_class"].get<std::string>();
    }
    if (cls.rfind("CLIPTokenizer", 0) != 0)
      return make_error(c.dir + ": tokenizer class '" + cls + "' is not implemented yet (only CLIP and T5 are)");
    return run_clip_tokenizer(c);
  }
  return make_error(c.dir + ": no tokenizer files (vocab.json + merges.txt, or spiece.model)");
}

}  // namespace

void register_tokenizer_runners() {
  // Qwen2's byte-level BPE ("tokenizer.qwen2") is deliberately not registered: not implemented yet.
  register_case_runner("tokenizer.clip", run_clip_tokenizer);
  register_case_runner("tokenizer.t5", run_t5_tokenizer);
  register_case_runner("tokenizer", run_tokenizer_by_files);
}

}  // namespace meshdit
