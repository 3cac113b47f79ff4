// WanPipeline (diffusers pipelines/wan/pipeline_wan.py), step by step:
//   1. prompts cleaned (HTML entities, whitespace) -> UMT5 tokens padded to max_sequence_length, with the mask
//      -> UMT5 -> each row cut to its tokens and zero-padded again. The negative prompts ("" by default) the
//      same way when guided.
//   2. noise [B, 16, 1 + (F - 1) / 4, H/8, W/8] (the VAE's 4x time and 8x space compression)
//   3. UniPC timesteps with flow sigmas and the scheduler's flow_shift
//   4. the shared loop (pipelines/denoise.h): the expert of t (Wan2.2: transformer for t >= boundary_ratio *
//      num_train_timesteps, transformer_2 below), v = expert(x, t, text); with guidance a second call on the
//      negative prompt, v = uncond + w (cond - uncond) with the expert's scale; x = UniPC step
//   5. z = latents / (1 / std) + mean per channel, the causal 3-D VAE over every latent frame,
//      (x / 2 + 0.5).clamp(0, 1) -> frames [B, F, H, W, 3]
#include "pipelines/wan.h"

#include <cstdint>
#include <cstdio>

#include "backend/graphed_forward.h"
#include "backend/ops.h"
#include "core/torch_rng.h"
#include "core/trace.h"
#include "encoders/tokenizers/fix_text.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "models/registry.h"
#include "pipelines/components.h"
#include "pipelines/denoise.h"
#include "pipelines/vae_decode.h"

namespace meshdit {
namespace {

// The length of the whitespace character (Python's \s: ASCII whitespace, NBSP, the U+2000 spaces, ideographic
// space, ...) at s[i], 0 if none.
size_t whitespace_at(const std::string& s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F)) return 1;
  auto at = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0; };
  if (c == 0xC2 && (at(1) == 0xA0 || at(1) == 0x85)) return 2;
  if (c == 0xE1 && at(1) == 0x9A && at(2) == 0x80) return 3;  // U+1680
  if (c == 0xE2 && at(1) == 0x80 && (at(2) <= 0x8A || at(2) == 0xA8 || at(2) == 0xA9 || at(2) == 0xAF)) return 3;
  if (c == 0xE2 && at(1) == 0x81 && at(2) == 0x9F) return 3;  // U+205F
  if (c == 0xE3 && at(1) == 0x80 && at(2) == 0x80) return 3;  // U+3000
  return 0;
}

}  // namespace

std::string wan_prompt_clean(const std::string& text) {
  const std::string unescaped = html_unescape(html_unescape(fix_text(text)));
  std::string out;
  bool pending_space = false;
  for (size_t i = 0; i < unescaped.size();) {
    if (const size_t n = whitespace_at(unescaped, i)) {
      pending_space = !out.empty();
      i += n;
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    out += unescaped[i++];
  }
  return out;
}

Result<ModelTraits> WanPipeline::traits(const std::string& dir, const GenerateOptions& options,
                                        const LoadOptions& from) {
  MD_TRY(WanConfig tc, load_transformer_config<WanConfig>(dir, from));
  ModelTraits t;
  t.name = "WanPipeline " + dir;
  t.heads = tc.num_attention_heads;
  t.cfg_batch = options.guidance_scale.value_or(4.0f) > 1.0f;
  const int64_t h = options.height ? options.height : 720, w = options.width ? options.width : 1280;
  const int64_t f = options.num_frames ? options.num_frames : 81;
  t.image_tokens = (1 + (f - 1) / 4) * (h / 16) * (w / 16);
  return t;
}

Result<WanPipeline> WanPipeline::load(const std::string& dir, const Mesh& mesh, const LoadOptions& from) {
  Span span("stage", "load model");
  MD_TRY(DiffusersFolder folder, DiffusersFolder::open(dir));
  if (folder.class_name != "WanPipeline")
    return make_error(dir + "/model_index.json: pipeline class '" + folder.class_name + "' is not WanPipeline");
  WanPipeline p;
  p.mesh_ = mesh;
  p.device_ = from.device;
  const ParallelContext par = p.mesh_.context();
  {
    MD_TRY(Json index, load_json(dir + "/model_index.json"));
    if (index.contains("boundary_ratio") && index["boundary_ratio"].is_number()) {
      p.boundary_ratio_ = index["boundary_ratio"].get<double>();
      if (*p.boundary_ratio_ <= 0.0 || *p.boundary_ratio_ >= 1.0)
        return make_error(dir + "/model_index.json: boundary_ratio " + std::to_string(*p.boundary_ratio_) +
                          " must be in (0, 1)");
    }
  }
  {
    MD_TRY(T5Tokenizer t, T5Tokenizer::load(folder.path("tokenizer")));
    p.tokenizer_ = std::make_shared<T5Tokenizer>(std::move(t));
  }
  MD_TRY(p.text_encoder_, (load_component_on<T5Encoder, T5Config>(p.device_, folder.path("text_encoder"), &par)));
  if (!p.boundary_ratio_) {
    MD_TRY(p.transformer_, (load_transformer<WanTransformer, WanConfig>(dir, from, &par)));
  } else {
    // Wan2.2's high- and low-noise experts, their checkpoints kept to hand memory back at the switch.
    if (!from.transformer_file.empty())
      return make_error("--transformer: " + dir +
                        " has two experts (transformer, transformer_2); a single transformer file cannot replace both");
    const char* names[] = {"transformer", "transformer_2"};
    std::shared_ptr<WanTransformer>* models[] = {&p.transformer_, &p.transformer_2_};
    for (int e = 0; e < 2; ++e) {
      MD_TRY(WanConfig cfg, WanConfig::from_json(folder.path(names[e]) + "/config.json"));
      MD_TRY(Checkpoint ck, Checkpoint::open_dir(folder.path(names[e])));
      MD_RETURN_IF_ERROR(place_checked(ck, p.device_, folder.path(names[e])));
      MD_TRY(WanTransformer m, WanTransformer::load(ck, cfg, &par));
      *models[e] = std::make_shared<WanTransformer>(std::move(m));
      p.expert_ck_[e] = std::make_shared<Checkpoint>(std::move(ck));
      p.expert_ck_[e]->release_resident();  // loading touched nothing a step needs now
    }
  }
  MD_TRY(p.vae_, (load_component_on<AutoencoderKLWan, AutoencoderKLWanConfig>(p.device_, folder.path("vae"))));
  MD_TRY(p.scheduler_config_, UniPCConfig::load(folder.path("scheduler") + "/scheduler_config.json"));
  return p;
}

GenerateOptions WanPipeline::with_defaults(GenerateOptions o) const {
  const bool a14b = two_experts();
  if (o.height == 0) o.height = a14b ? 720 : 480;
  if (o.width == 0) o.width = a14b ? 1280 : 832;
  if (o.num_frames == 0) o.num_frames = 81;
  if (o.steps == 0) o.steps = a14b ? 40 : 50;
  // diffusers: guidance_scale_2 defaults to guidance_scale when the folder has a boundary; with neither given,
  // the model card's pair.
  if (a14b && !o.guidance_scale_2) o.guidance_scale_2 = o.guidance_scale ? *o.guidance_scale : 3.0f;
  if (!o.guidance_scale) o.guidance_scale = a14b ? 4.0f : 5.0f;
  if (o.max_sequence_length == 0) o.max_sequence_length = 512;
  return o;
}

Status WanPipeline::validate(const GenerateOptions& o) const {
  const WanConfig& tc = transformer_->config();
  MD_RETURN_IF_ERROR(validate_generation_options(o, vae_->config().spatial_scale() * tc.patch_size[1], 4096));
  const int64_t ts = vae_->config().temporal_scale();
  if (o.num_frames < 1 || (o.num_frames - 1) % ts != 0)
    return make_error("frames must be 1 + " + std::to_string(ts) + "k (the VAE's time compression), e.g. " +
                      std::to_string(1 + ts * 4) + " or 81; got " + std::to_string(o.num_frames));
  if (o.true_cfg_scale && *o.true_cfg_scale != 1.0f)
    return make_error("WanPipeline guides with guidance_scale: true_cfg_scale is not an option");
  if (o.guidance_rescale != 0.0f) return make_error("WanPipeline has no guidance_rescale");
  if (o.guidance_scale_2 && !two_experts())
    return make_error("guidance_scale_2 is the low-noise expert's scale: this folder has one transformer");
  if (o.vae_tiling) return make_error("WanPipeline: tiled VAE decode is not supported yet (the decode runs by frames)");
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const int64_t f = 1 + (o.num_frames - 1) / ts, h = o.height / vae_->config().spatial_scale(),
                w = o.width / vae_->config().spatial_scale();
  MD_RETURN_IF_ERROR(validate_latents(o, {B, tc.in_channels, f, h, w}, "[B, 16, 1 + (frames - 1) / 4, H/8, W/8]"));
  return check_memory(o);
}

// A 720p, 81-frame video is 75,600 tokens a step. The estimate: this rank's transformer activations (the
// registry's cost model, as `meshdit plan` counts them), the VAE decode's largest chunk (4 frames at full
// size, the decoder's widest level, a few live tensors; bench/README.md measures it) and the video itself; the
// memory-mapped weights are not counted (the kernel can page them).
Status WanPipeline::check_memory(const GenerateOptions& o) const {
  const WanConfig& tc = transformer_->config();
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const int64_t vs = vae_->config().spatial_scale(), ts = vae_->config().temporal_scale();
  const int64_t f = 1 + (o.num_frames - 1) / ts;
  const int64_t N = f * (o.height / vs / tc.patch_size[1]) * (o.width / vs / tc.patch_size[2]);
  const double frames = double(o.num_frames), pixels = double(o.height) * double(o.width);
  VideoMemoryNeed need;
  // Guidance runs as two calls of the batch.
  need.transformer =
      transformer_activation_bytes("WanTransformer3DModel", std::any(tc), mesh_.config(), N, o.max_sequence_length, B);
  need.vae = 6.0 * 4.0 * pixels * double(vae_->config().base_dim) * 4.0 / double(mesh_.vae().size());
  need.video = 2.0 * double(B) * frames * pixels * 3.0 * 4.0;
  return check_video_memory(o, N, need);
}

Result<Tensor> WanPipeline::encode_prompt(const std::vector<std::string>& prompts, int64_t max_sequence_length) const {
  Span s("stage", "encode prompt");
  std::vector<std::string> cleaned;
  for (const auto& p : prompts) cleaned.push_back(wan_prompt_clean(p));
  MD_TRY(TokenizedBatch ids, tokenizer_->encode(cleaned, int(max_sequence_length)));
  warn_truncated(ids, "UMT5 (text_encoder) max_sequence_length is " + std::to_string(max_sequence_length) + " tokens");
  Tensor h;
  {
    Span s2("stage", "text_encoder (UMT5)");
    MD_TRY(h,
           text_encoder_->forward(ops::to_device(ids.input_ids, device_), ops::to_device(ids.attention_mask, device_)));
  }
  return trim_prompt_embeds(h, ids.lengths, max_sequence_length);
}

Result<Tensor> WanPipeline::generate(const GenerateOptions& options, TensorMap* record,
                                     const StepCallback& on_step) const {
  const GenerateOptions o = with_defaults(options);
  MD_RETURN_IF_ERROR(validate(o));
  const WanConfig& tc = transformer_->config();
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const bool cfg = *o.guidance_scale > 1.0f;

  // 1. Text embeddings; with guidance also the negative prompts' (empty strings when none are given).
  MD_TRY(Tensor pos, encode_prompt(o.prompt, o.max_sequence_length));
  pos = repeat_rows(pos, o.num_images_per_prompt);
  Tensor neg;
  if (cfg) {
    const std::vector<std::string> negative =
        o.negative_prompt.empty() ? std::vector<std::string>(o.prompt.size(), "") : o.negative_prompt;
    MD_TRY(neg, encode_prompt(negative, o.max_sequence_length));
    neg = repeat_rows(neg, o.num_images_per_prompt);
  }

  // 2. Latents: one latent frame for the first video frame, one per 4 after it, at 1/8 resolution.
  const int64_t vs = vae_->config().spatial_scale(), ts = vae_->config().temporal_scale();
  const Shape shape{B, tc.in_channels, 1 + (o.num_frames - 1) / ts, o.height / vs, o.width / vs};
  Tensor latents =
      ops::to_device(o.latents.defined() ? o.latents.to(DType::F32).clone() : torch_randn(shape, o.seed), device_);

  // 3. Timesteps.
  MD_TRY(UniPCMultistepScheduler scheduler, UniPCMultistepScheduler::create(scheduler_config_));
  MD_RETURN_IF_ERROR(scheduler.set_timesteps(o.steps));

  // 4. Denoise: the transformer takes t itself (in [0, 1000]); guidance is a second call.
  int active = -1;  // the expert that ran last
  auto expert = [&](const WanTransformer& model, int index) {
    return [this, &model, index, &active, &pos, &neg](const Tensor& x, float t, Branch branch,
                                                      TensorMap* inputs) -> Result<Tensor> {
      if (branch == Branch::Pair) return make_error("WanPipeline: guidance runs as two calls, not a batch");
      if (active != index) {  // the other expert is done for this video (the boundary is crossed once)
        if (active >= 0 && expert_ck_[active]) expert_ck_[active]->release_resident();
        active = index;
      }
      const Tensor& text = branch == Branch::Cond ? pos : neg;
      const Tensor timestep = ops::full({x.size(0)}, t, x.device());
      if (inputs) *inputs = {{"hidden_states", x}, {"timestep", timestep}, {"encoder_hidden_states", text}};
      // Every tensor argument is a graph input (backend/graphed_forward.h), as in sd3.cpp.
      return graphed_call({x, timestep, text},
                          [&](const std::vector<Tensor>& in) { return model.forward(in[0], in[1], in[2]); });
    };
  };
  DenoiseSetup setup;
  setup.experts = {Expert{"transformer", expert(*transformer_, 0), *o.guidance_scale}};
  if (two_experts()) {
    setup.experts.push_back(Expert{"transformer_2", expert(*transformer_2_, 1), *o.guidance_scale_2});
    setup.boundary = float(*boundary_ratio_ * double(scheduler_config_.num_train_timesteps));
  }
  setup.guidance.mode = cfg ? CfgMode::TwoCalls : CfgMode::None;
  SchedulerRef<UniPCMultistepScheduler> sched(scheduler);
  setup.cache = o.cache;
  setup.cache_report = o.cache_report;
  MD_TRY(latents, denoise(setup, sched, latents, mesh_.cfg(), record, on_step));

  // 5. Decode every frame.
  MD_TRY(Tensor video, decode_wan_video(*vae_, latents, mesh_.vae()));
  return ops::to_device(video, Device::CPU);
}

PipelineEntry wan_pipeline_entry() {
  return {"WanPipeline", WanPipeline::traits,
          [](const std::string& dir, const Mesh& mesh, const LoadOptions& from) -> Result<std::unique_ptr<Pipeline>> {
            MD_TRY(WanPipeline p, WanPipeline::load(dir, mesh, from));
            return std::unique_ptr<Pipeline>(std::make_unique<WanPipeline>(std::move(p)));
          },
          /*runs_on_device=*/true};
}

}  // namespace meshdit
