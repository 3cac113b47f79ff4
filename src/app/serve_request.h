// The JSON bodies `meshdit serve` accepts, parsed and checked before any work: OpenAI's
// POST /v1/images/generations (also the body of POST /v1/jobs) and AUTOMATIC1111's POST /sdapi/v1/txt2img
// subset. Every refusal is an error whose message starts with the field it is about ("size: ...",
// "body: ..." for the document as a whole), which the server returns as a 4xx naming that field.
#pragma once
#include <cstdint>
#include <string>

#include "core/error.h"
#include "pipelines/pipeline.h"

namespace meshdit {

// What one request may ask for.
struct ServeLimits {
  int64_t max_side = 2048;  // width and height, pixels
  int64_t max_steps = 200;
  int64_t max_frames = 257;         // video pipelines
  int64_t max_images = 8;           // OpenAI n, A1111 batch_size
  size_t max_prompt_bytes = 16384;  // prompt and negative prompt, each
  double memory_bytes = 0;          // what a generation may need; 0: the machine's available memory
};

struct ImageRequest {
  // One prompt; num_images_per_prompt, size, steps and seed always set (the model's defaults where the
  // request named none), guidance and the rest only when asked for.
  GenerateOptions options;
  bool random_seed = false;  // the seed was drawn here (no seed, or -1)
};

// The options unset in a request take: the pipeline's defaults as the server loaded it.
struct RequestDefaults {
  int64_t width = 0, height = 0, steps = 0;
};

Result<ImageRequest> parse_openai_request(const std::string& body, const RequestDefaults& defaults,
                                          const ServeLimits& limits);
Result<ImageRequest> parse_a1111_request(const std::string& body, const RequestDefaults& defaults,
                                         const ServeLimits& limits);

// Memory a generation of `images` images of width x height needs at its peak, in bytes: dominated at large
// sizes by the VAE decoder's full-resolution activations (128 channels of f32, three alive at once, per
// image), plus the latents and the transformer's activations. A deliberately rough upper estimate, used to
// refuse a request before any work.
double estimate_generation_bytes(int64_t width, int64_t height, int64_t images);

// "size: must be WxH" -> "size"; the part of a parse error before its first ": ".
std::string error_field(const Error& e);
// The rest of it.
std::string error_detail(const Error& e);

}  // namespace meshdit
