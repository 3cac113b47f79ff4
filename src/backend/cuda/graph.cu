// CUDA graphs for GraphedForward (backend/graphed_forward.h): a capture on the backend's one stream, served by a
// private pool (core/graph_pool.h) reserved before it from what an eager rehearsal allocated.
//
// The stream is a blocking one (memory.cu): it synchronises with the legacy default stream. A capture on it is
// legal; work another thread put on the legacy stream meanwhile would join the capture and invalidate it
// (cudaErrorStreamCaptureImplicit), which ends in the eager fallback, not in a wrong graph. The backend itself
// only uses its stream, so the flags stay as they are. ThreadLocal mode: this thread's unsafe calls (a sync, a
// cudaMalloc) fail the capture, other threads' calls are not ours to police.
#include <cstring>
#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/graph.h"
#include "backend/cuda/kernels.h"

namespace meshdit::cuda {
namespace {

std::string cuda_error(const char* call, cudaError_t e) {
  return std::string(call) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
}

class CudaGraph final : public DeviceGraph {
 public:
  ~CudaGraph() override {
    // A replay may still run: its pool blocks and staging buffer must outlive it.
    const cudaError_t e = cudaStreamSynchronize(stream());
    if (e != cudaSuccess) fail("cudaStreamSynchronize", e, __FILE__, __LINE__);
    if (exec_) MD_CUDA(cudaGraphExecDestroy(exec_));
    output_ = Tensor();
    statics_.clear();
    close_pool(pool_);  // after the tensors above: their blocks go back with the pool's
    if (staging_) MD_CUDA(cudaFreeHost(staging_));
  }

  Device device() const override { return Device::CUDA; }
  void begin_rehearsal() override { cuda::begin_rehearsal(&pool_); }
  void end_rehearsal() override { upload_bytes_ = cuda::end_rehearsal(); }

  Status capture(const std::vector<Tensor>& inputs, const GraphFn& fn) override {
    statics_.clear();
    for (const Tensor& t : inputs) {
      if (!t.defined()) {
        statics_.emplace_back();
        continue;
      }
      Tensor s = Tensor::empty(t.shape(), t.dtype(), Device::CUDA);
      copy(t, s);
      statics_.push_back(s);
    }
    MD_RETURN_IF_ERROR(reserve_pool(pool_));
    if (upload_bytes_) {
      const cudaError_t e = cudaMallocHost(reinterpret_cast<void**>(&staging_), upload_bytes_);
      if (e != cudaSuccess) {
        (void)cudaGetLastError();
        staging_ = nullptr;
        return make_error(cuda_error("cudaMallocHost (the uploads' staging buffer)", e));
      }
    }
    if (const cudaError_t e = cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal); e != cudaSuccess) {
      (void)cudaGetLastError();
      return make_error(cuda_error("cudaStreamBeginCapture", e));
    }
    begin_capture_hooks(&pool_, staging_, upload_bytes_);
    std::string why;
    auto run = [&]() -> Result<Tensor> {
      try {
        return fn(statics_);
      } catch (const CaptureAborted& a) {
        why = a.why;
        return make_error(a.why);
      }
    };
    const Result<Tensor> out = run();
    end_capture_hooks();
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream(), &graph);
    (void)cudaGetLastError();  // a failed capture's error must not reach the next call
    if (why.empty() && !out.ok()) why = "the forward failed: " + out.error().message;
    if (why.empty() && ended != cudaSuccess) why = cuda_error("cudaStreamEndCapture", ended);
    if (why.empty() && (!graph || !out.value().defined() || out.value().device() != Device::CUDA))
      why = "the forward's output is not a device tensor made by the capture";
    if (!why.empty()) {
      if (graph) (void)cudaGraphDestroy(graph);
      return make_error(why);
    }
    output_ = out.value();  // the graph's output buffer, a block of the pool kept for the graph's life
    const cudaError_t inst = cudaGraphInstantiate(&exec_, graph, 0);
    MD_CUDA(cudaGraphDestroy(graph));
    if (inst != cudaSuccess) {
      (void)cudaGetLastError();
      exec_ = nullptr;
      return make_error(cuda_error("cudaGraphInstantiate", inst));
    }
    return ok_status();
  }

  Result<Tensor> replay(const std::vector<Tensor>& inputs) override {
    if (!exec_) return make_error("no captured graph");
    if (inputs.size() != statics_.size()) return make_error("another number of inputs than captured");
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].defined() != statics_[i].defined() ||
          (inputs[i].defined() &&
           (inputs[i].shape() != statics_[i].shape() || inputs[i].dtype() != statics_[i].dtype())))
        return make_error("input " + std::to_string(i) + " differs in shape or dtype from the captured one");
      if (inputs[i].defined()) copy(inputs[i], statics_[i]);
    }
    MD_CUDA(cudaGraphLaunch(exec_, stream()));
    // A fresh tensor: the next replay overwrites the output buffer.
    Tensor out = Tensor::empty(output_.shape(), output_.dtype(), Device::CUDA);
    copy(output_, out);
    return out;
  }

  bool same_bytes(const Tensor& a, const Tensor& b) override {
    if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
    auto host_bytes = [](const Tensor& t) {
      Tensor c = Tensor::empty(t.shape(), t.dtype(), Device::CUDA);
      copy(t, c);
      std::vector<char> h(c.nbytes());
      copy_to_host(h.data(), c.raw(), h.size());
      return h;
    };
    const std::vector<char> x = host_bytes(a), y = host_bytes(b);
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size()) == 0;
  }

 private:
  GraphPool pool_;
  size_t upload_bytes_ = 0;
  char* staging_ = nullptr;
  std::vector<Tensor> statics_;  // the inputs' static buffers
  Tensor output_;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace

std::unique_ptr<DeviceGraph> make_graph() { return std::make_unique<CudaGraph>(); }

}  // namespace meshdit::cuda
