// parallel/mpi_none.cpp, the world of a build without MPI (MESHDIT_WITH_MPI=OFF), compiled into
// meshdit_none_tests in every build: one process, a LocalComm; a launch of several ranks is refused at init
// with the reason, a launch of one runs. (make_mesh's refusal of a mesh larger than 1x1 is checked on the
// build without MPI itself: mesh.cpp needs the whole parallel layer.)
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "parallel/mpi_comm.h"

using namespace meshdit;

namespace {

// Sets an environment variable for one test, restoring it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_, old_.c_str(), 1);
    else
      unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(MpiNone, TheWorldIsThisProcess) {
  EXPECT_FALSE(mpi::available());
  EXPECT_FALSE(mpi::initialized());
  EXPECT_NE(mpi::library_version().find("built without MPI (libopenmpi-dev)"), std::string::npos)
      << mpi::library_version();
  auto world = world_communicator();
  EXPECT_EQ(world->size(), 1);
  EXPECT_EQ(world->rank(), 0);
  EXPECT_STREQ(world->backend(), "local");
}

TEST(MpiNone, LaunchOfSeveralRanksIsRefusedWithTheReason) {
  const ScopedEnv size("OMPI_COMM_WORLD_SIZE", "4");
  ASSERT_TRUE(mpi::launched());
  const Status st = mpi::init(nullptr, nullptr);
  ASSERT_FALSE(st.ok());
  const std::string& m = st.error().message;
  EXPECT_NE(m.find("one of 4 ranks"), std::string::npos) << m;
  EXPECT_NE(m.find("built without MPI (libopenmpi-dev)"), std::string::npos) << m;
  EXPECT_FALSE(mpi::initialized());
}

TEST(MpiNone, LaunchOfOneRankRuns) {
  const ScopedEnv size("OMPI_COMM_WORLD_SIZE", "1");
  EXPECT_TRUE(mpi::init(nullptr, nullptr).ok());
  EXPECT_EQ(world_communicator()->size(), 1);
  mpi::finalize();
}

}  // namespace
