#include "app/check.h"
#include "app/runners.h"

namespace meshdit {
void register_tokenizer_runners() {}
}  // namespace meshdit
