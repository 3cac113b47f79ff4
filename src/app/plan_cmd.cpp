#include "app/plan_cmd.h"

#include <cstdio>

namespace meshdit {

int run_plan(const PlanCommand& cmd) {
  auto plan = make_plan(cmd.request);
  if (!plan.ok()) {
    std::fprintf(stderr, "meshdit plan: %s\n", plan.error().message.c_str());
    return 1;
  }
  const std::string text = cmd.json ? plan->json() : plan->table(cmd.per_rank);
  std::fputs(text.c_str(), stdout);
  return 0;
}

}  // namespace meshdit
