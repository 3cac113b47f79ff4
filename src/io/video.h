// Video output and input through FFmpeg's libraries (libavformat / libavcodec / libswscale), as linked from
// Debian's packages: no ffmpeg binary is run. Frames are what a video pipeline returns, [F, H, W, 3] float in
// [0, 1], quantised as the PNG path does (to_rgb8: round(x * 255), clamped, as diffusers' numpy_to_pil), so
// an .mp4 and --frames-dir PNGs start from the same bytes. diffusers' export_to_video truncates instead
// ((frame * 255).astype(uint8)), a bias of half a level that rounding does not have; the two differ by at
// most 1 of 255 before the codec, far below its own error.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace meshdit {

struct Mp4Options {
  // libx264's constant rate factor: 17 is visually lossless for generated video (smooth gradients band at
  // the default 23) at a few MB per 81 frames of 720p.
  int crf = 17;
  std::string preset = "medium";
};

// Built without FFmpeg (CMake MESHDIT_WITH_FFMPEG=OFF, or its libraries not found) io/video_none.cpp replaces
// io/video.cpp: write_mp4 and read_video return an error saying so, write_png_frames works as ever.

// The FFmpeg this build writes MP4 with ("FFmpeg 5.1.6"), or "" when it was built without FFmpeg.
std::string video_library();

// ok when this build can write `path` as MP4; otherwise the error write_mp4 would return (built without
// FFmpeg), for refusing an .mp4 output before the work that makes the frames.
Status mp4_output_available(const std::string& path);

// Why `frames` cannot be a video (the error names `path`): not [F, H, W, 3] floating point, no frames, or
// frames of no video size. write_mp4 and write_png_frames check it first.
Status check_video_frames(const std::string& path, const Tensor& frames);

// Writes frames [F, H, W, 3] (any float dtype, any device) as H.264 in yuv420p at `fps` into an MP4 whose
// index is at the front (plays while downloading). yuv420p subsamples chroma 2x2, so odd widths or heights
// are an error rather than a silent pad or crop: every video pipeline makes sizes divisible by 16, and an
// odd one means the caller has the wrong tensor (write PNG frames for such a tensor). On any failure the
// partial file is removed and the error names the file and libav's message.
Status write_mp4(const std::string& path, const Tensor& frames, double fps, const Mp4Options& options = {});

// Writes frames [F, H, W, 3] as DIR/frame-0000.png, frame-0001.png, ... (the folder is created). Returns
// the paths written.
Result<std::vector<std::string>> write_png_frames(const std::string& dir, const Tensor& frames);

// A decoded video: every frame as 8-bit RGB, height x width x 3 bytes row-major.
struct VideoFrames {
  int width = 0, height = 0;
  double fps = 0;     // the stream's average frame rate
  std::string codec;  // the decoder's name, e.g. "h264"
  std::vector<std::vector<uint8_t>> rgb;
  int64_t count() const { return int64_t(rgb.size()); }
};

// Decodes the first video stream of any container libavformat reads (tests, and users comparing a
// generated video with another).
Result<VideoFrames> read_video(const std::string& path);

}  // namespace meshdit
