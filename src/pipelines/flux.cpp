// FluxPipeline (diffusers pipelines/flux/pipeline_flux.py), step by step:
//   1. prompts -> CLIP-L pooled embedding (77 tokens) and T5 sequence embedding (max_sequence_length)
//   2. noise [B, 16, H/8, W/8] -> packed 2x2 patches [B, N, 64], image ids (0, row, col), text ids 0
//   3. sigmas linspace(1, 1/steps), shifted with mu from N
//   4. the shared loop (pipelines/denoise.h): v = transformer(x, t/1000, ...), optionally true CFG against
//      the negative prompt as a second call; x = Euler step
//   5. unpack, then the shared decode: z / scaling_factor + shift_factor -> VAE -> (x / 2 + 0.5).clamp(0, 1)
#include "pipelines/flux.h"

#include "backend/graphed_forward.h"
#include "backend/ops.h"
#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/checkpoint.h"
#include "pipelines/components.h"
#include "pipelines/denoise.h"
#include "pipelines/vae_decode.h"

namespace meshdit {

Tensor flux_pack_latents(const Tensor& latents) {
  const int64_t B = latents.size(0), C = latents.size(1), h = latents.size(2), w = latents.size(3);
  return latents.contiguous()
      .reshape({B, C, h / 2, 2, w / 2, 2})
      .permute({0, 2, 4, 1, 3, 5})
      .contiguous()
      .reshape({B, (h / 2) * (w / 2), C * 4});
}

Tensor flux_unpack_latents(const Tensor& packed, int64_t h, int64_t w) {
  const int64_t B = packed.size(0), C = packed.size(2) / 4;
  return packed.contiguous()
      .reshape({B, h / 2, w / 2, C, 2, 2})
      .permute({0, 3, 1, 4, 2, 5})
      .contiguous()
      .reshape({B, C, h, w});
}

Tensor packed_initial_latents(const GenerateOptions& o, int64_t B, int64_t C, int64_t h, int64_t w) {
  if (o.latents.defined()) return o.latents.to(DType::F32).clone();
  return flux_pack_latents(torch_randn({B, C, h, w}, o.seed));
}

Status validate_packed_latents(const GenerateOptions& o, int64_t patch, int64_t channels) {
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const std::string p = std::to_string(patch);
  return validate_latents(o, {B, (o.height / patch) * (o.width / patch), channels},
                          "packed [B, (H/" + p + ")*(W/" + p + "), " + std::to_string(channels) + "]");
}

Result<ModelTraits> FluxPipeline::traits(const std::string& dir, const GenerateOptions& options,
                                         const LoadOptions& from) {
  MD_TRY(FluxConfig tc, load_transformer_config<FluxConfig>(dir, from));
  ModelTraits t;
  t.name = "FluxPipeline " + dir;
  t.heads = tc.num_attention_heads;
  t.cfg_batch = options.true_cfg_scale.value_or(1.0f) > 1.0f && !options.negative_prompt.empty();
  const int64_t h = options.height ? options.height : 1024, w = options.width ? options.width : 1024;
  t.image_tokens = (h / 16) * (w / 16);
  return t;
}

Result<FluxPipeline> FluxPipeline::load(const std::string& dir, const Mesh& mesh, const LoadOptions& from) {
  Span span("stage", "load model");
  MD_TRY(DiffusersFolder folder, DiffusersFolder::open(dir));
  if (folder.class_name != "FluxPipeline")
    return make_error(dir + "/model_index.json: pipeline class '" + folder.class_name + "' is not FluxPipeline");
  FluxPipeline p;
  p.dir_ = dir;
  p.mesh_ = mesh;
  p.device_ = from.device;
  const ParallelContext par = p.mesh_.context();
  {
    MD_TRY(ClipTokenizer t, ClipTokenizer::load(folder.path("tokenizer")));
    p.tokenizer_ = std::make_shared<ClipTokenizer>(std::move(t));
  }
  {
    MD_TRY(T5Tokenizer t, T5Tokenizer::load(folder.path("tokenizer_2")));
    p.tokenizer_2_ = std::make_shared<T5Tokenizer>(std::move(t));
  }
  MD_TRY(p.text_encoder_, (load_component_on<CLIPTextModel, CLIPTextConfig>(p.device_, folder.path("text_encoder"))));
  MD_TRY(p.text_encoder_2_, (load_component_on<T5Encoder, T5Config>(p.device_, folder.path("text_encoder_2"), &par)));
  MD_TRY(p.transformer_, (load_transformer<FluxTransformer, FluxConfig>(dir, from, &par)));
  MD_TRY(p.vae_, (load_component_on<AutoencoderKL, AutoencoderKLConfig>(p.device_, folder.path("vae"))));
  MD_TRY(p.scheduler_config_, FlowMatchConfig::load(folder.path("scheduler") + "/scheduler_config.json"));
  return p;
}

GenerateOptions FluxPipeline::with_defaults(GenerateOptions o) const {
  const int64_t px = 128 * vae_scale_factor();  // FluxPipeline.default_sample_size * vae_scale_factor
  if (o.height == 0) o.height = px;
  if (o.width == 0) o.width = px;
  if (o.steps == 0) o.steps = 28;
  if (!o.guidance_scale) o.guidance_scale = 3.5f;
  if (o.max_sequence_length == 0) o.max_sequence_length = 512;
  if (!o.true_cfg_scale) o.true_cfg_scale = 1.0f;
  return o;
}

Status FluxPipeline::validate(const GenerateOptions& o) const {
  MD_RETURN_IF_ERROR(validate_image_options(o, "FluxPipeline", vae_scale_factor() * 2, 512));
  return validate_packed_latents(o, vae_scale_factor() * 2, transformer_->config().in_channels);
}

Result<FluxPipeline::PromptEmbeds> FluxPipeline::encode_prompt(const std::vector<std::string>& prompts,
                                                               int64_t max_sequence_length) const {
  PromptEmbeds e;
  {
    Span s("stage", "tokenize");
    // CLIP takes model_max_length (77) tokens; T5 max_sequence_length, both padded to length.
    MD_TRY(TokenizedBatch clip_ids, tokenizer_->encode(prompts, int(text_encoder_->config().max_position_embeddings)));
    MD_TRY(TokenizedBatch t5_ids, tokenizer_2_->encode(prompts, int(max_sequence_length)));
    // Truncation is what diffusers does too; it warns with the cut text, we with the count.
    warn_truncated(clip_ids, "CLIP (text_encoder) can only handle sequences up to " +
                                 std::to_string(text_encoder_->config().max_position_embeddings) + " tokens");
    warn_truncated(t5_ids,
                   "T5 (text_encoder_2) max_sequence_length is " + std::to_string(max_sequence_length) + " tokens");
    {
      Span s2("stage", "text_encoder (CLIP)");
      MD_TRY(CLIPTextOutput o, text_encoder_->forward(ops::to_device(clip_ids.input_ids, device_)));
      e.pooled = o.pooler_output;
    }
    Span s3("stage", "text_encoder_2 (T5)");
    MD_TRY(e.sequence, text_encoder_2_->forward(ops::to_device(t5_ids.input_ids, device_), Tensor()));
  }
  e.text_ids = Tensor::zeros({e.sequence.size(1), 3}, DType::F32, e.sequence.device());
  return e;
}

Result<Tensor> FluxPipeline::generate(const GenerateOptions& options, TensorMap* record,
                                      const StepCallback& on_step) const {
  const GenerateOptions o = with_defaults(options);
  MD_RETURN_IF_ERROR(validate(o));
  const FluxConfig& tc = transformer_->config();
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;

  // 1. Text embeddings (and the negative ones for true CFG).
  auto encode = [&](const std::vector<std::string>& prompts) -> Result<PromptEmbeds> {
    MD_TRY(PromptEmbeds e, encode_prompt(prompts, o.max_sequence_length));
    e.pooled = repeat_rows(e.pooled, o.num_images_per_prompt);
    e.sequence = repeat_rows(e.sequence, o.num_images_per_prompt);
    return e;
  };
  MD_TRY(const PromptEmbeds pos, encode(o.prompt));
  const bool true_cfg = *o.true_cfg_scale > 1.0f && !o.negative_prompt.empty();
  PromptEmbeds neg;
  if (true_cfg) {
    MD_TRY(neg, encode(o.negative_prompt));
  }

  // 2. Latents: 16 channels at 1/8 resolution, rounded to whole 2x2 patches.
  const int64_t vs = vae_scale_factor();
  const int64_t h = 2 * (o.height / (vs * 2)), w = 2 * (o.width / (vs * 2));
  const int64_t C = tc.in_channels / 4;
  Tensor latents = ops::to_device(packed_initial_latents(o, B, C, h, w), device_);
  const Tensor img_ids = ops::to_device(flux_image_ids(h, w), device_);

  // 3. Timesteps: sigmas linspace(1, 1/N, N), shifted by mu(image_seq_len).
  MD_TRY(FlowMatchEulerScheduler scheduler, FlowMatchEulerScheduler::create(scheduler_config_));
  const double mu =
      calculate_shift(double(latents.size(1)), scheduler_config_.base_image_seq_len,
                      scheduler_config_.max_image_seq_len, scheduler_config_.base_shift, scheduler_config_.max_shift);
  MD_RETURN_IF_ERROR(retrieve_timesteps(scheduler, o.steps, std::nullopt, flux_pipeline_sigmas(o.steps), mu));

  // 4. Denoise: the transformer sees t / 1000 and, when guidance-distilled, the guidance scale as an input;
  // true CFG is a second call on the negative prompt.
  const float distilled_guidance = *o.guidance_scale;
  auto predict = [&](const Tensor& x, float t, Branch branch, TensorMap* inputs) -> Result<Tensor> {
    if (branch == Branch::Pair) return make_error("FluxPipeline: true CFG runs as two calls, not a batch");
    const PromptEmbeds& e = branch == Branch::Cond ? pos : neg;
    const int64_t n = x.size(0);
    const Tensor timestep = ops::full({n}, t / 1000.0f, x.device());
    const Tensor guidance = tc.guidance_embeds ? ops::full({n}, distilled_guidance, x.device()) : Tensor();
    if (inputs) {
      *inputs = {{"hidden_states", x},
                 {"timestep", timestep},
                 {"pooled_projections", e.pooled},
                 {"encoder_hidden_states", e.sequence},
                 {"txt_ids", e.text_ids},
                 {"img_ids", img_ids}};
      if (guidance.defined()) (*inputs)["guidance"] = guidance;
    }
    // The tensors that change per call or per branch are the graph's inputs (backend/graphed_forward.h), copied
    // into the captured buffers at each replay; the position ids are the run's constants and are captured.
    return graphed_call({x, e.sequence, e.pooled, timestep, guidance}, [&](const std::vector<Tensor>& in) {
      return transformer_->forward(in[0], in[1], in[2], in[3], img_ids, e.text_ids, in[4]);
    });
  };
  DenoiseSetup setup;
  setup.experts = {Expert{"transformer", predict, *o.true_cfg_scale}};
  setup.guidance.mode = true_cfg ? CfgMode::TwoCalls : CfgMode::None;
  SchedulerRef<FlowMatchEulerScheduler> sched(scheduler);
  setup.cache = o.cache;
  setup.cache_report = o.cache_report;
  MD_TRY(latents, denoise(setup, sched, latents, mesh_.cfg(), record, on_step));

  // 5. Decode.
  MD_TRY(Tensor images, decode_images(*vae_, flux_unpack_latents(latents, h, w), mesh_.vae(), o.vae_tiling));
  return ops::to_device(images, Device::CPU);
}

PipelineEntry flux_pipeline_entry() {
  return {"FluxPipeline", FluxPipeline::traits,
          [](const std::string& dir, const Mesh& mesh, const LoadOptions& from) -> Result<std::unique_ptr<Pipeline>> {
            MD_TRY(FluxPipeline p, FluxPipeline::load(dir, mesh, from));
            return std::unique_ptr<Pipeline>(std::make_unique<FluxPipeline>(std::move(p)));
          },
          /*runs_on_device=*/true};
}

}  // namespace meshdit
