// The build without CUDA/NCCL (MESHDIT_CUDA=OFF, or neither found at configure time): no NCCL
// communicator, and the factory says why.
#include "parallel/nccl_comm.h"

namespace meshdit {

bool nccl_available() { return false; }

Result<std::unique_ptr<Communicator>> nccl_world_communicator() {
  return make_error(
      "NCCL communicator: meshdit was built without NCCL (configure with CUDA and NCCL installed, "
      "-DMESHDIT_CUDA=ON)");
}

}  // namespace meshdit
