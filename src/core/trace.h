// Timing spans: stages, denoising steps, blocks and kernel calls. Disabled, a span costs one relaxed
// atomic load; enabled, two clock reads and a push into a per-thread buffer. The collected spans become a
// Chrome trace (open it in Perfetto or chrome://tracing) and per-stage totals for --timings.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"

namespace meshdit {

struct TraceEvent {
  std::string name;
  const char* category;
  int64_t start_us, dur_us;
  int tid;
  int64_t bytes = -1;  // for communication spans
};

class Trace {
 public:
  static Trace& instance();
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }
  void enable(bool on);
  int64_t now_us() const;
  void record(TraceEvent e);
  std::vector<TraceEvent> events() const;
  void clear();
  // Facts about the run (the GEMM kernel, the CPU) that go into every rank's track of the Chrome trace
  // as process labels, so a trace says what it measured.
  void set_metadata(const std::string& key, const std::string& value);
  std::map<std::string, std::string> metadata() const;
  // Chrome trace JSON ("traceEvents", complete events); `rank` becomes the process id, one track per rank.
  Status write_chrome(const std::string& path, int rank = 0) const;
  // This process's events as a JSON array with timestamps on the machine's monotonic clock, so the
  // arrays of several ranks (processes) can be merged into one timeline by write_chrome_merged.
  std::string chrome_events(int rank) const;
  static Status write_chrome_merged(const std::string& path, const std::vector<std::string>& per_rank_events);

 private:
  std::atomic<bool> enabled_{false};
  std::chrono::steady_clock::time_point origin_ = std::chrono::steady_clock::now();
};

// RAII span. `name` is copied only when tracing is on.
class Span {
 public:
  Span(const char* category, const std::string& name);
  Span(const char* category, const char* name);
  ~Span();
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;
  // Bytes this span moved (communication spans): shown as an argument in the trace.
  void set_bytes(int64_t b) { bytes_ = b; }
  // Seconds since the span began (valid whether or not tracing is on).
  double elapsed_s() const;

 private:
  const char* category_;
  std::string name_;
  bool on_;
  int64_t start_us_ = 0;
  int64_t bytes_ = -1;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace meshdit
