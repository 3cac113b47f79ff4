// One interface for the collectives a parallel DiT needs. Implementations wrap real collective libraries:
// MPI (CPU ranks, one machine or many) and NCCL (GPU ranks, bootstrapped over MPI). A communicator of size
// 1 (LocalComm) makes one-device execution the 1x1 mesh instead of a separate code path.
//
// Buffers are raw float32 element pointers in the memory the implementation works on (host memory for
// MPI, device memory for NCCL). Counts are elements. Every rank of the group must make the same calls in
// the same order. A transport failure is not recoverable by one rank alone (MPI's own default is to abort
// the job), so these calls abort with a message instead of returning an error; everything a user can get
// wrong (mesh shape, factors, sizes) is validated before any collective runs.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace meshdit {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // What the group is, for traces and messages: "world", "tp", "sp", "cfg", "vae".
  const std::string& name() const { return name_; }
  void set_name(std::string n) { name_ = std::move(n); }
  // "mpi", "nccl", "local"
  virtual const char* backend() const = 0;

  // In place: data[i] = sum over ranks of data[i].
  virtual void all_reduce_sum(float* data, int64_t n) = 0;
  // recv [size * n] = concatenation of every rank's send [n], in rank order.
  virtual void all_gather(const float* send, int64_t n, float* recv) = 0;
  // send [size * n]: rank r receives the sum over ranks of send[r*n, (r+1)*n) into recv [n].
  virtual void reduce_scatter_sum(const float* send, float* recv, int64_t n) = 0;
  // send [size * n]: block r goes to rank r; recv [size * n]: block r came from rank r.
  virtual void all_to_all(const float* send, float* recv, int64_t n) = 0;
  // Variable sizes: send_counts[r] elements go to rank r (blocks packed in rank order), recv_counts[r]
  // come from rank r (packed likewise).
  virtual void all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                            const std::vector<int64_t>& recv_counts) = 0;
  // Sends `send` [n_send] to rank `dst` and receives [n_recv] from rank `src` (one ring step, or one halo
  // exchange). dst < 0: nothing is sent; src < 0: nothing is received (the edge of a non-periodic split).
  virtual void send_recv(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) = 0;
  virtual void broadcast(float* data, int64_t n, int root) = 0;
  virtual void barrier() = 0;

  // A ring step that runs while the caller computes: start() posts it, wait() completes it. At most one in
  // flight per communicator. The default runs it synchronously in start().
  virtual void send_recv_start(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) {
    send_recv(send, n_send, dst, recv, n_recv, src);
  }
  virtual void send_recv_wait() {}

  // Sub-groups: ranks passing the same color form one group, ordered by key (MPI_Comm_split semantics).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // Host-side strings to `root` (the others get an empty vector): per-rank traces, error messages.
  virtual std::vector<std::string> gather_strings(const std::string& s, int root) = 0;

 private:
  std::string name_ = "world";
};

// The group of one: every collective is a copy (or nothing).
class LocalComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return "local"; }
  void all_reduce_sum(float*, int64_t) override {}
  void all_gather(const float* send, int64_t n, float* recv) override;
  void reduce_scatter_sum(const float* send, float* recv, int64_t n) override;
  void all_to_all(const float* send, float* recv, int64_t n) override;
  void all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                    const std::vector<int64_t>& recv_counts) override;
  void send_recv(const float* send, int64_t n_send, int dst, float* recv, int64_t n_recv, int src) override;
  void broadcast(float*, int64_t, int) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<LocalComm>(); }
  std::vector<std::string> gather_strings(const std::string& s, int) override { return {s}; }
};

// A group of `size` seen from rank `rank` that carries no data: it answers rank() and size() only, and any
// collective aborts. For running code that needs only its place in a group on one process: a loader
// learning its TP shard (weight specs, `plan`), geometry tests.
class ShapeOnlyComm final : public Communicator {
 public:
  ShapeOnlyComm(int size, int rank) : size_(size), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "shape-only"; }
  void all_reduce_sum(float*, int64_t) override { no("all_reduce_sum"); }
  void all_gather(const float*, int64_t, float*) override { no("all_gather"); }
  void reduce_scatter_sum(const float*, float*, int64_t) override { no("reduce_scatter_sum"); }
  void all_to_all(const float*, float*, int64_t) override { no("all_to_all"); }
  void all_to_all_v(const float*, const std::vector<int64_t>&, float*, const std::vector<int64_t>&) override {
    no("all_to_all_v");
  }
  void send_recv(const float*, int64_t, int, float*, int64_t, int) override { no("send_recv"); }
  void broadcast(float*, int64_t, int) override { no("broadcast"); }
  void barrier() override { no("barrier"); }
  std::unique_ptr<Communicator> split(int, int) override { no("split"); }
  std::vector<std::string> gather_strings(const std::string&, int) override { no("gather_strings"); }

 private:
  [[noreturn]] static void no(const char* op);
  int size_, rank_;
};

// Balanced split of n items over `parts`: the first n % parts parts get one more. -> [begin, end) of `part`.
struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
Range shard_range(int64_t n, int parts, int part);

}  // namespace meshdit
