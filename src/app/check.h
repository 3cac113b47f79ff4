// `meshdit check <case-dir>`: run one component on a reference case (meta.json + inputs.safetensors) and
// compare every output it produces with outputs.safetensors at the case's tolerance.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
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
  bool pass() const;
  std::string format() const;
};

struct CheckOptions {
  MeshShape mesh;
  std::string parallel;
};
Result<CheckReport> run_check(const std::string& dir, const CheckOptions& opts = {});

}  // namespace meshdit
