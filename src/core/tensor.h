// Tensor: a dtype, a shape with strides (in elements), and a shared storage that is either owned memory
// or a read-only view into a memory-mapped checkpoint. Views (slice, reshape, permute) share storage.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace meshdit {

enum class Device : uint8_t { CPU, CUDA };

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  bool read_only = false;
  std::shared_ptr<void> owner;  // keeps the buffer or the mapping alive
};

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device dev = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  static Tensor from_f32(const Shape& shape, const std::vector<float>& values);
  static Tensor from_i64(const Shape& shape, const std::vector<int64_t>& values);  // ids, masks
  // A view over external memory kept alive by `owner` (used for mmapped weights).
  static Tensor wrap(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner, bool read_only);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::CPU; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t d) const { return shape_[d < 0 ? d + dim() : d]; }
  int64_t stride(int64_t d) const { return strides_[d < 0 ? d + dim() : d]; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  bool read_only() const { return storage_ && storage_->read_only; }

  void* raw() const { return static_cast<char*>(storage_->data) + offset_; }
  template <class T>
  T* data() const { return static_cast<T*>(raw()); }
  float* f32() const;  // checked: dtype F32

  // Views.
  Tensor reshape(const Shape& shape) const;  // requires contiguous; one dim may be -1
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;
  Tensor select(int64_t dim, int64_t index) const;  // removes the dim
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor unsqueeze(int64_t dim) const;
  std::vector<Tensor> chunk(int64_t n, int64_t dim) const;

  // Copies.
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;  // conversion between float dtypes (and I64 -> F32)
  std::vector<float> to_vector() const;  // any float dtype, logical order

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::F32;
};

// Strides of a contiguous row-major tensor.
Shape contiguous_strides(const Shape& shape);

// Element-wise copy between tensors of the same shape (any strides, any float dtypes).
void copy_into(const Tensor& src, Tensor& dst);

Tensor concat(const std::vector<Tensor>& parts, int64_t dim);

}  // namespace meshdit
