// One generation of a pipeline folder on a mesh of the world's ranks, for the multi-rank tests.
#pragma once
#include <gtest/gtest.h>

#include <string>

#include "parallel/mpi_comm.h"
#include "pipelines/pipeline.h"

namespace meshdit::test {

inline int world_size() { return world_communicator()->size(); }
// 2 ranks: 1x2; 4 ranks: 2x2.
inline MeshShape world_mesh_shape() { return world_size() == 4 ? MeshShape{2, 2} : MeshShape{1, world_size()}; }

// The images of `model` generated on a mesh of the world built with `parallel` ("tp=2,sp=2", ...), or on one device
// (Mesh::single, no collectives) when `parallel` is null. A failure is added to the test (undefined tensor back);
// with `load_error` given, a load failure is returned there instead.
inline Tensor generate_on_mesh(const std::string& model, GenerateOptions o, const char* parallel,
                               const LoadOptions& load = {}, std::string* load_error = nullptr) {
  auto entry = pipeline_for_folder(model);
  if (!entry.ok()) {
    ADD_FAILURE() << entry.error().message;
    return {};
  }
  Mesh mesh = Mesh::single();
  if (parallel) {
    auto traits = (*entry)->traits(model, o, load);
    if (!traits.ok()) {
      ADD_FAILURE() << traits.error().message;
      return {};
    }
    auto m = make_mesh(world_mesh_shape(), parallel, *traits);
    if (!m.ok()) {
      ADD_FAILURE() << parallel << ": " << m.error().message;
      return {};
    }
    mesh = std::move(*m);
  }
  auto pipe = (*entry)->load(model, mesh, load);
  if (!pipe.ok()) {
    if (load_error)
      *load_error = pipe.error().message;
    else
      ADD_FAILURE() << pipe.error().message;
    return {};
  }
  o = (*pipe)->with_defaults(o);
  auto images = (*pipe)->generate(o);
  if (!images.ok()) {
    ADD_FAILURE() << images.error().message;
    return {};
  }
  return *images;
}

}  // namespace meshdit::test
