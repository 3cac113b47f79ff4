#include "app/serve.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "app/generation.h"
#include "app/serve_jobs.h"
#include "app/serve_preview.h"
#include "app/video_output.h"
#include "backend/precision.h"
#include "core/step_watch.h"
#include "parallel/mpi_comm.h"

namespace meshdit {
namespace {

using Json = nlohmann::json;

std::string base64(const std::vector<uint8_t>& in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  for (size_t i = 0; i < in.size(); i += 3) {
    const uint32_t n = uint32_t(in[i]) << 16 | (i + 1 < in.size() ? uint32_t(in[i + 1]) << 8 : 0) |
                       (i + 2 < in.size() ? uint32_t(in[i + 2]) : 0);
    out += k[n >> 18 & 63];
    out += k[n >> 12 & 63];
    out += i + 1 < in.size() ? k[n >> 6 & 63] : '=';
    out += i + 2 < in.size() ? k[n & 63] : '=';
  }
  return out;
}

// OpenAI's error shape, with the field also under "field": {"error": {"message", "type", "param", "field"}}.
void send_error(httplib::Response& res, int status, const std::string& field, const std::string& message) {
  const char* type = status == 401 ? "authentication_error" : status >= 500 ? "server_error" : "invalid_request_error";
  Json j = {{"error",
             {{"message", field.empty() ? message : field + ": " + message},
              {"type", type},
              {"param", field.empty() ? Json(nullptr) : Json(field)},
              {"field", field.empty() ? Json(nullptr) : Json(field)},
              {"code", status}}}};
  res.status = status;
  res.set_content(j.dump(), "application/json");
}

void send_parse_error(httplib::Response& res, const Error& e) { send_error(res, 400, error_field(e), error_detail(e)); }

void send_json(httplib::Response& res, const Json& j) { res.set_content(j.dump(), "application/json"); }

Json request_json(const ImageRequest& r) {
  const GenerateOptions& o = r.options;
  Json j = {{"prompt", o.prompt.empty() ? "" : o.prompt[0]},
            {"width", o.width},
            {"height", o.height},
            {"steps", o.steps},
            {"seed", o.seed},
            {"n", o.num_images_per_prompt}};
  if (!o.negative_prompt.empty()) j["negative_prompt"] = o.negative_prompt[0];
  if (o.guidance_scale) j["guidance"] = *o.guidance_scale;
  if (o.true_cfg_scale) j["true_cfg"] = *o.true_cfg_scale;
  if (o.cache.enabled()) j["cache"] = cache_options_str(o.cache);
  return j;
}

Json job_json(const JobSnapshot& s, bool with_images, const char* mime = "image/png") {
  Json j = {{"id", s.id},
            {"state", job_state_name(s.state)},
            {"step", s.step},
            {"steps", s.steps},
            {"elapsed_s", s.elapsed_s},
            {"eta_s", s.eta_s < 0 ? Json(nullptr) : Json(s.eta_s)},
            {"request", request_json(s.request)}};
  if (s.state == JobState::Queued) j["queue_position"] = s.queue_position;
  if (!s.error.empty()) j["error"] = s.error;
  if (with_images && !s.preview.empty()) j["preview"] = {{"step", s.preview_step}, {"b64_png", base64(s.preview)}};
  if (with_images && s.state == JobState::Done) {
    Json images = Json::array();
    for (const auto& png : s.images) images.push_back({{"b64_json", base64(png)}, {"mime_type", mime}});
    j["images"] = images;
  }
  return j;
}

// Videos [B, F, H, W, 3] as MP4 files' bytes. The encoder writes files: each goes through a folder of the
// server's own making under the temp dir, removed at once (a request never names a path).
Result<std::vector<std::vector<uint8_t>>> encode_mp4s(const Tensor& videos, double fps) {
  namespace fs = std::filesystem;
  std::string tmpl = (fs::temp_directory_path() / "meshdit-serve-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) return make_error("cannot make a temporary folder for the MP4: " + tmpl);
  const fs::path dir = tmpl;
  std::vector<std::vector<uint8_t>> out;
  Status st = ok_status();
  for (int64_t b = 0; b < videos.size(0) && st.ok(); ++b) {
    const std::string path = (dir / "video.mp4").string();
    auto written = write_video_output(path, videos.select(0, b), fps);
    if (!written.ok()) {
      st = written.error();
      break;
    }
    std::ifstream f(path, std::ios::binary);
    out.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!st.ok()) return st.error();
  return out;
}

// A text from `root` to every rank (Communicator moves floats: one byte each, exact; lengths are far below
// 2^24).
std::string broadcast_text(Communicator& c, const std::string& text, int root) {
  float n = float(text.size());
  c.broadcast(&n, 1, root);
  std::vector<float> buf(static_cast<size_t>(n));
  if (c.rank() == root)
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = float(uint8_t(text[i]));
  c.broadcast(buf.data(), int64_t(buf.size()), root);
  std::string out(buf.size(), '\0');
  for (size_t i = 0; i < buf.size(); ++i) out[i] = char(uint8_t(buf[i]));
  return out;
}

// A job's (defaulted) options as the lead sends them to the other ranks of a mesh.
Json options_to_json(const GenerateOptions& o) {
  Json j = {{"prompt", o.prompt},
            {"negative_prompt", o.negative_prompt},
            {"n", o.num_images_per_prompt},
            {"width", o.width},
            {"height", o.height},
            {"steps", o.steps},
            {"seed", o.seed},
            {"frames", o.num_frames},
            {"max_sequence_length", o.max_sequence_length},
            {"cache", cache_options_str(o.cache)}};
  if (o.guidance_scale) j["guidance"] = *o.guidance_scale;
  if (o.guidance_scale_2) j["guidance_2"] = *o.guidance_scale_2;
  if (o.true_cfg_scale) j["true_cfg"] = *o.true_cfg_scale;
  return j;
}

Result<GenerateOptions> options_from_json(const std::string& text) {
  const Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error("a job from rank 0 that is not JSON");
  GenerateOptions o;
  o.prompt = j["prompt"].get<std::vector<std::string>>();
  o.negative_prompt = j["negative_prompt"].get<std::vector<std::string>>();
  o.num_images_per_prompt = j["n"];
  o.width = j["width"];
  o.height = j["height"];
  o.steps = j["steps"];
  o.seed = j["seed"];
  o.num_frames = j["frames"];
  o.max_sequence_length = j["max_sequence_length"];
  MD_TRY(o.cache, parse_cache_options(j["cache"].get<std::string>()));
  if (j.contains("guidance")) o.guidance_scale = j["guidance"].get<float>();
  if (j.contains("guidance_2")) o.guidance_scale_2 = j["guidance_2"].get<float>();
  if (j.contains("true_cfg")) o.true_cfg_scale = j["true_cfg"].get<float>();
  return o;
}

// The socket of a request's connection, or -1. Debian's cpp-httplib (0.11) gives a handler no handle on its
// connection (later versions have Request::is_connection_closed), so it is found among this process's open
// descriptors by its two ends' ports and the peer's address. httplib keeps it open until the handler
// returns, so the descriptor cannot be reused meanwhile.
int connection_fd(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (dirent* e = readdir(dir)) {
    const int fd = std::atoi(e->d_name);
    if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd == dirfd(dir)) continue;
    sockaddr_storage peer{}, self{};
    socklen_t pn = sizeof peer, sn = sizeof self;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pn) != 0) continue;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&self), &sn) != 0) continue;
    char peer_host[NI_MAXHOST], peer_port[NI_MAXSERV], self_port[NI_MAXSERV];
    if (getnameinfo(reinterpret_cast<sockaddr*>(&peer), pn, peer_host, sizeof peer_host, peer_port, sizeof peer_port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0 ||
        getnameinfo(reinterpret_cast<sockaddr*>(&self), sn, nullptr, 0, self_port, sizeof self_port, NI_NUMERICSERV) !=
            0)
      continue;
    if (std::atoi(peer_port) == req.remote_port && std::atoi(self_port) == req.local_port &&
        req.remote_addr == peer_host) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

// Whether the client closed its end: a hang-up, or readable with nothing left to read.
bool peer_closed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, short(POLLIN | POLLRDHUP), 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
  char c;
  return (p.revents & POLLIN) && recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

volatile sig_atomic_t g_signal = 0;  // SIGINT or SIGTERM once received

}  // namespace

struct Server::Impl {
  ServeCommand cmd;
  LoadedPipeline lp;
  Precision precision = Precision::F32;
  RequestDefaults defaults;
  std::optional<float> default_guidance;
  httplib::Server http;
  std::unique_ptr<JobQueue> jobs;
  std::atomic<bool> stopping{false};
  std::mutex stop_mu;
  std::string stop_fate;
  bool stopped = false;
  const VideoPipelineInfo* video = nullptr;  // a video pipeline: the results are MP4s
  bool on_mesh = false;                      // more than one rank: jobs are broadcast
  bool lead = true;                          // rank 0: serves HTTP and runs the queue

  Communicator& world() const { return lp.mesh.world(); }
  const char* mime() const { return video ? "video/mp4" : "image/png"; }

  // Every rank takes the lead's verdict after each step: a cancel stops all of them at the same step.
  Status mesh_step_verdict(Status mine) const {
    if (!on_mesh) return mine;
    float stop = mine.ok() ? 0.0f : 1.0f;
    world().broadcast(&stop, 1, 0);
    if (stop == 0.0f) return ok_status();
    return mine.ok() ? Status(cancelled_error()) : mine;
  }

  // A rank other than the lead: runs each job the lead broadcasts, until it says "stop".
  void follow() {
    const std::string who = "[rank " + std::to_string(world().rank()) + "] meshdit serve: ";
    for (;;) {
      const std::string msg = broadcast_text(world(), "", 0);
      if (msg == "stop") return;
      auto o = options_from_json(msg);
      if (!o.ok()) {
        std::fprintf(stderr, "%s%s\n", who.c_str(), o.error().message.c_str());
        continue;
      }
      const ScopedPrecision p(precision);
      ScopedStepWatch watch([&](int64_t, int64_t, const Tensor&) { return mesh_step_verdict(ok_status()); });
      auto images = lp.pipeline->generate(*o);
      if (!images.ok() && !is_cancelled(images.error()))
        std::fprintf(stderr, "%s%s\n", who.c_str(), images.error().message.c_str());
    }
  }

  Result<std::vector<Png>> run_job(const ImageRequest& r, JobProgress& progress) {
    const ScopedPrecision p(precision);
    const Pipeline& pipe = *lp.pipeline;
    const GenerateOptions o = pipe.with_defaults(r.options);
    MD_RETURN_IF_ERROR(pipe.validate(o));
    if (on_mesh) broadcast_text(world(), options_to_json(o).dump(), 0);
    ScopedStepWatch watch([&](int64_t step, int64_t steps, const Tensor& latents) -> Status {
      Png preview;
      if (progress.wants_preview(step, steps)) {
        // A latent layout without a projection gets no preview, not a failed job.
        auto png = latent_preview_png(latents, o.width, o.height);
        if (png.ok()) preview = std::move(*png);
      }
      return mesh_step_verdict(progress.step(step, steps, std::move(preview)));
    });
    MD_TRY(Tensor images, pipe.generate(o));
    if (video) return encode_mp4s(images, video->fps);
    PngText extra;
    if (!lp.transformer.empty()) extra.push_back({"transformer", lp.transformer});
    return encode_pngs(images, o, lp.model, extra);
  }

  // Before a request is queued: what the pipeline would refuse is refused now, as a 400.
  Status validate(const ImageRequest& r) const {
    const Pipeline& pipe = *lp.pipeline;
    auto st = pipe.validate(pipe.with_defaults(r.options));
    if (!st.ok()) return make_error("options: " + st.error().message);
    return ok_status();
  }

  // Waits for a job to finish (the synchronous endpoints); a client that goes away meanwhile has its job
  // cancelled. nullopt if the job was forgotten meanwhile.
  std::optional<JobSnapshot> wait_done(const std::string& id, const httplib::Request& req) {
    const int fd = connection_fd(req);
    bool gone = false;
    uint64_t seen = 0;
    for (;;) {
      auto s = jobs->wait(id, seen, std::chrono::milliseconds(200));
      if (!s || finished(s->state)) return s;
      seen = s->version;
      if (!gone && peer_closed(fd)) {
        gone = true;
        jobs->cancel(id, "cancelled: the client disconnected");
        if (cmd.verbose)
          std::fprintf(stderr, "meshdit serve: %s: the client disconnected, job cancelled\n", id.c_str());
      }
    }
  }

  // Parses, validates and queues; on failure the response is already the error.
  std::optional<std::string> submit(const Result<ImageRequest>& r, httplib::Response& res) {
    if (!r.ok()) {
      send_parse_error(res, r.error());
      return std::nullopt;
    }
    if (auto st = validate(r.value()); !st.ok()) {
      send_parse_error(res, st.error());
      return std::nullopt;
    }
    auto id = jobs->submit(r.value());
    if (!id.ok()) {
      send_error(res, 503, "queue", error_detail(id.error()));
      return std::nullopt;
    }
    return *id;
  }

  // A finished job that did not end done: its error response. True when it did.
  static bool check_done(const JobSnapshot& s, httplib::Response& res) {
    if (s.state == JobState::Done) return true;
    if (s.state == JobState::Cancelled)
      send_error(res, 409, "", "job " + s.id + " " + s.error);
    else
      send_error(res, 500, "", "job " + s.id + " failed: " + s.error);
    return false;
  }

  void routes();
};

void Server::Impl::routes() {
  http.new_task_queue = [] { return new httplib::ThreadPool(16); };
  http.set_payload_max_length(cmd.max_body_bytes);
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // The page is static and holds nothing secret; it asks for the key and sends it with every call.
    if (cmd.api_key.empty() || req.path == "/health" || req.path == "/")
      return httplib::Server::HandlerResponse::Unhandled;
    const std::string want = "Bearer " + cmd.api_key;
    const std::string got = req.get_header_value("Authorization");
    if (got.empty()) {
      send_error(res, 401, "Authorization", "missing: send 'Authorization: Bearer <key>'");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (got != want) {
      send_error(res, 401, "Authorization", "wrong API key");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // httplib's own refusals (413 body too large, 404 no route, 400 unreadable request) get a JSON body too.
  http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    if (res.status == 413)
      send_error(res, 413, "body", "request body over the server's limit");
    else if (res.status == 404)
      send_error(res, 404, "path", "no route " + req.method + " " + req.path);
    else
      send_error(res, res.status, "", "HTTP error " + std::to_string(res.status));
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, 500, "", "internal error: " + what);
  });
  if (cmd.verbose)
    http.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      std::fprintf(stderr, "meshdit serve: %s %s -> %d\n", req.method.c_str(), req.path.c_str(), res.status);
    });

  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(serve_page_html(), "text/html; charset=utf-8");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, {{"status", stopping ? "stopping" : "ok"}, {"queued", jobs->waiting()}});
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    Json defaults = {
        {"width", this->defaults.width}, {"height", this->defaults.height}, {"steps", this->defaults.steps}};
    if (default_guidance) defaults["guidance"] = *default_guidance;
    const ServeLimits& l = cmd.limits;
    Json model = {{"id", lp.builtin ? std::string("tiny-shapes") : lp.model},
                  {"object", "model"},
                  {"owned_by", "meshdit"},
                  {"pipeline", lp.class_name},
                  {"path", lp.model},
                  {"defaults", defaults},
                  {"limits",
                   {{"max_side", l.max_side},
                    {"multiple_of", 16},
                    {"max_steps", l.max_steps},
                    {"max_images", l.max_images},
                    {"max_prompt_bytes", l.max_prompt_bytes},
                    {"max_body_bytes", cmd.max_body_bytes},
                    {"queue", cmd.queue}}}};
    send_json(res, {{"object", "list"}, {"data", Json::array({model})}});
  });
  http.Post("/v1/images/generations", [this](const httplib::Request& req, httplib::Response& res) {
    auto id = submit(parse_openai_request(req.body, defaults, cmd.limits), res);
    if (!id) return;
    auto s = wait_done(*id, req);
    if (!s) return send_error(res, 500, "", "job " + *id + " was lost");
    if (!check_done(*s, res)) return;
    Json data = Json::array();
    for (const auto& png : s->images) data.push_back({{"b64_json", base64(png)}, {"mime_type", mime()}});
    send_json(res, {{"created", int64_t(std::time(nullptr))}, {"data", data}, {"seed", s->request.options.seed}});
  });
  http.Post("/sdapi/v1/txt2img", [this](const httplib::Request& req, httplib::Response& res) {
    auto id = submit(parse_a1111_request(req.body, defaults, cmd.limits), res);
    if (!id) return;
    auto s = wait_done(*id, req);
    if (!s) return send_error(res, 500, "", "job " + *id + " was lost");
    if (!check_done(*s, res)) return;
    Json images = Json::array();
    for (const auto& png : s->images) images.push_back(base64(png));
    const GenerateOptions o = lp.pipeline->with_defaults(s->request.options);
    Json info = {{"prompt", o.prompt[0]},
                 {"negative_prompt", o.negative_prompt.empty() ? "" : o.negative_prompt[0]},
                 {"seed", o.seed},
                 {"all_seeds", Json::array()},
                 {"width", o.width},
                 {"height", o.height},
                 {"steps", o.steps},
                 {"cfg_scale", o.guidance_scale ? Json(*o.guidance_scale) : Json(nullptr)},
                 {"batch_size", o.num_images_per_prompt},
                 {"sd_model_name", lp.builtin ? std::string("tiny-shapes") : lp.model},
                 {"pipeline", lp.class_name}};
    // One seed for the batch: its images differ by their place in one noise draw.
    for (int64_t i = 0; i < o.num_images_per_prompt; ++i) info["all_seeds"].push_back(o.seed);
    Json params = Json::parse(req.body, nullptr, false);
    send_json(
        res,
        {{"images", images}, {"parameters", params.is_discarded() ? Json::object() : params}, {"info", info.dump()}});
  });
  http.Post("/v1/jobs", [this](const httplib::Request& req, httplib::Response& res) {
    auto id = submit(parse_openai_request(req.body, defaults, cmd.limits), res);
    if (!id) return;
    auto s = jobs->get(*id);
    res.status = 202;
    send_json(res, s ? job_json(*s, false) : Json{{"id", *id}});
  });
  http.Get("/v1/jobs", [this](const httplib::Request&, httplib::Response& res) {
    Json list = Json::array();
    for (const auto& s : jobs->list()) list.push_back(job_json(s, false));
    send_json(res, {{"object", "list"}, {"data", list}});
  });
  const std::string job_path = R"(/v1/jobs/([A-Za-z0-9-]+))";
  http.Get(job_path, [this](const httplib::Request& req, httplib::Response& res) {
    auto s = jobs->get(req.matches[1]);
    if (!s) return send_error(res, 404, "id", "no job " + std::string(req.matches[1]));
    send_json(res, job_json(*s, true, mime()));
  });
  http.Delete(job_path, [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    auto before = jobs->get(id);
    if (!before) return send_error(res, 404, "id", "no job " + id);
    if (!jobs->cancel(id))
      return send_error(res, 409, "id", "job " + id + " has already finished (" + job_state_name(before->state) + ")");
    auto s = jobs->get(id);
    send_json(res, s ? job_json(*s, false) : Json{{"id", id}});
  });
  http.Get(job_path + "/events", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (!jobs->get(id)) return send_error(res, 404, "id", "no job " + id);
    struct Stream {
      uint64_t seen = 0;
      int64_t preview_step = -1;
      std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
    };
    auto st = std::make_shared<Stream>();
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [this, id, st](size_t, httplib::DataSink& sink) {
      // One event per change of the job; a comment line every 15 s keeps proxies from closing the stream.
      auto s = jobs->wait(id, st->seen, std::chrono::milliseconds(250));
      if (!s) {
        sink.done();
        return true;
      }
      const auto now = std::chrono::steady_clock::now();
      if (s->version == st->seen) {
        if (stopping) {
          sink.done();
          return true;
        }
        if (now - st->last_write > std::chrono::seconds(15)) {
          st->last_write = now;
          return sink.write(": keep-alive\n\n", 14);
        }
        return true;
      }
      st->seen = s->version;
      st->last_write = now;
      const bool done = finished(s->state);
      Json j = job_json(*s, done, mime());
      if (!s->preview.empty() && s->preview_step != st->preview_step) {
        st->preview_step = s->preview_step;
        j["preview"] = {{"step", s->preview_step}, {"b64_png", base64(s->preview)}};
      }
      const std::string ev = std::string("event: ") + (done ? "done" : "progress") + "\ndata: " + j.dump() + "\n\n";
      if (!sink.write(ev.data(), ev.size())) return false;
      if (done) sink.done();
      return true;
    });
  });
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { stop(true); }

Result<std::unique_ptr<Server>> Server::create(const ServeCommand& cmd) {
  auto impl = std::make_unique<Impl>();
  impl->cmd = cmd;
  if (cmd.precision.empty()) {
    impl->precision = default_compute_precision();
  } else {
    MD_TRY(impl->precision, parse_precision(cmd.precision));
  }
  LoadOptions from;
  from.transformer_file = cmd.transformer;
  GenerateOptions shape = with_builtin_defaults({}, cmd.model.empty());
  MD_TRY(MeshShape mesh, MeshShape::parse_or_row(cmd.mesh, world_communicator()->size()));
  MD_TRY(impl->lp, load_pipeline(cmd.model, mesh, cmd.parallel, shape, from));
  impl->video = video_pipeline_info(impl->lp.class_name);
  impl->on_mesh = impl->lp.mesh.world().size() > 1;
  impl->lead = impl->lp.mesh.rank() == 0;
  const GenerateOptions d = impl->lp.pipeline->with_defaults(shape);
  impl->defaults = RequestDefaults{d.width, d.height, d.steps};
  impl->default_guidance = d.guidance_scale;
  Impl* p = impl.get();
  JobQueueOptions qo;
  qo.capacity = cmd.queue;
  qo.preview_every = cmd.preview_every;
  // MPI is initialised for calls from the main thread only (FUNNELED): on a mesh it runs the jobs.
  qo.own_worker = !impl->on_mesh;
  impl->jobs = std::make_unique<JobQueue>(
      [p](const ImageRequest& r, JobProgress& progress) { return p->run_job(r, progress); }, qo);
  impl->routes();
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Result<int> Server::bind() {
  Impl& m = *impl_;
  if (m.cmd.port == 0) {
    const int port = m.http.bind_to_any_port(m.cmd.host);
    if (port < 0) return make_error("--host " + m.cmd.host + ": cannot bind a port");
    return port;
  }
  if (!m.http.bind_to_port(m.cmd.host, m.cmd.port))
    return make_error("--host " + m.cmd.host + " --port " + std::to_string(m.cmd.port) +
                      ": cannot bind (in use, or not an address of this machine)");
  return m.cmd.port;
}

bool Server::lead() const { return impl_->lead; }

void Server::run() {
  Impl& m = *impl_;
  // A stop() before listening began (a signal, a failed bind) must not leave it listening.
  if (!m.on_mesh) {
    if (!m.stopping) m.http.listen_after_bind();
    return;
  }
  if (!m.lead) {
    m.follow();
    return;
  }
  std::thread http([&m] {
    if (!m.stopping) m.http.listen_after_bind();
  });
  m.jobs->run_worker();  // until stop()
  broadcast_text(m.world(), "stop", 0);
  http.join();
}

std::string Server::stop(bool cancel_running) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.stop_mu);
  if (m.stopped) return m.stop_fate;
  m.stopped = true;
  m.stopping = true;
  // The jobs first: the requests waiting on them then answer, and the event streams end.
  m.stop_fate = m.jobs->shutdown(cancel_running);
  m.http.stop();
  return m.stop_fate;
}

const RequestDefaults& Server::defaults() const { return impl_->defaults; }

std::string http_library() { return "cpp-httplib " CPPHTTPLIB_VERSION; }

int run_serve(const ServeCommand& cmd) {
  auto fail = [](const std::string& msg) {
    std::fprintf(stderr, "meshdit serve: %s\n", msg.c_str());
    return 1;
  };
  // A handler rather than blocked signals: MPI's own threads (under mpirun) do not block them, and a signal
  // delivered to one of those would end the process. The handler only records it; a watcher thread acts.
  struct sigaction sa {};
  sa.sa_handler = [](int sig) { g_signal = sig; };
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // the interrupted calls (MPI, sockets) carry on
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::fprintf(stderr, "meshdit serve: loading %s\n", cmd.model.empty() ? "the built-in model" : cmd.model.c_str());
  auto server = Server::create(cmd);
  if (!server.ok()) return fail(server.error().message);
  Server* s = server->get();
  if (!s->lead()) {
    // Every job comes from rank 0, and so does the end; signals are rank 0's to act on.
    s->run();
    return 0;
  }
  auto port = s->bind();
  // On a mesh the other ranks wait for jobs: a lead that cannot listen tells them to stop.
  if (!port.ok()) {
    s->stop(true);
    s->run();
    return fail(port.error().message);
  }
  std::fprintf(stderr, "meshdit serve: listening on http://%s:%d/%s\n", cmd.host.c_str(), *port,
               cmd.api_key.empty() ? "" : " (API key required)");
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const int sig = g_signal;
      if (sig != SIGINT && sig != SIGTERM) continue;
      std::fprintf(stderr, "meshdit serve: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
      const std::string fate = s->stop(true);
      std::fprintf(stderr, "meshdit serve: running job: %s\n",
                   fate == "none"        ? "none"
                   : fate == "cancelled" ? "cancelled between two steps"
                                         : "finished");
      return;
    }
  });
  s->run();
  done = true;
  watcher.join();
  server->reset();
  std::fprintf(stderr, "meshdit serve: stopped\n");
  return 0;
}

}  // namespace meshdit
