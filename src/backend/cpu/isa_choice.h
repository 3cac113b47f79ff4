// Which ISA a family of hand-written kernels runs: the best one the CPU supports, chosen on first use, unless a test
// or benchmark forces another one the CPU also runs.
#pragma once
#include <atomic>
#include <string>

#include "core/error.h"

namespace meshdit::cpu {

template <class Isa>
class IsaChoice {
 public:
  // best: the widest ISA this CPU runs; runs: whether it runs one; name: for messages; what: the kernels, for messages.
  IsaChoice(Isa (*best)(), bool (*runs)(Isa), std::string (*name)(Isa), const char* what)
      : best_(best), runs_(runs), name_(name), what_(what) {}

  Isa get() {
    int v = chosen_.load(std::memory_order_relaxed);
    if (v < 0) {
      v = int(best_());
      chosen_.store(v, std::memory_order_relaxed);
    }
    return Isa(v);
  }
  Status set(Isa isa) {
    if (!runs_(isa)) return make_error(std::string(what_) + ": this CPU does not run " + name_(isa));
    chosen_.store(int(isa), std::memory_order_relaxed);
    return ok_status();
  }

 private:
  Isa (*best_)();
  bool (*runs_)(Isa);
  std::string (*name_)(Isa);
  const char* what_;
  std::atomic<int> chosen_{-1};  // -1: not chosen yet
};

}  // namespace meshdit::cpu
