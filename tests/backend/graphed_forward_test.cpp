// GraphedForward's calls (backend/graphed_forward.h) against a fake device graph on the host: which call
// rehearses, captures, checks and replays, and the eager fallback on a capture error, on a replay that differs
// from the eager forward (a host value baked into the capture) and on inputs of another shape. The CUDA graph
// itself is tested on a GPU (tests/models/cuda_graph_test.cpp).
#include "backend/graphed_forward.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

using namespace meshdit;

namespace {

// What a real capture does to a value the host passes as a kernel argument: the capture keeps the value it saw,
// and every replay uses that one. The test forward reads its host scalar through arg().
struct Baking {
  bool capturing = false, replaying = false;
  float baked = 0;
  float arg(float host_value) {
    if (capturing) baked = host_value;
    return replaying ? baked : host_value;
  }
};

struct FakeLog {
  int rehearsals = 0, captures = 0, replays = 0, compares = 0;
  bool destroyed = false;
};

class FakeGraph final : public DeviceGraph {
 public:
  FakeGraph(Baking& b, FakeLog& log, std::string capture_error = "")
      : b_(b), log_(log), capture_error_(std::move(capture_error)) {}
  ~FakeGraph() override { log_.destroyed = true; }
  Device device() const override { return Device::CPU; }
  void begin_rehearsal() override { ++log_.rehearsals; }
  void end_rehearsal() override {}
  Status capture(const std::vector<Tensor>& inputs, const GraphFn& fn) override {
    ++log_.captures;
    if (!capture_error_.empty()) return make_error(capture_error_);
    for (const Tensor& t : inputs) statics_.push_back(t.defined() ? t.clone() : Tensor());
    fn_ = fn;
    b_.capturing = true;
    auto r = fn(statics_);  // records the baked values; a real capture runs nothing
    b_.capturing = false;
    return r.ok() ? ok_status() : Status(r.error());
  }
  Result<Tensor> replay(const std::vector<Tensor>& inputs) override {
    ++log_.replays;
    for (size_t i = 0; i < inputs.size(); ++i)
      if (inputs[i].defined()) std::memcpy(statics_[i].raw(), inputs[i].raw(), inputs[i].nbytes());
    b_.replaying = true;
    auto r = fn_(statics_);
    b_.replaying = false;
    return r;
  }
  bool same_bytes(const Tensor& a, const Tensor& b) override {
    ++log_.compares;
    return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
  }

 private:
  Baking& b_;
  FakeLog& log_;
  std::string capture_error_;
  std::vector<Tensor> statics_;
  GraphFn fn_;
};

Tensor vec(std::vector<float> v) {
  Tensor t = Tensor::empty({int64_t(v.size())});
  for (size_t i = 0; i < v.size(); ++i) t.data<float>()[i] = v[i];
  return t;
}

// y = x * t + c, where t is an input tensor and c a host value (the kernel argument a capture bakes).
struct Forward {
  Baking& b;
  float c = 0;
  int eager_calls = 0;
  GraphFn fn() {
    return [this](const std::vector<Tensor>& in) -> Result<Tensor> {
      if (!b.replaying && !b.capturing) ++eager_calls;
      const float cc = b.arg(c);
      const Tensor& x = in[0];
      const float t = in[1].data<float>()[0];
      Tensor y = Tensor::empty(x.shape());
      for (int64_t i = 0; i < x.numel(); ++i) y.data<float>()[i] = x.data<float>()[i] * t + cc;
      return y;
    };
  }
};

std::vector<float> values(const Tensor& t) { return t.to_vector(); }

}  // namespace

TEST(GraphedForward, WithoutADeviceGraphEveryCallIsEager) {
  GraphedForward g("transformer", Device::CPU);
  EXPECT_EQ(g.state(), GraphedForward::State::Eager);
  Baking b;
  Forward f{b, 1.0f};
  for (int i = 0; i < 4; ++i) {
    auto r = g({vec({1, 2}), vec({float(i)})}, f.fn());
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(values(*r), (std::vector<float>{float(i) + 1, 2 * float(i) + 1}));
    EXPECT_FALSE(g.last_replayed());
  }
  EXPECT_EQ(f.eager_calls, 4);
}

TEST(GraphedForward, RehearsesCapturesChecksThenReplays) {
  Baking b;
  FakeLog log;
  GraphedForward g("transformer", std::make_unique<FakeGraph>(b, log));
  Forward f{b, 0.5f};
  using S = GraphedForward::State;
  const std::vector<S> after{S::Capture, S::Verify, S::Replay, S::Replay, S::Replay};
  for (int i = 0; i < 5; ++i) {
    // Inputs change per call: each output must be this call's.
    auto r = g({vec({1, float(i)}), vec({float(i + 2)})}, f.fn());
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(values(*r), (std::vector<float>{float(i + 2) + 0.5f, float(i) * float(i + 2) + 0.5f})) << "call " << i;
    EXPECT_EQ(g.state(), after[size_t(i)]) << "call " << i;
    EXPECT_EQ(g.last_replayed(), i >= 3) << "call " << i;
  }
  EXPECT_EQ(log.rehearsals, 1);
  EXPECT_EQ(log.captures, 1);
  EXPECT_EQ(log.compares, 1);
  EXPECT_EQ(log.replays, 3);    // the checked one, then two
  EXPECT_EQ(f.eager_calls, 3);  // rehearsal, the capture's call, the check
  EXPECT_EQ(g.off_reason(), "");
}

TEST(GraphedForward, AHostValueBakedIntoTheCaptureIsCaughtAndRunsEagerly) {
  Baking b;
  FakeLog log;
  GraphedForward g("transformer", std::make_unique<FakeGraph>(b, log));
  Forward f{b};
  for (int i = 0; i < 5; ++i) {
    f.c = float(i) * 10;  // a scalar the host derives per step
    auto r = g({vec({1}), vec({1})}, f.fn());
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(values(*r), std::vector<float>{1 + f.c}) << "call " << i;
    EXPECT_FALSE(g.last_replayed());
  }
  EXPECT_EQ(g.state(), GraphedForward::State::Off);
  EXPECT_NE(g.off_reason().find("differs from the eager forward"), std::string::npos) << g.off_reason();
  EXPECT_TRUE(log.destroyed);  // the graph (and its pool) went at once
  EXPECT_EQ(log.replays, 1);
}

TEST(GraphedForward, ACaptureErrorRunsEagerlyFromThenOn) {
  Baking b;
  FakeLog log;
  GraphedForward g("transformer", std::make_unique<FakeGraph>(b, log, "cudaErrorStreamCaptureUnsupported"));
  Forward f{b, 2.0f};
  for (int i = 0; i < 4; ++i) {
    auto r = g({vec({3}), vec({float(i)})}, f.fn());
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(values(*r), std::vector<float>{3 * float(i) + 2});
  }
  EXPECT_EQ(g.state(), GraphedForward::State::Off);
  EXPECT_NE(g.off_reason().find("cudaErrorStreamCaptureUnsupported"), std::string::npos) << g.off_reason();
  EXPECT_EQ(log.replays, 0);
  EXPECT_EQ(f.eager_calls, 4);
}

TEST(GraphedForward, InputsOfAnotherShapeRunEagerlyAndKeepTheGraph) {
  Baking b;
  FakeLog log;
  GraphedForward g("transformer", std::make_unique<FakeGraph>(b, log));
  Forward f{b, 1.0f};
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(g({vec({1, 2}), vec({1})}, f.fn()).ok());
  EXPECT_EQ(g.state(), GraphedForward::State::Replay);
  auto r = g({vec({1, 2, 3}), vec({2})}, f.fn());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(values(*r), (std::vector<float>{3, 5, 7}));
  EXPECT_FALSE(g.last_replayed());
  ASSERT_TRUE(g({vec({1, 2}), vec({1})}, f.fn()).ok());
  EXPECT_TRUE(g.last_replayed());
  EXPECT_EQ(g.state(), GraphedForward::State::Replay);
}

TEST(GraphedForward, UndefinedInputsStayUndefined) {
  Baking b;
  FakeLog log;
  GraphedForward g("transformer", std::make_unique<FakeGraph>(b, log));
  int undefined_seen = 0;
  const GraphFn fn = [&](const std::vector<Tensor>& in) -> Result<Tensor> {
    if (!in[1].defined()) ++undefined_seen;
    return in[0].clone();
  };
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(g({vec({float(i)}), Tensor()}, fn).ok());
  EXPECT_EQ(g.state(), GraphedForward::State::Replay);
  EXPECT_EQ(undefined_seen, 4 + 2);  // every eager call and the capture, each replay of the fake
}

TEST(GraphedForward, GraphedCallGoesThroughTheScopedGraphOnly) {
  Baking b;
  FakeLog log;
  GraphedForward g("transformer", std::make_unique<FakeGraph>(b, log));
  Forward f{b, 0.0f};
  ASSERT_TRUE(graphed_call({vec({1}), vec({1})}, f.fn()).ok());
  EXPECT_EQ(log.rehearsals, 0);
  {
    ScopedGraph scope(&g);
    EXPECT_EQ(current_graph(), &g);
    ASSERT_TRUE(graphed_call({vec({1}), vec({1})}, f.fn()).ok());
  }
  EXPECT_EQ(current_graph(), nullptr);
  EXPECT_EQ(log.rehearsals, 1);
}

TEST(GraphedForward, AFailedFirstCallRehearsesAgain) {
  Baking b;
  FakeLog log;
  GraphedForward g("transformer", std::make_unique<FakeGraph>(b, log));
  const GraphFn failing = [](const std::vector<Tensor>&) -> Result<Tensor> { return make_error("bad input"); };
  auto r = g({vec({1})}, failing);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "bad input");
  EXPECT_EQ(g.state(), GraphedForward::State::Rehearse);
  const GraphFn copy = [](const std::vector<Tensor>& in) -> Result<Tensor> { return in[0].clone(); };
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(g({vec({float(i)})}, copy).ok());
  EXPECT_EQ(g.state(), GraphedForward::State::Replay);
  EXPECT_TRUE(g.last_replayed());
}
