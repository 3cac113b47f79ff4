#include "parallel/mpi_comm.h"

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "parallel/mpi_util.h"

namespace meshdit {

namespace mpi {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fatal(__FILE__, __LINE__, std::string(what) + ": " + std::string(msg, size_t(len)));
}

int count(int64_t n, const char* what) {
  if (n < 0 || n > INT_MAX)
    fatal(__FILE__, __LINE__,
          std::string(what) + ": message of " + std::to_string(n) + " elements exceeds MPI's int count");
  return int(n);
}

bool finalized() {
  int f = 0;
  MPI_Finalized(&f);
  return f != 0;
}

std::vector<std::string> gather_strings(MPI_Comm comm, const std::string& s, int root) {
  int rank = 0, size = 1;
  check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  check(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  const int len = count(int64_t(s.size()), "gather_strings");
  std::vector<int> lens(static_cast<size_t>(size));
  check(MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, root, comm), "MPI_Gather");
  std::vector<int> displs(static_cast<size_t>(size), 0);
  int64_t total = 0;
  for (int r = 0; r < size; ++r) {
    displs[size_t(r)] = count(total, "gather_strings");
    total += lens[size_t(r)];
  }
  std::string all(rank == root ? size_t(total) : 0, '\0');
  check(MPI_Gatherv(s.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, root, comm),
        "MPI_Gatherv");
  std::vector<std::string> out;
  if (rank != root) return out;
  for (int r = 0; r < size; ++r) out.push_back(all.substr(size_t(displs[size_t(r)]), size_t(lens[size_t(r)])));
  return out;
}

}  // namespace mpi

namespace {

using mpi::check;
using mpi::count;

bool g_started = false;

class MpiComm final : public Communicator {
 public:
  MpiComm(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiComm() override {
    if (owned_ && comm_ != MPI_COMM_NULL && !mpi::finalized()) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "mpi"; }

  void all_reduce_sum(float* data, int64_t n) override {
    // Chunked so counts beyond INT_MAX still work.
    for (int64_t off = 0; off < n; off += INT_MAX) {
      const int c = int(std::min<int64_t>(n - off, INT_MAX));
      check(MPI_Allreduce(MPI_IN_PLACE, data + off, c, MPI_FLOAT, MPI_SUM, comm_), "MPI_Allreduce");
    }
  }
  void all_gather(const float* send, int64_t n, float* recv) override {
    const int c = count(n, "MPI_Allgather");
    check(
        MPI_Allgather(send == recv + int64_t(rank_) * n ? MPI_IN_PLACE : send, c, MPI_FLOAT, recv, c, MPI_FLOAT, comm_),
        "MPI_Allgather");
  }
  void reduce_scatter_sum(const float* send, float* recv, int64_t n) override {
    const int c = count(n, "MPI_Reduce_scatter_block");
    check(MPI_Reduce_scatter_block(send, recv, c, MPI_FLOAT, MPI_SUM, comm_), "MPI_Reduce_scatter_block");
  }
  void all_to_all(const float* send, float* recv, int64_t n) override {
    const int c = count(n, "MPI_Alltoall");
    check(MPI_Alltoall(send, c, MPI_FLOAT, recv, c, MPI_FLOAT, comm_), "MPI_Alltoall");
  }
  void all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                    const std::vector<int64_t>& recv_counts) override {
    MD_CHECK(int(send_counts.size()) == size_ && int(recv_counts.size()) == size_, "all_to_all_v: one count per rank");
    std::vector<int> sc(static_cast<size_t>(size_)), sd(static_cast<size_t>(size_)), rc(static_cast<size_t>(size_)),
        rd(static_cast<size_t>(size_));
    int64_t so = 0, ro = 0;
    for (int r = 0; r < size_; ++r) {
      sc[size_t(r)] = count(send_counts[size_t(r)], "MPI_Alltoallv");
      rc[size_t(r)] = count(recv_counts[size_t(r)], "MPI_Alltoallv");
      sd[size_t(r)] = count(so, "MPI_Alltoallv");
      rd[size_t(r)] = count(ro, "MPI_Alltoallv");
      so += send_counts[size_t(r)];
      ro += recv_counts[size_t(r)];
    }
    check(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(), MPI_FLOAT, comm_),
          "MPI_Alltoallv");
  }
  void send_recv(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) override {
    check(MPI_Sendrecv(send, count(n_send, "MPI_Sendrecv"), MPI_FLOAT, peer(dst), kTag, recv,
                       count(n_recv, "MPI_Sendrecv"), MPI_FLOAT, peer(src), kTag, comm_, MPI_STATUS_IGNORE),
          "MPI_Sendrecv");
  }
  void send_recv_start(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) override {
    MD_CHECK(!in_flight_, "send_recv_start: a ring step is already in flight");
    check(MPI_Irecv(recv, count(n_recv, "MPI_Irecv"), MPI_FLOAT, peer(src), kTag, comm_, &req_[0]), "MPI_Irecv");
    check(MPI_Isend(send, count(n_send, "MPI_Isend"), MPI_FLOAT, peer(dst), kTag, comm_, &req_[1]), "MPI_Isend");
    in_flight_ = true;
  }
  void send_recv_wait() override {
    if (!in_flight_) return;
    check(MPI_Waitall(2, req_, MPI_STATUSES_IGNORE), "MPI_Waitall");
    in_flight_ = false;
  }
  void broadcast(float* data, int64_t n, int root) override {
    for (int64_t off = 0; off < n; off += INT_MAX) {
      const int c = int(std::min<int64_t>(n - off, INT_MAX));
      check(MPI_Bcast(data + off, c, MPI_FLOAT, root, comm_), "MPI_Bcast");
    }
  }
  void barrier() override { check(MPI_Barrier(comm_), "MPI_Barrier"); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    check(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    return std::make_unique<MpiComm>(sub, true);
  }
  std::vector<std::string> gather_strings(const std::string& s, int root) override {
    return mpi::gather_strings(comm_, s, root);
  }

 private:
  static constexpr int kTag = 7;
  static int peer(int r) { return r < 0 ? MPI_PROC_NULL : r; }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  MPI_Request req_[2];
  bool in_flight_ = false;
};

}  // namespace

namespace mpi {

bool available() { return true; }

Status init(int* argc, char*** argv) {
  if (!launched() || initialized()) return ok_status();
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    return make_error("MPI_Init_thread failed (started by mpirun, but MPI could not start)");
  g_started = true;
  return ok_status();
}

std::string library_version() {
  char buf[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int len = 0;
  if (MPI_Get_library_version(buf, &len) != MPI_SUCCESS) return "unknown";
  std::string s(buf, size_t(std::max(0, len)));
  const size_t nl = std::min(s.find_first_of("\r\n"), s.find(", package"));
  if (nl != std::string::npos) s.resize(nl);
  while (!s.empty() && (s.back() == ',' || s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

bool initialized() {
  int f = 0;
  MPI_Initialized(&f);
  return f != 0;
}

void finalize() {
  if (g_started && initialized()) {
    int f = 0;
    MPI_Finalized(&f);
    if (!f) MPI_Finalize();
  }
}

void abort_job(int code) {
  if (initialized()) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace mpi

std::unique_ptr<Communicator> world_communicator() {
  if (mpi::initialized()) return std::make_unique<MpiComm>(MPI_COMM_WORLD, false);
  return std::make_unique<LocalComm>();
}

}  // namespace meshdit
