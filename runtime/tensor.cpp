// Tensor storage, views and copies across devices.
#include "runtime/tensor.h"

#include <cstring>

#include "runtime/cuda_backend.h"

namespace rf {

Storage::Storage(size_t b, Device d) : bytes(b), device(d) { data = allocator_for(d).allocate(b); }
Storage::~Storage() {
  if (owned) allocator_for(device).deallocate(data, bytes);
}

Tensor::Tensor(const Shape& shape, DType dtype, Device device) : shape_(shape), dtype_(dtype) {
  RF_CHECK(shape.defined(), "cannot allocate a tensor of undefined shape ", shape.str());
  storage_ = std::make_shared<Storage>(size_t(shape.numel()) * dtype_size(dtype), device);
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, Device device) {
  RF_CHECK(shape.defined(), "cannot wrap memory as a tensor of undefined shape ", shape.str());
  Tensor t;
  t.storage_ = std::make_shared<Storage>(data, size_t(shape.numel()) * dtype_size(dtype), device);
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t(shape, dtype, device);
  t.zero();
  return t;
}

template <class T> Tensor Tensor::from_vector(const std::vector<T>& v, const Shape& shape) {
  RF_CHECK(i64(v.size()) == shape.numel(), "from_vector: ", v.size(), " values for shape ", shape.str());
  Tensor t(shape, dtype_of<T>::value);
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * sizeof(T));
  return t;
}

Tensor Tensor::view(const Shape& shape) const {
  RF_CHECK(shape.numel() == numel(), "cannot view ", shape_.str(), " as ", shape.str());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice(i64 offset, const Shape& shape) const {
  RF_CHECK(offset >= 0 && shape.defined() && offset + shape.numel() <= numel(), "slice of ", shape.numel(),
           " elements at ", offset, " is out of range for ", shape_.str());
  Tensor t = *this;
  t.offset_ += size_t(offset) * dtype_size(dtype_);
  t.shape_ = shape;
  return t;
}

Tensor Tensor::view_bytes(size_t byte_offset, const Shape& shape, DType dtype) const {
  RF_CHECK(shape.defined() && byte_offset <= nbytes() &&
               size_t(shape.numel()) * dtype_size(dtype) <= nbytes() - byte_offset,
           "view_bytes of ", dtype_name(dtype), shape.str(), " at byte ", byte_offset, " is out of range for ",
           nbytes(), " bytes");
  Tensor t = *this;
  t.offset_ += byte_offset;
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::to(Device d) const {
  Tensor t(shape_, dtype_, d);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  RF_CHECK(src.dtype_ == dtype_ && src.numel() == numel(), "copy_from: ", dtype_name(src.dtype_),
           src.shape_.str(), " into ", dtype_name(dtype_), shape_.str());
  if (raw() == src.raw()) return;
  copy_bytes(raw(), device(), src.raw(), src.device(), nbytes());
}

template <class T> std::vector<T> Tensor::to_vector() const {
  RF_CHECK(dtype_ == dtype_of<T>::value, "to_vector: tensor holds ", dtype_name(dtype_));
  std::vector<T> v(static_cast<size_t>(numel()));
  copy_bytes(v.data(), Device::cpu(), raw(), device(), nbytes());
  return v;
}

double Tensor::item() const {
  RF_CHECK(numel() >= 1, "item() of an empty tensor");
  unsigned char buf[8];
  copy_bytes(buf, Device::cpu(), raw(), device(), dtype_size(dtype_));
  switch (dtype_) {
    case DType::F32: { float v; std::memcpy(&v, buf, 4); return v; }
    case DType::F64: { double v; std::memcpy(&v, buf, 8); return v; }
    case DType::I32: { int32_t v; std::memcpy(&v, buf, 4); return v; }
    case DType::I64: { int64_t v; std::memcpy(&v, buf, 8); return double(v); }
    case DType::U8: return buf[0];
    case DType::F16:
    case DType::BF16: break;
  }
  fail("item() is not supported for ", dtype_name(dtype_));
}

void Tensor::zero() {
  if (nbytes() == 0) return;
  if (device().is_cpu()) {
    std::memset(raw(), 0, nbytes());
    return;
  }
#if RINGFLOW_CUDA
  cuda::memset_zero(raw(), device().index, nbytes());
#endif
}

#define RF_INSTANTIATE(T)                                                         \
  template Tensor Tensor::from_vector<T>(const std::vector<T>&, const Shape&); \
  template std::vector<T> Tensor::to_vector<T>() const;
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
RF_INSTANTIATE(int32_t)
RF_INSTANTIATE(int64_t)
RF_INSTANTIATE(uint8_t)
#undef RF_INSTANTIATE

}  // namespace rf
