// Which path the CUDA backend's conv2d takes (conv.cu), for `meshdit info` and the tests. Plain C++ (no CUDA or
// cuDNN headers): compiled only with the CUDA backend (MESHDIT_HAVE_CUDA_BACKEND).
#pragma once
#include <cstddef>
#include <string>

namespace meshdit::cuda {

// "cuDNN 9.19.0 (/usr/local/cuda/lib/libcudnn.so.9)" when conv2d runs through cuDNN, else "im2col + cuBLASLt
// (why not cuDNN)". Loads cuDNN and makes its handle: needs a device.
const char* conv_library();

// cuDNN's library alone, without a device: dlopen, every entry point conv.cu uses, the version and the cnn
// sub-library's own check. "cuDNN 9.x.y (path)" when all pass, else why not (the same words conv_library
// gives after "im2col + cuBLASLt").
std::string cudnn_library();

// conv2d calls so far that ran through each path (an empty output or K = 0 counts for neither).
struct ConvCounts {
  size_t cudnn = 0, im2col = 0;
};
ConvCounts conv_counts();

}  // namespace meshdit::cuda
