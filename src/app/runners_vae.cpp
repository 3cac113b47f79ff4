#include "app/check.h"
#include "app/runners.h"

namespace meshdit {
void register_vae_runners() {}
}  // namespace meshdit
