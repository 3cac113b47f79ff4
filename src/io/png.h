// PNG output with the generation parameters as tEXt chunks (readable by image viewers and `identify`).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

using PngText = std::vector<std::pair<std::string, std::string>>;

// rgb: height x width x 3 bytes, row-major.
Status write_png(const std::string& path, const uint8_t* rgb, int width, int height, const PngText& text = {});

// The same PNG as write_png, as bytes (an HTTP response, a base64 field).
Result<std::vector<uint8_t>> encode_png(const uint8_t* rgb, int width, int height, const PngText& text = {});

// image [H, W, 3] float in [0, 1] -> bytes as diffusers' numpy_to_pil does: round(x * 255).
std::vector<uint8_t> to_rgb8(const Tensor& image_hwc);

// Reads back an 8-bit RGB PNG (tests, and users comparing images): pixels and text chunks.
Result<std::vector<uint8_t>> read_png(const std::string& path, int* width, int* height, PngText* text = nullptr);

}  // namespace meshdit
