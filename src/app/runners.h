#pragma once

namespace meshdit {
// Registers every component the check command knows (idempotent).
void register_builtin_runners();
}  // namespace meshdit
