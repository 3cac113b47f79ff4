// Every registered transformer runs its reference case with its weights and inputs on another device (the
// CPU backend standing in for a GPU under the CUDA tag, tests/stand_in_device.h): the output must live on
// that device and equal the host run bit for bit. This is what "model code never touches host data" buys:
// a GPU backend joins without edits to the models.
#include <gtest/gtest.h>

#include <cstring>

#include "../stand_in_device.h"
#include "../test_util.h"
#include "backend/ops.h"
#include "encoders/clip_text.h"
#include "encoders/qwen25vl.h"
#include "encoders/t5.h"
#include "io/json_config.h"
#include "io/safetensors.h"
#include "models/registry.h"
#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_kl_wan.h"

using namespace meshdit;

namespace {

std::string fixture_of(const std::string& cls) {
  const std::string dir = test::fixtures_dir();
  for (const auto& c : test::case_names(dir)) {
    auto meta = load_json(dir + "/" + c + "/meta.json");
    if (meta.ok() && meta->contains("class") && (*meta)["class"] == case_class_of(cls)) return dir + "/" + c;
  }
  return "";
}

Result<Tensor> run(const TransformerArch& arch, const std::string& dir, Device dev) {
  MD_TRY(std::any cfg, arch.parse_config(dir + "/config.json"));
  if (arch.call_config) {
    MD_TRY(Json meta, load_json(dir + "/meta.json"));
    if (meta.contains("non_tensor_args")) {
      MD_TRY(cfg, arch.call_config(cfg, meta["non_tensor_args"]));
    }
  }
  MD_TRY(Checkpoint ck, Checkpoint::open(dir + "/diffusion_pytorch_model.safetensors"));
  ck.place_on(dev);
  MD_TRY(std::shared_ptr<Transformer> model, arch.load(ck, cfg, nullptr));
  MD_TRY(auto file, SafetensorsFile::open(dir + "/inputs.safetensors"));
  TensorMap in;
  for (const auto& i : arch.inputs) {
    if (i.optional && !file->has(i.name)) continue;
    MD_TRY(Tensor t, file->get(i.name));
    in[i.name] = ops::to_device(t, dev);
  }
  return model->forward(in);
}

TEST(DeviceForward, EveryTransformerRunsOnAnotherDeviceBitForBit) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA backend is compiled in";
  int ran = 0;
  for (const auto& a : transformer_archs()) {
    if (!a.load) continue;  // forward not landed yet
    const std::string dir = fixture_of(a.classes[0]);
    ASSERT_NE(dir, "") << a.name;
    SCOPED_TRACE(a.name);
    auto host = run(a, dir, Device::CPU);
    ASSERT_TRUE(host.ok()) << host.error().message;
    test::StandInDevice stand_in;
    {
      auto on_dev = run(a, dir, Device::CUDA);
      ASSERT_TRUE(on_dev.ok()) << on_dev.error().message;
      EXPECT_EQ(on_dev->device(), Device::CUDA);
      const std::vector<float> got = ops::to_device(*on_dev, Device::CPU).to_vector(), want = host->to_vector();
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << "values differ";
    }
    EXPECT_EQ(stand_in.live(), 0) << "device buffers not returned";
    ++ran;
  }
  EXPECT_GE(ran, 2);
}

void expect_same(const Tensor& on_dev, const Tensor& host, const std::string& what) {
  EXPECT_EQ(on_dev.device(), Device::CUDA) << what;
  const std::vector<float> got = ops::to_device(on_dev, Device::CPU).to_vector(), want = host.to_vector();
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << what << ": values differ";
}

Result<Tensor> input(const std::string& dir, const std::string& name, Device dev) {
  MD_TRY(auto file, SafetensorsFile::open(dir + "/inputs.safetensors"));
  MD_TRY(Tensor t, file->get(name));
  return ops::to_device(t, dev);
}

// The VAE (decode and encode) and the text encoders, likewise.
TEST(DeviceForward, VaeAndTextEncodersRunOnAnotherDeviceBitForBit) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA backend is compiled in";
  const std::string vae = test::fixtures_dir() + "/vae_kl16", t5 = test::fixtures_dir() + "/text_t5",
                    clip = test::fixtures_dir() + "/text_clip_l", qwen = test::fixtures_dir() + "/text_qwen25vl",
                    wan = test::fixtures_dir() + "/vae_wan21", umt5 = test::fixtures_dir() + "/text_umt5";
  auto run = [&](Device dev) -> Result<std::vector<Tensor>> {
    std::vector<Tensor> out;
    {
      MD_TRY(AutoencoderKLConfig cfg, AutoencoderKLConfig::from_json(vae + "/config.json"));
      MD_TRY(Checkpoint ck, Checkpoint::open(vae + "/diffusion_pytorch_model.safetensors"));
      ck.place_on(dev);
      MD_TRY(AutoencoderKL m, AutoencoderKL::load(ck, cfg));
      MD_TRY(Tensor z, input(vae, "z", dev));
      MD_TRY(Tensor image, input(vae, "image", dev));
      MD_TRY(Tensor decoded, m.decode(z));
      MD_TRY(Tensor tiled, m.decode_tiled(z, 16, 4));
      MD_TRY(DiagonalGaussian post, m.encode(image));
      out.insert(out.end(), {decoded, tiled, post.mean, post.logvar});
    }
    {
      // Several latent frames: the causal conv caches carried between chunks live on the device too.
      MD_TRY(AutoencoderKLWanConfig cfg, AutoencoderKLWanConfig::from_json(wan + "/config.json"));
      MD_TRY(Checkpoint ck, Checkpoint::open(wan + "/diffusion_pytorch_model.safetensors"));
      ck.place_on(dev);
      MD_TRY(AutoencoderKLWan m, AutoencoderKLWan::load(ck, cfg));
      MD_TRY(Tensor z, input(wan, "z", dev));
      MD_TRY(Tensor video, input(wan, "video", dev));
      MD_TRY(Tensor decoded, m.decode(z));
      MD_TRY(DiagonalGaussian post, m.encode(video));
      out.insert(out.end(), {decoded, post.mean, post.logvar});
    }
    {
      MD_TRY(T5Config cfg, T5Config::from_json(t5 + "/config.json"));
      MD_TRY(Checkpoint ck, Checkpoint::open(t5 + "/model.safetensors"));
      ck.place_on(dev);
      MD_TRY(T5Encoder m, T5Encoder::load(ck, cfg));
      MD_TRY(Tensor ids, input(t5, "input_ids", dev));
      MD_TRY(Tensor mask, input(t5, "attention_mask", dev));
      MD_TRY(Tensor h, m.forward(ids, Tensor()));
      MD_TRY(Tensor hm, m.forward(ids, mask));
      out.insert(out.end(), {h, hm});
    }
    {
      MD_TRY(CLIPTextConfig cfg, CLIPTextConfig::from_json(clip + "/config.json"));
      MD_TRY(Checkpoint ck, Checkpoint::open(clip + "/model.safetensors"));
      ck.place_on(dev);
      MD_TRY(CLIPTextModel m, CLIPTextModel::load(ck, cfg));
      MD_TRY(Tensor ids, input(clip, "input_ids", dev));
      MD_TRY(CLIPTextOutput o, m.forward(ids));
      out.insert(out.end(), {o.last_hidden_state, o.pooler_output});
    }
    {
      MD_TRY(Qwen25VLTextConfig cfg, Qwen25VLTextConfig::from_json(qwen + "/config.json"));
      MD_TRY(Checkpoint ck, Checkpoint::open(qwen + "/model.safetensors"));
      ck.place_on(dev);
      MD_TRY(Qwen25VLTextEncoder m, Qwen25VLTextEncoder::load(ck, cfg));
      MD_TRY(Tensor ids, input(qwen, "input_ids", dev));
      MD_TRY(Tensor mask, input(qwen, "attention_mask", dev));
      MD_TRY(Tensor h, m.forward(ids, mask));
      out.push_back(h);
    }
    {
      // A position-bias table per layer, and WanPipeline's trimming of the padded rows on the device.
      MD_TRY(T5Config cfg, T5Config::from_json(umt5 + "/config.json"));
      MD_TRY(Checkpoint ck, Checkpoint::open(umt5 + "/model.safetensors"));
      ck.place_on(dev);
      MD_TRY(T5Encoder m, T5Encoder::load(ck, cfg));
      MD_TRY(Tensor ids, input(umt5, "input_ids", dev));
      MD_TRY(Tensor mask, input(umt5, "attention_mask", dev));
      MD_TRY(Tensor h, m.forward(ids, mask));
      MD_TRY(Tensor trimmed, trim_prompt_embeds(h, {5, 16}, 20));
      out.insert(out.end(), {h, trimmed});
    }
    return out;
  };
  auto host = run(Device::CPU);
  ASSERT_TRUE(host.ok()) << host.error().message;
  test::StandInDevice stand_in;
  {
    auto on_dev = run(Device::CUDA);
    ASSERT_TRUE(on_dev.ok()) << on_dev.error().message;
    const char* names[] = {"vae decode",
                           "vae tiled decode",
                           "vae posterior mean",
                           "vae posterior logvar",
                           "wan vae decode",
                           "wan vae posterior mean",
                           "wan vae posterior logvar",
                           "t5",
                           "t5 masked",
                           "clip hidden",
                           "clip pooled",
                           "qwen2.5-vl masked",
                           "umt5 masked",
                           "umt5 trimmed"};
    ASSERT_EQ(on_dev->size(), host->size());
    for (size_t i = 0; i < host->size(); ++i) expect_same((*on_dev)[i], (*host)[i], names[i]);
  }
  EXPECT_EQ(stand_in.live(), 0) << "device buffers not returned";
}

}  // namespace
