#include "layers/block_cache.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "backend/model_ops.h"
#include "backend/ops.h"
#include "core/trace.h"
#include "parallel/collectives.h"
#include "parallel/comm.h"

namespace meshdit {
namespace {

thread_local StepCache* g_current = nullptr;

// a - b as a new contiguous float32 tensor (views allowed).
Tensor sub(const Tensor& a, const Tensor& b) { return ops::add(a, ops::affine(b, -1.0f, 0.0f)); }

// x += y where x may be a strided view into a larger tensor (Flux's single-stream tokens).
void add_into(const Tensor& x, const Tensor& y) {
  Tensor v = x;
  if (v.is_contiguous()) {
    ops::add_(v, y);
  } else {
    const Tensor sum = ops::add(v, y);
    copy_into(sum, v);
  }
}

bool parse_int(const std::string& s, int64_t& out) {
  if (s.empty()) return false;
  size_t used = 0;
  try {
    out = std::stoll(s, &used);
  } catch (...) {
    return false;
  }
  return used == s.size();
}

// "F8B0" -> {8, 0}.
bool parse_fnbn(const std::string& s, FnBn& out) {
  const size_t b = s.find('B');
  if (s.size() < 4 || s[0] != 'F' || b == std::string::npos) return false;
  return parse_int(s.substr(1, b - 1), out.fn) && parse_int(s.substr(b + 1), out.bn) && out.fn >= 0 && out.bn >= 0;
}

}  // namespace

int64_t CacheReport::cached_calls() const {
  int64_t n = 0;
  for (const auto& c : calls) n += c.cached;
  return n;
}

Result<CacheOptions> parse_cache_options(const std::string& spec) {
  CacheOptions o;
  const size_t colon = spec.find(':');
  const std::string mode = spec.substr(0, colon);
  const std::string fields = colon == std::string::npos ? "" : spec.substr(colon + 1);
  const std::string what = "--cache " + spec + ": ";
  if (mode == "none") {
    if (!fields.empty()) return make_error(what + "'none' takes no fields");
    return o;
  }
  if (mode == "fbcache") {
    o.mode = CacheOptions::Mode::DbCache;
    o.stacks = {FnBn{1, 0}};
  } else if (mode == "dbcache") {
    o.mode = CacheOptions::Mode::DbCache;
  } else if (mode == "dbcache+taylorseer") {
    o.mode = CacheOptions::Mode::DbCache;
    o.taylor_order = 1;
  } else {
    return make_error(what + "unknown mode '" + mode + "' (none, fbcache, dbcache, dbcache+taylorseer)");
  }
  std::stringstream ss(fields);
  std::string field;
  while (std::getline(ss, field, ',')) {
    if (field.empty()) continue;
    const size_t eq = field.find('=');
    if (eq == std::string::npos) {
      // F8B0 or F4B0/F1B1: one Fn/Bn per block stack.
      std::vector<FnBn> stacks;
      std::stringstream parts(field);
      std::string part;
      while (std::getline(parts, part, '/')) {
        FnBn fb;
        if (!parse_fnbn(part, fb)) return make_error(what + "'" + part + "' is not FnBm (e.g. F8B0)");
        stacks.push_back(fb);
      }
      if (stacks.empty()) return make_error(what + "empty block field");
      if (stacks[0].fn < 1) return make_error(what + "the first stack needs Fn >= 1 (the blocks that decide)");
      o.stacks = stacks;
      continue;
    }
    const std::string key = field.substr(0, eq), value = field.substr(eq + 1);
    int64_t n = 0;
    if (key == "threshold") {
      char* end = nullptr;
      const float t = std::strtof(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(t >= 0.0f) || !std::isfinite(t))
        return make_error(what + "threshold '" + value + "' must be a number >= 0");
      o.threshold = t;
    } else if (key == "warmup" || key == "max_cached" || key == "max_consecutive") {
      if (!parse_int(value, n) || (key == "warmup" && n < 0))
        return make_error(what + key + " '" + value + "' must be an integer" + (key == "warmup" ? " >= 0" : ""));
      (key == "warmup" ? o.warmup : key == "max_cached" ? o.max_cached : o.max_consecutive) = n;
    } else if (key == "order") {
      if (o.taylor_order == 0) return make_error(what + "order= is TaylorSeer's: use dbcache+taylorseer");
      if (!parse_int(value, n) || n < 1 || n > 2) return make_error(what + "order '" + value + "' must be 1 or 2");
      o.taylor_order = int(n);
    } else {
      return make_error(what + "unknown field '" + key +
                        "' (FnBm, threshold=, warmup=, max_cached=, max_consecutive=, order=)");
    }
  }
  return o;
}

std::string cache_options_str(const CacheOptions& o) {
  if (!o.enabled()) return "none";
  std::string s = o.taylor_order > 0 ? "dbcache+taylorseer:" : "dbcache:";
  for (size_t i = 0; i < o.stacks.size(); ++i)
    s += (i ? "/F" : "F") + std::to_string(o.stacks[i].fn) + "B" + std::to_string(o.stacks[i].bn);
  char buf[160];
  std::snprintf(buf, sizeof buf, ",threshold=%g,warmup=%lld", double(o.threshold), (long long)o.warmup);
  s += buf;
  if (o.max_cached >= 0) s += ",max_cached=" + std::to_string(o.max_cached);
  if (o.max_consecutive >= 0) s += ",max_consecutive=" + std::to_string(o.max_consecutive);
  if (o.taylor_order > 0) s += ",order=" + std::to_string(o.taylor_order);
  return s;
}

// ---------------------------------------------------------------------------------------------------------

struct Segment {
  int64_t begin = 0, end = 0;  // the skippable blocks [begin, end), counted over all stacks
};

struct StepCache::State {
  std::vector<int64_t> stacks;  // as the model declared them
  std::vector<Segment> segments;
  Tensor prev_fn;  // the first Fn blocks' image residual at the last computed call
  // Per segment, per Taylor order, per stream: [0] the residual of the last computed call, [k] its k-th
  // finite difference per step. Empty until a call has computed every block.
  std::vector<std::vector<std::vector<Tensor>>> d;
  int64_t last_computed_step = -1;
  int64_t calls = 0, cached_total = 0, consecutive = 0;
};

StepCache::StepCache(CacheOptions options, std::string name, Communicator* decision_group, CacheReport* report)
    : opt_(std::move(options)),
      name_(std::move(name)),
      decision_group_(decision_group),
      report_(report),
      s_(std::make_unique<State>()) {}

StepCache::~StepCache() = default;

void StepCache::reset() { s_ = std::make_unique<State>(); }

StepCache* current_step_cache() { return g_current; }

ScopedStepCache::ScopedStepCache(StepCache* cache) : prev_(g_current) { g_current = cache; }
ScopedStepCache::~ScopedStepCache() { g_current = prev_; }

Result<CachedBlocks> CachedBlocks::begin(StepCache* cache, const std::vector<int64_t>& stacks,
                                         const ParallelContext* par, const Tensor& image) {
  CachedBlocks b;
  if (!cache) return b;
  StepCache::State& s = *cache->s_;
  const CacheOptions& o = cache->opt_;
  if (s.stacks != stacks) {
    // First call (or another model after a reset): where the skippable blocks lie.
    std::string sizes;
    int64_t total = 0;
    for (int64_t n : stacks) {
      sizes += (sizes.empty() ? "" : " + ") + std::to_string(n);
      total += n;
    }
    const std::string what = "--cache " + cache_options_str(o) + ": ";
    std::vector<Segment> segments;
    if (o.stacks.size() == 1) {
      if (o.stacks[0].fn + o.stacks[0].bn >= total)
        return make_error(what + "F" + std::to_string(o.stacks[0].fn) + "B" + std::to_string(o.stacks[0].bn) +
                          " leaves no block to cache in a model of " + sizes + " blocks");
      segments.push_back({o.stacks[0].fn, total - o.stacks[0].bn});
    } else {
      if (o.stacks.size() != stacks.size())
        return make_error(what + std::to_string(o.stacks.size()) + " Fn/Bn pairs for a model with " +
                          std::to_string(stacks.size()) + " block stack(s) (" + sizes + " blocks)");
      int64_t offset = 0;
      for (size_t k = 0; k < stacks.size(); ++k) {
        if (o.stacks[k].fn + o.stacks[k].bn > stacks[k])
          return make_error(what + "stack " + std::to_string(k) + " has " + std::to_string(stacks[k]) + " blocks");
        if (o.stacks[k].fn + o.stacks[k].bn < stacks[k])
          segments.push_back({offset + o.stacks[k].fn, offset + stacks[k] - o.stacks[k].bn});
        offset += stacks[k];
      }
      if (segments.empty()) return make_error(what + "leaves no block to cache in a model of " + sizes + " blocks");
    }
    cache->reset();
    cache->s_->stacks = stacks;
    cache->s_->segments = segments;
  }
  b.c_ = cache;
  b.par_ = par;
  b.input_image_ = image.clone();
  b.decide_after_ = o.stacks[0].fn - 1;
  b.start_.resize(cache->s_->segments.size());
  return b;
}

bool CachedBlocks::run(int64_t i) const {
  if (!c_ || !cached_) return true;
  for (const Segment& g : c_->s_->segments)
    if (i >= g.begin && i < g.end) return false;
  return true;
}

void CachedBlocks::after(int64_t i, const std::vector<Tensor>& streams, const Tensor& image) {
  if (!c_) return;
  StepCache::State& s = *c_->s_;
  const CacheOptions& o = c_->opt_;
  const int64_t step = c_->step_;

  if (i == decide_after_) {
    const Tensor fn = sub(image, input_image_);
    input_image_ = Tensor();
    const bool may = s.calls >= o.warmup && s.prev_fn.defined() && s.last_computed_step >= 0 &&
                     (o.max_cached < 0 || s.cached_total < o.max_cached) &&
                     (o.max_consecutive < 0 || s.consecutive < o.max_consecutive);
    double diff = -1;
    if (may) {
      // Every rank must decide alike: the sums of the whole batch, over every rank holding part of it (TP
      // ranks hold the same rows and scale both sums alike, so the ratio is unchanged).
      Tensor sums = ops::l1_change_sums(fn, s.prev_fn);
      if (par_ && par_->sp) all_reduce_(sums, *par_->sp);
      if (par_ && par_->tp) all_reduce_(sums, *par_->tp);
      if (c_->decision_group_) all_reduce_(sums, *c_->decision_group_);
      const std::vector<float> v = ops::host_values(sums);
      diff = v[1] > 0 ? double(v[0]) / double(v[1]) : 0.0;
      cached_ = diff < double(o.threshold);
    }
    if (!cached_) s.prev_fn = fn;
    ++s.calls;
    s.cached_total += cached_;
    s.consecutive = cached_ ? s.consecutive + 1 : 0;
    if (c_->report_) c_->report_->calls.push_back({step, c_->name_, cached_, diff});
  }

  for (size_t k = 0; k < s.segments.size(); ++k) {
    const Segment& g = s.segments[k];
    if (i == g.begin - 1 && !cached_) {
      start_[k].clear();
      for (const Tensor& t : streams) start_[k].push_back(t.defined() ? t.clone() : Tensor());
    }
    if (i != g.end - 1) continue;
    if (cached_) {
      Span span("cache", "cached blocks " + std::to_string(g.begin) + ".." + std::to_string(g.end - 1));
      // TaylorSeer: r(step) = sum_k d_k (step - last)^k / k!; without it, the last residual as is.
      const double elapsed = double(step - s.last_computed_step);
      const auto& d = s.d[k];
      for (size_t j = 0; j < streams.size() && j < d[0].size(); ++j) {
        if (!streams[j].defined() || !d[0][j].defined()) continue;
        Tensor r = d[0][j];
        double coeff = 1;
        for (size_t ord = 1; ord < d.size(); ++ord) {
          coeff *= elapsed / double(ord);
          if (d[ord][j].defined()) r = ops::add(r, ops::affine(d[ord][j], float(coeff), 0.0f));
        }
        add_into(streams[j], r);
      }
    } else {
      // The residual these blocks added, and (TaylorSeer) its finite differences against the last one.
      const size_t orders = size_t(o.taylor_order) + 1;
      std::vector<std::vector<Tensor>> nd(orders, std::vector<Tensor>(streams.size()));
      const bool have_old = k < s.d.size() && !s.d[k].empty() && s.last_computed_step >= 0;
      const double window = have_old ? double(std::max<int64_t>(1, step - s.last_computed_step)) : 1.0;
      for (size_t j = 0; j < streams.size(); ++j) {
        if (!streams[j].defined() || j >= start_[k].size() || !start_[k][j].defined()) continue;
        nd[0][j] = sub(streams[j], start_[k][j]);
        for (size_t ord = 0; ord + 1 < orders && have_old; ++ord) {
          const Tensor& old = s.d[k][ord][j];
          if (!old.defined() || !nd[ord][j].defined()) break;
          nd[ord + 1][j] = ops::affine(sub(nd[ord][j], old), float(1.0 / window), 0.0f);
        }
      }
      start_[k].clear();
      if (s.d.size() != s.segments.size()) s.d.resize(s.segments.size());
      s.d[k] = std::move(nd);
      if (k + 1 == s.segments.size()) s.last_computed_step = step;
    }
  }

  if (c_->report_) {
    ++c_->report_->blocks_total;
    c_->report_->blocks_run += run(i);
  }
}

}  // namespace meshdit
