#pragma once

namespace meshdit {
// Registers every component the check command knows (idempotent).
void register_builtin_runners();

// One registration function per family of components, each in its own runners_<family>.cpp.
void register_transformer_runners();
void register_tokenizer_runners();
void register_scheduler_runners();
void register_vae_runners();
void register_encoder_runners();
}  // namespace meshdit
