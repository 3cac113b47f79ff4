// Motif-Image (MotifImage.sample in Motif Technologies' modeling_motifimage.py, with run_inference.sh's
// settings), step by step:
//   1. prompts -> CLIP-L, CLIP-G (77 tokens) and FLAN-T5-XXL (256 tokens, with its mask) -> last hidden states;
//      zero masking: T5 rows at padding and CLIP rows after the first end token are zeroed; pooled = both CLIP
//      pooler outputs joined. The negative: the prompt's negative when given, else the empty prompt's
//      embeddings while sigma >= 0.85 and all zeros (text and pooled) below.
//   2. noise [B, 16, H/8, W/8]
//   3. sigmas of the linear-quadratic schedule emulating 100 steps; the DiT's timestep is round(sigma * 1000)
//   4. the shared loop (pipelines/denoise.h): v = DiT(x, t, text, pooled) on the guidance batch,
//      v = uncond + w (cond - uncond), x += (sigma[i+1] - sigma[i]) v
//   5. image = VAE decode of latents / scaling_factor, plus shift_factor (the reference adds the VAE's shift
//      to the decoded image rather than to the latents), (x + 1) / 2 clamped to [0, 1]
#include "pipelines/motif.h"

#include <algorithm>
#include <filesystem>

#include "backend/graphed_forward.h"
#include "backend/ops.h"
#include "core/torch_rng.h"
#include "core/trace.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "pipelines/components.h"
#include "pipelines/denoise.h"
#include "pipelines/vae_decode.h"
#include "schedulers/motif.h"

namespace meshdit {

namespace {

namespace fs = std::filesystem;

// MotifImage.tokenization: min(TOKEN_MAX_LENGTH = 256, the tokenizer's model_max_length) -> 77 for CLIP.
constexpr int64_t kClipTokens = 77;

// The release's DiT checkpoint: the first *.bin (or *.pt / *.pth) under checkpoints/, "" when there is none.
std::string dit_checkpoint_file(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir + "/checkpoints", ec)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".bin" || ext == ".pt" || ext == ".pth")) found.push_back(e.path().string());
  }
  std::sort(found.begin(), found.end());
  return found.empty() ? "" : found.front();
}

// The DiT's checkpoint: the release's file holds the whole MotifImage (dit., vae., text encoders...), so
// only the tensors under `dit.` are the DiT's; a file of the DiT alone (no such prefix) is taken whole.
Result<Checkpoint> open_motif_checkpoint(const std::string& path) {
  MD_TRY(Checkpoint ck, Checkpoint::open(path));
  for (const std::string& name : ck.stored_names())
    if (name.rfind("dit.", 0) == 0) return Checkpoint::open(path, "dit.");
  return ck;
}

// x [B, L, D] with each row l of sample b multiplied by keep[b][l] (0 or 1).
Tensor zero_rows(const Tensor& x, const std::vector<std::vector<uint8_t>>& keep) {
  const int64_t B = x.size(0), L = x.size(1);
  std::vector<float> m(size_t(B * L));
  for (int64_t i = 0; i < B * L; ++i) m[size_t(i)] = keep[size_t(i / L)][size_t(i % L)] ? 1.0f : 0.0f;
  const Tensor mask = ops::to_device(Tensor::from_f32({B, L, 1}, m), x.device());
  return ops::mul(x.to(DType::F32), mask.expand(x.shape()));
}

// The ids the tokenizer's batch holds for `text` (truncated to L keeping its special tokens, padded with its pad
// id), computed from its parts rather than read back from the batch's tensor.
std::vector<int64_t> padded_ids(const Tokenizer& tok, const std::string& text, int64_t L) {
  const std::vector<int64_t> body = tok.encode_text(sanitize_utf8(text));
  std::vector<int64_t> row = tok.prefix_ids();
  const int64_t room = L - int64_t(tok.prefix_ids().size() + tok.suffix_ids().size());
  row.insert(row.end(), body.begin(),
             body.begin() + std::min<int64_t>(int64_t(body.size()), std::max<int64_t>(room, 0)));
  row.insert(row.end(), tok.suffix_ids().begin(), tok.suffix_ids().end());
  row.resize(size_t(L), tok.pad_id());
  return row;
}

// MotifImage.text_encoding's masking_wo_first_eos: keep every token that is not the end token, and the one at
// index (number of such tokens), which is the first end token when the tokenizer pads with it (CLIP-L); with a
// different pad token (CLIP-G pads with "!") that index is the last position and only the end token itself is
// zeroed: the reference's arithmetic, kept as it is.
std::vector<std::vector<uint8_t>> clip_keep(const Tokenizer& tok, const std::vector<std::string>& prompts, int64_t L,
                                            int64_t eos) {
  std::vector<std::vector<uint8_t>> keep;
  for (const auto& p : prompts) {
    const std::vector<int64_t> ids = padded_ids(tok, p, L);
    std::vector<uint8_t> k(static_cast<size_t>(L));
    int64_t n = 0;
    for (int64_t l = 0; l < L; ++l) n += (k[size_t(l)] = ids[size_t(l)] != eos);
    if (n < L) k[size_t(n)] = 1;
    keep.push_back(std::move(k));
  }
  return keep;
}

// T5 rows of real tokens (the reference keeps ids != pad: the same, the padding coming last).
std::vector<std::vector<uint8_t>> length_keep(const std::vector<int64_t>& lengths, int64_t L) {
  std::vector<std::vector<uint8_t>> keep;
  for (int64_t n : lengths) {
    std::vector<uint8_t> k(static_cast<size_t>(L), 0);
    std::fill_n(k.begin(), std::min(n, L), uint8_t(1));
    keep.push_back(std::move(k));
  }
  return keep;
}

MotifImagePipeline::PromptEmbeds zeros_like(const MotifImagePipeline::PromptEmbeds& e) {
  auto z = [](const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); };
  return {z(e.t5), z(e.clip_l), z(e.clip_g), z(e.pooled)};
}

MotifImagePipeline::PromptEmbeds concat_batch(const MotifImagePipeline::PromptEmbeds& a,
                                              const MotifImagePipeline::PromptEmbeds& b) {
  return {concat({a.t5, b.t5}, 0), concat({a.clip_l, b.clip_l}, 0), concat({a.clip_g, b.clip_g}, 0),
          concat({a.pooled, b.pooled}, 0)};
}

// MotifSampler as the shared loop steps it. The loop hands over the guided velocity, and step i is the i-th call
// (the sampler's timesteps need not be distinct as floats), so the predictor asks index() for its step.
class MotifSteps final : public StepScheduler {
 public:
  explicit MotifSteps(const MotifSampler& s) : s_(s) {}
  int64_t index() const { return i_; }
  std::vector<float> timesteps() const override {
    std::vector<float> t;
    for (int64_t v : s_.timesteps()) t.push_back(float(v));
    return t;
  }
  Tensor timesteps_tensor() const override { return s_.timesteps_tensor(); }
  Result<Tensor> step(const Tensor& v, float, const Tensor& sample) override {
    // The sampler guides itself: with v as both branches uncond + g (cond - uncond) is v exactly.
    MD_TRY(Tensor next, s_.step(i_, sample, v, v));
    ++i_;
    return next;
  }

 private:
  const MotifSampler& s_;
  int64_t i_ = 0;
};

}  // namespace

bool is_motif_folder(const std::string& dir) {
  if (path_exists(dir + "/model_index.json")) return false;
  if (!dit_checkpoint_file(dir).empty()) return true;
  // A converted DiT: MotifImageConfig has no _class_name, every diffusers transformer config has one (a diffusers
  // folder that lost its model_index.json keeps being reported as such).
  auto j = load_json(dir + "/transformer/config.json");
  return j.ok() && j->is_object() && !j->contains("_class_name");
}

Result<MotifConfig> motif_folder_config(const std::string& dir) {
  for (const char* rel : {"/config.json", "/configs/motif_image.json", "/transformer/config.json"})
    if (path_exists(dir + rel)) return MotifConfig::from_json(dir + rel);
  return MotifConfig{};  // the released model's motif_image.json (the registry's "motif" preset)
}

Result<ModelTraits> MotifImagePipeline::traits(const std::string& dir, const GenerateOptions& options,
                                               const LoadOptions&) {
  MD_TRY(MotifConfig tc, motif_folder_config(dir));
  ModelTraits t;
  t.name = "MotifImagePipeline " + dir;
  t.heads = tc.num_attention_heads;
  t.pad_heads = true;  // MotifTransformer::load pads the 30 heads to a multiple of tp
  t.cfg_batch = options.guidance_scale.value_or(5.0f) > 1.0f;
  const int64_t h = options.height ? options.height : tc.height, w = options.width ? options.width : tc.width;
  t.image_tokens = (h / 8 / tc.patch_size) * (w / 8 / tc.patch_size);
  return t;
}

Result<MotifImagePipeline> MotifImagePipeline::load(const std::string& dir, const Mesh& mesh, const LoadOptions& from) {
  Span span("stage", "load model");
  if (!is_directory(dir)) return make_error(dir + ": not a folder");
  MotifImagePipeline p;
  p.mesh_ = mesh;
  p.device_ = from.device;
  const ParallelContext par = p.mesh_.context();
  auto tokenizer_dir = [&](const char* tok, const char* enc) {
    // openai/clip-vit-large-patch14 and google/flan-t5-xxl keep their tokenizer files beside the weights.
    return is_directory(dir + "/" + tok) ? dir + "/" + tok : dir + "/" + enc;
  };
  {
    MD_TRY(ClipTokenizer t, ClipTokenizer::load(tokenizer_dir("tokenizer", "text_encoder")));
    p.tokenizer_ = std::make_shared<ClipTokenizer>(std::move(t));
  }
  {
    MD_TRY(ClipTokenizer t, ClipTokenizer::load(tokenizer_dir("tokenizer_2", "text_encoder_2")));
    p.tokenizer_2_ = std::make_shared<ClipTokenizer>(std::move(t));
  }
  {
    MD_TRY(T5Tokenizer t, T5Tokenizer::load(tokenizer_dir("tokenizer_3", "text_encoder_3")));
    p.tokenizer_3_ = std::make_shared<T5Tokenizer>(std::move(t));
  }
  MD_TRY(p.text_encoder_, (load_component_on<CLIPTextModel, CLIPTextConfig>(p.device_, dir + "/text_encoder")));
  MD_TRY(p.text_encoder_2_, (load_component_on<CLIPTextModel, CLIPTextConfig>(p.device_, dir + "/text_encoder_2")));
  MD_TRY(p.text_encoder_3_, (load_component_on<T5Encoder, T5Config>(p.device_, dir + "/text_encoder_3", &par)));
  MD_TRY(MotifConfig tc, motif_folder_config(dir));
  // The DiT's text projection (fixed at 4096 in the reference) takes T5's width, and CLIP-L ++ CLIP-G zero-padded to
  // it.
  const int64_t t5_width = p.text_encoder_3_->config().d_model;
  const int64_t clip_width = p.text_encoder_->config().hidden_size + p.text_encoder_2_->config().hidden_size;
  if (t5_width != MotifConfig::kTextDim || clip_width > t5_width)
    return make_error(dir + ": text_encoder_3 (T5) is " + std::to_string(t5_width) + " wide and the CLIP encoders " +
                      std::to_string(clip_width) + " together; the DiT's text projection takes " +
                      std::to_string(MotifConfig::kTextDim) + " (FLAN-T5-XXL: 4096; CLIP-L 768 + CLIP-G 1280)");
  if (clip_width != tc.pooled_text_dim)
    return make_error(dir + ": the CLIP pooler outputs are " + std::to_string(clip_width) +
                      " wide together, the DiT's pooled_text_dim is " + std::to_string(tc.pooled_text_dim));
  {
    Checkpoint ck;
    if (!from.transformer_file.empty()) {
      MD_TRY(ck, open_motif_checkpoint(from.transformer_file));
    } else if (const std::string bin = dit_checkpoint_file(dir); !bin.empty()) {
      MD_TRY(ck, open_motif_checkpoint(bin));
    } else if (is_directory(dir + "/transformer")) {
      MD_TRY(ck, Checkpoint::open_dir(dir + "/transformer"));
    } else {
      return make_error(dir + ": no DiT weights (checkpoints/*.bin as released, or transformer/ with safetensors)");
    }
    MD_RETURN_IF_ERROR(place_checked(ck, p.device_, ck.origin(), /*denoiser=*/true));
    MD_TRY(MotifTransformer m, MotifTransformer::load(ck, tc, &par));
    p.transformer_ = std::make_shared<MotifTransformer>(std::move(m));
  }
  MD_TRY(p.vae_, (load_component_on<AutoencoderKL, AutoencoderKLConfig>(p.device_, dir + "/vae")));
  if (p.vae_->config().latent_channels != 16)
    return make_error(dir + "/vae: Motif needs the 16-channel SD3 VAE, this one has " +
                      std::to_string(p.vae_->config().latent_channels) + " latent channels");
  return p;
}

GenerateOptions MotifImagePipeline::with_defaults(GenerateOptions o) const {
  if (o.height == 0) o.height = transformer_->config().height;
  if (o.width == 0) o.width = transformer_->config().width;
  if (o.steps == 0) o.steps = 50;
  if (!o.guidance_scale) o.guidance_scale = 5.0f;
  if (o.max_sequence_length == 0) o.max_sequence_length = 256;
  return o;
}

Status MotifImagePipeline::validate(const GenerateOptions& o) const {
  const MotifConfig& tc = transformer_->config();
  MD_RETURN_IF_ERROR(validate_image_options(o, "MotifImagePipeline", 8 * tc.patch_size, 512));
  if (auto s = MotifSampler::create(MotifSamplerConfig{}, o.steps); !s.ok())
    return make_error("MotifImagePipeline: --steps " + std::to_string(o.steps) + ": " + s.error().message);
  // The reference builds its position table for one square grid and unpatchifies square images only.
  if (o.width != o.height)
    return make_error(
        "Motif-Image generates square images only (the reference's positions and unpatchify assume a "
        "square grid): got " +
        std::to_string(o.width) + "x" + std::to_string(o.height));
  if (o.true_cfg_scale && *o.true_cfg_scale != 1.0f)
    return make_error("MotifImagePipeline guides with guidance_scale: true_cfg_scale is not an option");
  if (o.guidance_rescale != 0.0f)
    return make_error("MotifImagePipeline: guidance_rescale is not supported (run_inference.sh leaves it off)");
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  return validate_latents(o, {B, 16, o.height / 8, o.width / 8}, "[B, 16, H/8, W/8]");
}

Result<MotifImagePipeline::PromptEmbeds> MotifImagePipeline::encode_prompt(const std::vector<std::string>& prompts,
                                                                           int64_t max_sequence_length) const {
  Span s("stage", "encode prompt");
  PromptEmbeds e;
  MD_TRY(TokenizedBatch t5_ids, tokenizer_3_->encode(prompts, int(max_sequence_length)));
  warn_truncated(t5_ids,
                 "T5 (text_encoder_3) max_sequence_length is " + std::to_string(max_sequence_length) + " tokens");
  MD_TRY(Tensor t5, text_encoder_3_->forward(ops::to_device(t5_ids.input_ids, device_),
                                             ops::to_device(t5_ids.attention_mask, device_)));
  e.t5 = zero_rows(t5, length_keep(t5_ids.lengths, t5.size(1)));
  auto clip = [&](const ClipTokenizer& tok, const CLIPTextModel& enc, const char* name, Tensor& seq,
                  Tensor& pooled) -> Status {
    MD_TRY(TokenizedBatch ids, tok.encode(prompts, int(kClipTokens)));
    warn_truncated(ids, std::string("CLIP (") + name + ") takes " + std::to_string(kClipTokens) + " tokens");
    MD_TRY(CLIPTextOutput out, enc.forward(ops::to_device(ids.input_ids, device_)));
    seq = zero_rows(out.last_hidden_state, clip_keep(tok, prompts, kClipTokens, tok.eos_id()));
    pooled = out.pooler_output;
    return ok_status();
  };
  Tensor l_pooled, g_pooled;
  MD_RETURN_IF_ERROR(clip(*tokenizer_, *text_encoder_, "text_encoder", e.clip_l, l_pooled));
  MD_RETURN_IF_ERROR(clip(*tokenizer_2_, *text_encoder_2_, "text_encoder_2", e.clip_g, g_pooled));
  e.pooled = concat({l_pooled, g_pooled}, -1);
  return e;
}

Result<Tensor> MotifImagePipeline::generate(const GenerateOptions& options, TensorMap* record,
                                            const StepCallback& on_step) const {
  const GenerateOptions o = with_defaults(options);
  MD_RETURN_IF_ERROR(validate(o));
  const int64_t B = int64_t(o.prompt.size()) * o.num_images_per_prompt;
  const float scale = *o.guidance_scale;
  const bool cfg = scale > 1.0f;

  // 1. Text; the negative branch's two strategies when no negative prompt is given.
  auto encode = [&](const std::vector<std::string>& prompts) -> Result<PromptEmbeds> {
    MD_TRY(PromptEmbeds e, encode_prompt(prompts, o.max_sequence_length));
    for (Tensor* t : {&e.t5, &e.clip_l, &e.clip_g, &e.pooled}) *t = repeat_rows(*t, o.num_images_per_prompt);
    return e;
  };
  MD_TRY(const PromptEmbeds pos, encode(o.prompt));
  PromptEmbeds negative, empty, zeros, pair_negative, pair_empty, pair_zeros;
  const bool switched = cfg && o.negative_prompt.empty();
  if (cfg && !switched) {
    MD_TRY(negative, encode(o.negative_prompt));
    pair_negative = concat_batch(negative, pos);
  } else if (switched) {
    MD_TRY(empty, encode(std::vector<std::string>(o.prompt.size(), "")));
    zeros = zeros_like(pos);
    pair_empty = concat_batch(empty, pos);
    pair_zeros = concat_batch(zeros, pos);
  }

  // 2. Latents.
  Tensor latents = ops::to_device(
      o.latents.defined() ? o.latents.to(DType::F32).clone() : torch_randn({B, 16, o.height / 8, o.width / 8}, o.seed),
      device_);

  // 3. Sigmas, timesteps.
  MotifSamplerConfig sc;
  sc.guidance_scale = scale;
  MD_TRY(const MotifSampler sampler, MotifSampler::create(sc, o.steps));
  MotifSteps sched(sampler);

  // 4. Denoise.
  auto predict = [&](const Tensor& x, float, Branch branch, TensorMap* inputs) -> Result<Tensor> {
    const bool use_empty = switched && sampler.negative_for(sched.index(), false) == MotifNegative::EmptyPrompt;
    const PromptEmbeds& neg = !switched ? negative : use_empty ? empty : zeros;
    const PromptEmbeds& pair = !switched ? pair_negative : use_empty ? pair_empty : pair_zeros;
    const PromptEmbeds& e = branch == Branch::Pair ? pair : branch == Branch::Uncond ? neg : pos;
    const Tensor timestep = ops::to_device(sampler.timestep_input(sched.index(), x.size(0)), x.device());
    if (inputs)
      *inputs = {{"latent", x},
                 {"t", timestep},
                 {"text_emb_t5", e.t5},
                 {"text_emb_clip_l", e.clip_l},
                 {"text_emb_clip_g", e.clip_g},
                 {"pooled_text_embs", e.pooled}};
    // Every tensor argument is a graph input (backend/graphed_forward.h): the pair's embeddings change within one
    // branch when the guidance switches, which a captured address would silently miss.
    return graphed_call({x, timestep, e.t5, e.clip_l, e.clip_g, e.pooled}, [&](const std::vector<Tensor>& in) {
      return transformer_->forward(in[0], in[1], in[2], in[3], in[4], in[5]);
    });
  };
  DenoiseSetup setup;
  setup.experts = {Expert{"transformer", predict, scale}};
  setup.guidance.mode = cfg ? CfgMode::Batched : CfgMode::None;
  setup.cache = o.cache;
  setup.cache_report = o.cache_report;
  MD_TRY(latents, denoise(setup, sched, latents, mesh_.cfg(), record, on_step));

  // 5. Decode: latents / scaling_factor, the VAE, then + shift_factor on the image (as the reference does it).
  Span span("stage", "vae decode");
  const AutoencoderKLConfig& vc = vae_->config();
  MD_TRY(Tensor image,
         decode_latents(*vae_, ops::div_add(latents, vc.scaling_factor, 0.0f), mesh_.vae(), o.vae_tiling));
  return ops::to_device(postprocess_images(ops::affine(image, 1.0f, vc.shift_factor)), Device::CPU);
}

PipelineEntry motif_pipeline_entry() {
  return {"MotifImagePipeline", MotifImagePipeline::traits,
          [](const std::string& dir, const Mesh& mesh, const LoadOptions& from) -> Result<std::unique_ptr<Pipeline>> {
            MD_TRY(MotifImagePipeline p, MotifImagePipeline::load(dir, mesh, from));
            return std::unique_ptr<Pipeline>(std::make_unique<MotifImagePipeline>(std::move(p)));
          },
          /*runs_on_device=*/true};
}

}  // namespace meshdit
