// `meshdit serve`: the pipeline loaded once behind an HTTP API. OpenAI's POST /v1/images/generations and
// AUTOMATIC1111's POST /sdapi/v1/txt2img answer with the images; POST /v1/jobs answers at once with a job id
// to follow (GET /v1/jobs/{id}, its server-sent events at /v1/jobs/{id}/events, DELETE to cancel). One
// worker runs the jobs in order (app/serve_jobs.h); HTTP is cpp-httplib's (Debian's libcpp-httplib-dev).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "app/serve_request.h"
#include "core/error.h"

namespace meshdit {

struct ServeCommand {
  std::string model;        // "" = the built-in model
  std::string transformer;  // as generate's --transformer
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (tests)
  std::string api_key;  // non-empty: every route but /health and the page needs "Authorization: Bearer KEY"
  size_t queue = 16;    // jobs waiting
  size_t max_body_bytes = size_t(4) << 20;
  int64_t preview_every = 2;  // steps between previews of a job
  ServeLimits limits;
  std::string precision;  // "" = default_compute_precision()
  std::string mesh;       // "RxC" under mpirun: rank 0 serves, every rank runs each job; "" = 1 x the ranks
  std::string parallel;   // --parallel overrides of the automatic config
  bool verbose = true;    // one line per request on stderr
};

class Server {
 public:
  // Loads the pipeline; nothing listens yet.
  static Result<std::unique_ptr<Server>> create(const ServeCommand& cmd);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Whether this rank serves HTTP (rank 0; every rank of a single process).
  bool lead() const;
  // Binds cmd.host:cmd.port (port 0: a free one) and returns the port; the lead rank only.
  Result<int> bind();
  // Serves until stop() (the lead, after bind()). On a mesh the lead runs the jobs on this (the main)
  // thread, broadcasting each one to every rank, and the other ranks' run() follows them until the lead
  // stops.
  void run();
  // From any thread (a signal watcher, a test): stops taking requests, cancels the running job or lets it
  // finish, and makes run() return. Returns what became of the running job: "none", "finished", "cancelled".
  std::string stop(bool cancel_running);

  // The pipeline's defaults for requests that name no size or steps.
  const RequestDefaults& defaults() const;

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Runs `meshdit serve` until SIGINT or SIGTERM; returns the exit status. Built without cpp-httplib
// (CMake MESHDIT_WITH_HTTPLIB=OFF, or libcpp-httplib-dev not found) app/serve_none.cpp replaces app/serve.cpp:
// Server::create and run_serve say so, and run_serve returns 1.
int run_serve(const ServeCommand& cmd);

// The HTTP library `serve` is built with ("cpp-httplib 0.11.4"), or "" when it was built without one.
std::string http_library();

// The page served at / (app/serve_page.cpp).
const char* serve_page_html();

}  // namespace meshdit
