// io/video.h without FFmpeg (CMake MESHDIT_WITH_FFMPEG=OFF, or FFmpeg's libraries not found): no MP4 is
// written or read, and each call says so, naming the file and what to install. PNG frames
// (write_png_frames, io/video_frames.cpp) need no FFmpeg and work as in every build.
#include "io/video.h"

namespace meshdit {
namespace {

Error without_ffmpeg(const std::string& path, const char* what) {
  return make_error(path + ": this meshdit was built without FFmpeg (libavcodec-dev libavformat-dev libswscale-dev " +
                    "libavutil-dev): " + what +
                    " is unavailable; write the frames as PNG instead (--frames-dir DIR), " +
                    "or rebuild with FFmpeg installed (tools/setup-debian.sh)");
}

}  // namespace

std::string video_library() { return ""; }

Status mp4_output_available(const std::string& path) { return without_ffmpeg(path, "MP4 output"); }

Status write_mp4(const std::string& path, const Tensor&, double, const Mp4Options&) {
  return without_ffmpeg(path, "MP4 output");
}

Result<VideoFrames> read_video(const std::string& path) { return without_ffmpeg(path, "reading video"); }

}  // namespace meshdit
