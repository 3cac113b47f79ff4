#include "app/check.h"
#include "app/runners.h"

namespace meshdit {
void register_scheduler_runners() {}
}  // namespace meshdit
