// The host side of the NCCL communicator (nccl_comm.cpp): the group of processes an NCCL communicator spans,
// which carries NCCL's bootstrap (rank 0's ncclUniqueId), makes its sub-groups and gathers its host strings,
// and the collective start that gives each process its GPU. Two implementations, one per build:
// nccl_host_mpi.cpp over MPI, and nccl_host_local.cpp, the one process of a build without MPI (NCCL on one
// GPU). Internal to parallel/, like mpi_util.h; it names no MPI or CUDA type.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace meshdit::nccl_host {

class Group {
 public:
  virtual ~Group() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // `bytes` bytes of `data` from rank `root` to every rank of the group.
  virtual void broadcast_bytes(void* data, int bytes, int root) = 0;
  // MPI_Comm_split's semantics: ranks passing the same color form one group, ordered by key.
  virtual std::unique_ptr<Group> split(int color, int key) = 0;
  // Every rank's string to `root` (the others get an empty vector).
  virtual std::vector<std::string> gather_strings(const std::string& s, int root) = 0;
};

// Why a process cannot join (empty: it can), its device and that device's PCI bus id.
struct Probe {
  std::string why;
  int device = -1;
  char bus[32] = {};
};

// Every process of the world, each with its GPU.
struct World {
  std::unique_ptr<Group> group;
  int device = -1;
};

// Collective over every process: each learns its local rank (its place among the processes of its node),
// probes its device with probe(local_rank), and every process gets the same error when any cannot take part
// (its probe failed, two processes of a node share a GPU, no world to join). When all can, each calls
// use_device(its device) before the world's group is made.
Result<World> join_world(Probe (*probe)(int local_rank), void (*use_device)(int device));

}  // namespace meshdit::nccl_host
