// FluxPipeline (diffusers pipelines/flux/pipeline_flux.py), step by step:
//   1. prompts -> CLIP-L pooled embedding (77 tokens) and T5 sequence embedding (max_sequence_length)
//   2. noise [B, 16, H/8, W/8] -> packed 2x2 patches [B, N, 64], image ids (0, row, col), text ids 0
//   3. sigmas linspace(1, 1/steps), shifted with mu from N; for each t: v = transformer(x, t/1000, ...),
//      optionally true CFG against the negative prompt; x = Euler step
//   4. unpack, z / scaling_factor + shift_factor -> VAE decode -> (x / 2 + 0.5).clamp(0, 1)
#include "pipelines/flux.h"

#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/checkpoint.h"
#include "parallel/collectives.h"

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

namespace {

// A diffusers component folder: config.json and the (possibly sharded) weights beside it.
template <class Model, class Config, class... Extra>
Result<std::shared_ptr<Model>> load_component(const std::string& dir, Extra... extra) {
  MD_TRY(Config cfg, Config::from_json(dir + "/config.json"));
  MD_TRY(Checkpoint ck, Checkpoint::open_dir(dir));
  MD_TRY(Model m, Model::load(ck, cfg, extra...));
  return std::make_shared<Model>(std::move(m));
}

}  // namespace

Result<ModelTraits> FluxPipeline::traits(const std::string& dir, const GenerateOptions& options) {
  MD_TRY(FluxConfig tc, FluxConfig::from_json(dir + "/transformer/config.json"));
  ModelTraits t;
  t.name = "FluxPipeline " + dir;
  t.heads = tc.num_attention_heads;
  t.cfg_batch = options.true_cfg_scale > 1.0f && !options.negative_prompt.empty();
  const int64_t h = options.height ? options.height : 1024, w = options.width ? options.width : 1024;
  t.image_tokens = (h / 16) * (w / 16);
  return t;
}

Result<FluxPipeline> FluxPipeline::load(const std::string& dir, const Mesh& mesh) {
  Span span("stage", "load model");
  MD_TRY(DiffusersFolder folder, DiffusersFolder::open(dir));
  if (folder.class_name != "FluxPipeline")
    return make_error(dir + "/model_index.json: pipeline class '" + folder.class_name + "' is not FluxPipeline");
  FluxPipeline p;
  p.dir_ = dir;
  p.mesh_ = mesh;
  const ParallelContext par = p.mesh_.context();
  {
    MD_TRY(ClipTokenizer t, ClipTokenizer::load(folder.path("tokenizer")));
    p.tokenizer_ = std::make_shared<ClipTokenizer>(std::move(t));
  }
  {
    MD_TRY(T5Tokenizer t, T5Tokenizer::load(folder.path("tokenizer_2")));
    p.tokenizer_2_ = std::make_shared<T5Tokenizer>(std::move(t));
  }
  MD_TRY(p.text_encoder_, (load_component<CLIPTextModel, CLIPTextConfig>(folder.path("text_encoder"))));
  MD_TRY(p.text_encoder_2_, (load_component<T5Encoder, T5Config>(folder.path("text_encoder_2"), &par)));
  MD_TRY(p.transformer_, (load_component<FluxTransformer, FluxConfig>(folder.path("transformer"), &par)));
  MD_TRY(p.vae_, (load_component<AutoencoderKL, AutoencoderKLConfig>(folder.path("vae"))));
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
  return o;
}

Status FluxPipeline::validate(const GenerateOptions& o) const {
  const int64_t m = vae_scale_factor() * 2;
  if (o.prompt.empty()) return make_error("no prompt given");
  if (o.height <= 0 || o.width <= 0 || o.height % m || o.width % m)
    return make_error("width and height must be positive multiples of " + std::to_string(m) + " (got " +
                      std::to_string(o.width) + "x" + std::to_string(o.height) + ")");
  if (o.steps < 1) return make_error("steps must be at least 1");
  if (o.num_images_per_prompt < 1) return make_error("batch must be at least 1");
  if (o.max_sequence_length < 1 || o.max_sequence_length > 512)
    return make_error("max_sequence_length must be in [1, 512]");
  if (!o.negative_prompt.empty() && o.negative_prompt.size() != o.prompt.size())
    return make_error("give one negative prompt per prompt");
  return ok_status();
}

Result<FluxPipeline::PromptEmbeds> FluxPipeline::encode_prompt(const std::vector<std::string>& prompts,
                                                               int64_t max_sequence_length) const {
  PromptEmbeds e;
  {
    Span s("stage", "tokenize");
    // CLIP takes model_max_length (77) tokens; T5 max_sequence_length, both padded to length.
    MD_TRY(TokenizedBatch clip_ids, tokenizer_->encode(prompts, int(text_encoder_->config().max_position_embeddings)));
    MD_TRY(TokenizedBatch t5_ids, tokenizer_2_->encode(prompts, int(max_sequence_length)));
    {
      Span s2("stage", "text_encoder (CLIP)");
      MD_TRY(CLIPTextOutput o, text_encoder_->forward(clip_ids.input_ids));
      e.pooled = o.pooler_output;
    }
    Span s3("stage", "text_encoder_2 (T5)");
    MD_TRY(e.sequence, text_encoder_2_->forward(t5_ids.input_ids, Tensor()));
  }
  e.text_ids = Tensor::zeros({e.sequence.size(1), 3});
  return e;
}

namespace {

// Repeats each row n times (num_images_per_prompt): [P, ...] -> [P * n, ...].
Tensor repeat_rows(const Tensor& t, int64_t n) {
  if (n == 1) return t;
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < t.size(0); ++i)
    for (int64_t r = 0; r < n; ++r) parts.push_back(t.slice(0, i, i + 1));
  return concat(parts, 0);
}

Tensor full(int64_t n, float v) { return Tensor::from_f32({n}, std::vector<float>(size_t(n), v)); }

}  // namespace

Result<Tensor> FluxPipeline::generate(const GenerateOptions& options, TensorMap* record,
                                      const StepCallback& on_step) const {
  const GenerateOptions o = with_defaults(options);
  MD_RETURN_IF_ERROR(validate(o));
  const FluxConfig& tc = transformer_->config();
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;

  // 1. Text embeddings (and the negative ones for true CFG).
  MD_TRY(PromptEmbeds pos, encode_prompt(o.prompt, o.max_sequence_length));
  pos.pooled = repeat_rows(pos.pooled, o.num_images_per_prompt);
  pos.sequence = repeat_rows(pos.sequence, o.num_images_per_prompt);
  const bool true_cfg = o.true_cfg_scale > 1.0f && !o.negative_prompt.empty();
  PromptEmbeds neg;
  if (true_cfg) {
    MD_TRY(neg, encode_prompt(o.negative_prompt, o.max_sequence_length));
    neg.pooled = repeat_rows(neg.pooled, o.num_images_per_prompt);
    neg.sequence = repeat_rows(neg.sequence, o.num_images_per_prompt);
  }

  // 2. Latents: 16 channels at 1/8 resolution, rounded to whole 2x2 patches.
  const int64_t vs = vae_scale_factor();
  const int64_t h = 2 * (o.height / (vs * 2)), w = 2 * (o.width / (vs * 2));
  const int64_t C = tc.in_channels / 4;
  Tensor latents;
  if (o.latents.defined()) {
    if (o.latents.shape() != Shape{B, (h / 2) * (w / 2), tc.in_channels})
      return make_error("latents " + shape_str(o.latents.shape()) + " must be [" + std::to_string(B) + ", " +
                        std::to_string((h / 2) * (w / 2)) + ", " + std::to_string(tc.in_channels) + "]");
    latents = o.latents.to(DType::F32).clone();
  } else {
    latents = flux_pack_latents(torch_randn({B, C, h, w}, o.seed));
  }
  const Tensor img_ids = flux_image_ids(h, w);

  // 3. Timesteps: sigmas linspace(1, 1/N, N), shifted by mu(image_seq_len).
  MD_TRY(FlowMatchEulerScheduler scheduler, FlowMatchEulerScheduler::create(scheduler_config_));
  const double mu =
      calculate_shift(double(latents.size(1)), scheduler_config_.base_image_seq_len,
                      scheduler_config_.max_image_seq_len, scheduler_config_.base_shift, scheduler_config_.max_shift);
  MD_TRY(int64_t steps, retrieve_timesteps(scheduler, o.steps, std::nullopt, flux_pipeline_sigmas(o.steps), mu));
  if (record) (*record)["scheduler.timesteps"] = scheduler.timesteps_tensor();
  const Tensor guidance = tc.guidance_embeds ? full(B, *o.guidance_scale) : Tensor();

  // CFG parallel: the conditional batch on cfg rank 0, the unconditional one on cfg rank 1, one
  // all-gather of the predictions per step.
  Communicator& cfg_group = mesh_.cfg();
  const bool cfg_split = true_cfg && cfg_group.size() == 2;
  if (cfg_split && record) return make_error("recording intermediates is not supported with cfg=2");
  int call = 0;
  auto run_transformer = [&](const PromptEmbeds& e, const Tensor& t) -> Result<Tensor> {
    MD_TRY(Tensor v, transformer_->forward(latents, e.sequence, e.pooled, t, img_ids, e.text_ids, guidance));
    if (record) {
      const std::string p = "transformer.call" + std::to_string(call) + ".";
      (*record)[p + "hidden_states"] = latents.clone();
      (*record)[p + "timestep"] = t;
      if (guidance.defined()) (*record)[p + "guidance"] = guidance;
      (*record)[p + "pooled_projections"] = e.pooled;
      (*record)[p + "encoder_hidden_states"] = e.sequence;
      (*record)[p + "txt_ids"] = e.text_ids;
      (*record)[p + "img_ids"] = img_ids;
      (*record)[p + "sample"] = v.clone();  // true CFG later combines v in place
    }
    ++call;
    return v;
  };

  for (int64_t i = 0; i < steps; ++i) {
    Span step_span("step", "denoise step " + std::to_string(i));
    const float t = scheduler.timesteps()[size_t(i)];
    const Tensor t_model = full(B, t / 1000.0f);
    Tensor v, v_neg;
    if (cfg_split) {
      MD_TRY(Tensor mine, run_transformer(cfg_group.rank() == 0 ? pos : neg, t_model));
      Tensor both = all_gather(mine, 0, cfg_group);  // [2B, ...]: conditional, then unconditional
      v = both.slice(0, 0, B).contiguous();
      v_neg = both.slice(0, B, 2 * B).contiguous();
    } else {
      MD_TRY(v, run_transformer(pos, t_model));
      if (true_cfg) {
        MD_TRY(v_neg, run_transformer(neg, t_model));
      }
    }
    if (true_cfg) {
      // noise_pred = neg + scale * (pos - neg)
      float* vp = v.f32();
      const float* np_ = v_neg.f32();
      for (int64_t k = 0; k < v.numel(); ++k) vp[k] = np_[k] + o.true_cfg_scale * (vp[k] - np_[k]);
    }
    MD_TRY(latents, scheduler.step(v, t, latents));
    if (record) (*record)["latents.step" + std::to_string(i)] = latents;
    if (on_step) on_step(i, steps, step_span.elapsed_s());
  }

  // 4. Decode and post-process.
  Span decode_span("stage", "vae decode");
  Tensor z = flux_unpack_latents(latents, h, w);
  {
    float* zp = z.f32();
    const float sf = vae_->config().scaling_factor, shift = vae_->config().shift_factor;
    for (int64_t k = 0; k < z.numel(); ++k) zp[k] = zp[k] / sf + shift;
  }
  const int64_t tile = vae_->default_tile();
  Tensor image;
  if (mesh_.vae().size() > 1 && !o.vae_tiling) {
    MD_TRY(image, vae_->decode_parallel(z, mesh_.vae()));
  } else {
    MD_TRY(image, o.vae_tiling ? vae_->decode_tiled(z, tile, tile / 4) : vae_->decode(z));
  }
  Tensor out = image.permute({0, 2, 3, 1}).contiguous();
  float* p = out.f32();
  for (int64_t k = 0; k < out.numel(); ++k) {
    const float x = p[k] / 2.0f + 0.5f;
    p[k] = x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x);
  }
  return out;
}

}  // namespace meshdit
