// Check runners for the text encoders.
#include "app/check.h"
#include "app/runners.h"
#include "encoders/clip_text.h"
#include "encoders/qwen25vl.h"
#include "encoders/t5.h"
#include "io/checkpoint.h"

namespace meshdit {
namespace {

Result<TensorMap> run_clip_text(const CaseContext& c) {
  MD_TRY(CLIPTextConfig cfg, CLIPTextConfig::from_json(c.dir + "/config.json"));
  MD_TRY(Checkpoint ck, c.open_weights(c.dir + "/model.safetensors"));
  MD_TRY(CLIPTextModel model, CLIPTextModel::load(ck, cfg));
  MD_TRY(Tensor ids, c.device_input("input_ids"));
  MD_TRY(CLIPTextOutput o, model.forward(ids));
  TensorMap out;
  out["last_hidden_state"] = o.last_hidden_state;
  out["pooler_output"] = o.pooler_output;
  if (o.text_embeds.defined()) out["text_embeds"] = o.text_embeds;
  const size_t n = o.hidden_states.size();
  for (size_t i = 0; i < n; ++i) out["hidden_states." + std::to_string(i)] = o.hidden_states[i];
  if (n >= 2) out["penultimate_hidden_state"] = o.hidden_states[n - 2];
  return out;
}

// T5 v1.1 and UMT5 share one encoder; the config's model_type says which (UMT5: a bias table per layer).
Result<T5Encoder> load_t5_family(const CaseContext& c, const T5Config& cfg) {
  const char* name = cfg.name();
  ModelTraits traits{name, cfg.num_heads, /*cfg_batch=*/false, /*image_tokens=*/0, /*uneven_heads_ok=*/true};
  MD_TRY(const Mesh* mesh, c.mesh(traits));
  if (mesh->config().sp > 1 || mesh->config().cfg > 1)
    return make_error(std::string("the ") + name + " runs with tensor parallelism only (--parallel tp=N)");
  const ParallelContext par = mesh->context();
  MD_TRY(Checkpoint ck, c.open_weights(c.dir + "/model.safetensors"));
  return T5Encoder::load(ck, cfg, &par);
}

Result<TensorMap> run_t5(const CaseContext& c) {
  MD_TRY(T5Config cfg, T5Config::from_json(c.dir + "/config.json"));
  MD_TRY(T5Encoder model, load_t5_family(c, cfg));
  MD_TRY(Tensor ids, c.device_input("input_ids"));
  MD_TRY(Tensor mask, c.device_input("attention_mask"));
  TensorMap out;
  std::vector<Tensor> hs;
  MD_TRY(out["last_hidden_state"], model.forward(ids, Tensor(), &hs));
  for (size_t i = 0; i < hs.size(); ++i) out["hidden_states." + std::to_string(i)] = hs[i];
  MD_TRY(out["last_hidden_state_masked"], model.forward(ids, mask));
  return out;
}

// attention_mask.gt(0).sum(dim=1) of a [B, L] mask, as WanPipeline takes its sequence lengths.
Result<std::vector<int64_t>> mask_lengths(const Tensor& mask) {
  if (mask.dim() != 2) return make_error("attention_mask must be [B, L], got " + shape_str(mask.shape()));
  const std::vector<float> m = (mask.dtype() == DType::F32 ? mask : mask.to(DType::F32)).to_vector();
  const int64_t B = mask.size(0), L = mask.size(1);
  std::vector<int64_t> lens(size_t(B), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < L; ++j) lens[size_t(b)] += m[size_t(b * L + j)] > 0;
  return lens;
}

// UMT5 as WanPipeline calls it: with the mask, then each row trimmed to its length and zero-padded again.
Result<TensorMap> run_umt5(const CaseContext& c) {
  MD_TRY(T5Config cfg, T5Config::from_json(c.dir + "/config.json"));
  if (!cfg.bias_per_layer) return make_error(c.dir + "/config.json: model_type should be 'umt5' for UMT5EncoderModel");
  MD_TRY(T5Encoder model, load_t5_family(c, cfg));
  MD_TRY(Tensor ids, c.device_input("input_ids"));
  MD_TRY(Tensor mask, c.device_input("attention_mask"));
  MD_TRY(Tensor host_mask, c.input("attention_mask"));
  TensorMap out;
  std::vector<Tensor> hs;
  MD_TRY(Tensor last, model.forward(ids, mask, &hs));
  out["last_hidden_state"] = last;
  for (size_t i = 0; i < hs.size(); ++i) out["hidden_states." + std::to_string(i)] = hs[i];
  MD_TRY(std::vector<int64_t> lens, mask_lengths(host_mask));
  // The fixture's ids are already padded to the pipeline's max_sequence_length.
  MD_TRY(out["wan_prompt_embeds"], trim_prompt_embeds(last, lens, last.size(1)));
  return out;
}

Result<TensorMap> run_qwen25vl_text(const CaseContext& c) {
  MD_TRY(Qwen25VLTextConfig cfg, Qwen25VLTextConfig::from_json(c.dir + "/config.json"));
  ModelTraits traits{"Qwen2.5-VL text encoder", cfg.num_attention_heads, /*cfg_batch=*/false, /*image_tokens=*/0,
                     /*uneven_heads_ok=*/true};
  MD_TRY(const Mesh* mesh, c.mesh(traits));
  if (mesh->config().sp > 1 || mesh->config().cfg > 1)
    return make_error("the Qwen2.5-VL text encoder runs with tensor parallelism only (--parallel tp=N)");
  const ParallelContext par = mesh->context();
  MD_TRY(Checkpoint ck, c.open_weights(c.dir + "/model.safetensors"));
  MD_TRY(Qwen25VLTextEncoder model, Qwen25VLTextEncoder::load(ck, cfg, &par));
  MD_TRY(Tensor ids, c.device_input("input_ids"));
  MD_TRY(Tensor mask, c.device_input("attention_mask"));
  TensorMap out;
  std::vector<Tensor> hs;
  MD_TRY(out["hidden_states_last"], model.forward(ids, mask, &hs));
  for (size_t i = 0; i < hs.size(); ++i) out["hidden_states." + std::to_string(i)] = hs[i];
  return out;
}

}  // namespace

void register_encoder_runners() {
  register_case_runner("transformers.CLIPTextModelWithProjection", run_clip_text);
  register_case_runner("transformers.CLIPTextModelWithProjection (+ transformers.CLIPTextModel for pooler_output)",
                       run_clip_text);
  register_case_runner("transformers.T5EncoderModel", run_t5);
  register_case_runner("transformers.UMT5EncoderModel", run_umt5);
  register_case_runner("transformers.Qwen2_5_VLForConditionalGeneration", run_qwen25vl_text);
}

}  // namespace meshdit
