#include "app/video_output.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <mutex>

#include "io/video.h"

namespace fs = std::filesystem;

namespace meshdit {
namespace {

struct VideoTable {
  std::mutex mu;
  std::map<std::string, VideoPipelineInfo> classes{
      {"WanPipeline", {"WanPipeline", 16, 4}},
      {"MochiPipeline", {"MochiPipeline", 30, 6}},
  };
};

VideoTable& table() {
  static VideoTable t;
  return t;
}

std::string lower_extension(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  return ext;
}

}  // namespace

const VideoPipelineInfo* video_pipeline_info(const std::string& class_name) {
  VideoTable& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  auto it = t.classes.find(class_name);
  // std::map nodes are stable: the pointer outlives the lock (entries are replaced in place, never erased).
  return it == t.classes.end() ? nullptr : &it->second;
}

void register_video_pipeline_info(VideoPipelineInfo info) {
  VideoTable& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  t.classes[info.class_name] = std::move(info);
}

bool is_mp4_path(const std::string& path) { return lower_extension(path) == ".mp4"; }

std::string numbered_path(const std::string& path, size_t i, size_t n) {
  if (n == 1) return path;
  fs::path p(path);
  if (!p.has_filename()) p = p.parent_path();  // "frames/" numbers as "frames"
  return (p.parent_path() / (p.stem().string() + "-" + std::to_string(i) + p.extension().string())).string();
}

Status check_generate_output(const std::string& class_name, const std::string& output, const std::string& frames_dir,
                             int64_t num_frames) {
  const VideoPipelineInfo* video = video_pipeline_info(class_name);
  if (!video) {
    if (is_mp4_path(output)) return make_error(class_name + " makes images: write a .png");
    if (!frames_dir.empty()) return make_error(class_name + " makes images: --frames-dir is for video pipelines");
    if (num_frames != 0) return make_error(class_name + " makes images: --frames is for video pipelines");
    return ok_status();
  }
  if (!output.empty() && !is_mp4_path(output))
    return make_error(class_name + " makes video: write a .mp4 (-o " + output + "), or PNG frames with --frames-dir");
  if (num_frames != 0 && (num_frames < 1 || (num_frames - 1) % video->frame_step != 0)) {
    const int64_t below = num_frames < 1 ? 1 : 1 + (num_frames - 1) / video->frame_step * video->frame_step;
    const int64_t above = below + video->frame_step;
    return make_error("--frames " + std::to_string(num_frames) + ": " + class_name + " makes 1 + " +
                      std::to_string(video->frame_step) + "k frames (its VAE's temporal compression), e.g. " +
                      (num_frames > 1 ? std::to_string(below) + " or " : "") + std::to_string(above));
  }
  return ok_status();
}

Result<std::vector<std::string>> write_video_output(const std::string& path, const Tensor& frames, double fps,
                                                    const std::string& frames_dir) {
  if (!frames.defined() || (frames.dim() != 4 && frames.dim() != 5))
    return make_error("video output: frames must be [F, H, W, 3] or [B, F, H, W, 3], not " +
                      (frames.defined() ? shape_str(frames.shape()) : std::string("undefined")));
  if (!path.empty() && !is_mp4_path(path)) return make_error(path + ": a video is written as .mp4");
  const Tensor batch = frames.dim() == 4 ? frames.unsqueeze(0) : frames;
  const size_t n = size_t(batch.size(0));
  std::vector<std::string> written;
  for (size_t b = 0; b < n; ++b) {
    const Tensor video = batch.select(0, int64_t(b));
    if (!path.empty()) {
      const std::string out = numbered_path(path, b, n);
      MD_RETURN_IF_ERROR(write_mp4(out, video, fps));
      written.push_back(out);
    }
    if (!frames_dir.empty()) {
      const std::string dir = numbered_path(frames_dir, b, n);
      auto pngs = write_png_frames(dir, video);
      if (!pngs.ok()) return pngs.error();
      written.push_back(dir);
    }
  }
  return written;
}

}  // namespace meshdit
