// `meshdit generate --device cuda` without a GPU: the built-in model (FluxPipeline) runs with every component on the
// stand-in device (CPU kernels under the CUDA tag, tests/stand_in_device.h). The image must equal the host run's
// bit for bit (same kernels), come back on the host, and leave no device buffer behind; a pipeline that does not
// place its components yet, or a missing device, is refused before any work.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "../stand_in_device.h"
#include "../test_util.h"
#include "app/generation.h"
#include "backend/backend.h"
#include "pipelines/pipeline.h"

using namespace meshdit;

namespace {

Result<Tensor> generate_on(Device dev) {
  GenerateOptions o = with_builtin_defaults({}, true);
  o.prompt = {"a red cube"};
  o.steps = 2;
  o.height = o.width = 64;
  o.seed = 7;
  LoadOptions from;
  from.device = dev;
  MD_TRY(LoadedPipeline lp, load_pipeline("", MeshShape{}, "", o, from));
  return lp.pipeline->generate(o);
}

TEST(GenerateDevice, BuiltinModelRunsOnAnotherDeviceBitForBit) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA device is present: device-check.sh covers it";
  auto host = generate_on(Device::CPU);
  ASSERT_TRUE(host.ok()) << host.error().message;
  auto refused = generate_on(Device::CUDA);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("no cuda device"), std::string::npos) << refused.error().message;
  test::StandInDevice stand_in;
  {
    const int64_t up = test::g_uploads.load();
    auto on_dev = generate_on(Device::CUDA);
    ASSERT_TRUE(on_dev.ok()) << on_dev.error().message;
    EXPECT_GT(test::g_uploads.load(), up);
    EXPECT_EQ(on_dev->device(), Device::CPU) << "the images come back to the host";
    ASSERT_EQ(on_dev->shape(), host->shape());
    const std::vector<float> a = on_dev->to_vector(), b = host->to_vector();
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "values differ";
  }
  EXPECT_EQ(stand_in.live(), 0) << "device buffers not returned";
}

// A model whose weights do not fit in the device's free memory is one error naming the component and both sizes,
// before any weight is copied there.
TEST(GenerateDevice, WeightsThatDoNotFitAreRefusedBeforeAnyCopy) {
  if (find_backend(Device::CUDA) != nullptr) GTEST_SKIP() << "a CUDA device is present: it has its own free memory";
  test::StandInDevice stand_in;
  stand_in.set_free_memory([]() -> size_t { return 4096; });
  const int64_t up = test::g_uploads.load();
  auto r = generate_on(Device::CUDA);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("its weights take"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("0.00 GiB is free there"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("nothing was copied"), std::string::npos) << r.error().message;
  EXPECT_EQ(test::g_uploads.load(), up) << "no weight reached the device";
  EXPECT_EQ(stand_in.live(), 0);
  // Enough memory: the same run loads.
  stand_in.set_free_memory([]() -> size_t { return size_t(1) << 40; });
  EXPECT_TRUE(generate_on(Device::CUDA).ok());
}

TEST(GenerateDevice, APipelineThatDoesNotPlaceItsComponentsIsRefused) {
  // A pipeline registered without runs_on_device: refused on the device before anything loads.
  register_pipeline({"HostOnlyTestPipeline",
                     [](const std::string&, const GenerateOptions&, const LoadOptions&) -> Result<ModelTraits> {
                       return make_error("traits must not be asked");
                     },
                     [](const std::string&, const Mesh&, const LoadOptions&) -> Result<std::unique_ptr<Pipeline>> {
                       return make_error("load must not be called");
                     }});
  test::TempDir tmp;
  {
    std::FILE* f = std::fopen((tmp.path() / "model_index.json").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(R"({"_class_name": "HostOnlyTestPipeline"})", f);
    std::fclose(f);
  }
  test::StandInDevice stand_in;
  GenerateOptions o;
  o.prompt = {"x"};
  LoadOptions from;
  from.device = Device::CUDA;
  auto lp = load_pipeline(tmp.path().string(), MeshShape{}, "", o, from);
  ASSERT_FALSE(lp.ok());
  EXPECT_NE(lp.error().message.find("does not place its components on cuda"), std::string::npos) << lp.error().message;
}

}  // namespace
