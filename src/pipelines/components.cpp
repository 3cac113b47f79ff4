#include "pipelines/components.h"

#include <vector>

namespace meshdit {

Tensor repeat_rows(const Tensor& t, int64_t n) {
  if (n == 1) return t;
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < t.size(0); ++i)
    for (int64_t r = 0; r < n; ++r) parts.push_back(t.slice(0, i, i + 1));
  return concat(parts, 0);
}

Status validate_image_options(const GenerateOptions& o, const std::string& name, int64_t m, int64_t max_sequence) {
  if (o.prompt.empty()) return make_error("no prompt given");
  if (o.height <= 0 || o.width <= 0 || o.height % m || o.width % m)
    return make_error("width and height must be positive multiples of " + std::to_string(m) + " (got " +
                      std::to_string(o.width) + "x" + std::to_string(o.height) + ")");
  if (o.steps < 1) return make_error("steps must be at least 1");
  if (o.num_images_per_prompt < 1) return make_error("batch must be at least 1");
  if (o.max_sequence_length < 1 || o.max_sequence_length > max_sequence)
    return make_error("max_sequence_length must be in [1, " + std::to_string(max_sequence) + "]");
  if (!o.negative_prompt.empty() && o.negative_prompt.size() != o.prompt.size())
    return make_error("give one negative prompt per prompt");
  // Options of other pipelines that this one's __call__ does not take: refused rather than ignored.
  if (o.num_frames) return make_error(name + " makes images: num_frames is not an option");
  if (o.guidance_scale_2) return make_error(name + " has one transformer: guidance_scale_2 is not an option");
  if (o.guidance_rescale != 0.0f) return make_error(name + " has no guidance_rescale");
  return ok_status();
}

}  // namespace meshdit
