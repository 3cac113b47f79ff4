// CUDA graphs of a real forward (backend/graphed_forward.h, backend/cuda/graph.cu): the built-in tiny-shapes
// Flux transformer, graphed, gives the eager forward's bytes for inputs that change every call, and a forward
// whose output depends on a value the host computes per call is caught at the first replay and runs eagerly.
// GPU only: skips without a CUDA device.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../backend/backend_test_util.h"
#include "../test_util.h"
#include "backend/backend.h"
#include "backend/graphed_forward.h"
#include "backend/ops.h"
#include "models/registry.h"

using namespace meshdit;

namespace {

struct Tiny {
  std::shared_ptr<Transformer> model;
  std::vector<std::string> names;
  std::vector<Tensor> inputs;  // on the device
};

Result<Tiny> load_tiny() {
  MD_TRY(OpenedTransformer o, open_transformer(test::repo_dir() + "/models/tiny-shapes/transformer"));
  o.ck.place_on(Device::CUDA);
  Tiny t;
  MD_TRY(t.model, o.arch->load(o.ck, o.config, nullptr));
  for (auto& [name, x] : o.arch->random_inputs(o.config, 128, 128, 1, 16)) {
    t.names.push_back(name);
    t.inputs.push_back(ops::to_device(x, Device::CUDA));
  }
  return t;
}

// Call i's inputs: the latents and the timestep scaled per call, the rest as they are.
std::vector<Tensor> inputs_of_call(const Tiny& t, int i) {
  std::vector<Tensor> in = t.inputs;
  for (size_t k = 0; k < in.size(); ++k)
    if (t.names[k] == "hidden_states" || t.names[k] == "timestep")
      in[k] = ops::affine(in[k].to(DType::F32), 1.0f - 0.07f * float(i), 0.0f);
  return in;
}

std::vector<char> bytes(const Tensor& t) {
  const Tensor h = ops::to_device(t.contiguous(), Device::CPU);
  const char* p = static_cast<const char*>(h.raw());
  return std::vector<char>(p, p + h.nbytes());
}

}  // namespace

TEST(CudaGraph, TinyFluxReplaysGiveTheEagerBytes) {
  SKIP_WITHOUT_CUDA();
  if (!cuda_graphs_enabled()) GTEST_SKIP() << "MESHDIT_CUDA_GRAPHS=0";
  auto tiny = load_tiny();
  ASSERT_TRUE(tiny.ok()) << tiny.error().message;
  const GraphFn fn = [&](const std::vector<Tensor>& in) -> Result<Tensor> {
    TensorMap named;
    for (size_t k = 0; k < in.size(); ++k) named[tiny->names[k]] = in[k];
    return tiny->model->forward(named);
  };
  GraphedForward g("tiny-shapes transformer", Device::CUDA);
  int replayed = 0;
  // Calls 0-2 rehearse, capture and check; 3-5 are three replayed steps with inputs of their own.
  for (int i = 0; i < 6; ++i) {
    SCOPED_TRACE("call " + std::to_string(i));
    const std::vector<Tensor> in = inputs_of_call(*tiny, i);
    auto got = g(in, fn);
    ASSERT_TRUE(got.ok()) << got.error().message;
    ASSERT_NE(g.state(), GraphedForward::State::Off) << g.off_reason();
    replayed += g.last_replayed();
    auto want = fn(in);
    ASSERT_TRUE(want.ok()) << want.error().message;
    EXPECT_EQ(got->device(), Device::CUDA);
    ASSERT_EQ(got->shape(), want->shape());
    EXPECT_TRUE(bytes(*got) == bytes(*want)) << "the graphed forward differs from the eager one";
    if (i > 0) {  // the inputs change the output: a replay of stale inputs would be caught
      auto before = fn(inputs_of_call(*tiny, i - 1));
      ASSERT_TRUE(before.ok());
      EXPECT_FALSE(bytes(*before) == bytes(*want));
    }
  }
  EXPECT_EQ(g.state(), GraphedForward::State::Replay);
  EXPECT_EQ(replayed, 3);
}

TEST(CudaGraph, AHostScalarThatChangesPerCallIsCaughtAndRunsEagerly) {
  SKIP_WITHOUT_CUDA();
  if (!cuda_graphs_enabled()) GTEST_SKIP() << "MESHDIT_CUDA_GRAPHS=0";
  auto tiny = load_tiny();
  ASSERT_TRUE(tiny.ok()) << tiny.error().message;
  float host_scalar = 0;
  // The forward's output shifted by a value the host computes per call (as a scheduler's sigma would be): the
  // capture bakes the value of its call into the kernel's arguments.
  const GraphFn fn = [&](const std::vector<Tensor>& in) -> Result<Tensor> {
    TensorMap named;
    for (size_t k = 0; k < in.size(); ++k) named[tiny->names[k]] = in[k];
    MD_TRY(Tensor y, tiny->model->forward(named));
    return ops::affine(y, 1.0f, host_scalar);
  };
  GraphedForward g("tiny-shapes transformer", Device::CUDA);
  for (int i = 0; i < 5; ++i) {
    SCOPED_TRACE("call " + std::to_string(i));
    host_scalar = 0.25f * float(i);
    const std::vector<Tensor> in = tiny->inputs;  // the same tensors: only the host value changes
    auto got = g(in, fn);
    ASSERT_TRUE(got.ok()) << got.error().message;
    EXPECT_FALSE(g.last_replayed());
    auto want = fn(in);
    ASSERT_TRUE(want.ok());
    EXPECT_TRUE(bytes(*got) == bytes(*want)) << "a wrong output escaped the check";
  }
  EXPECT_EQ(g.state(), GraphedForward::State::Off);
  EXPECT_NE(g.off_reason().find("differs from the eager forward"), std::string::npos) << g.off_reason();
}

TEST(CudaGraph, AHostSyncInsideTheForwardFallsBackInsteadOfAborting) {
  SKIP_WITHOUT_CUDA();
  if (!cuda_graphs_enabled()) GTEST_SKIP() << "MESHDIT_CUDA_GRAPHS=0";
  const Tensor x = ops::full({64}, 1.0f, Device::CUDA);
  // A decision on the host from device data: a device-to-host copy, which a capture cannot hold.
  const GraphFn fn = [&](const std::vector<Tensor>& in) -> Result<Tensor> {
    const Tensor h = ops::to_device(in[0], Device::CPU);
    return ops::affine(in[0], h.data<float>()[0], 0.0f);
  };
  GraphedForward g("test forward", Device::CUDA);
  for (int i = 0; i < 4; ++i) {
    auto got = g({x}, fn);
    ASSERT_TRUE(got.ok()) << got.error().message;
    EXPECT_EQ(ops::to_device(*got, Device::CPU).to_vector(), std::vector<float>(64, 1.0f));
  }
  EXPECT_EQ(g.state(), GraphedForward::State::Off);
  EXPECT_NE(g.off_reason().find("device-to-host"), std::string::npos) << g.off_reason();
}
