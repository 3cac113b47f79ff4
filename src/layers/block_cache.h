// Step caching: DBCache (cache-dit's Dual Block Cache; First-Block-Cache is its F1B0 case) with an optional
// TaylorSeer forecast (Liu et al. 2025).
//
// Late in sampling, a DiT's blocks change the residual stream little from one step to the next. DBCache
// always runs the first Fn blocks and measures how much their residual on the image tokens (output minus
// input of those blocks) moved since the last fully computed step:
//
//     diff = sum |r_now - r_prev| / sum |r_prev|        (r_prev: the last step that ran every block)
//
// Below a threshold the middle blocks are skipped and the residual they added at the last computed step
// (their output minus their input, every stream) is added in their place; TaylorSeer instead forecasts that
// residual from the last computed ones by a finite-difference Taylor step. The last Bn blocks always run.
// Warmup steps, a cap on cached steps and on consecutive cached steps bound the drift.
//
// The model side is two calls in the block loop of a forward, with no caching logic in the model's file:
//
//     MD_TRY(CachedBlocks blocks, CachedBlocks::begin(current_step_cache(), {D, S}, par_, x));
//     for (i ...) {
//       if (blocks.run(i)) block_i(x, c);   // skipped while cached
//       blocks.after(i, {x, c}, x);          // the streams after block i, then the image rows
//     }
//
// The streams handed to after() must have the same shapes at every block (Flux's single-stream blocks hand
// their concatenated tokens as the image and text views). A block stack is one list of blocks; a model with
// several (Flux: double- then single-stream) lists them in order and takes Fn/Bn per stack or over the chain.
//
// The loop side (pipelines/denoise) keeps one StepCache per conditioning branch that needs its own (two
// calls per step: the prompt and the negative prompt each have their own cache; a batched [uncond; cond]
// call shares one) and makes it current around each model call (ScopedStepCache), so no pipeline and no
// forward signature carries it. On a mesh every rank must take the same decision: the two sums are
// all-reduced over the model's SP and TP groups and over the loop's decision group (the cfg group when a
// batched CFG is split across it), so the ratio is that of the whole batch as one device computes it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "parallel/mesh.h"

namespace meshdit {

class Communicator;

struct FnBn {
  int64_t fn = 8, bn = 0;
};

struct CacheOptions {
  enum class Mode : uint8_t { None, DbCache };
  Mode mode = Mode::None;
  // One entry: Fn/Bn over all blocks in order; one per block stack: the model's stacks in order (Flux: its
  // double-stream, then its single-stream blocks), the decision made after the first stack's Fn.
  std::vector<FnBn> stacks{FnBn{}};
  float threshold = 0.08f;      // skip when diff < threshold; 0 never skips
  int64_t warmup = 8;           // model calls (per cache) that always compute
  int64_t max_cached = -1;      // cached calls at most (< 0: no limit)
  int64_t max_consecutive = -1;  // consecutive cached calls at most (< 0: no limit)
  int taylor_order = 0;         // 0: reuse the cached residual; 1 or 2: TaylorSeer forecast of that order
  bool enabled() const { return mode != Mode::None; }
};

// `none`, `fbcache`, `dbcache` or `dbcache+taylorseer`, optionally followed by ':' and comma-separated
// fields: `F8B0` (or `F4B0/F1B1`, one per stack), threshold=, warmup=, max_cached=, max_consecutive=, order=
// (TaylorSeer's, 1 or 2). fbcache is dbcache with F1B0. An unknown or malformed field is an error naming it.
Result<CacheOptions> parse_cache_options(const std::string& spec);
// The options as parse_cache_options reads them back ("dbcache:F8B0,threshold=0.08,warmup=8").
std::string cache_options_str(const CacheOptions& o);

// What a generation's caching did, one entry per model call.
struct CacheCall {
  int64_t step = 0;        // the denoising step
  std::string cache;       // which cache: "shared", "cond" or "uncond"
  bool cached = false;     // the middle blocks were skipped
  double diff = -1;        // the measured change; < 0: not measured (warmup, a limit, or no history yet)
};
struct CacheReport {
  std::string options;  // cache_options_str
  std::vector<CacheCall> calls;
  int64_t blocks_total = 0, blocks_run = 0;  // over every call
  int64_t cached_calls() const;
};

// One conditioning branch's cache across the steps of a denoising loop.
class StepCache {
 public:
  // `decision_group` (may be null): ranks beyond the model's SP/TP groups whose sums join the decision.
  StepCache(CacheOptions options, std::string name, Communicator* decision_group, CacheReport* report);
  ~StepCache();
  StepCache(const StepCache&) = delete;
  StepCache& operator=(const StepCache&) = delete;
  // The denoising step of the next model call.
  void set_step(int64_t step) { step_ = step; }
  // Forgets every cached residual and count (Wan2.2's switch to the other expert).
  void reset();

 private:
  friend class CachedBlocks;
  struct State;
  CacheOptions opt_;
  std::string name_;
  Communicator* decision_group_;
  CacheReport* report_;
  int64_t step_ = 0;
  std::unique_ptr<State> s_;
};

// The cache the current model call on this thread uses (null: none), set by ScopedStepCache.
StepCache* current_step_cache();
class ScopedStepCache {
 public:
  explicit ScopedStepCache(StepCache* cache);
  ~ScopedStepCache();
  ScopedStepCache(const ScopedStepCache&) = delete;
  ScopedStepCache& operator=(const ScopedStepCache&) = delete;

 private:
  StepCache* prev_;
};

// One forward's view of a StepCache (see the top of this file). Without a cache it runs every block and
// after() does nothing.
class CachedBlocks {
 public:
  // `stacks`: the block count of each stack in order; `image`: the image rows of the stream before block 0
  // (this rank's shard). An Fn/Bn that does not fit the stacks is an error naming both.
  static Result<CachedBlocks> begin(StepCache* cache, const std::vector<int64_t>& stacks, const ParallelContext* par,
                                    const Tensor& image);
  // Whether block `i` (counted over all stacks) computes in this call.
  bool run(int64_t i) const;
  // After block i, computed or skipped: `streams` are the residual streams (modified in place when the
  // skipped blocks' residual is added), `image` their image rows.
  void after(int64_t i, const std::vector<Tensor>& streams, const Tensor& image);

 private:
  StepCache* c_ = nullptr;
  const ParallelContext* par_ = nullptr;
  Tensor input_image_;
  std::vector<std::vector<Tensor>> start_;  // per segment: the streams where its skipped blocks begin
  int64_t decide_after_ = 0;
  bool cached_ = false;
};

}  // namespace meshdit
