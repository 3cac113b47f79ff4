// NCCL behind the Communicator interface, for GPU ranks (one GPU per rank), bootstrapped over MPI: rank 0
// makes the ncclUniqueId and broadcasts it over MPI. Buffers are float32 device pointers (of the device
// the communicator was made on). Every call is synchronous with respect to the host (it waits for the
// communicator's CUDA stream) except send_recv_start, whose transfer completes in send_recv_wait; the
// caller must not touch its buffers in between. For send_recv the receive count must equal the count the
// peer sends (NCCL matches messages by count, not by capacity as MPI does). CUDA and NCCL failures abort
// with a message naming the call (comm.h). gather_strings is host strings over MPI. Built without MPI
// (MESHDIT_WITH_MPI=OFF) the world is this one process: an NCCL communicator of one rank on one GPU, whose
// bootstrap, sub-groups and strings stay in the process (nccl_host.h).
//
// This header is present in every build; nccl_comm.cpp is compiled only when CMake found CUDA and NCCL
// (MESHDIT_CUDA), otherwise nccl_stub.cpp, whose factory says the build has no NCCL.
#pragma once
#include <memory>

#include "core/error.h"
#include "parallel/comm.h"

namespace meshdit {

// True when this build has the NCCL communicator (CUDA and NCCL found at configure time). Says nothing
// about whether this machine has a GPU: nccl_world_communicator() finds that out.
bool nccl_available();

// The NCCL communicator over every rank of MPI_COMM_WORLD. Collective: every rank must call it, and every
// rank gets an error when any rank cannot take part (built without NCCL, MPI not initialised, no CUDA
// device or driver, two ranks of one node on the same GPU), so no rank is left waiting. Rank r uses device
// (local rank % device count), the local rank taken from OMPI_COMM_WORLD_LOCAL_RANK (or the rank among
// the ranks sharing its node) and made current on the calling thread.
Result<std::unique_ptr<Communicator>> nccl_world_communicator();

}  // namespace meshdit
