#include "core/tensor.h"

#include <array>
#include <atomic>
#include <numeric>
#include <sstream>

#include "core/allocator.h"

namespace meshdit {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (int64_t i = int64_t(shape.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

namespace {
const DeviceCopy& copy_ops(Device d) {
  const DeviceCopy* c = device_copy(d);
  MD_CHECK(c != nullptr, std::string("no data movement registered for device ") + device_name(d) +
                             " (its backend is not compiled in or not set up: backend_for / compiled_backends)");
  return *c;
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device dev) {
  for (auto d : shape) MD_CHECK(d >= 0, "negative dimension in " + shape_str(shape));
  Allocator* a = allocator_for(dev);
  MD_CHECK(a != nullptr, std::string("Tensor::empty: no allocator registered for device ") + device_name(dev) +
                             " (its backend is not compiled in or not set up: backend_for / compiled_backends)");
  Tensor t;
  t.storage_ = std::make_shared<Storage>();
  const size_t bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  void* p = bytes ? a->allocate(bytes) : nullptr;
  MD_CHECK(bytes == 0 || p != nullptr, "out of memory allocating " + std::to_string(bytes) + " bytes on " +
                                           device_name(dev) + " (allocator " + a->name() + ")");
  t.storage_->data = p;
  t.storage_->bytes = bytes;
  t.storage_->device = dev;
  t.storage_->owner = std::shared_ptr<void>(p, [a, bytes](void* q) {
    if (q) a->deallocate(q, bytes);
  });
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device dev) {
  Tensor t = empty(shape, dtype, dev);
  if (t.nbytes()) copy_ops(dev).zero(t);
  return t;
}

Tensor Tensor::from_f32(const Shape& shape, const std::vector<float>& values) {
  Tensor t = empty(shape, DType::F32);
  MD_CHECK(int64_t(values.size()) == t.numel(), "from_f32: value count does not match " + shape_str(shape));
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * 4);
  return t;
}

Tensor Tensor::from_i64(const Shape& shape, const std::vector<int64_t>& values) {
  Tensor t = empty(shape, DType::I64);
  MD_CHECK(int64_t(values.size()) == t.numel(), "from_i64: value count does not match " + shape_str(shape));
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * sizeof(int64_t));
  return t;
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner, bool read_only,
                    Device dev) {
  Tensor t;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->data = data;
  t.storage_->device = dev;
  t.storage_->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  t.storage_->owner = std::move(owner);
  t.storage_->read_only = read_only;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

float* Tensor::f32() const {
  MD_CHECK(dtype_ == DType::F32, std::string("expected an F32 tensor, got ") + dtype_name(dtype_));
  return data<float>();
}

Tensor Tensor::reshape(const Shape& shape) const {
  MD_CHECK(is_contiguous(), "reshape of a non-contiguous view " + shape_str(shape_));
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) infer = int64_t(i);
    else known *= s[i];
  }
  if (infer >= 0) s[infer] = known ? numel() / known : 0;
  MD_CHECK(shape_numel(s) == numel(), "reshape " + shape_str(shape_) + " -> " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  if (d < 0) d += dim();
  MD_CHECK(d >= 0 && d < dim() && 0 <= start && start <= end && end <= shape_[d],
           "slice out of range on " + shape_str(shape_));
  Tensor t = *this;
  t.offset_ += size_t(start * strides_[d]) * dtype_size(dtype_);
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  if (d < 0) d += dim();
  Tensor t = slice(d, index, index + 1);
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  MD_CHECK(int64_t(order.size()) == dim(), "permute rank mismatch");
  Tensor t = *this;
  for (size_t i = 0; i < order.size(); ++i) {
    t.shape_[i] = shape_[order[i]];
    t.strides_[i] = strides_[order[i]];
  }
  return t;
}

Tensor Tensor::unsqueeze(int64_t d) const {
  if (d < 0) d += dim() + 1;
  Tensor t = *this;
  int64_t st = d < dim() ? strides_[d] * shape_[d] : 1;
  t.shape_.insert(t.shape_.begin() + d, 1);
  t.strides_.insert(t.strides_.begin() + d, st);
  return t;
}

std::vector<Tensor> Tensor::chunk(int64_t n, int64_t d) const {
  if (d < 0) d += dim();
  MD_CHECK(shape_[d] % n == 0, "chunk: " + std::to_string(shape_[d]) + " not divisible by " + std::to_string(n));
  std::vector<Tensor> out;
  int64_t step = shape_[d] / n;
  for (int64_t i = 0; i < n; ++i) out.push_back(slice(d, i * step, (i + 1) * step));
  return out;
}

Tensor Tensor::expand(const Shape& shape) const {
  MD_CHECK(int64_t(shape.size()) == dim(), "expand " + shape_str(shape_) + " to " + shape_str(shape) + ": rank differs");
  Tensor t = *this;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape_[i] == shape[i]) continue;
    MD_CHECK(shape_[i] == 1 && shape[i] >= 0, "expand " + shape_str(shape_) + " to " + shape_str(shape));
    t.shape_[i] = shape[i];
    t.strides_[i] = 0;
  }
  return t;
}

namespace {

inline double load_elem(const char* p, DType t) {
  switch (t) {
    case DType::F32: { float v; std::memcpy(&v, p, 4); return v; }
    case DType::F16: { uint16_t v; std::memcpy(&v, p, 2); return f16_to_f32(v); }
    case DType::BF16: { uint16_t v; std::memcpy(&v, p, 2); return bf16_to_f32(v); }
    case DType::I64: { int64_t v; std::memcpy(&v, p, 8); return double(v); }
    case DType::F64: { double v; std::memcpy(&v, p, 8); return v; }
    case DType::I32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case DType::U8: return double(uint8_t(*p));
  }
  return 0;
}

inline void store_elem(char* p, DType t, double v) {
  switch (t) {
    case DType::F32: { float f = float(v); std::memcpy(p, &f, 4); return; }
    case DType::F16: { uint16_t h = f32_to_f16(float(v)); std::memcpy(p, &h, 2); return; }
    case DType::BF16: { uint16_t h = f32_to_bf16(float(v)); std::memcpy(p, &h, 2); return; }
    case DType::I64: { int64_t i = int64_t(v); std::memcpy(p, &i, 8); return; }
    case DType::F64: { std::memcpy(p, &v, 8); return; }
    case DType::I32: { int32_t i = int32_t(v); std::memcpy(p, &i, 4); return; }
    case DType::U8: *p = char(uint8_t(v)); return;
  }
}

}  // namespace

void host_copy(const Tensor& src, Tensor& dst) {
  MD_CHECK(src.shape() == dst.shape(), "host_copy: shape " + shape_str(src.shape()) + " vs " + shape_str(dst.shape()));
  const int64_t n = src.numel();
  if (n == 0) return;
  const size_t ss = dtype_size(src.dtype()), ds = dtype_size(dst.dtype());
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    std::memcpy(dst.raw(), src.raw(), size_t(n) * ss);
    return;
  }
  // Walk the last dimension as a run; iterate the outer indices with a counter.
  const int64_t rank = src.dim();
  if (rank == 0) {
    store_elem(static_cast<char*>(dst.raw()), dst.dtype(), load_elem(static_cast<const char*>(src.raw()), src.dtype()));
    return;
  }
  const int64_t inner = src.size(-1);
  const int64_t sst = src.stride(-1), dst_st = dst.stride(-1);
  std::vector<int64_t> idx(size_t(rank), 0);
  const int64_t outer = n / inner;
  for (int64_t o = 0; o < outer; ++o) {
    int64_t so = 0, doff = 0;
    for (int64_t d = 0; d < rank - 1; ++d) {
      so += idx[d] * src.stride(d);
      doff += idx[d] * dst.stride(d);
    }
    const char* sp = static_cast<const char*>(src.raw()) + so * int64_t(ss);
    char* dp = static_cast<char*>(dst.raw()) + doff * int64_t(ds);
    if (src.dtype() == DType::F32 && dst.dtype() == DType::F32) {
      const float* s = reinterpret_cast<const float*>(sp);
      float* dd = reinterpret_cast<float*>(dp);
      for (int64_t i = 0; i < inner; ++i) dd[i * dst_st] = s[i * sst];
    } else {
      for (int64_t i = 0; i < inner; ++i)
        store_elem(dp + i * dst_st * int64_t(ds), dst.dtype(), load_elem(sp + i * sst * int64_t(ss), src.dtype()));
    }
    for (int64_t d = rank - 2; d >= 0; --d) {
      if (++idx[d] < src.size(d)) break;
      idx[d] = 0;
    }
  }
}

void copy_into(const Tensor& src, Tensor& dst) {
  MD_CHECK(src.shape() == dst.shape(), "copy_into: shape " + shape_str(src.shape()) + " vs " + shape_str(dst.shape()));
  MD_CHECK(!dst.read_only(), "copy_into: destination is read-only");
  if (src.numel() == 0) return;
  const Device sd = src.device(), dd = dst.device();
  if (sd == dd) {
    copy_ops(sd).copy(src, dst);
    return;
  }
  if (sd != Device::CPU && dd != Device::CPU) {  // two devices: through the host
    Tensor h = Tensor::empty(src.shape(), dst.dtype());
    copy_into(src, h);
    copy_into(h, dst);
    return;
  }
  // The bytes cross contiguous and already in the destination's dtype, converted on the source's side;
  // a strided destination is filled from a contiguous staging copy on its own device.
  const Tensor s = src.to(dst.dtype()).contiguous();
  Tensor d = dst.is_contiguous() ? dst : Tensor::empty(dst.shape(), dst.dtype(), dd);
  if (sd == Device::CPU)
    copy_ops(dd).from_host(d.raw(), s.raw(), s.nbytes());
  else
    copy_ops(sd).to_host(d.raw(), s.raw(), s.nbytes());
  if (!dst.is_contiguous()) copy_into(d, dst);
}

namespace {

void host_zero(Tensor& t) { std::memset(t.raw(), 0, t.nbytes()); }
void host_memcpy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

// Atomic: registrations happen once per backend, possibly while other threads already copy.
struct CopyRegistry {
  std::array<std::atomic<const DeviceCopy*>, kDeviceCount> slots{};
  CopyRegistry() {
    static const DeviceCopy host{host_copy, host_memcpy, host_memcpy, host_zero};
    for (auto& s : slots) s.store(nullptr);
    slots[size_t(Device::CPU)].store(&host);
  }
};

CopyRegistry& copy_registry() {
  static CopyRegistry r;
  return r;
}

}  // namespace

const DeviceCopy* set_device_copy(Device d, const DeviceCopy* c) { return copy_registry().slots[size_t(d)].exchange(c); }

const DeviceCopy* device_copy(Device d) { return copy_registry().slots[size_t(d)].load(); }

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor t = empty(shape_, dtype_, device());
  copy_into(*this, t);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  copy_into(*this, t);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor t = empty(shape_, dtype, device());
  copy_into(*this, t);
  return t;
}

std::vector<float> Tensor::to_vector() const {
  // Copied straight into the vector's memory: one pass from any device, dtype and layout.
  std::vector<float> v(static_cast<size_t>(numel()));
  Tensor dst = wrap(v.data(), shape_, DType::F32, nullptr, false);
  copy_into(*this, dst);
  return v;
}

Tensor concat(const std::vector<Tensor>& parts, int64_t d) {
  MD_CHECK(!parts.empty(), "concat of nothing");
  const Tensor& first = parts[0];
  if (d < 0) d += first.dim();
  Shape shape = first.shape();
  int64_t total = 0;
  for (const auto& p : parts) {
    MD_CHECK(p.dim() == first.dim(), "concat rank mismatch");
    for (int64_t i = 0; i < first.dim(); ++i)
      MD_CHECK(i == d || p.size(i) == first.size(i), "concat shape mismatch " + shape_str(p.shape()));
    total += p.size(d);
  }
  for (const auto& p : parts)
    MD_CHECK(p.device() == first.device(), std::string("concat of parts on ") + device_name(first.device()) +
                                               " and " + device_name(p.device()));
  shape[d] = total;
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  int64_t at = 0;
  for (const auto& p : parts) {
    Tensor dst = out.slice(d, at, at + p.size(d));
    copy_into(p, dst);
    at += p.size(d);
  }
  return out;
}

}  // namespace meshdit
