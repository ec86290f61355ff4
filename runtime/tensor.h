// Tensor: a shape, a dtype, a device and ref-counted storage. Always contiguous; views share
// storage. Copying a Tensor never allocates (Shape is inline, storage is a shared_ptr).
#pragma once
#include <memory>
#include <vector>

#include "kernels/common.h"
#include "runtime/device.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace rf {

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  bool owned = true;  // false: memory someone else manages (Tensor::wrap)
  Storage(size_t bytes, Device d);
  Storage(void* external, size_t bytes, Device d) : data(external), bytes(bytes), device(d), owned(false) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor {
 public:
  Tensor() = default;
  // Allocates uninitialised memory for shape (which must be fully defined).
  Tensor(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // A tensor over memory this process does not own (e.g. a shared-memory window); the memory
  // must outlive every tensor that views it.
  static Tensor wrap(void* data, const Shape& shape, DType dtype, Device device = Device::cpu());
  template <class T> static Tensor from_vector(const std::vector<T>& v, const Shape& shape);
  template <class T> static Tensor scalar(T v) { return from_vector<T>({v}, Shape{}); }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }
  i64 numel() const { return shape_.numel(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }

  void* raw() const { return storage_ ? static_cast<char*>(storage_->data) + offset_ : nullptr; }
  template <class T> T* data() const {
    RF_CHECK(dtype_ == dtype_of<T>::value, "tensor holds ", dtype_name(dtype_), ", not ",
             dtype_name(dtype_of<T>::value));
    return static_cast<T*>(raw());
  }

  // Same storage, another shape with the same number of elements.
  Tensor view(const Shape& shape) const;
  // Same storage: shape.numel() elements starting `offset` elements into this tensor (a
  // gradient's slot in a fusion buffer, say).
  Tensor slice(i64 offset, const Shape& shape) const;
  // Same storage, read as `dtype`: shape.numel() elements starting `byte_offset` bytes into
  // this tensor (a plan's node outputs carved out of its one arena, Session's memory planner).
  Tensor view_bytes(size_t byte_offset, const Shape& shape, DType dtype) const;
  Tensor to(Device d) const;
  Tensor clone() const { return to(device()); }
  // Copies src's elements into this tensor (same dtype and element count; any devices).
  void copy_from(const Tensor& src);
  // Host copy of the elements (any device).
  template <class T> std::vector<T> to_vector() const;
  // Element 0 converted to double (float and integer dtypes; any device).
  double item() const;
  // Sets every element to zero.
  void zero();
  bool same_storage(const Tensor& o) const { return storage_ == o.storage_ && offset_ == o.offset_; }

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::F32;
};

}  // namespace rf
