#include "core/buffer_cache.h"

#include <bit>

namespace meshdit {

size_t BufferCache::size_class(size_t bytes) {
  constexpr size_t kMinStep = size_t(64) << 10;
  if (bytes == 0) return kMinStep;
  // Steps of an eighth of the power of two below: at most 12.5 % more than asked.
  const int top = std::bit_width(bytes) - 1;
  size_t step = top >= 3 ? size_t(1) << (top - 3) : 1;
  if (step < kMinStep) step = kMinStep;
  return (bytes + step - 1) / step * step;
}

void* BufferCache::allocate(size_t bytes) {
  const size_t size = size_class(bytes);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_size_.find(size);
    if (it != by_size_.end()) {
      void* p = it->second->p;
      lru_.erase(it->second);
      by_size_.erase(it);
      cached_ -= size;
      ++hits_;
      return p;
    }
    ++misses_;
  }
  void* p = backing_.acquire(size);
  if (!p) {
    // Memory held for reuse is memory the caller cannot have: give it all back and try once more.
    release_all();
    p = backing_.acquire(size);
  }
  return p;
}

void BufferCache::deallocate(void* p, size_t bytes) {
  if (!p) return;
  const size_t size = size_class(bytes);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (size <= limit_) {
      evict_until(limit_ - size);
      lru_.push_back({p, size});
      by_size_.emplace(size, std::prev(lru_.end()));
      cached_ += size;
      return;
    }
  }
  backing_.release(p, size);
}

void BufferCache::evict_until(size_t limit) {
  while (cached_ > limit && !lru_.empty()) {
    const Entry e = lru_.front();
    // The oldest entry of its size is the first in by_size_ order whose iterator points at it.
    auto range = by_size_.equal_range(e.bytes);
    for (auto it = range.first; it != range.second; ++it)
      if (it->second == lru_.begin()) {
        by_size_.erase(it);
        break;
      }
    lru_.pop_front();
    cached_ -= e.bytes;
    ++evictions_;
    backing_.release(e.p, e.bytes);
  }
}

void BufferCache::release_all() {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t evictions = evictions_;
  evict_until(0);
  evictions_ = evictions;  // a release on request is not an eviction
}

void BufferCache::set_limit(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  limit_ = bytes;
  evict_until(limit_);
}

BufferCache::Stats BufferCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return Stats{cached_, limit_, hits_, misses_, evictions_};
}

}  // namespace meshdit
