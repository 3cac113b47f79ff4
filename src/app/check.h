// `meshdit check <case-dir>`: run one component on a reference case (meta.json + inputs.safetensors) and
// compare every output it produces with outputs.safetensors at the case's tolerance.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "backend/precision.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "parallel/mesh.h"

namespace meshdit {

struct Tolerance {
  double rel_l2 = 1e-4, max_abs = 1e-4;
  bool exact = false;
};

struct CaseContext {
  std::string dir;
  Json meta;
  std::map<std::string, Tensor> inputs;
  // Tolerances a runner states for outputs whose meta.json gives none (a case documented in prose).
  mutable std::map<std::string, Tolerance> tolerances;
  // `meshdit check --mesh RxC [--parallel ...]`: every rank runs the runner and must return the full
  // (gathered) outputs. A runner gets its mesh from mesh(traits) (the automatic config for its model,
  // with the overrides, validated); a runner that never asks runs only on the 1x1 mesh.
  MeshShape mesh_shape;
  std::string parallel;  // --parallel overrides
  Result<const Mesh*> mesh(const ModelTraits& traits) const;
  mutable std::shared_ptr<Mesh> mesh_;
  // Outputs not compared on this mesh, with why (intermediate hooks of a sharded model: absent, or only this
  // rank's shard): reported as skipped whether or not the runner produced them. The final outputs are
  // always compared.
  mutable std::map<std::string, std::string> not_on_mesh;
  // Marks every output meta.json lists whose name satisfies `which`.
  void skip_outputs(const std::function<bool(const std::string&)>& which, const std::string& why) const;
  Result<Tensor> input(const std::string& name) const;
  // `check --device cuda`: a runner whose component has a device path opens its weights placed there and takes
  // its tensor inputs there (both set `ran_on_device`); run_check brings every output back to the host. A
  // runner that never asks (tokenizers, schedulers: no device work) runs on the host, and the report says so.
  Device device = Device::CPU;
  Result<Tensor> device_input(const std::string& name) const;
  void place(Checkpoint& ck) const;
  Result<Checkpoint> open_weights(const std::string& path) const;
  mutable bool ran_on_device = false;
  // `check --quantize TYPE`: a transformer runner takes its weights from a GGUF file of that ggml type written
  // as `meshdit convert --type TYPE` writes one ("" = the case's weights as stored), and says in `quantized` what
  // the file holds ("q8_0: 12 of 40 tensors quantized") for the report.
  std::string quantize;
  mutable std::string quantized;
};

using TensorMap = std::map<std::string, Tensor>;
using CaseRunner = std::function<Result<TensorMap>(const CaseContext&)>;

// Registry keyed by meta.json "class" (e.g. "diffusers.SD3Transformer2DModel").
void register_case_runner(const std::string& cls, CaseRunner runner);
std::vector<std::string> supported_case_classes();
// The class a case is dispatched on (meta "class", or "kind" where class is not a string).
Result<std::string> case_class(const std::string& dir);
bool is_case_supported(const std::string& dir);

struct Comparison {
  std::string name;
  bool produced = false, pass = false;
  bool skipped = false;  // not computed on this mesh (CaseContext::not_on_mesh); does not fail the case
  double max_abs = 0, rel_l2 = 0;
  Tolerance tol;
  std::string note;  // why it failed beyond the numbers (shape, dtype)
};

Comparison compare_tensor(const std::string& name, const Tensor& got, const Tensor& ref, const Tolerance& tol);

struct CheckReport {
  std::string dir, cls;
  std::vector<Comparison> outputs;
  // Set when the weights were quantized (CaseContext::quantized): the errors are reported, and no tolerance is
  // applied, so the report claims no pass.
  std::string quantized;
  // Where it ran: "" (the host, as asked), "cuda", or why it ran on the host although a device was asked.
  std::string device_note;
  bool pass() const;
  // The case did not run as it should: an output outside its tolerance, or (quantized) one missing, of the wrong
  // shape or NaN.
  bool failed() const;
  std::string format() const;
};

// The tolerance a case's outputs get in bf16 precision: the case's own, widened to what rounding the
// linears' operands to bf16 (2^-9 relative each) costs through a model, by kind of case. Exact outputs
// (token ids, schedules) do not go through a linear and stay exact. The worst figures measured on the
// fixtures (bench/README.md, 2026-12-01) leave about 2x margin:
//   components (transformers, text encoders): rel_l2 1.2e-2 (T5), max_abs 2.3e-2 x peak;
//   VAE decoders: rel_l2 6.8e-3, but max_abs 7.9e-2 x peak (a few pixels after the mid-block attention);
//   pipelines: the error of every step compounds into the image, rel_l2 4.5e-2 (tiny_shapes, 20 steps of a
//   trained model), max_abs 2.2e-1 x peak (pipe_mochi's video: a few pixels through its random VAE, whose
//   rel_l2 is 2.0e-2); the max_abs bound keeps ~1.4x margin.
struct Bf16Tolerance {
  double rel_l2;         // of the whole output
  double max_abs_scale;  // times the reference's largest magnitude
};
Bf16Tolerance bf16_tolerance_for_class(const std::string& cls);
Tolerance bf16_tolerance(const Tolerance& f32_tol, const Tensor& ref, const Bf16Tolerance& b);

struct CheckOptions {
  MeshShape mesh;
  std::string parallel;
  // The products' precision for the run; BF16 also widens every tolerance with bf16_tolerance().
  Precision precision = Precision::F32;
  // A ggml type ("q8_0", "q4_k"): run a transformer case from its weights quantized to it (CaseContext::quantize);
  // only for transformers with a GGUF architecture.
  std::string quantize;
  // The device the component runs on (weights and inputs placed there, outputs compared on the host).
  Device device = Device::CPU;
};
Result<CheckReport> run_check(const std::string& dir, const CheckOptions& opts = {});

}  // namespace meshdit
