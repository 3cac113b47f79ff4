// QwenImagePipeline (diffusers pipelines/qwenimage/pipeline_qwenimage.py), step by step:
//   1. each prompt in the chat template -> Qwen2 tokens (1024 + 34 at most, padded to the longest row) ->
//      the Qwen2.5-VL language model's last hidden states; each row's real tokens without the template's
//      first 34 (the system turn), zero-padded again to the longest row, with a mask; cut to
//      max_sequence_length. The negative prompts the same way, for true CFG.
//   2. noise [B, 16, H/8, W/8] packed into 2x2 patches [B, N, 64], as Flux packs it
//   3. sigmas linspace(1, 1/steps), shifted with mu from N (the scheduler's exponential shift, its terminal
//      stretch)
//   4. the shared loop (pipelines/denoise.h): v = transformer(x, t/1000, text, mask, grid); with negative
//      prompts a second call, v = uncond + w (cond - uncond) rescaled per token to |cond|; x = Euler step
//   5. unpack to one frame [B, 16, 1, h, w], z = latents * std + mean (per channel, the VAE config's),
//      the causal 3-D VAE, frame 0, (x / 2 + 0.5).clamp(0, 1)
#include "pipelines/qwenimage.h"

#include <algorithm>
#include <string_view>

#include "backend/graphed_forward.h"
#include "backend/ops.h"
#include "core/trace.h"
#include "io/checkpoint.h"
#include "pipelines/components.h"
#include "pipelines/denoise.h"
#include "pipelines/flux.h"
#include "pipelines/vae_decode.h"

namespace meshdit {

Result<ModelTraits> QwenImagePipeline::traits(const std::string& dir, const GenerateOptions& options,
                                              const LoadOptions& from) {
  MD_TRY(QwenImageConfig tc, load_transformer_config<QwenImageConfig>(dir, from));
  ModelTraits t;
  t.name = "QwenImagePipeline " + dir;
  t.heads = tc.num_attention_heads;
  t.cfg_batch = options.true_cfg_scale.value_or(4.0f) > 1.0f && !options.negative_prompt.empty();
  const int64_t h = options.height ? options.height : 1024, w = options.width ? options.width : 1024;
  t.image_tokens = (h / 16) * (w / 16);
  return t;
}

Result<QwenImagePipeline> QwenImagePipeline::load(const std::string& dir, const Mesh& mesh, const LoadOptions& from) {
  Span span("stage", "load model");
  MD_TRY(DiffusersFolder folder, DiffusersFolder::open(dir));
  if (folder.class_name != "QwenImagePipeline")
    return make_error(dir + "/model_index.json: pipeline class '" + folder.class_name + "' is not QwenImagePipeline");
  QwenImagePipeline p;
  p.mesh_ = mesh;
  p.device_ = from.device;
  const ParallelContext par = p.mesh_.context();
  {
    MD_TRY(Qwen2Tokenizer t, Qwen2Tokenizer::load(folder.path("tokenizer")));
    p.tokenizer_ = std::make_shared<Qwen2Tokenizer>(std::move(t));
  }
  MD_TRY(p.text_encoder_,
         (load_component_on<Qwen25VLTextEncoder, Qwen25VLTextConfig>(p.device_, folder.path("text_encoder"), &par)));
  MD_TRY(p.transformer_, (load_transformer<QwenImageTransformer, QwenImageConfig>(dir, from, &par)));
  MD_TRY(p.vae_, (load_component_on<AutoencoderKLWan, AutoencoderKLWanConfig>(p.device_, folder.path("vae"))));
  MD_TRY(p.scheduler_config_, FlowMatchConfig::load(folder.path("scheduler") + "/scheduler_config.json"));
  return p;
}

GenerateOptions QwenImagePipeline::with_defaults(GenerateOptions o) const {
  const int64_t px = 128 * vae_scale_factor();  // default_sample_size * vae_scale_factor
  if (o.height == 0) o.height = px;
  if (o.width == 0) o.width = px;
  if (o.steps == 0) o.steps = 50;
  if (!o.true_cfg_scale) o.true_cfg_scale = 4.0f;
  if (o.max_sequence_length == 0) o.max_sequence_length = 512;
  return o;
}

Status QwenImagePipeline::validate(const GenerateOptions& o) const {
  MD_RETURN_IF_ERROR(validate_image_options(o, "QwenImagePipeline", vae_scale_factor() * 2, kTokenizerMaxLength));
  // guidance_scale only feeds a guidance-distilled transformer; the released one is not (diffusers warns
  // and ignores it, we refuse rather than ignore).
  if (o.guidance_scale)
    return make_error(
        "QwenImagePipeline guides with true_cfg_scale and a negative prompt: guidance_scale is not "
        "an option of this model");
  return validate_packed_latents(o, vae_scale_factor() * 2, transformer_->config().in_channels);
}

Result<QwenImagePipeline::PromptEmbeds> QwenImagePipeline::encode_prompt(const std::vector<std::string>& prompts,
                                                                         int64_t max_sequence_length) const {
  Span s("stage", "encode prompt");
  std::vector<std::string> texts;
  const std::string_view tpl = kPromptTemplate;
  const size_t at = tpl.find("{}");
  for (const auto& p : prompts) texts.push_back(std::string(tpl.substr(0, at)) + p + std::string(tpl.substr(at + 2)));
  MD_TRY(TokenizedBatch ids, tokenizer_->encode(texts, int(kTokenizerMaxLength + kTemplateDrop), /*pad=*/false));
  warn_truncated(ids, "the Qwen2.5-VL text encoder takes " + std::to_string(kTokenizerMaxLength) + " tokens");
  Tensor hidden;
  {
    Span s2("stage", "text_encoder (Qwen2.5-VL)");
    MD_TRY(hidden,
           text_encoder_->forward(ops::to_device(ids.input_ids, device_), ops::to_device(ids.attention_mask, device_)));
  }

  // Each row's real tokens after the system turn; rows padded with zeros to the longest, as diffusers
  // re-pads them (the text encoder's own padding rows are not kept).
  std::vector<int64_t> lengths;
  for (int64_t n : ids.lengths) {
    if (n <= kTemplateDrop) return make_error("Qwen-Image prompt: the template left no tokens after its prefix");
    lengths.push_back(n - kTemplateDrop);
  }
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  const int64_t L = std::min(longest, max_sequence_length);
  std::vector<int64_t> dropped;
  for (int64_t n : lengths) dropped.push_back(std::max<int64_t>(0, n - L));
  warn_truncated(TokenizedBatch{Tensor(), Tensor(), dropped, {}},
                 "max_sequence_length is " + std::to_string(max_sequence_length) + " tokens");

  const int64_t B = int64_t(prompts.size()), D = hidden.size(2);
  std::vector<Tensor> rows;
  std::vector<int64_t> mask(size_t(B * L), 0);
  for (int64_t r = 0; r < B; ++r) {
    const int64_t n = std::min(lengths[size_t(r)], L);
    Tensor row = hidden.slice(0, r, r + 1).slice(1, kTemplateDrop, kTemplateDrop + n);
    if (n < L) row = concat({row, Tensor::zeros({1, L - n, D}, row.dtype(), row.device())}, 1);
    rows.push_back(row);
    std::fill_n(mask.begin() + r * L, n, 1);
  }
  PromptEmbeds e;
  e.sequence = concat(rows, 0);
  // A mask of ones says nothing: diffusers passes None then.
  if (std::find(mask.begin(), mask.end(), 0) != mask.end())
    e.mask = ops::to_device(Tensor::from_i64({B, L}, mask), e.sequence.device());
  return e;
}

Result<Tensor> QwenImagePipeline::generate(const GenerateOptions& options, TensorMap* record,
                                           const StepCallback& on_step) const {
  const GenerateOptions o = with_defaults(options);
  MD_RETURN_IF_ERROR(validate(o));
  const QwenImageConfig& tc = transformer_->config();
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;

  // 1. Text embeddings (and the negative ones for true CFG).
  auto encode = [&](const std::vector<std::string>& prompts) -> Result<PromptEmbeds> {
    MD_TRY(PromptEmbeds e, encode_prompt(prompts, o.max_sequence_length));
    e.sequence = repeat_rows(e.sequence, o.num_images_per_prompt);
    if (e.mask.defined()) e.mask = repeat_rows(e.mask, o.num_images_per_prompt);
    return e;
  };
  MD_TRY(const PromptEmbeds pos, encode(o.prompt));
  const bool true_cfg = *o.true_cfg_scale > 1.0f && !o.negative_prompt.empty();
  PromptEmbeds neg;
  if (true_cfg) {
    MD_TRY(neg, encode(o.negative_prompt));
  }

  // 2. Latents: in_channels / 4 channels at 1/8 resolution, rounded to whole 2x2 patches, packed.
  const int64_t vs = vae_scale_factor();
  const int64_t h = 2 * (o.height / (vs * 2)), w = 2 * (o.width / (vs * 2));
  const int64_t C = tc.in_channels / 4;
  // diffusers draws [B, 1, C, h, w]: the same numbers as [B, C, h, w].
  Tensor latents = ops::to_device(packed_initial_latents(o, B, C, h, w), device_);
  const std::array<int64_t, 3> grid{1, h / 2, w / 2};

  // 3. Timesteps: sigmas linspace(1, 1/N, N), shifted by mu(image_seq_len).
  MD_TRY(FlowMatchEulerScheduler scheduler, FlowMatchEulerScheduler::create(scheduler_config_));
  const FlowMatchConfig& sc = scheduler_config_;
  const double mu = calculate_shift(double(latents.size(1)), sc.base_image_seq_len, sc.max_image_seq_len, sc.base_shift,
                                    sc.max_shift);
  MD_RETURN_IF_ERROR(retrieve_timesteps(scheduler, o.steps, std::nullopt, flux_pipeline_sigmas(o.steps), mu));

  // 4. Denoise: the transformer sees t / 1000; true CFG is a second call on the negative prompt.
  auto predict = [&](const Tensor& x, float t, Branch branch, TensorMap* inputs) -> Result<Tensor> {
    if (branch == Branch::Pair) return make_error("QwenImagePipeline: true CFG runs as two calls, not a batch");
    const PromptEmbeds& e = branch == Branch::Cond ? pos : neg;
    const Tensor timestep = ops::full({x.size(0)}, t / 1000.0f, x.device());
    if (inputs) {
      *inputs = {{"hidden_states", x}, {"timestep", timestep}, {"encoder_hidden_states", e.sequence}};
      if (e.mask.defined()) (*inputs)["encoder_hidden_states_mask"] = e.mask;
    }
    // Every tensor argument is a graph input (backend/graphed_forward.h), as in sd3.cpp.
    return graphed_call({x, e.sequence, e.mask, timestep}, [&](const std::vector<Tensor>& in) {
      return transformer_->forward(in[0], in[1], in[2], in[3], nullptr, grid);
    });
  };
  DenoiseSetup setup;
  setup.experts = {Expert{"transformer", predict, *o.true_cfg_scale}};
  setup.guidance.mode = true_cfg ? CfgMode::TwoCalls : CfgMode::None;
  setup.guidance.keep_cond_norm = true;
  SchedulerRef<FlowMatchEulerScheduler> sched(scheduler);
  setup.cache = o.cache;
  setup.cache_report = o.cache_report;
  MD_TRY(latents, denoise(setup, sched, latents, mesh_.cfg(), record, on_step));

  // 5. Decode one frame.
  const Tensor frame = flux_unpack_latents(latents, h, w).reshape({B, C, 1, h, w});
  MD_TRY(Tensor images, decode_wan_images(*vae_, frame, mesh_.vae()));
  return ops::to_device(images, Device::CPU);
}

PipelineEntry qwenimage_pipeline_entry() {
  return {"QwenImagePipeline", QwenImagePipeline::traits,
          [](const std::string& dir, const Mesh& mesh, const LoadOptions& from) -> Result<std::unique_ptr<Pipeline>> {
            MD_TRY(QwenImagePipeline p, QwenImagePipeline::load(dir, mesh, from));
            return std::unique_ptr<Pipeline>(std::make_unique<QwenImagePipeline>(std::move(p)));
          },
          /*runs_on_device=*/true};
}

}  // namespace meshdit
