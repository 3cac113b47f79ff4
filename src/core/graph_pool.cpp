#include "core/graph_pool.h"

#include <algorithm>

namespace meshdit {

void GraphPool::note_alloc(void* p, size_t cls) {
  rehearsed_[p] = cls;
  const int64_t live = ++live_[cls];
  int64_t& peak = peak_[cls];
  peak = std::max(peak, live);
}

void GraphPool::note_free(void* p) {
  auto it = rehearsed_.find(p);
  if (it == rehearsed_.end()) return;  // allocated before the rehearsal: not the forward's
  --live_[it->second];
  rehearsed_.erase(it);
}

size_t GraphPool::plan_bytes() const {
  size_t b = 0;
  for (const auto& [cls, n] : peak_) b += cls * size_t(n);
  return b;
}

void GraphPool::add_reserved(void* p, size_t cls) {
  cls_of_[p] = cls;
  free_[cls].push_back(p);
  reserved_bytes_ += cls;
}

void* GraphPool::take(size_t cls) {
  auto it = free_.find(cls);
  if (it == free_.end() || it->second.empty()) {
    ++misses_;
    return nullptr;
  }
  void* p = it->second.back();
  it->second.pop_back();
  taken_.insert(p);
  return p;
}

bool GraphPool::give_back(void* p) {
  if (!taken_.erase(p)) return false;
  free_[cls_of_.at(p)].push_back(p);
  return true;
}

void GraphPool::hold(void* p, size_t cls) {
  cls_of_[p] = cls;
  held_.insert(p);
}

std::vector<std::pair<void*, size_t>> GraphPool::close() {
  std::vector<std::pair<void*, size_t>> out;
  for (auto& [cls, list] : free_)
    for (void* p : list) out.emplace_back(p, cls);
  for (void* p : held_) out.emplace_back(p, cls_of_[p]);
  free_.clear();
  held_.clear();
  cls_of_.clear();
  taken_.clear();
  reserved_bytes_ = 0;
  return out;
}

}  // namespace meshdit
