// MPI helpers shared by the communicators that talk MPI (mpi_comm.cpp, and nccl_comm.cpp for its
// bootstrap and host-side strings). Internal: it includes <mpi.h>, which the public headers keep out.
#pragma once
// The C API only: Open MPI's deprecated C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace meshdit::mpi {

// Aborts with the call's name and MPI's message unless rc is MPI_SUCCESS.
void check(int rc, const char* what);
// n as MPI's int count; aborts naming `what` when it does not fit.
int count(int64_t n, const char* what);
bool finalized();
// Every rank's string to `root` over `comm` (the others get an empty vector).
std::vector<std::string> gather_strings(MPI_Comm comm, const std::string& s, int root);

}  // namespace meshdit::mpi
