// `meshdit check --device cuda` without a GPU: the CPU kernels stand in for one under the CUDA tag
// (tests/stand_in_device.h), so the runners' placement is what is tested. Every transformer, VAE and text
// encoder case, and every pipeline case whose pipeline places its components, must pass with its weights and inputs on
// that device (data crossing only through the device's copies), report that it ran there and give every device buffer
// back; a tokenizer case runs on the host and says so. On a real GPU, tools/device-check.sh runs the same command on
// every case.
#include <gtest/gtest.h>

#include <string>

#include "../stand_in_device.h"
#include "../test_util.h"
#include "app/check.h"
#include "app/runners.h"
#include "backend/backend.h"
#include "pipelines/pipeline.h"

using namespace meshdit;

namespace {

bool runs_on_device(const std::string& cls) {
  // A pipeline case: when its pipeline places its components (PipelineEntry::runs_on_device).
  const std::string pipeline = cls.rfind("diffusers.", 0) == 0 ? cls.substr(10) : cls;
  if (auto e = find_pipeline(pipeline); e.ok()) return (*e)->runs_on_device;
  for (const char* kind : {"Transformer", "Autoencoder", "TextModel", "EncoderModel", "ForConditionalGeneration"})
    if (cls.find(kind) != std::string::npos) return true;
  return false;
}

TEST(CheckDevice, EveryModelCasePassesOnAnotherDevice) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA device is present: device-check.sh covers it";
  register_builtin_runners();
  const std::string dir = test::fixtures_dir();
  int on_device = 0, on_host = 0;
  test::StandInDevice stand_in;
  for (const auto& name : test::case_names(dir)) {
    const std::string path = dir + "/" + name;
    auto cls = case_class(path);
    ASSERT_TRUE(cls.ok()) << cls.error().message;
    const bool model = runs_on_device(*cls);
    // One host-only case shows the report's note; the other pipelines do not place their components yet.
    if (!model && name != "tok_clip") continue;
    SCOPED_TRACE(name);
    CheckOptions opts;
    opts.device = Device::CUDA;
    const int64_t uploads = test::g_uploads.load();
    auto rep = run_check(path, opts);
    ASSERT_TRUE(rep.ok()) << rep.error().message;
    EXPECT_TRUE(rep->pass()) << rep->format();
    if (model) {
      EXPECT_EQ(rep->device_note, "cuda") << rep->format();
      EXPECT_GT(test::g_uploads.load(), uploads) << "nothing was copied to the device";
      ++on_device;
    } else {
      EXPECT_NE(rep->device_note.find("the host"), std::string::npos) << rep->device_note;
      EXPECT_NE(rep->format().find(" on the host"), std::string::npos) << rep->format();
      ++on_host;
    }
    EXPECT_EQ(stand_in.live(), 0) << "device buffers not returned";
  }
  EXPECT_GE(on_device, 10);  // 7 transformers, 4 VAEs, 5 text encoders in the fixtures
  EXPECT_EQ(on_host, 1);
}

TEST(CheckDevice, NoDeviceIsAClearError) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA device is present";
  register_builtin_runners();
  CheckOptions opts;
  opts.device = Device::CUDA;
  auto rep = run_check(test::fixtures_dir() + "/vae_kl16", opts);
  ASSERT_FALSE(rep.ok());
  EXPECT_NE(rep.error().message.find("no cuda device"), std::string::npos) << rep.error().message;
}

}  // namespace
