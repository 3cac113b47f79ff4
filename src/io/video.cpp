#include "io/video.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>

#include "io/png.h"

namespace fs = std::filesystem;

namespace meshdit {
namespace {

// Every libav object is owned by one of these, so each early return frees what was made before it.
struct OutputDeleter {
  void operator()(AVFormatContext* f) const {
    if (!f) return;
    if (f->pb && !(f->oformat->flags & AVFMT_NOFILE)) avio_closep(&f->pb);
    avformat_free_context(f);
  }
};
struct InputDeleter {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
struct CodecDeleter {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameDeleter {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketDeleter {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsDeleter {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};
struct DictDeleter {
  void operator()(AVDictionary* d) const { av_dict_free(&d); }
};
using OutputPtr = std::unique_ptr<AVFormatContext, OutputDeleter>;
using InputPtr = std::unique_ptr<AVFormatContext, InputDeleter>;
using CodecPtr = std::unique_ptr<AVCodecContext, CodecDeleter>;
using FramePtr = std::unique_ptr<AVFrame, FrameDeleter>;
using PacketPtr = std::unique_ptr<AVPacket, PacketDeleter>;
using SwsPtr = std::unique_ptr<SwsContext, SwsDeleter>;

std::string av_message(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  if (av_strerror(code, buf, sizeof(buf)) < 0) std::snprintf(buf, sizeof(buf), "libav error %d", code);
  return buf;
}

Error av_error(const std::string& path, const std::string& what, int code) {
  return make_error(path + ": " + what + ": " + av_message(code));
}

// libav logs at INFO by default: libx264 prints its statistics on every close. Its errors still show (the
// returned Error carries the code's message; the log line often says which parameter it refused).
void quiet_libav_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (av_log_get_level() > AV_LOG_ERROR) av_log_set_level(AV_LOG_ERROR);
  });
}

// Sends `frame` (null: flush) and writes every packet the encoder has ready.
Status encode(const std::string& path, AVCodecContext* c, AVFormatContext* fmt, AVStream* st, AVFrame* frame,
              AVPacket* pkt) {
  if (int r = avcodec_send_frame(c, frame); r < 0) return av_error(path, "encoding a frame", r);
  for (;;) {
    const int r = avcodec_receive_packet(c, pkt);
    if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return ok_status();
    if (r < 0) return av_error(path, "encoding a frame", r);
    av_packet_rescale_ts(pkt, c->time_base, st->time_base);
    pkt->stream_index = st->index;
    // Takes the packet's reference, success or not.
    if (int w = av_interleaved_write_frame(fmt, pkt); w < 0) return av_error(path, "writing a packet", w);
  }
}

// Software H.264 encoders, best first. FFmpeg has no native H.264 encoder; the hardware ones (vaapi, nvenc)
// need a device context and are not tried.
const AVCodec* find_h264_encoder() {
  for (const char* name : {"libx264", "libopenh264"})
    if (const AVCodec* c = avcodec_find_encoder_by_name(name)) return c;
  return nullptr;
}

Status write_mp4_impl(const std::string& path, const Tensor& frames, double fps, const Mp4Options& options,
                      bool* created) {
  const int n = int(frames.size(0)), h = int(frames.size(1)), w = int(frames.size(2));
  const AVCodec* codec = find_h264_encoder();
  if (!codec)
    return make_error(path + ": this libavcodec (" + std::string(av_version_info()) +
                      ") has no software H.264 encoder (libx264 or libopenh264); Debian's libavcodec59 has "
                      "libx264. Write PNG frames (--frames-dir) instead");

  AVFormatContext* raw_fmt = nullptr;
  if (int r = avformat_alloc_output_context2(&raw_fmt, nullptr, "mp4", path.c_str()); r < 0 || !raw_fmt)
    return av_error(path, "creating the MP4 muxer", r < 0 ? r : AVERROR(ENOMEM));
  OutputPtr fmt(raw_fmt);

  CodecPtr c(avcodec_alloc_context3(codec));
  if (!c) return make_error(path + ": cannot allocate the " + codec->name + " encoder");
  const AVRational rate = av_d2q(fps, 1 << 20);
  c->width = w;
  c->height = h;
  c->pix_fmt = AV_PIX_FMT_YUV420P;
  c->time_base = av_inv_q(rate);
  c->framerate = rate;
  // Generated frames are sRGB, whose primaries are BT.709's; the matrix below is what swscale converts with.
  c->color_range = AVCOL_RANGE_MPEG;
  c->colorspace = AVCOL_SPC_BT709;
  c->color_primaries = AVCOL_PRI_BT709;
  c->color_trc = AVCOL_TRC_BT709;
  if (fmt->oformat->flags & AVFMT_GLOBALHEADER) c->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  AVDictionary* raw_opts = nullptr;
  if (std::string(codec->name) == "libx264") {
    av_dict_set(&raw_opts, "crf", std::to_string(options.crf).c_str(), 0);
    av_dict_set(&raw_opts, "preset", options.preset.c_str(), 0);
  } else {
    c->bit_rate = int64_t(w) * h * 3 * int64_t(std::ceil(fps));  // ~3 bits per pixel: no visible loss
  }
  std::unique_ptr<AVDictionary, DictDeleter> opts_owner;
  {
    const int r = avcodec_open2(c.get(), codec, &raw_opts);
    opts_owner.reset(raw_opts);  // what the encoder did not take
    if (r < 0) return av_error(path, std::string("opening the ") + codec->name + " encoder", r);
  }

  AVStream* st = avformat_new_stream(fmt.get(), nullptr);
  if (!st) return make_error(path + ": cannot add a video stream");
  st->time_base = c->time_base;
  st->avg_frame_rate = rate;
  if (int r = avcodec_parameters_from_context(st->codecpar, c.get()); r < 0)
    return av_error(path, "setting the stream parameters", r);

  if (int r = avio_open(&fmt->pb, path.c_str(), AVIO_FLAG_WRITE); r < 0)
    return av_error(path, "cannot open for writing", r);
  *created = true;
  AVDictionary* raw_mux = nullptr;
  av_dict_set(&raw_mux, "movflags", "+faststart", 0);
  {
    const int r = avformat_write_header(fmt.get(), &raw_mux);
    av_dict_free(&raw_mux);
    if (r < 0) return av_error(path, "writing the MP4 header", r);
  }

  SwsPtr sws(sws_getContext(w, h, AV_PIX_FMT_RGB24, w, h, AV_PIX_FMT_YUV420P,
                            SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, nullptr, nullptr, nullptr));
  if (!sws) return make_error(path + ": cannot set up the RGB to YUV conversion");
  sws_setColorspaceDetails(sws.get(), sws_getCoefficients(SWS_CS_ITU709), 1, sws_getCoefficients(SWS_CS_ITU709), 0, 0,
                           1 << 16, 1 << 16);
  FramePtr yuv(av_frame_alloc());
  PacketPtr pkt(av_packet_alloc());
  if (!yuv || !pkt) return make_error(path + ": out of memory for a frame");
  yuv->format = AV_PIX_FMT_YUV420P;
  yuv->width = w;
  yuv->height = h;
  if (int r = av_frame_get_buffer(yuv.get(), 0); r < 0) return av_error(path, "allocating a frame", r);

  for (int f = 0; f < n; ++f) {
    const std::vector<uint8_t> rgb = to_rgb8(frames.select(0, f));
    // The encoder may still hold the previous frame's buffer.
    if (int r = av_frame_make_writable(yuv.get()); r < 0) return av_error(path, "allocating a frame", r);
    const uint8_t* src[1] = {rgb.data()};
    const int src_stride[1] = {3 * w};
    sws_scale(sws.get(), src, src_stride, 0, h, yuv->data, yuv->linesize);
    yuv->pts = f;
    MD_RETURN_IF_ERROR(encode(path, c.get(), fmt.get(), st, yuv.get(), pkt.get()));
  }
  MD_RETURN_IF_ERROR(encode(path, c.get(), fmt.get(), st, nullptr, pkt.get()));
  if (int r = av_write_trailer(fmt.get()); r < 0) return av_error(path, "writing the MP4 index", r);
  // Closed here rather than by the deleter so that a failed final flush (disk full) is reported.
  if (int r = avio_closep(&fmt->pb); r < 0) return av_error(path, "closing the file", r);
  return ok_status();
}

}  // namespace

std::string video_library() { return std::string("FFmpeg ") + av_version_info(); }

Status mp4_output_available(const std::string&) { return ok_status(); }

Status write_mp4(const std::string& path, const Tensor& frames, double fps, const Mp4Options& options) {
  quiet_libav_once();
  MD_RETURN_IF_ERROR(check_video_frames(path, frames));
  if (frames.size(1) % 2 != 0 || frames.size(2) % 2 != 0)
    return make_error(path + ": H.264 in yuv420p needs an even width and height, not " +
                      std::to_string(frames.size(2)) + "x" + std::to_string(frames.size(1)) +
                      " (write PNG frames for odd sizes)");
  if (!(fps > 0) || !std::isfinite(fps) || fps > 1000)
    return make_error(path + ": frame rate " + std::to_string(fps) + " is not in (0, 1000] fps");
  if (options.crf < 0 || options.crf > 51)
    return make_error(path + ": crf " + std::to_string(options.crf) + " is not in 0..51");
  bool created = false;
  Status st = write_mp4_impl(path, frames, fps, options, &created);
  if (!st.ok() && created) {
    std::error_code ec;
    fs::remove(path, ec);  // a truncated MP4 without its index plays as nothing: leave no such file
  }
  return st;
}

namespace {

// Converts decoded frames to RGB24 with the matrix and range they are tagged with.
Status append_rgb(const std::string& path, const AVFrame* fr, SwsPtr* sws, VideoFrames* out) {
  if (out->rgb.empty()) {
    out->width = fr->width;
    out->height = fr->height;
  } else if (fr->width != out->width || fr->height != out->height) {
    return make_error(path + ": frame " + std::to_string(out->rgb.size()) + " changes size to " +
                      std::to_string(fr->width) + "x" + std::to_string(fr->height));
  }
  // Reuses the context while the frames keep their format; frees it (and returns null) when a new one fails.
  sws->reset(sws_getCachedContext(sws->release(), fr->width, fr->height, AVPixelFormat(fr->format), fr->width,
                                  fr->height, AV_PIX_FMT_RGB24, SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT,
                                  nullptr, nullptr, nullptr));
  if (!*sws) {
    const char* name = av_get_pix_fmt_name(AVPixelFormat(fr->format));
    return make_error(path + ": cannot convert pixel format " + (name ? name : "?") + " to RGB");
  }
  const int cs = fr->colorspace == AVCOL_SPC_UNSPECIFIED ? SWS_CS_DEFAULT : int(fr->colorspace);
  sws_setColorspaceDetails(sws->get(), sws_getCoefficients(cs), fr->color_range == AVCOL_RANGE_JPEG ? 1 : 0,
                           sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16, 1 << 16);
  std::vector<uint8_t> rgb(size_t(fr->width) * size_t(fr->height) * 3);
  uint8_t* dst[1] = {rgb.data()};
  const int dst_stride[1] = {3 * fr->width};
  sws_scale(sws->get(), fr->data, fr->linesize, 0, fr->height, dst, dst_stride);
  out->rgb.push_back(std::move(rgb));
  return ok_status();
}

Status decode(const std::string& path, AVCodecContext* c, const AVPacket* pkt, AVFrame* fr, SwsPtr* sws,
              VideoFrames* out) {
  if (int r = avcodec_send_packet(c, pkt); r < 0) return av_error(path, "decoding", r);
  for (;;) {
    const int r = avcodec_receive_frame(c, fr);
    if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return ok_status();
    if (r < 0) return av_error(path, "decoding", r);
    Status st = append_rgb(path, fr, sws, out);
    av_frame_unref(fr);
    MD_RETURN_IF_ERROR(st);
  }
}

}  // namespace

Result<VideoFrames> read_video(const std::string& path) {
  quiet_libav_once();
  AVFormatContext* raw_in = nullptr;
  // On failure avformat_open_input frees what it allocated.
  if (int r = avformat_open_input(&raw_in, path.c_str(), nullptr, nullptr); r < 0)
    return av_error(path, "cannot open", r);
  InputPtr in(raw_in);
  if (int r = avformat_find_stream_info(in.get(), nullptr); r < 0) return av_error(path, "reading the streams", r);
  const AVCodec* dec = nullptr;
  const int idx = av_find_best_stream(in.get(), AVMEDIA_TYPE_VIDEO, -1, -1, &dec, 0);
  if (idx < 0) return av_error(path, "no decodable video stream", idx);
  AVStream* st = in->streams[idx];
  CodecPtr c(avcodec_alloc_context3(dec));
  if (!c) return make_error(path + ": cannot allocate the " + dec->name + " decoder");
  if (int r = avcodec_parameters_to_context(c.get(), st->codecpar); r < 0)
    return av_error(path, "setting the decoder parameters", r);
  if (int r = avcodec_open2(c.get(), dec, nullptr); r < 0)
    return av_error(path, std::string("opening the ") + dec->name + " decoder", r);

  VideoFrames out;
  out.codec = dec->name;
  const AVRational rate = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : st->r_frame_rate;
  out.fps = rate.den > 0 ? av_q2d(rate) : 0.0;
  PacketPtr pkt(av_packet_alloc());
  FramePtr fr(av_frame_alloc());
  if (!pkt || !fr) return make_error(path + ": out of memory for a frame");
  SwsPtr sws;
  for (;;) {
    const int r = av_read_frame(in.get(), pkt.get());
    if (r == AVERROR_EOF) break;
    if (r < 0) return av_error(path, "reading a packet", r);
    Status s = pkt->stream_index == idx ? decode(path, c.get(), pkt.get(), fr.get(), &sws, &out) : ok_status();
    av_packet_unref(pkt.get());
    MD_RETURN_IF_ERROR(s);
  }
  MD_RETURN_IF_ERROR(decode(path, c.get(), nullptr, fr.get(), &sws, &out));
  if (out.rgb.empty()) return make_error(path + ": the video stream has no frames");
  return out;
}

}  // namespace meshdit
