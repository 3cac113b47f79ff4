#include "backend/graphed_forward.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(MESHDIT_HAVE_CUDA_BACKEND)
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/graph.h"
#endif

namespace meshdit {

bool cuda_graphs_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("MESHDIT_CUDA_GRAPHS");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

namespace {

std::unique_ptr<DeviceGraph> device_graph_for(Device device) {
  if (device != Device::CUDA || !cuda_graphs_enabled()) return nullptr;
#if defined(MESHDIT_HAVE_CUDA_BACKEND)
  if (cuda::device_present()) return cuda::make_graph();
#endif
  return nullptr;
}

}  // namespace

GraphedForward::GraphedForward(std::string name, Device device)
    : GraphedForward(std::move(name), device_graph_for(device)) {}

GraphedForward::GraphedForward(std::string name, std::unique_ptr<DeviceGraph> graph)
    : name_(std::move(name)), graph_(std::move(graph)), state_(graph_ ? State::Rehearse : State::Eager) {}

GraphedForward::~GraphedForward() = default;

bool GraphedForward::same_signature(const std::vector<Tensor>& inputs) const {
  if (inputs.size() != signature_.size()) return false;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Signature& s = signature_[i];
    if (inputs[i].defined() != s.defined) return false;
    if (s.defined && (inputs[i].shape() != s.shape || inputs[i].dtype() != s.dtype || inputs[i].device() != s.device))
      return false;
  }
  return true;
}

void GraphedForward::discard(const std::string& why) {
  graph_.reset();  // its pool goes back to the allocator
  state_ = State::Off;
  off_reason_ = why;
  std::fprintf(stderr, "meshdit: CUDA graph of the %s discarded, running it eagerly from now on: %s\n", name_.c_str(),
               why.c_str());
}

Result<Tensor> GraphedForward::operator()(const std::vector<Tensor>& inputs, const GraphFn& fn) {
  last_replayed_ = false;
  switch (state_) {
    case State::Eager:
    case State::Off:
      return fn(inputs);
    case State::Rehearse: {
      signature_.clear();  // a failed call rehearses again on the next
      for (const Tensor& t : inputs) {
        if (t.defined() && t.device() != graph_->device()) {
          state_ = State::Eager;  // inputs elsewhere: not a forward of the graph's device
          return fn(inputs);
        }
        signature_.push_back(Signature{t.defined(), t.defined() ? t.shape() : Shape{}, t.dtype(),
                                       t.defined() ? t.device() : Device::CPU});
      }
      graph_->begin_rehearsal();
      Result<Tensor> r = fn(inputs);
      graph_->end_rehearsal();
      if (r.ok()) state_ = State::Capture;
      return r;
    }
    default:
      break;
  }
  if (!same_signature(inputs)) {
    if (!said_shapes_)
      std::fprintf(stderr, "meshdit: the %s's inputs changed shape: that call runs eagerly, not as its CUDA graph\n",
                   name_.c_str());
    said_shapes_ = true;
    return fn(inputs);
  }
  if (state_ == State::Capture) {
    if (Status st = graph_->capture(inputs, fn); st.ok())
      state_ = State::Verify;
    else
      discard("capture: " + st.error().message);
    return fn(inputs);  // a capture runs nothing: this call's output is the eager one
  }
  Result<Tensor> replayed = graph_->replay(inputs);
  if (!replayed.ok()) {
    discard("replay: " + replayed.error().message);
    return fn(inputs);
  }
  if (state_ == State::Verify) {
    MD_TRY(Tensor eager, fn(inputs));
    const Tensor& r = *replayed;
    if (r.shape() != eager.shape() || r.dtype() != eager.dtype() || !graph_->same_bytes(r, eager))
      discard(
          "its first replay differs from the eager forward of the same inputs (a value the host computed is "
          "baked into the capture?)");
    else
      state_ = State::Replay;
    return eager;
  }
  last_replayed_ = true;
  return replayed;
}

namespace {
thread_local GraphedForward* g_current = nullptr;
}

GraphedForward* current_graph() { return g_current; }
ScopedGraph::ScopedGraph(GraphedForward* g) : prev_(g_current) { g_current = g; }
ScopedGraph::~ScopedGraph() { g_current = prev_; }

Result<Tensor> graphed_call(const std::vector<Tensor>& inputs, const GraphFn& fn) {
  GraphedForward* g = g_current;
  if (!g) return fn(inputs);
  // The forward itself must not find the graph again (a model calling another through graphed_call).
  const ScopedGraph none(nullptr);
  return (*g)(inputs, fn);
}

}  // namespace meshdit
