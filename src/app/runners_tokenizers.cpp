// Tokenizer cases (tok_*): ids.json holds the strings; every output "<variant>.input_ids" /
// "<variant>.attention_mask" is the batch tokenised as the pipelines call it (padding="max_length",
// truncation=True), the variant's pad token taken from meta.json "class"."<variant>".pad_token. Qwen2 cases differ:
// see run_qwen2_tokenizer.
#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>

#include "app/check.h"
#include "app/runners.h"
#include "encoders/tokenizers/clip_tokenizer.h"
#include "encoders/tokenizers/qwen2_tokenizer.h"
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

std::string ids_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

std::vector<int64_t> tensor_row(const Tensor& t, int64_t r) {
  const int64_t n = t.size(1);
  return std::vector<int64_t>(t.data<int64_t>() + r * n, t.data<int64_t>() + (r + 1) * n);
}

// Qwen2 cases (tok_qwen2_bpe): outputs "<variant>.template_input_ids" / ".template_attention_mask" are
// QwenImagePipeline's chat template around each prompt, padded to the longest (padding=True). ids.json's
// results are checked here too, since outputs.safetensors holds only the template batch: every variant's
// unpadded ids of the strings, its template batch and the template prefix length the pipeline drops.
Result<TensorMap> run_qwen2_tokenizer(const CaseContext& c) {
  if (!has_file(c, "vocab.json") || !has_file(c, "merges.txt"))
    return make_error(c.dir + ": a Qwen2 tokenizer case needs vocab.json and merges.txt");
  MD_TRY(std::vector<std::string> strings, case_strings(c));
  const std::string meta = c.dir + "/meta.json", ids_path = c.dir + "/ids.json";
  const Json& args = c.meta.contains("non_tensor_args") ? c.meta["non_tensor_args"] : Json::object();
  if (!args.is_object() || !args.contains("template") || !args["template"].is_string() ||
      !args.contains("template_prompts") || !args["template_prompts"].is_array())
    return make_error(meta + ": non_tensor_args needs \"template\" and \"template_prompts\"");
  const std::string tmpl = args["template"].get<std::string>();
  const size_t slot = tmpl.find("{}");
  if (slot == std::string::npos) return make_error(meta + ": the template has no {} for the prompt");
  std::vector<std::string> texts;
  for (const auto& p : args["template_prompts"]) {
    if (!p.is_string()) return make_error(meta + ": template_prompts holds a non-string: " + p.dump());
    texts.push_back(tmpl.substr(0, slot) + p.get<std::string>() + tmpl.substr(slot + 2));
  }
  // QwenImagePipeline tokenises with max_length = tokenizer_max_length (1024) + drop_idx.
  int max_length = 1024 + 34;
  if (args.contains("max_length") && args["max_length"].is_number_integer())
    max_length = args["max_length"].get<int>();
  else if (args.contains("pipeline_drop_idx") && args["pipeline_drop_idx"].is_number_integer())
    max_length = 1024 + args["pipeline_drop_idx"].get<int>();

  MD_TRY(Qwen2Tokenizer tok, Qwen2Tokenizer::load(c.dir));
  MD_TRY(TokenizedBatch batch, tok.encode(texts, max_length, /*pad=*/false));
  TensorMap out;
  for (const auto& variant : case_variants(c)) {
    const auto pad = variant_pad_token(c, variant);
    if (pad && tok.token_id(*pad) != tok.pad_id())
      return make_error(meta + ": " + variant + " pads with '" + *pad + "', the folder's pad token is '" +
                        tok.token(tok.pad_id()) + "'");
    out[variant + ".template_input_ids"] = batch.input_ids;
    out[variant + ".template_attention_mask"] = batch.attention_mask;
  }

  MD_TRY(Json ids, load_json(ids_path));
  if (!ids.contains("results") || !ids["results"].is_object()) return make_error(ids_path + ": no \"results\" object");
  const int64_t prefix_len = int64_t(tok.encode(tmpl.substr(0, slot)).size());
  for (auto it = ids["results"].begin(); it != ids["results"].end(); ++it) {
    const std::string where = ids_path + ": results." + it.key();
    const Json& r = it.value();
    try {
      if (r.contains("unpadded")) {
        const Json& u = r["unpadded"];
        if (!u.is_array() || u.size() != strings.size())
          return make_error(where + ".unpadded should hold one list per string");
        for (size_t i = 0; i < strings.size(); ++i) {
          const auto got = tok.encode(strings[i]), want = u[i].get<std::vector<int64_t>>();
          if (got != want)
            return make_error(where + ".unpadded[" + std::to_string(i) + "]: got " + ids_str(got) + ", expected " +
                              ids_str(want));
        }
      }
      for (const char* key : {"template_input_ids", "template_attention_mask"}) {
        if (!r.contains(key)) continue;
        const Tensor& t = std::string(key) == "template_input_ids" ? batch.input_ids : batch.attention_mask;
        const Json& rows = r[key];
        if (!rows.is_array() || int64_t(rows.size()) != t.size(0))
          return make_error(where + "." + key + " should hold " + std::to_string(t.size(0)) + " rows");
        for (int64_t i = 0; i < t.size(0); ++i) {
          const auto got = tensor_row(t, i), want = rows[size_t(i)].get<std::vector<int64_t>>();
          if (got != want)
            return make_error(where + "." + key + "[" + std::to_string(i) + "]: got " + ids_str(got) + ", expected " +
                              ids_str(want));
        }
      }
      if (r.contains("template_prefix_len") && r["template_prefix_len"].get<int64_t>() != prefix_len)
        return make_error(where + ".template_prefix_len: got " + std::to_string(prefix_len) + ", expected " +
                          r["template_prefix_len"].dump());
    } catch (const nlohmann::json::exception& e) {
      return make_error(where + ": " + e.what());
    }
  }
  return out;
}

// A tokenizer case whose meta.json names no tokenizer family: decided by its files.
Result<TensorMap> run_tokenizer_by_files(const CaseContext& c) {
  if (has_file(c, "spiece.model")) return run_t5_tokenizer(c);
  if (has_file(c, "vocab.json") && has_file(c, "merges.txt")) {
    // CLIP and Qwen2 BPE folders hold the same files: tokenizer_config.json tells them apart.
    std::string cls = "CLIPTokenizer";
    if (has_file(c, "tokenizer_config.json")) {
      MD_TRY(Json cfg, load_json(c.dir + "/tokenizer_config.json"));
      if (cfg.contains("tokenizer_class") && cfg["tokenizer_class"].is_string())
        cls = cfg["tokenizer_class"].get<std::string>();
    }
    if (cls.rfind("Qwen2Tokenizer", 0) == 0) return run_qwen2_tokenizer(c);
    if (cls.rfind("CLIPTokenizer", 0) != 0)
      return make_error(c.dir + ": tokenizer class '" + cls + "' is not implemented yet (only CLIP, T5, Qwen2 are)");
    return run_clip_tokenizer(c);
  }
  return make_error(c.dir + ": no tokenizer files (vocab.json + merges.txt, or spiece.model)");
}

}  // namespace

void register_tokenizer_runners() {
  register_case_runner("tokenizer.clip", run_clip_tokenizer);
  register_case_runner("tokenizer.t5", run_t5_tokenizer);
  register_case_runner("tokenizer.qwen2", run_qwen2_tokenizer);
  register_case_runner("tokenizer", run_tokenizer_by_files);
}

}  // namespace meshdit
