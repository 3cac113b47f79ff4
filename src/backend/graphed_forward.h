// A forward replayed as a CUDA graph after its first call: the step's hundreds of kernel launches go to the
// device at once, where launching them one by one dominates small and mid-size forwards. Plain C++, so the
// pipeline layer uses it without CUDA headers; without a CUDA device (or without the CUDA backend compiled in,
// or with MESHDIT_CUDA_GRAPHS=0) every call simply runs the forward.
//
// The calls of one GraphedForward, each on inputs of the same shapes:
//   1. eager, rehearsed: the device graph learns which buffers the forward allocates (core/graph_pool.h), and
//      the first call does the libraries' one-time set-up (cuBLASLt's workspace and heuristics) outside any
//      capture;
//   2. captured on static copies of the inputs, then run eagerly for this call's output;
//   3. replayed (inputs copied into the static buffers) and run eagerly too: the two outputs must be equal bit
//      for bit (the same kernels in the same order give the same bytes). A host value baked into a kernel's
//      arguments at the capture (a scalar the host derived from the timestep) differs between calls 2 and 3,
//      and with it the replay's output;
//   4. and after: replayed.
// Any failure (a capture error: a host sync or a device-to-host copy inside the forward, an allocation the pool
// cannot serve; or a difference in step 3) discards the graph, says why once on stderr, and every later call
// runs eagerly. Inputs of other shapes than the captured ones run eagerly, leaving the graph as it is.
//
// What the forward reads besides its inputs (weights, prompt embeddings, position ids) is captured by address:
// it must stay alive and unchanged while the GraphedForward lives.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

// The forward: the model's call on `inputs` (the tensors that change from call to call; undefined ones stay
// undefined), with no decision on the host that depends on device data.
using GraphFn = std::function<Result<Tensor>(const std::vector<Tensor>& inputs)>;

// One captured graph's device side (backend/cuda/graph.cu); the tests give a fake.
class DeviceGraph {
 public:
  virtual ~DeviceGraph() = default;
  // Where its inputs must live (CUDA; the tests' fake: CPU). Inputs elsewhere run eagerly.
  virtual Device device() const = 0;
  // Around an eager call: record the forward's allocations for the capture's pool.
  virtual void begin_rehearsal() = 0;
  virtual void end_rehearsal() = 0;
  // Captures fn on static copies of `inputs`; an error says why it could not (the graph is then unusable).
  virtual Status capture(const std::vector<Tensor>& inputs, const GraphFn& fn) = 0;
  // Copies `inputs` into the static buffers, replays, and returns a fresh copy of the output.
  virtual Result<Tensor> replay(const std::vector<Tensor>& inputs) = 0;
  // Whether a and b (same shape and dtype) hold the same bytes.
  virtual bool same_bytes(const Tensor& a, const Tensor& b) = 0;
};

// Whether CUDA graphs may be used: MESHDIT_CUDA_GRAPHS unset or not "0" (read once).
bool cuda_graphs_enabled();

class GraphedForward {
 public:
  enum class State { Eager, Rehearse, Capture, Verify, Replay, Off };

  // A graph when `device` is CUDA with a device present and graphs enabled, else State::Eager. `name` is what
  // the fallback message calls the forward.
  GraphedForward(std::string name, Device device);
  // With the given device side (tests).
  GraphedForward(std::string name, std::unique_ptr<DeviceGraph> graph);
  ~GraphedForward();
  GraphedForward(const GraphedForward&) = delete;
  GraphedForward& operator=(const GraphedForward&) = delete;

  Result<Tensor> operator()(const std::vector<Tensor>& inputs, const GraphFn& fn);

  State state() const { return state_; }
  // Why the graph was discarded ("" while it is not).
  const std::string& off_reason() const { return off_reason_; }
  // Whether the last call's output came from a replay.
  bool last_replayed() const { return last_replayed_; }

 private:
  void discard(const std::string& why);
  bool same_signature(const std::vector<Tensor>& inputs) const;

  std::string name_;
  std::unique_ptr<DeviceGraph> graph_;
  State state_ = State::Eager;
  std::string off_reason_;
  bool last_replayed_ = false, said_shapes_ = false;
  struct Signature {
    bool defined = false;
    Shape shape;
    DType dtype = DType::F32;
    Device device = Device::CPU;
  };
  std::vector<Signature> signature_;  // the inputs of the first call
};

// The graph a model call on this thread may go through (null: none), set around a predictor call by the
// denoising loop (ScopedGraph), as ScopedStepCache sets the step cache: no Predictor signature carries it.
GraphedForward* current_graph();
class ScopedGraph {
 public:
  explicit ScopedGraph(GraphedForward* g);
  ~ScopedGraph();
  ScopedGraph(const ScopedGraph&) = delete;
  ScopedGraph& operator=(const ScopedGraph&) = delete;

 private:
  GraphedForward* prev_;
};
// fn(inputs) through the current graph, or directly when there is none: what a predictor calls its model with.
Result<Tensor> graphed_call(const std::vector<Tensor>& inputs, const GraphFn& fn);

}  // namespace meshdit
