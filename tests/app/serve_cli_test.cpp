// `meshdit serve` as a process: it answers on its port, and SIGTERM (or SIGINT) stops it cleanly, saying
// what became of the running job, with exit status 0.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "../test_util.h"

namespace {

// A port nothing listens on now (the kernel's pick for a socket bound to port 0, then released).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t n = sizeof a;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
  close(fd);
  return ntohs(a.sin_port);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

class ServeCli : public ::testing::TestWithParam<int> {};

TEST_P(ServeCli, SignalStopsItCleanly) {
  const int sig = GetParam();
  const meshdit::test::TempDir dir;
  const std::string log = (dir.path() / "serve.log").string();
  const int port = free_port();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  const std::string p = std::to_string(port);
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec (the test process has threads).
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || dup2(fd, 2) < 0) _exit(127);
    execl(MESHDIT_CLI, MESHDIT_CLI, "serve", "--port", p.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  httplib::Client c("127.0.0.1", port);
  bool up = false;
  for (int i = 0; i < 300 && !up; ++i) {
    auto h = c.Get("/health");
    up = h && h->status == 200;
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(up) << read_file(log);
  // A long job running when the signal comes: it is cancelled between two steps.
  auto sub = c.Post("/v1/jobs", R"({"prompt": "x", "size": "64x64", "steps": 200})", "application/json");
  EXPECT_TRUE(sub && sub->status == 202);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(pid, sig);
  int status = -1;
  for (int i = 0; i < 200; ++i) {
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (i == 199) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      ADD_FAILURE() << "still running 10 s after the signal";
    }
  }
  const std::string out = read_file(log);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
  EXPECT_NE(out.find(sig == SIGINT ? "SIGINT: stopping" : "SIGTERM: stopping"), std::string::npos) << out;
  EXPECT_NE(out.find("running job: cancelled between two steps"), std::string::npos) << out;
  EXPECT_NE(out.find("meshdit serve: stopped"), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(Signals, ServeCli, ::testing::Values(SIGTERM, SIGINT),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return std::string(i.param == SIGINT ? "SIGINT" : "SIGTERM");
                         });
