// parallel/mpi_comm.h without MPI (CMake MESHDIT_WITH_MPI=OFF, or no MPI found): the world is this one process,
// a LocalComm, and every mesh is the 1x1 one (make_mesh refuses a larger one). A process that a launcher
// started as one of several ranks stops at init() with an error rather than running alone N times over.
#include <cstdlib>
#include <string>

#include "parallel/mpi_comm.h"

namespace meshdit {

namespace {

const char* const kWithoutMpi = "this meshdit was built without MPI (libopenmpi-dev)";

// The job's size as a launcher tells it, or 0 when none says.
long launched_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"}) {
    const char* s = std::getenv(v);
    if (!s || !*s) continue;
    char* end = nullptr;
    const long n = std::strtol(s, &end, 10);
    if (*end == '\0' && n > 0) return n;
  }
  return 0;
}

}  // namespace

namespace mpi {

bool available() { return false; }

Status init(int*, char***) {
  if (!launched()) return ok_status();
  const long n = launched_size();
  if (n == 1) return ok_status();  // `mpirun -np 1`: the one process it would be anyway
  return make_error(std::string("started by a launcher (mpirun) as one of ") +
                    (n > 1 ? std::to_string(n) : std::string("several")) + " ranks, but " + kWithoutMpi +
                    ": it runs as one process only; rebuild with MPI installed (tools/setup-debian.sh) for a mesh");
}

bool initialized() { return false; }

std::string library_version() { return std::string("none: ") + kWithoutMpi; }

void finalize() {}

void abort_job(int code) { std::exit(code); }

}  // namespace mpi

std::unique_ptr<Communicator> world_communicator() { return std::make_unique<LocalComm>(); }

}  // namespace meshdit
