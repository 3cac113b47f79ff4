// The NCCL communicator's host side over MPI (nccl_host.h): the build with MPI. Bootstrap, sub-groups and
// strings go over an MPI communicator of the same ranks as the NCCL one; the world is MPI_COMM_WORLD.
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "parallel/mpi_comm.h"
#include "parallel/mpi_util.h"
#include "parallel/nccl_host.h"

namespace meshdit::nccl_host {
namespace {

class MpiGroup final : public Group {
 public:
  // Takes ownership of `comm`.
  explicit MpiGroup(MPI_Comm comm) : comm_(comm) {
    mpi::check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    mpi::check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  ~MpiGroup() override {
    if (comm_ != MPI_COMM_NULL && !mpi::finalized()) MPI_Comm_free(&comm_);
  }
  MpiGroup(const MpiGroup&) = delete;
  MpiGroup& operator=(const MpiGroup&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void broadcast_bytes(void* data, int bytes, int root) override {
    mpi::check(MPI_Bcast(data, bytes, MPI_BYTE, root, comm_), "MPI_Bcast(ncclUniqueId)");
  }
  std::unique_ptr<Group> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    mpi::check(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    return std::make_unique<MpiGroup>(sub);
  }
  std::vector<std::string> gather_strings(const std::string& s, int root) override {
    return mpi::gather_strings(comm_, s, root);
  }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (*end == '\0' && x >= 0 && x <= INT_MAX) ? int(x) : fallback;
}

}  // namespace

Result<World> join_world(Probe (*probe)(int local_rank), void (*use_device)(int device)) {
  if (!mpi::initialized() || mpi::finalized())
    return make_error(
        "NCCL communicator: MPI is not initialised (NCCL is bootstrapped over MPI: start the job with mpirun)");
  int world_rank = 0;
  mpi::check(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank), "MPI_Comm_rank");

  // The ranks sharing this node: the local rank when the launcher does not say, and the GPU check.
  MPI_Comm node = MPI_COMM_NULL;
  mpi::check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  int node_rank = 0, node_size = 1;
  mpi::check(MPI_Comm_rank(node, &node_rank), "MPI_Comm_rank");
  mpi::check(MPI_Comm_size(node, &node_size), "MPI_Comm_size");
  int local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", -1);
  if (local_rank < 0) local_rank = env_int("MPI_LOCALRANKID", -1);
  if (local_rank < 0) local_rank = env_int("SLURM_LOCALID", -1);
  if (local_rank < 0) local_rank = node_rank;

  Probe p = probe(local_rank);
  // NCCL needs one GPU per rank: two ranks of this node on one device (more ranks than GPUs, or a
  // CUDA_VISIBLE_DEVICES that shows every rank the same one) would fail inside ncclCommInitRank.
  constexpr int kBus = int(sizeof p.bus);
  std::vector<char> buses(size_t(node_size) * size_t(kBus));
  mpi::check(MPI_Allgather(p.bus, kBus, MPI_CHAR, buses.data(), kBus, MPI_CHAR, node), "MPI_Allgather");
  mpi::check(MPI_Comm_free(&node), "MPI_Comm_free");
  if (p.why.empty()) {
    for (int q = 0; q < node_size; ++q) {
      const char* other = buses.data() + size_t(q) * size_t(kBus);
      if (q != node_rank && std::strncmp(other, p.bus, size_t(kBus)) == 0) {
        p.why = "ranks " + std::to_string(std::min(q, node_rank)) + " and " + std::to_string(std::max(q, node_rank)) +
                " of this node share GPU " + p.bus + " (NCCL needs one GPU per rank: start at most as many ranks " +
                "per node as it has GPUs)";
        break;
      }
    }
  }

  // Every rank learns whether all can join, and the first failing rank's reason.
  const int mine = p.why.empty() ? INT_MAX : world_rank;
  int first = INT_MAX;
  mpi::check(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
  if (first != INT_MAX) {
    int len = world_rank == first ? mpi::count(int64_t(p.why.size()), "nccl_world_communicator") : 0;
    mpi::check(MPI_Bcast(&len, 1, MPI_INT, first, MPI_COMM_WORLD), "MPI_Bcast");
    std::string why = world_rank == first ? p.why : std::string(size_t(len), '\0');
    mpi::check(MPI_Bcast(why.data(), len, MPI_CHAR, first, MPI_COMM_WORLD), "MPI_Bcast");
    return make_error("NCCL communicator: rank " + std::to_string(first) + ": " + why);
  }

  use_device(p.device);
  MPI_Comm world = MPI_COMM_NULL;
  mpi::check(MPI_Comm_dup(MPI_COMM_WORLD, &world), "MPI_Comm_dup");
  return World{std::make_unique<MpiGroup>(world), p.device};
}

}  // namespace meshdit::nccl_host
