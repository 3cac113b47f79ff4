// A scheduler for tests of the shared denoising loop: its step returns the model output, so the "latents"
// after step i are exactly what the loop made of step i's predictions.
#pragma once
#include <utility>
#include <vector>

#include "pipelines/denoise.h"

namespace meshdit::test {

class EchoScheduler final : public StepScheduler {
 public:
  explicit EchoScheduler(std::vector<float> ts) : ts_(std::move(ts)) {}
  std::vector<float> timesteps() const override { return ts_; }
  Tensor timesteps_tensor() const override { return Tensor::from_f32({int64_t(ts_.size())}, ts_); }
  Result<Tensor> step(const Tensor& model_output, float, const Tensor&) override { return model_output; }

 private:
  std::vector<float> ts_;
};

}  // namespace meshdit::test
