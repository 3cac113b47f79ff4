#include "app/check.h"
#include "app/runners.h"

namespace meshdit {
void register_encoder_runners() {}
}  // namespace meshdit
