// MochiPipeline (diffusers pipelines/mochi/pipeline_mochi.py), step by step:
//   1. prompts -> T5 tokens padded to max_sequence_length with their mask -> T5 (the mask passed on to the
//      transformer, which attends to real tokens only); with guidance the negative prompts ("" by default) too,
//      batched [negative; prompt]
//   2. noise [B, 12, 1 + (F - 1) / 6, H/8, W/8] (the VAE's 6x time and 8x space compression)
//   3. sigmas of the linear-quadratic schedule (threshold noise 0.025), which the scheduler (invert_sigmas)
//      turns into timesteps rising from 0 to 1000
//   4. the shared loop (pipelines/denoise.h): v = transformer(x, t, text, mask) on the guidance batch,
//      v = uncond + w (cond - uncond), x = Euler step
//   5. z = latents * std / scaling_factor + mean per channel, the Mochi VAE decoder over every latent frame,
//      (x / 2 + 0.5).clamp(0, 1) -> frames [B, F, H, W, 3]
#include "pipelines/mochi.h"

#include <cstdint>

#include "backend/graphed_forward.h"
#include "backend/ops.h"
#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "models/registry.h"
#include "pipelines/components.h"
#include "pipelines/denoise.h"
#include "pipelines/vae_decode.h"

namespace meshdit {

namespace {

constexpr int64_t kDefaultWidth = 848, kDefaultHeight = 480, kDefaultFrames = 163;
constexpr double kThresholdNoise = 0.025;  // MochiPipeline.__call__'s linear_quadratic_schedule argument

}  // namespace

Result<ModelTraits> MochiPipeline::traits(const std::string& dir, const GenerateOptions& options,
                                          const LoadOptions& from) {
  MD_TRY(MochiConfig tc, load_transformer_config<MochiConfig>(dir, from));
  ModelTraits t;
  t.name = "MochiPipeline " + dir;
  t.heads = tc.num_attention_heads;
  t.cfg_batch = options.guidance_scale.value_or(4.5f) > 1.0f;
  const int64_t h = options.height ? options.height : kDefaultHeight;
  const int64_t w = options.width ? options.width : kDefaultWidth;
  const int64_t f = options.num_frames ? options.num_frames : kDefaultFrames;
  t.image_tokens = (1 + (f - 1) / 6) * (h / 8 / tc.patch_size) * (w / 8 / tc.patch_size);
  return t;
}

Result<MochiPipeline> MochiPipeline::load(const std::string& dir, const Mesh& mesh, const LoadOptions& from) {
  Span span("stage", "load model");
  MD_TRY(DiffusersFolder folder, DiffusersFolder::open(dir));
  if (folder.class_name != "MochiPipeline")
    return make_error(dir + "/model_index.json: pipeline class '" + folder.class_name + "' is not MochiPipeline");
  MochiPipeline p;
  p.mesh_ = mesh;
  p.device_ = from.device;
  const ParallelContext par = p.mesh_.context();
  {
    MD_TRY(Json index, load_json(dir + "/model_index.json"));
    if (index.contains("force_zeros_for_empty_prompt")) {
      if (!index["force_zeros_for_empty_prompt"].is_boolean())
        return make_error(dir + "/model_index.json: force_zeros_for_empty_prompt must be true or false");
      p.force_zeros_for_empty_prompt_ = index["force_zeros_for_empty_prompt"].get<bool>();
    }
  }
  {
    MD_TRY(T5Tokenizer t, T5Tokenizer::load(folder.path("tokenizer")));
    p.tokenizer_ = std::make_shared<T5Tokenizer>(std::move(t));
  }
  MD_TRY(p.text_encoder_, (load_component_on<T5Encoder, T5Config>(p.device_, folder.path("text_encoder"), &par)));
  MD_TRY(p.transformer_, (load_transformer<MochiTransformer, MochiConfig>(dir, from, &par)));
  MD_TRY(p.vae_, (load_component_on<AutoencoderKLMochi, AutoencoderKLMochiConfig>(p.device_, folder.path("vae"))));
  MD_TRY(p.scheduler_config_, FlowMatchConfig::load(folder.path("scheduler") + "/scheduler_config.json"));
  const AutoencoderKLMochiConfig& vc = p.vae_->config();
  if (vc.latent_channels != p.transformer_->config().in_channels)
    return make_error(dir + ": the VAE's latent_channels (" + std::to_string(vc.latent_channels) +
                      ") differ from the transformer's in_channels (" +
                      std::to_string(p.transformer_->config().in_channels) + ")");
  return p;
}

GenerateOptions MochiPipeline::with_defaults(GenerateOptions o) const {
  if (o.height == 0) o.height = kDefaultHeight;
  if (o.width == 0) o.width = kDefaultWidth;
  if (o.num_frames == 0) o.num_frames = kDefaultFrames;
  if (o.steps == 0) o.steps = 64;
  if (!o.guidance_scale) o.guidance_scale = 4.5f;
  if (o.max_sequence_length == 0) o.max_sequence_length = 256;
  return o;
}

Status MochiPipeline::validate(const GenerateOptions& o) const {
  const MochiConfig& tc = transformer_->config();
  const int64_t vs = vae_->config().spatial_scale(), ts = vae_->config().temporal_scale();
  MD_RETURN_IF_ERROR(validate_generation_options(o, vs * tc.patch_size, tc.max_sequence_length));
  if (o.num_frames < 1 || (o.num_frames - 1) % ts != 0)
    return make_error("frames must be 1 + " + std::to_string(ts) + "k (the VAE's time compression), e.g. " +
                      std::to_string(1 + ts * 4) + " or 163; got " + std::to_string(o.num_frames));
  // linear_quadratic_schedule divides by steps // 2 (diffusers raises ZeroDivisionError for one step).
  if (o.steps < 2)
    return make_error("MochiPipeline needs at least 2 steps (its linear-quadratic schedule); got " +
                      std::to_string(o.steps));
  if (o.true_cfg_scale && *o.true_cfg_scale != 1.0f)
    return make_error("MochiPipeline guides with guidance_scale: true_cfg_scale is not an option");
  if (o.guidance_rescale != 0.0f) return make_error("MochiPipeline has no guidance_rescale");
  if (o.guidance_scale_2) return make_error("guidance_scale_2 is Wan2.2's low-noise expert's scale: Mochi has one");
  if (o.vae_tiling) return make_error("MochiPipeline: tiled VAE decode is not supported (the decode runs by frames)");
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const int64_t f = 1 + (o.num_frames - 1) / ts, h = o.height / vs, w = o.width / vs;
  MD_RETURN_IF_ERROR(validate_latents(o, {B, tc.in_channels, f, h, w}, "[B, 12, 1 + (frames - 1) / 6, H/8, W/8]"));
  return check_memory(o);
}

// Mochi's default video is 28 latent frames of 30 x 53 patches: 44,520 tokens a step. The estimate: this
// rank's transformer activations for the guidance batch (the registry's cost model), the VAE decoder's
// largest chunk (its widest level at full size over one chunk of frames; bench/README.md measures it) and the
// video itself. Memory-mapped weights are not counted (the kernel can page them).
Status MochiPipeline::check_memory(const GenerateOptions& o) const {
  const MochiConfig& tc = transformer_->config();
  const AutoencoderKLMochiConfig& vc = vae_->config();
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const int64_t f = 1 + (o.num_frames - 1) / vc.temporal_scale();
  const int64_t N =
      f * (o.height / vc.spatial_scale() / tc.patch_size) * (o.width / vc.spatial_scale() / tc.patch_size);
  const bool cfg = *o.guidance_scale > 1.0f;
  const double frames = double(o.num_frames), pixels = double(o.height) * double(o.width);
  VideoMemoryNeed need;
  need.transformer = transformer_activation_bytes("MochiTransformer3DModel", std::any(tc), mesh_.config(), N,
                                                  o.max_sequence_length, cfg && mesh_.config().cfg == 1 ? 2 * B : B);
  // One latent frame per chunk: 6 frames at full size through the decoder's last level (128 channels for the
  // released model), a few live tensors of it (bench/README.md, "Mochi VAE").
  need.vae = 6.0 * 4.0 * pixels * double(vc.decoder_block_out_channels.front()) * 4.0 / double(mesh_.vae().size());
  need.video = 2.0 * double(B) * frames * pixels * 3.0 * 4.0;
  return check_video_memory(o, N, need);
}

Result<MochiPipeline::PromptEmbeds> MochiPipeline::encode_prompt(const std::vector<std::string>& prompts,
                                                                 int64_t max_sequence_length) const {
  Span s("stage", "encode prompt");
  MD_TRY(TokenizedBatch ids, tokenizer_->encode(prompts, int(max_sequence_length)));
  warn_truncated(ids, "T5 (text_encoder) max_sequence_length is " + std::to_string(max_sequence_length) + " tokens");
  // The transformer's caption pooler averages the valid tokens: a prompt needs one (T5 always adds </s>).
  for (size_t b = 0; b < ids.lengths.size(); ++b)
    if (ids.lengths[b] == 0 || (force_zeros_for_empty_prompt_ && !prompts.empty() && prompts.back().empty()))
      return make_error(
          "MochiPipeline: model_index.json's force_zeros_for_empty_prompt masks every token of an empty "
          "prompt, which the transformer's caption pooler cannot average; give a negative prompt or "
          "set it to false");
  PromptEmbeds e;
  {
    Span s2("stage", "text_encoder (T5)");
    MD_TRY(e.sequence,
           text_encoder_->forward(ops::to_device(ids.input_ids, device_), ops::to_device(ids.attention_mask, device_)));
  }
  e.mask = ops::to_device(ids.attention_mask, device_);
  return e;
}

Result<Tensor> MochiPipeline::generate(const GenerateOptions& options, TensorMap* record,
                                       const StepCallback& on_step) const {
  const GenerateOptions o = with_defaults(options);
  MD_RETURN_IF_ERROR(validate(o));
  const MochiConfig& tc = transformer_->config();
  const AutoencoderKLMochiConfig& vc = vae_->config();
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const float scale = *o.guidance_scale;
  const bool cfg = scale > 1.0f;

  // 1. Text embeddings and masks; with guidance also the negative prompts' (empty strings when none are given),
  // and the guidance batch [negative; prompt].
  auto encode = [&](const std::vector<std::string>& prompts) -> Result<PromptEmbeds> {
    MD_TRY(PromptEmbeds e, encode_prompt(prompts, o.max_sequence_length));
    // Each prompt's rows next to each other, masks as their embeddings (diffusers tiles the masks instead,
    // which pairs them with the wrong prompt when several prompts make several videos each).
    e.sequence = repeat_rows(e.sequence, o.num_images_per_prompt);
    e.mask = repeat_rows(e.mask, o.num_images_per_prompt);
    return e;
  };
  MD_TRY(const PromptEmbeds pos, encode(o.prompt));
  PromptEmbeds neg, pair;
  if (cfg) {
    const std::vector<std::string> negative =
        o.negative_prompt.empty() ? std::vector<std::string>(o.prompt.size(), "") : o.negative_prompt;
    MD_TRY(neg, encode(negative));
    pair.sequence = concat({neg.sequence, pos.sequence}, 0);
    pair.mask = concat({neg.mask, pos.mask}, 0);
  }

  // 2. Latents: one latent frame for the first video frame, one per 6 after it, at 1/8 resolution.
  const int64_t vs = vc.spatial_scale(), ts = vc.temporal_scale();
  const Shape shape{B, tc.in_channels, 1 + (o.num_frames - 1) / ts, o.height / vs, o.width / vs};
  Tensor latents =
      ops::to_device(o.latents.defined() ? o.latents.to(DType::F32).clone() : torch_randn(shape, o.seed), device_);

  // 3. Timesteps from the linear-quadratic sigmas (the scheduler inverts them: t rises from 0).
  MD_TRY(FlowMatchEulerScheduler scheduler, FlowMatchEulerScheduler::create(scheduler_config_));
  MD_RETURN_IF_ERROR(retrieve_timesteps(scheduler, std::nullopt, std::nullopt,
                                        linear_quadratic_schedule(o.steps, kThresholdNoise), std::nullopt));

  // 4. Denoise: the transformer takes the scheduler's t as it is.
  auto predict = [&](const Tensor& x, float t, Branch branch, TensorMap* inputs) -> Result<Tensor> {
    const PromptEmbeds& e = branch == Branch::Pair ? pair : branch == Branch::Uncond ? neg : pos;
    const Tensor timestep = ops::full({x.size(0)}, t, x.device());
    if (inputs)
      *inputs = {{"hidden_states", x},
                 {"timestep", timestep},
                 {"encoder_hidden_states", e.sequence},
                 {"encoder_attention_mask", e.mask}};
    // Every tensor argument is a graph input (backend/graphed_forward.h), as in sd3.cpp.
    return graphed_call({x, e.sequence, timestep, e.mask}, [&](const std::vector<Tensor>& in) {
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

  // 5. De-normalise (z = latents * std / scaling_factor + mean, in the reference's order) and decode.
  Span span("stage", "vae decode");
  const int64_t C = latents.size(1);
  std::vector<Tensor> channels;
  for (int64_t c = 0; c < C; ++c) {
    const Tensor scaled = ops::affine(latents.slice(1, c, c + 1), vc.latents_std[size_t(c)], 0.0f);
    channels.push_back(ops::div_add(scaled, vc.scaling_factor, vc.latents_mean[size_t(c)]));
  }
  const Tensor z = concat(channels, 1);
  Tensor video;
  if (mesh_.vae().size() > 1) {
    MD_TRY(video, vae_->decode_parallel(z, mesh_.vae()));
  } else {
    MD_TRY(video, vae_->decode(z));
  }
  return ops::to_device(postprocess_video(video), Device::CPU);
}

PipelineEntry mochi_pipeline_entry() {
  return {"MochiPipeline", MochiPipeline::traits,
          [](const std::string& dir, const Mesh& mesh, const LoadOptions& from) -> Result<std::unique_ptr<Pipeline>> {
            MD_TRY(MochiPipeline p, MochiPipeline::load(dir, mesh, from));
            return std::unique_ptr<Pipeline>(std::make_unique<MochiPipeline>(std::move(p)));
          },
          /*runs_on_device=*/true};
}

}  // namespace meshdit
