// Intermediate tensors a forward pass reports by name ("transformer_blocks.0.1", ...), so a mismatch
// against a reference dump can be localised to the first layer that differs. Null means nobody listens.
#pragma once
#include <functional>
#include <string>

#include "core/tensor.h"

namespace meshdit {

using Hooks = std::function<void(const std::string& name, const Tensor& value)>;

inline void report(const Hooks* hooks, const std::string& name, const Tensor& value) {
  if (hooks && *hooks) (*hooks)(name, value);
}

}  // namespace meshdit
