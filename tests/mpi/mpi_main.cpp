// The multi-rank tests: every rank runs every test (collectives need all ranks); ctest starts this
// binary under mpirun with 2 and with 4 ranks. Only rank 0 prints gtest's report; a failure on any rank
// fails the run (each rank's exit status reaches mpirun).
#include <gtest/gtest.h>

#include "parallel/mpi_comm.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (auto st = meshdit::mpi::init(&argc, &argv); !st.ok()) {
    std::fprintf(stderr, "%s\n", st.error().message.c_str());
    return 1;
  }
  auto world = meshdit::world_communicator();
  if (world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  // Failures on other ranks would be silent: report them from rank 0.
  std::vector<float> failed{float(rc != 0)};
  world->all_reduce_sum(failed.data(), 1);
  if (world->rank() == 0 && failed[0] > 0 && rc == 0)
    std::fprintf(stderr, "%d rank(s) failed (run with --gtest_filter to see their output)\n", int(failed[0]));
  world.reset();
  meshdit::mpi::finalize();
  return failed[0] > 0 ? 1 : 0;
}
