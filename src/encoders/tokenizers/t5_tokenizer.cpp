#include "encoders/tokenizers/t5_tokenizer.h"

#include <sentencepiece_processor.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/json_config.h"

namespace meshdit {

Result<T5Tokenizer> T5Tokenizer::load(const std::string& path) {
  std::string model = path, config;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    model = path + "/spiece.model";
    if (std::filesystem::exists(path + "/tokenizer_config.json", ec)) config = path + "/tokenizer_config.json";
  }
  std::ifstream f(model, std::ios::binary);
  if (!f) return make_error(model + ": cannot open SentencePiece model");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return make_error(model + ": read failed");
  const std::string bytes = ss.str();
  T5Tokenizer t;
  t.sp_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
  const auto st = t.sp_->LoadFromSerializedProto(bytes);
  if (!st.ok()) return make_error(model + ": not a readable SentencePiece model: " + st.ToString());

  std::string eos = "</s>", pad = "<pad>";
  if (!config.empty()) {
    MD_TRY(Json cfg, load_json(config));
    for (auto [key, dst] : {std::pair<const char*, std::string*>("eos_token", &eos), {"pad_token", &pad}}) {
      if (!cfg.contains(key) || cfg[key].is_null()) continue;
      const Json& v = cfg[key];
      if (v.is_string())
        *dst = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v["content"].is_string())
        *dst = v["content"].get<std::string>();
      else
        return make_error(config + ": key '" + key + "' should be a token string, got " + v.dump());
    }
    if (cfg.contains("model_max_length") && cfg["model_max_length"].is_number()) {
      const double m = cfg["model_max_length"].get<double>();
      t.model_max_length_ = (m > 0 && m < 1e9) ? int64_t(m) : 0;
    }
  }
  auto piece_id = [&](const std::string& piece, const char* what) -> Result<int64_t> {
    const int id = t.sp_->PieceToId(piece);
    if (id < 0 || (t.sp_->IsUnknown(id) && t.sp_->IdToPiece(id) != piece))
      return make_error(model + ": " + what + " '" + piece + "' is not a piece of the model");
    return int64_t(id);
  };
  MD_TRY(t.eos_id_, piece_id(eos, "eos token"));
  MD_TRY(t.pad_id_, piece_id(pad, "pad token"));
  t.suffix_ = {t.eos_id_};
  return t;
}

std::vector<int64_t> T5Tokenizer::encode_text(const std::string& text) const {
  std::vector<int> ids;
  const auto st = sp_->Encode(sanitize_utf8(text), &ids);
  MD_CHECK(st.ok(), "SentencePiece encode failed: " + st.ToString());  // only fails on an unloaded model
  return std::vector<int64_t>(ids.begin(), ids.end());
}

int64_t T5Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::string T5Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> v;
  for (int64_t id : ids)
    if (id >= 0 && id < vocab_size() && id != eos_id_ && id != pad_id_) v.push_back(int(id));
  std::string out;
  (void)sp_->Decode(v, &out);
  return out;
}

}  // namespace meshdit
