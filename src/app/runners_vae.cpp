// Reference cases of the VAEs: decode the case's latents and encode its image, reporting the hooks.
#include "app/check.h"
#include "app/runners.h"
#include "io/checkpoint.h"
#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_kl_mochi.h"
#include "models/vae/autoencoder_kl_wan.h"

namespace meshdit {
namespace {

Hooks collect_into(TensorMap& out) {
  return [&out](const std::string& name, const Tensor& t) { out[name] = t.clone(); };
}

// decoded = model.decode(z).sample; post = model.encode(image).latent_dist (either input may be absent).
// On a mesh the mesh's VAE group decodes by bands of latent rows (its hooks gather the whole tensors, so
// every output is still compared); encode runs whole on every rank.
Result<TensorMap> run_autoencoder_kl(const CaseContext& c) {
  // Asked even on one device: that is what makes the runner accept --mesh.
  MD_TRY(const Mesh* mesh, c.mesh(ModelTraits{"AutoencoderKL", 1}));
  MD_TRY(AutoencoderKLConfig cfg, AutoencoderKLConfig::from_json(c.dir + "/config.json"));
  MD_TRY(Checkpoint ck, c.open_weights(c.dir + "/diffusion_pytorch_model.safetensors"));
  MD_TRY(AutoencoderKL vae, AutoencoderKL::load(ck, cfg));
  const bool has_z = c.inputs.count("z") != 0, has_image = c.inputs.count("image") != 0;
  if (!has_z && !has_image) return make_error(c.dir + "/inputs.safetensors: neither 'z' nor 'image' to run");
  TensorMap out;
  Hooks hooks = collect_into(out);
  if (has_z) {
    MD_TRY(Tensor z, c.device_input("z"));
    if (mesh->vae().size() > 1) {
      MD_TRY(out["decoded"], vae.decode_parallel(z, mesh->vae(), &hooks));
    } else {
      MD_TRY(out["decoded"], vae.decode(z, &hooks));
    }
  }
  if (has_image) {
    MD_TRY(Tensor image, c.device_input("image"));
    MD_TRY(DiagonalGaussian post, vae.encode(image, &hooks));
    out["posterior_mean"] = post.mean;
    out["posterior_logvar"] = post.logvar;
  }
  return out;
}

// AutoencoderKLWan and AutoencoderKLQwenImage (one model): decoded = model.decode(z).sample,
// post = model.encode(video or image).latent_dist. On a mesh the VAE group decodes by bands of latent rows;
// encode runs whole on every rank.
Result<TensorMap> run_autoencoder_kl_wan(const CaseContext& c) {
  MD_TRY(const Mesh* mesh, c.mesh(ModelTraits{"AutoencoderKLWan", 1}));
  MD_TRY(AutoencoderKLWanConfig cfg, AutoencoderKLWanConfig::from_json(c.dir + "/config.json"));
  MD_TRY(Checkpoint ck, c.open_weights(c.dir + "/diffusion_pytorch_model.safetensors"));
  MD_TRY(AutoencoderKLWan vae, AutoencoderKLWan::load(ck, cfg));
  const char* pixels = c.inputs.count("video") ? "video" : "image";
  const bool has_z = c.inputs.count("z") != 0, has_pixels = c.inputs.count(pixels) != 0;
  if (!has_z && !has_pixels) return make_error(c.dir + "/inputs.safetensors: neither 'z' nor 'video'/'image' to run");
  TensorMap out;
  Hooks hooks = collect_into(out);
  if (has_z) {
    MD_TRY(Tensor z, c.device_input("z"));
    if (mesh->vae().size() > 1) {
      MD_TRY(out["decoded"], vae.decode_parallel(z, mesh->vae(), &hooks));
    } else {
      MD_TRY(out["decoded"], vae.decode(z, &hooks));
    }
  }
  if (has_pixels) {
    MD_TRY(Tensor video, c.device_input(pixels));
    MD_TRY(DiagonalGaussian post, vae.encode(video));
    out["posterior_mean"] = post.mean;
    out["posterior_logvar"] = post.logvar;
  }
  return out;
}

// AutoencoderKLMochi (decoder only): decoded = model.decode(z).sample, one latent frame per chunk. On a mesh
// the VAE group decodes by bands of latent rows.
Result<TensorMap> run_autoencoder_kl_mochi(const CaseContext& c) {
  MD_TRY(const Mesh* mesh, c.mesh(ModelTraits{"AutoencoderKLMochi", 1}));
  MD_TRY(AutoencoderKLMochiConfig cfg, AutoencoderKLMochiConfig::from_json(c.dir + "/config.json"));
  MD_TRY(Checkpoint ck, c.open_weights(c.dir + "/diffusion_pytorch_model.safetensors"));
  MD_TRY(AutoencoderKLMochi vae, AutoencoderKLMochi::load(ck, cfg));
  MD_TRY(Tensor z, c.device_input("z"));
  TensorMap out;
  if (mesh->vae().size() > 1) {
    MD_TRY(out["decoded"], vae.decode_parallel(z, mesh->vae()));
  } else {
    MD_TRY(out["decoded"], vae.decode(z));
  }
  return out;
}

}  // namespace

void register_vae_runners() {
  register_case_runner("diffusers.AutoencoderKL", run_autoencoder_kl);
  register_case_runner("diffusers.AutoencoderKLWan", run_autoencoder_kl_wan);
  register_case_runner("diffusers.AutoencoderKLQwenImage", run_autoencoder_kl_wan);
  register_case_runner("diffusers.AutoencoderKLMochi", run_autoencoder_kl_mochi);
}

}  // namespace meshdit
