#pragma once
#include <string>

namespace meshdit {
// Registers every component the check command knows (idempotent).
void register_builtin_runners();

// One registration function per family of components, each in its own runners_<family>.cpp.
void register_transformer_runners();
void register_tokenizer_runners();
void register_scheduler_runners();
void register_vae_runners();
void register_encoder_runners();
void register_pipeline_runners();

// The model `meshdit generate` uses without --model: models/tiny-shapes beside the executable's checkout.
std::string builtin_model_dir();
}  // namespace meshdit
