// The NCCL communicator's host side without MPI (nccl_host.h): the build without MPI, where the world is this
// one process. NCCL then runs on one GPU as a communicator of one rank (ncclGetUniqueId, ncclCommInitRank(1)),
// its sub-groups of one likewise, so the NCCL path can be checked on a single GPU.
#include "parallel/nccl_host.h"

namespace meshdit::nccl_host {
namespace {

class LocalGroup final : public Group {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void broadcast_bytes(void*, int, int root) override {
    MD_CHECK(root == 0, "broadcast_bytes: root " + std::to_string(root) + " outside a group of one");
  }
  std::unique_ptr<Group> split(int, int) override { return std::make_unique<LocalGroup>(); }
  std::vector<std::string> gather_strings(const std::string& s, int) override { return {s}; }
};

}  // namespace

Result<World> join_world(Probe (*probe)(int local_rank), void (*use_device)(int device)) {
  // mpi::init has refused a launch of several ranks already: this process is the world, local rank 0.
  Probe p = probe(0);
  if (!p.why.empty()) return make_error("NCCL communicator: rank 0: " + p.why);
  use_device(p.device);
  return World{std::make_unique<LocalGroup>(), p.device};
}

}  // namespace meshdit::nccl_host
