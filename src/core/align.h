#pragma once
#include <cstdint>

namespace meshdit {

// x rounded up to a multiple of a (a > 0): buffer sizes to a granule, file offsets to an alignment.
constexpr uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace meshdit
