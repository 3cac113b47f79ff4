#pragma once

namespace meshdit {
// Registers every component the check command knows (idempotent).
void register_builtin_runners();

// One registration function per family of components, each in its own runners_<family>.cpp.
void register_transformer_runners();
void register_tokenizer_runners();
}  // namespace meshdit
