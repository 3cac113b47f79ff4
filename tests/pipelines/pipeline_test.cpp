// The pipeline registry: built-ins present in a statically linked program, lookups by model_index.json
// class, and the errors that name what is supported. Plus Flux's host-built position ids.
#include "pipelines/pipeline.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "../test_util.h"
#include "pipelines/flux.h"

using namespace meshdit;

namespace {

TEST(PipelineRegistry, FluxIsRegisteredWithoutAnyoneAskingForIt) {
  const auto names = pipeline_classes();
  EXPECT_NE(std::find(names.begin(), names.end(), "FluxPipeline"), names.end());
  auto e = find_pipeline("FluxPipeline");
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ((*e)->class_name, "FluxPipeline");
  EXPECT_TRUE((*e)->traits && (*e)->load);
}

TEST(PipelineRegistry, UnknownClassListsTheSupportedOnes) {
  auto e = find_pipeline("NoSuchPipeline");
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find("'NoSuchPipeline'"), std::string::npos) << e.error().message;
  EXPECT_NE(e.error().message.find("FluxPipeline"), std::string::npos) << e.error().message;
}

TEST(PipelineRegistry, FolderIsLookedUpByItsClassName) {
  const test::TempDir dir;
  dir.write("model_index.json", R"({"_class_name": "NoSuchPipeline"})");
  auto e = pipeline_for_folder(dir.str());
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find(dir.str() + "/model_index.json"), std::string::npos) << e.error().message;
  EXPECT_NE(e.error().message.find("NoSuchPipeline"), std::string::npos) << e.error().message;

  auto builtin = pipeline_for_folder(test::repo_dir() + "/models/tiny-shapes");
  ASSERT_TRUE(builtin.ok()) << builtin.error().message;
  EXPECT_EQ((*builtin)->class_name, "FluxPipeline");
}

TEST(PipelineRegistry, RegisteredClassIsFound) {
  PipelineEntry fake;
  fake.class_name = "TestOnlyPipeline";
  fake.traits = [](const std::string&, const GenerateOptions&, const LoadOptions&) -> Result<ModelTraits> {
    return ModelTraits{};
  };
  fake.load = [](const std::string&, const Mesh&, const LoadOptions&) -> Result<std::unique_ptr<Pipeline>> {
    return make_error("not loadable");
  };
  register_pipeline(fake);
  auto e = find_pipeline("TestOnlyPipeline");
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ((*e)->class_name, "TestOnlyPipeline");
  EXPECT_TRUE(find_pipeline("FluxPipeline").ok());
}

TEST(FluxPipeline, ImageIdsAreZeroRowColumn) {
  const Tensor ids = flux_image_ids(4, 6);  // 2 x 3 patches
  EXPECT_EQ(ids.shape(), (Shape{6, 3}));
  EXPECT_EQ(ids.to_vector(), (std::vector<float>{0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 1, 0, 0, 1, 1, 0, 1, 2}));
}

}  // namespace
