// mpi::launched() for both builds (with MPI: mpi_comm.cpp, without: mpi_none.cpp): it reads only the launcher's
// environment, so it needs no MPI.
#include <cstdlib>

#include "parallel/mpi_comm.h"

namespace meshdit::mpi {

bool launched() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

}  // namespace meshdit::mpi
