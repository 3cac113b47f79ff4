#include "core/buffer_cache.h"

#include <algorithm>
#include <iterator>

#include "core/error.h"

namespace meshdit {

BufferCache::BufferCache(Backing backing, size_t limit_bytes, size_t region_bytes)
    : backing_(backing),
      limit_(limit_bytes),
      region_bytes_(std::max(kCommitStep, size_t(align_up(region_bytes, kCommitStep)))) {}

BufferCache::~BufferCache() {
  for (const Region& g : regions_)
    if (g.base) backing_.unreserve(g.base, g.bytes);
  for (const auto& [p, bytes] : direct_) backing_.unreserve(p, bytes);
}

void BufferCache::insert_free(RangeMap::iterator it) { by_size_.emplace(it->second.bytes, it->first); }
void BufferCache::erase_free(RangeMap::iterator it) { by_size_.erase({it->second.bytes, it->first}); }

BufferCache::RangeMap::iterator BufferCache::merge_free(RangeMap::iterator it) {
  auto adjacent = [](RangeMap::iterator a, RangeMap::iterator b) {  // a directly below b, both free, one region
    return a->second.free && b->second.free && a->second.region == b->second.region &&
           a->first + a->second.bytes == b->first;
  };
  auto absorb = [&](RangeMap::iterator into, RangeMap::iterator from) {  // neither in by_size_
    into->second.bytes += from->second.bytes;
    into->second.resident += from->second.resident;
    into->second.freed_at = std::max(into->second.freed_at, from->second.freed_at);
    ranges_.erase(from);
  };
  if (auto next = std::next(it); next != ranges_.end() && adjacent(it, next)) {
    erase_free(next);
    absorb(it, next);
  }
  if (it != ranges_.begin()) {
    if (auto prev = std::prev(it); adjacent(prev, it)) {
      erase_free(prev);
      absorb(prev, it);
      it = prev;
    }
  }
  return it;
}

bool BufferCache::add_region(size_t bytes) {
  bytes = align_up(bytes, kCommitStep);
  char* base = static_cast<char*>(backing_.reserve(bytes));
  if (!base) return false;
  size_t slot = 0;
  while (slot < regions_.size() && regions_[slot].base) ++slot;
  if (slot == regions_.size()) regions_.emplace_back();
  regions_[slot] = Region{base, bytes, 0};
  auto it = ranges_.emplace(base, Range{bytes, slot, true, 0, 0}).first;
  insert_free(it);
  return true;
}

void* BufferCache::allocate(size_t bytes) {
  const size_t size = size_class(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  if (limit_ == 0) {
    void* p = backing_.reserve(size);
    if (p && !backing_.commit(p, size)) {
      backing_.unreserve(p, size);
      p = nullptr;
    }
    if (p) {
      direct_[p] = size;
      ++misses_;
    }
    return p;
  }
  // Best fit: the smallest free range that holds the request, the lowest-addressed of equal ones.
  auto f = by_size_.lower_bound({size, nullptr});
  if (f == by_size_.end()) {
    if (!add_region(std::max(size, region_bytes_))) return nullptr;
    f = by_size_.lower_bound({size, nullptr});
  }
  auto it = ranges_.find(f->second);
  const Range r = it->second;
  Region& g = regions_[r.region];
  char* p = it->first;
  const size_t end = size_t(p - g.base) + size;
  if (end > g.committed) {
    const size_t to = std::min(g.bytes, size_t(align_up(end, kCommitStep)));
    if (!backing_.commit(g.base + g.committed, to - g.committed)) return nullptr;
    g.committed = to;
  }
  erase_free(it);
  const size_t taken = std::min(r.resident, size);
  if (r.bytes > size) {
    auto rest = ranges_.emplace(p + size, Range{r.bytes - size, r.region, true, r.resident - taken, r.freed_at}).first;
    insert_free(rest);
  }
  it->second = Range{size, r.region, false, 0, 0};
  cached_ -= taken;
  ++(taken == size ? hits_ : misses_);
  return p;
}

void BufferCache::deallocate(void* p, size_t bytes) {
  if (!p) return;
  const size_t size = size_class(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  if (auto d = direct_.find(p); d != direct_.end()) {
    MD_CHECK(d->second == size, "BufferCache: a buffer given back with another size than it was made with");
    backing_.unreserve(p, size);
    direct_.erase(d);
    return;
  }
  auto it = ranges_.find(static_cast<char*>(p));
  MD_CHECK(it != ranges_.end() && !it->second.free && it->second.bytes == size,
           "BufferCache: a buffer given back that is not in use, or with another size than it was made with");
  it->second.free = true;
  it->second.resident = size;
  it->second.freed_at = ++clock_;
  cached_ += size;
  it = merge_free(it);
  insert_free(it);
  evict_until(limit_);
}

void BufferCache::discard(RangeMap::iterator it) {
  Range& r = it->second;
  const Region& g = regions_[r.region];
  const size_t begin = size_t(it->first - g.base), end = std::min(begin + r.bytes, g.committed);
  if (end > begin) backing_.discard(it->first, end - begin);
  cached_ -= r.resident;
  r.resident = 0;
}

void BufferCache::evict_until(size_t limit) {
  while (cached_ > limit) {
    RangeMap::iterator oldest = ranges_.end();
    for (const auto& [bytes, p] : by_size_) {
      auto it = ranges_.find(p);
      if (it->second.resident > 0 && (oldest == ranges_.end() || it->second.freed_at < oldest->second.freed_at))
        oldest = it;
    }
    if (oldest == ranges_.end()) break;
    discard(oldest);
    ++evictions_;
  }
}

void BufferCache::release_all() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [bytes, p] : by_size_) {
    auto it = ranges_.find(p);
    if (it->second.resident > 0) discard(it);
  }
  // A region that is one free range again gives its address space back; the first stays for the next stage.
  for (size_t i = 1; i < regions_.size(); ++i) {
    Region& g = regions_[i];
    if (!g.base) continue;
    auto it = ranges_.find(g.base);
    if (it == ranges_.end() || !it->second.free || it->second.bytes != g.bytes) continue;
    erase_free(it);
    ranges_.erase(it);
    backing_.unreserve(g.base, g.bytes);
    g = Region{};
  }
}

void BufferCache::set_limit(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  limit_ = bytes;
  evict_until(limit_);
}

BufferCache::Stats BufferCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t committed = 0;
  for (const Region& g : regions_) committed += g.committed;
  return Stats{cached_, committed, limit_, hits_, misses_, evictions_};
}

}  // namespace meshdit
