#include "core/trace.h"

#include <climits>
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

std::map<std::string, std::string>& all_metadata() {
  static std::map<std::string, std::string> m;
  return m;
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

void Trace::set_metadata(const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lk(events_mutex());
  all_metadata()[key] = value;
}

std::map<std::string, std::string> Trace::metadata() const {
  std::lock_guard<std::mutex> lk(events_mutex());
  return all_metadata();
}

std::string Trace::chrome_events(int rank) const {
  const int64_t origin = std::chrono::duration_cast<std::chrono::microseconds>(origin_.time_since_epoch()).count();
  nlohmann::json evs = nlohmann::json::array();
  for (const auto& e : events()) {
    nlohmann::json j = {{"name", e.name},  {"cat", e.category}, {"ph", "X"},   {"ts", origin + e.start_us},
                        {"dur", e.dur_us}, {"pid", rank},       {"tid", e.tid}};
    if (e.bytes >= 0) j["args"] = {{"bytes", e.bytes}};
    evs.push_back(std::move(j));
  }
  evs.push_back(
      {{"name", "process_name"}, {"ph", "M"}, {"pid", rank}, {"args", {{"name", "rank " + std::to_string(rank)}}}});
  evs.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", rank}, {"args", {{"sort_index", rank}}}});
  const auto meta = metadata();
  if (!meta.empty()) {
    std::string labels;
    for (const auto& [k, v] : meta) labels += (labels.empty() ? "" : "; ") + k + ": " + v;
    evs.push_back({{"name", "process_labels"}, {"ph", "M"}, {"pid", rank}, {"args", {{"labels", labels}}}});
  }
  return evs.dump();
}

Status Trace::write_chrome_merged(const std::string& path, const std::vector<std::string>& per_rank_events) {
  nlohmann::json all = nlohmann::json::array();
  int64_t t0 = INT64_MAX;
  for (const auto& text : per_rank_events) {
    auto evs = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!evs.is_array()) return make_error(path + ": a rank sent malformed trace events");
    for (auto& e : evs) {
      if (e.contains("ts")) t0 = std::min(t0, e["ts"].get<int64_t>());
      all.push_back(std::move(e));
    }
  }
  // Start the timeline at the first event of any rank.
  for (auto& e : all)
    if (e.contains("ts")) e["ts"] = e["ts"].get<int64_t>() - t0;
  std::ofstream f(path);
  if (!f) return make_error(path + ": cannot open for writing");
  f << nlohmann::json{{"traceEvents", all}, {"displayTimeUnit", "ms"}}.dump();
  if (!f) return make_error(path + ": write failed");
  return ok_status();
}

Status Trace::write_chrome(const std::string& path, int rank) const {
  return write_chrome_merged(path, {chrome_events(rank)});
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
