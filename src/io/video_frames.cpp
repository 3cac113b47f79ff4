// What io/video.h offers without FFmpeg, in every build: the frames check and PNG frames. The MP4 writer and
// reader are io/video.cpp (FFmpeg) or io/video_none.cpp (built without it).
#include <algorithm>
#include <filesystem>

#include "io/png.h"
#include "io/video.h"

namespace fs = std::filesystem;

namespace meshdit {

Status check_video_frames(const std::string& path, const Tensor& frames) {
  if (!frames.defined()) return make_error(path + ": no frames (undefined tensor)");
  if (frames.dim() != 4 || frames.size(3) != 3)
    return make_error(path + ": frames must be [F, H, W, 3] (RGB), not " + shape_str(frames.shape()));
  const DType t = frames.dtype();
  if (t != DType::F32 && t != DType::F16 && t != DType::BF16 && t != DType::F64)
    return make_error(path + ": frames must be floating point in [0, 1], not " + dtype_name(t));
  if (frames.size(0) == 0) return make_error(path + ": no frames (shape " + shape_str(frames.shape()) + ")");
  if (frames.size(1) <= 0 || frames.size(2) <= 0 || frames.size(1) > 16384 || frames.size(2) > 16384)
    return make_error(path + ": frame size " + std::to_string(frames.size(2)) + "x" + std::to_string(frames.size(1)) +
                      " is not a video size");
  return ok_status();
}

Result<std::vector<std::string>> write_png_frames(const std::string& dir, const Tensor& frames) {
  MD_RETURN_IF_ERROR(check_video_frames(dir, frames));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(dir + ": cannot create the frames folder: " + ec.message());
  const int64_t n = frames.size(0);
  const int digits = std::max<int>(4, int(std::to_string(n - 1).size()));
  std::vector<std::string> written;
  for (int64_t f = 0; f < n; ++f) {
    std::string index = std::to_string(f);
    index.insert(0, size_t(digits) - std::min(index.size(), size_t(digits)), '0');
    const std::string out = (fs::path(dir) / ("frame-" + index + ".png")).string();
    const std::vector<uint8_t> rgb = to_rgb8(frames.select(0, f));
    MD_RETURN_IF_ERROR(write_png(out, rgb.data(), int(frames.size(2)), int(frames.size(1))));
    written.push_back(out);
  }
  return written;
}
}  // namespace meshdit
