// Open MPI (or any MPI) behind the Communicator interface, for CPU ranks on one machine or many.
// MPI is initialised only when the process was started by a launcher (mpirun/srun set PMI/OMPI variables):
// a plain `meshdit generate` never touches MPI and runs as the 1x1 mesh.
#pragma once
#include <string>

#include "core/error.h"
#include "parallel/comm.h"

namespace meshdit {

// Built without MPI (CMake MESHDIT_WITH_MPI=OFF, or no MPI found) parallel/mpi_none.cpp replaces mpi_comm.cpp:
// the world is this one process (a LocalComm, the 1x1 mesh), and init() refuses a launch of more than one rank.

namespace mpi {
// True when this meshdit was built with MPI (meshes of more than one rank).
bool available();
// True when a launcher started this process (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK, ...).
bool launched();
// MPI_Init_thread(FUNNELED) once; a no-op when not launched. Errors name what failed.
Status init(int* argc, char*** argv);
bool initialized();
// The MPI library's own description (MPI_Get_library_version, valid before init), first line only.
std::string library_version();
// MPI_Finalize when init() started MPI.
void finalize();
// Aborts every rank of the job (after one rank hit an error the others cannot know about).
[[noreturn]] void abort_job(int code);
}  // namespace mpi

// MPI_COMM_WORLD when MPI is initialised, else a LocalComm.
std::unique_ptr<Communicator> world_communicator();

}  // namespace meshdit
