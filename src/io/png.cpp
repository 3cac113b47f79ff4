#include "io/png.h"

#include <png.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

namespace meshdit {
namespace {

struct FileCloser {
  void operator()(FILE* f) const {
    if (f) std::fclose(f);
  }
};

}  // namespace

std::vector<uint8_t> to_rgb8(const Tensor& image_hwc) {
  std::vector<float> v = image_hwc.to_vector();
  std::vector<uint8_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const float x = std::fmin(std::fmax(v[i], 0.0f), 1.0f) * 255.0f;
    out[i] = uint8_t(std::nearbyint(x));  // numpy's round: half to even
  }
  return out;
}

namespace {

// One encoder for files and memory: libpng writes through `write` (a FILE or a byte vector). `what` names the
// destination in errors.
Status encode(const std::string& what, png_rw_ptr write, png_voidp io, const uint8_t* rgb, int width, int height,
              const PngText& text) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_write_struct(&png, &info);
    return make_error(what + ": libpng initialisation failed");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return make_error(what + ": writing the PNG failed (disk full?)");
  }
  // A flush function of our own: libpng's default one takes the destination for a FILE.
  png_set_write_fn(png, io, write, [](png_structp) {});
  png_set_IHDR(png, info, png_uint_32(width), png_uint_32(height), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  std::vector<png_text> chunks(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    std::memset(&chunks[i], 0, sizeof(png_text));
    chunks[i].compression = PNG_TEXT_COMPRESSION_NONE;
    chunks[i].key = const_cast<char*>(text[i].first.c_str());
    chunks[i].text = const_cast<char*>(text[i].second.c_str());
    chunks[i].text_length = text[i].second.size();
  }
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), int(chunks.size()));
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) png_write_row(png, const_cast<uint8_t*>(rgb + size_t(y) * size_t(width) * 3));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return ok_status();
}

void write_to_file(png_structp png, png_bytep data, png_size_t n) {
  if (std::fwrite(data, 1, n, static_cast<FILE*>(png_get_io_ptr(png))) != n) png_error(png, "short write");
}

void write_to_vector(png_structp png, png_bytep data, png_size_t n) {
  auto* out = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + n);
}

}  // namespace

Status write_png(const std::string& path, const uint8_t* rgb, int width, int height, const PngText& text) {
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "wb"));
  if (!f) return make_error(path + ": cannot open for writing: " + std::strerror(errno));
  MD_RETURN_IF_ERROR(encode(path, write_to_file, f.get(), rgb, width, height, text));
  if (std::fflush(f.get()) != 0) return make_error(path + ": write failed: " + std::strerror(errno));
  return ok_status();
}

Result<std::vector<uint8_t>> encode_png(const uint8_t* rgb, int width, int height, const PngText& text) {
  std::vector<uint8_t> out;
  MD_RETURN_IF_ERROR(encode("PNG in memory", write_to_vector, &out, rgb, width, height, text));
  return out;
}

Result<std::vector<uint8_t>> read_png(const std::string& path, int* width, int* height, PngText* text) {
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (!f) return make_error(path + ": cannot open: " + std::strerror(errno));
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_read_struct(&png, &info, nullptr);
    return make_error(path + ": libpng initialisation failed");
  }
  std::vector<uint8_t> pixels;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return make_error(path + ": not a readable PNG");
  }
  png_init_io(png, f.get());
  png_read_info(png, info);
  png_set_strip_16(png);
  png_set_palette_to_rgb(png);
  png_set_strip_alpha(png);
  png_set_gray_to_rgb(png);
  png_read_update_info(png, info);
  *width = int(png_get_image_width(png, info));
  *height = int(png_get_image_height(png, info));
  pixels.resize(size_t(*width) * size_t(*height) * 3);
  for (int y = 0; y < *height; ++y) png_read_row(png, pixels.data() + size_t(y) * size_t(*width) * 3, nullptr);
  if (text) {
    png_textp t = nullptr;
    int n = 0;
    png_get_text(png, info, &t, &n);
    for (int i = 0; i < n; ++i) text->emplace_back(t[i].key, t[i].text ? t[i].text : "");
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return pixels;
}

}  // namespace meshdit
