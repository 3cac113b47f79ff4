// app/serve.h without cpp-httplib (CMake MESHDIT_WITH_HTTPLIB=OFF, or libcpp-httplib-dev not found): there is
// no server to make, and `meshdit serve` says so and exits 1. The request parsing, the job queue and the
// previews (serve_request, serve_jobs, serve_preview) need no HTTP library and are built as in every build.
#include <cstdio>

#include "app/serve.h"

namespace meshdit {
namespace {

const char* const kWithoutHttplib =
    "this meshdit was built without cpp-httplib (libcpp-httplib-dev): `meshdit serve` is unavailable; "
    "rebuild with it installed (tools/setup-debian.sh), or run `meshdit generate` instead";

}  // namespace

// Never made: create() is the only way to a Server, and it fails.
struct Server::Impl {
  RequestDefaults defaults;
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;
Result<std::unique_ptr<Server>> Server::create(const ServeCommand&) { return make_error(kWithoutHttplib); }
bool Server::lead() const { return true; }
Result<int> Server::bind() { return make_error(kWithoutHttplib); }
void Server::run() {}
std::string Server::stop(bool) { return "none"; }
const RequestDefaults& Server::defaults() const { return impl_->defaults; }

std::string http_library() { return ""; }

int run_serve(const ServeCommand&) {
  std::fprintf(stderr, "meshdit serve: %s\n", kWithoutHttplib);
  return 1;
}

}  // namespace meshdit
