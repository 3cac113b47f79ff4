#include "core/trace.h"

#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

namespace meshdit {
namespace {

std::mutex& events_mutex() {
  static std::mutex m;
  return m;
}

std::vector<TraceEvent>& all_events() {
  static std::vector<TraceEvent> v;
  return v;
}

int thread_index() {
  static std::atomic<int> next{0};
  thread_local int id = next.fetch_add(1);
  return id;
}

}  // namespace

Trace& Trace::instance() {
  static Trace t;
  return t;
}

void Trace::enable(bool on) { enabled_.store(on, std::memory_order_relaxed); }

int64_t Trace::now_us() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - origin_).count();
}

void Trace::record(TraceEvent e) {
  std::lock_guard<std::mutex> lk(events_mutex());
  all_events().push_back(std::move(e));
}

std::vector<TraceEvent> Trace::events() const {
  std::lock_guard<std::mutex> lk(events_mutex());
  return all_events();
}

void Trace::clear() {
  std::lock_guard<std::mutex> lk(events_mutex());
  all_events().clear();
}

Status Trace::write_chrome(const std::string& path, int rank) const {
  nlohmann::json evs = nlohmann::json::array();
  for (const auto& e : events()) {
    nlohmann::json j = {{"name", e.name},  {"cat", e.category}, {"ph", "X"},   {"ts", e.start_us},
                        {"dur", e.dur_us}, {"pid", rank},       {"tid", e.tid}};
    if (e.bytes >= 0) j["args"] = {{"bytes", e.bytes}};
    evs.push_back(std::move(j));
  }
  nlohmann::json meta = {
      {"name", "process_name"}, {"ph", "M"}, {"pid", rank}, {"args", {{"name", "rank " + std::to_string(rank)}}}};
  evs.push_back(meta);
  std::ofstream f(path);
  if (!f) return make_error(path + ": cannot open for writing");
  f << nlohmann::json{{"traceEvents", evs}, {"displayTimeUnit", "ms"}}.dump();
  if (!f) return make_error(path + ": write failed");
  return ok_status();
}

Span::Span(const char* category, const std::string& name)
    : category_(category), on_(Trace::instance().enabled()), t0_(std::chrono::steady_clock::now()) {
  if (on_) {
    name_ = name;
    start_us_ = Trace::instance().now_us();
  }
}

Span::Span(const char* category, const char* name)
    : category_(category), on_(Trace::instance().enabled()), t0_(std::chrono::steady_clock::now()) {
  if (on_) {
    name_ = name;
    start_us_ = Trace::instance().now_us();
  }
}

Span::~Span() {
  if (!on_) return;
  const int64_t end = Trace::instance().now_us();
  Trace::instance().record(TraceEvent{std::move(name_), category_, start_us_, end - start_us_, thread_index(), bytes_});
}

double Span::elapsed_s() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

}  // namespace meshdit
