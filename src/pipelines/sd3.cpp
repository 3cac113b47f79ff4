// StableDiffusion3Pipeline (diffusers pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py), step by
// step:
//   1. prompts -> CLIP-L and CLIP-G (77 tokens each): penultimate hidden states joined on the feature axis and
//      zero-padded to T5's width, followed along the sequence by T5's states (max_sequence_length tokens);
//      pooled = both CLIP projections joined. The negative prompts (default "") the same way.
//   2. noise [B, 16, H/8, W/8], unpacked: the transformer patchifies it itself
//   3. sigmas linspace(1, 1/steps) with the scheduler's static shift (no resolution-dependent mu)
//   4. the shared loop (pipelines/denoise.h): v = transformer(x, t, ...) on the batch [negative; positive],
//      v = uncond + w (cond - uncond); x = Euler step
//   5. the shared decode: z / scaling_factor + shift_factor -> VAE -> (x / 2 + 0.5).clamp(0, 1)
#include "pipelines/sd3.h"

#include "backend/graphed_forward.h"
#include "backend/ops.h"
#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/checkpoint.h"
#include "pipelines/components.h"
#include "pipelines/denoise.h"
#include "pipelines/vae_decode.h"

namespace meshdit {

Result<ModelTraits> StableDiffusion3Pipeline::traits(const std::string& dir, const GenerateOptions& options,
                                                     const LoadOptions& from) {
  MD_TRY(SD3Config tc, load_transformer_config<SD3Config>(dir, from));
  ModelTraits t;
  t.name = "StableDiffusion3Pipeline " + dir;
  t.heads = tc.num_attention_heads;
  t.pad_heads = true;  // SD3Transformer::load pads the heads to a multiple of tp
  t.cfg_batch = options.guidance_scale.value_or(7.0f) > 1.0f;
  // The VAE's 8x and the transformer's 2x2 patches; the default size is sample_size latents.
  const int64_t px = tc.sample_size * 8;
  const int64_t h = options.height ? options.height : px, w = options.width ? options.width : px;
  t.image_tokens = (h / 16) * (w / 16);
  return t;
}

Result<StableDiffusion3Pipeline> StableDiffusion3Pipeline::load(const std::string& dir, const Mesh& mesh,
                                                                const LoadOptions& from) {
  Span span("stage", "load model");
  MD_TRY(DiffusersFolder folder, DiffusersFolder::open(dir));
  if (folder.class_name != "StableDiffusion3Pipeline")
    return make_error(dir + "/model_index.json: pipeline class '" + folder.class_name +
                      "' is not StableDiffusion3Pipeline");
  StableDiffusion3Pipeline p;
  p.mesh_ = mesh;
  p.device_ = from.device;
  const ParallelContext par = p.mesh_.context();
  {
    MD_TRY(ClipTokenizer t, ClipTokenizer::load(folder.path("tokenizer")));
    p.tokenizer_ = std::make_shared<ClipTokenizer>(std::move(t));
  }
  {
    // SD3's tokenizer_2 pads with "!", not its eos token: its tokenizer_config.json says so, as diffusers reads it.
    MD_TRY(ClipTokenizer t, ClipTokenizer::load(folder.path("tokenizer_2")));
    p.tokenizer_2_ = std::make_shared<ClipTokenizer>(std::move(t));
  }
  {
    MD_TRY(T5Tokenizer t, T5Tokenizer::load(folder.path("tokenizer_3")));
    p.tokenizer_3_ = std::make_shared<T5Tokenizer>(std::move(t));
  }
  MD_TRY(p.text_encoder_, (load_component_on<CLIPTextModel, CLIPTextConfig>(p.device_, folder.path("text_encoder"))));
  MD_TRY(p.text_encoder_2_,
         (load_component_on<CLIPTextModel, CLIPTextConfig>(p.device_, folder.path("text_encoder_2"))));
  if (!p.text_encoder_->has_projection() || !p.text_encoder_2_->has_projection())
    return make_error(dir + ": text_encoder and text_encoder_2 must be CLIPTextModelWithProjection");
  MD_TRY(p.text_encoder_3_, (load_component_on<T5Encoder, T5Config>(p.device_, folder.path("text_encoder_3"), &par)));
  MD_TRY(p.transformer_, (load_transformer<SD3Transformer, SD3Config>(dir, from, &par)));
  MD_TRY(p.vae_, (load_component_on<AutoencoderKL, AutoencoderKLConfig>(p.device_, folder.path("vae"))));
  MD_TRY(p.scheduler_config_, FlowMatchConfig::load(folder.path("scheduler") + "/scheduler_config.json"));
  return p;
}

GenerateOptions StableDiffusion3Pipeline::with_defaults(GenerateOptions o) const {
  const int64_t px = transformer_->config().sample_size * vae_scale_factor();  // default_sample_size * vae scale
  if (o.height == 0) o.height = px;
  if (o.width == 0) o.width = px;
  if (o.steps == 0) o.steps = 28;
  if (!o.guidance_scale) o.guidance_scale = 7.0f;
  if (o.max_sequence_length == 0) o.max_sequence_length = 256;
  return o;
}

Status StableDiffusion3Pipeline::validate(const GenerateOptions& o) const {
  MD_RETURN_IF_ERROR(validate_image_options(o, "StableDiffusion3Pipeline",
                                            vae_scale_factor() * transformer_->config().patch_size, 512));
  if (o.true_cfg_scale && *o.true_cfg_scale != 1.0f)
    return make_error("StableDiffusion3Pipeline guides with guidance_scale: true_cfg_scale is not an option");
  const int64_t vs = vae_scale_factor(), C = transformer_->config().in_channels;
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const std::string v = std::to_string(vs);
  return validate_latents(o, {B, C, o.height / vs, o.width / vs},
                          "[B, " + std::to_string(C) + ", H/" + v + ", W/" + v + "]");
}

Result<StableDiffusion3Pipeline::PromptEmbeds> StableDiffusion3Pipeline::encode_prompt(
    const std::vector<std::string>& prompts, int64_t max_sequence_length) const {
  PromptEmbeds e;
  Span s("stage", "encode prompt");
  // clip_skip unset: hidden_states[-2], the second-to-last layer's output without the final LayerNorm.
  // Over-long prompts are truncated, as diffusers does; it warns with the cut text, we with the count.
  auto clip = [&](const ClipTokenizer& tok, const CLIPTextModel& enc, const char* name, Tensor& penultimate,
                  Tensor& pooled) -> Status {
    const int64_t max_len = enc.config().max_position_embeddings;
    MD_TRY(TokenizedBatch ids, tok.encode(prompts, int(max_len)));
    warn_truncated(
        ids, std::string("CLIP (") + name + ") can only handle sequences up to " + std::to_string(max_len) + " tokens");
    MD_TRY(CLIPTextOutput o, enc.forward(ops::to_device(ids.input_ids, device_)));
    if (o.hidden_states.size() < 2) return make_error("CLIP text encoder: no penultimate hidden state");
    penultimate = o.hidden_states[o.hidden_states.size() - 2];
    pooled = o.text_embeds;
    return ok_status();
  };
  Tensor l_seq, l_pooled, g_seq, g_pooled;
  MD_RETURN_IF_ERROR(clip(*tokenizer_, *text_encoder_, "text_encoder", l_seq, l_pooled));
  MD_RETURN_IF_ERROR(clip(*tokenizer_2_, *text_encoder_2_, "text_encoder_2", g_seq, g_pooled));
  // T5 without an attention mask, as diffusers calls it: the padding tokens are attended to.
  MD_TRY(TokenizedBatch t5_ids, tokenizer_3_->encode(prompts, int(max_sequence_length)));
  warn_truncated(t5_ids,
                 "T5 (text_encoder_3) max_sequence_length is " + std::to_string(max_sequence_length) + " tokens");
  MD_TRY(Tensor t5_seq, text_encoder_3_->forward(ops::to_device(t5_ids.input_ids, device_), Tensor()));

  Tensor clip_seq = concat({l_seq, g_seq}, -1);
  const int64_t width = t5_seq.size(2), clip_width = clip_seq.size(2);
  if (clip_width > width)
    return make_error("CLIP states (" + std::to_string(clip_width) + " features) are wider than T5's (" +
                      std::to_string(width) + ")");
  if (clip_width < width)
    clip_seq = concat({clip_seq, Tensor::zeros({clip_seq.size(0), clip_seq.size(1), width - clip_width},
                                               clip_seq.dtype(), clip_seq.device())},
                      -1);
  e.sequence = concat({clip_seq, t5_seq.to(clip_seq.dtype())}, 1);
  e.pooled = concat({l_pooled, g_pooled}, -1);
  return e;
}

Result<Tensor> StableDiffusion3Pipeline::generate(const GenerateOptions& options, TensorMap* record,
                                                  const StepCallback& on_step) const {
  const GenerateOptions o = with_defaults(options);
  MD_RETURN_IF_ERROR(validate(o));
  const SD3Config& tc = transformer_->config();
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const float scale = *o.guidance_scale;
  const bool cfg = scale > 1.0f;

  // 1. Text embeddings; with guidance also the negative prompts' (empty strings when none are given).
  auto encode = [&](const std::vector<std::string>& prompts) -> Result<PromptEmbeds> {
    MD_TRY(PromptEmbeds e, encode_prompt(prompts, o.max_sequence_length));
    e.pooled = repeat_rows(e.pooled, o.num_images_per_prompt);
    e.sequence = repeat_rows(e.sequence, o.num_images_per_prompt);
    return e;
  };
  MD_TRY(const PromptEmbeds pos, encode(o.prompt));
  PromptEmbeds neg, pair;
  if (cfg) {
    const std::vector<std::string> negative =
        o.negative_prompt.empty() ? std::vector<std::string>(o.prompt.size(), "") : o.negative_prompt;
    MD_TRY(neg, encode(negative));
    pair.sequence = concat({neg.sequence, pos.sequence}, 0);
    pair.pooled = concat({neg.pooled, pos.pooled}, 0);
  }

  // 2. Latents: in_channels at 1/8 resolution.
  const int64_t vs = vae_scale_factor();
  const int64_t h = o.height / vs, w = o.width / vs;
  Tensor latents;
  if (o.latents.defined()) {  // its shape: validate()
    latents = o.latents.to(DType::F32).clone();
  } else {
    latents = torch_randn({B, tc.in_channels, h, w}, o.seed);
  }
  latents = ops::to_device(latents, device_);

  // 3. Timesteps: the scheduler's own schedule and static shift, unless its config asks for a shift that
  // follows the number of image tokens.
  MD_TRY(FlowMatchEulerScheduler scheduler, FlowMatchEulerScheduler::create(scheduler_config_));
  std::optional<double> mu;
  if (scheduler_config_.use_dynamic_shifting) {
    const FlowMatchConfig& sc = scheduler_config_;
    mu = calculate_shift(double((h / tc.patch_size) * (w / tc.patch_size)), sc.base_image_seq_len, sc.max_image_seq_len,
                         sc.base_shift, sc.max_shift);
  }
  MD_RETURN_IF_ERROR(retrieve_timesteps(scheduler, o.steps, std::nullopt, std::nullopt, mu));

  // 4. Denoise: the transformer takes t itself (in [0, 1000]), not t / 1000.
  auto predict = [&](const Tensor& x, float t, Branch branch, TensorMap* inputs) -> Result<Tensor> {
    const PromptEmbeds& e = branch == Branch::Pair ? pair : branch == Branch::Uncond ? neg : pos;
    const Tensor timestep = ops::full({x.size(0)}, t, x.device());
    if (inputs)
      *inputs = {{"hidden_states", x},
                 {"timestep", timestep},
                 {"encoder_hidden_states", e.sequence},
                 {"pooled_projections", e.pooled}};
    // Every tensor argument is a graph input (backend/graphed_forward.h): copied into the captured buffers at
    // each replay, so no branch or step can replay another's embeddings.
    return graphed_call({x, e.sequence, e.pooled, timestep}, [&](const std::vector<Tensor>& in) {
      return transformer_->forward(in[0], in[1], in[2], in[3]);
    });
  };
  DenoiseSetup setup;
  setup.experts = {Expert{"transformer", predict, scale}};
  setup.guidance.mode = cfg ? CfgMode::Batched : CfgMode::None;
  SchedulerRef<FlowMatchEulerScheduler> sched(scheduler);
  setup.cache = o.cache;
  setup.cache_report = o.cache_report;
  MD_TRY(latents, denoise(setup, sched, latents, mesh_.cfg(), record, on_step));

  // 5. Decode.
  MD_TRY(Tensor images, decode_images(*vae_, latents, mesh_.vae(), o.vae_tiling));
  return ops::to_device(images, Device::CPU);
}

PipelineEntry sd3_pipeline_entry() {
  return {"StableDiffusion3Pipeline", StableDiffusion3Pipeline::traits,
          [](const std::string& dir, const Mesh& mesh, const LoadOptions& from) -> Result<std::unique_ptr<Pipeline>> {
            MD_TRY(StableDiffusion3Pipeline p, StableDiffusion3Pipeline::load(dir, mesh, from));
            return std::unique_ptr<Pipeline>(std::make_unique<StableDiffusion3Pipeline>(std::move(p)));
          },
          /*runs_on_device=*/true};
}

}  // namespace meshdit
