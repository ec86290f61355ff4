// Device parsing, the CPU allocator, stream stubs and cross-device copies. CUDA devices are
// routed to cuda_device.cu when the build has CUDA.
#include "runtime/device.h"

#include <omp.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "kernels/parallel.h"
#include "runtime/cuda_backend.h"
#include "runtime/error.h"

extern "C" void openblas_set_num_threads(int);

namespace rf {

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "auto") return cuda_device_count() > 0 ? cuda(0) : cpu();
  if (s == "cuda" || s.rfind("cuda:", 0) == 0) {
    int idx = 0;
    if (s != "cuda") {  // cuda:N, N a device index ("cuda:" alone is not one)
      char* end = nullptr;
      errno = 0;
      long v = std::strtol(s.c_str() + 5, &end, 10);
      RF_CHECK(*end == '\0' && end != s.c_str() + 5 && errno == 0 && v >= 0 && v <= 1 << 20, "bad device '", s,
               "': expected cpu, cuda, cuda:N or auto");
      idx = int(v);
    }
    const int n = cuda_device_count();
    RF_CHECK(n > 0, "device '", s, "' requested but no CUDA device is present (",
             cuda_unavailable_reason(), "); use --device cpu");
    RF_CHECK(idx < n, "device '", s, "' requested but only ", n, " CUDA device(s) are present");
    return cuda(idx);
  }
  fail("bad device '", s, "': expected cpu, cuda, cuda:N or auto");
}

int cuda_device_count() {
#if RINGFLOW_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

std::string cuda_unavailable_reason() {
#if RINGFLOW_CUDA
  return cuda::unavailable_reason();
#else
  return "this build of ringflow has no CUDA backend";
#endif
}

namespace {
class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    RF_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes");
    reserved_ += bytes;
    allocated_ += bytes;
    ++calls_;
    return p;
  }
  void deallocate(void* p, size_t bytes) override {
    if (!p) return;
    std::free(p);
    reserved_ -= bytes;
    allocated_ -= bytes;
  }
  size_t reserved_bytes() const override { return reserved_; }
  size_t allocated_bytes() const override { return allocated_; }
  size_t system_allocations() const override { return calls_; }

 private:
  std::atomic<size_t> reserved_{0}, allocated_{0}, calls_{0};
};
}  // namespace

Allocator& allocator_for(Device d) {
  static CpuAllocator cpu_alloc;
  if (d.is_cpu()) return cpu_alloc;
#if RINGFLOW_CUDA
  return cuda::caching_allocator(d.index);
#else
  fail("no CUDA backend in this build: cannot allocate on ", d.str());
#endif
}

void Stream::synchronize() const {
#if RINGFLOW_CUDA
  if (device.is_cuda()) cuda::stream_synchronize(handle);
#endif
}

Stream compute_stream(Device d) {
#if RINGFLOW_CUDA
  if (d.is_cuda()) return {d, cuda::compute_stream(d.index)};
#endif
  return {d, nullptr};
}

Event::Event(Device d) : device_(d) {
#if RINGFLOW_CUDA
  if (d.is_cuda()) handle_ = cuda::event_create(d.index);
#endif
}
Event::~Event() {
#if RINGFLOW_CUDA
  if (handle_) cuda::event_destroy(handle_);
#endif
}
Event& Event::operator=(Event&& o) noexcept {
  if (this != &o) {
#if RINGFLOW_CUDA
    if (handle_) cuda::event_destroy(handle_);
#endif
    device_ = o.device_;
    handle_ = o.handle_;
    o.handle_ = nullptr;
  }
  return *this;
}
void Event::record(const Stream& s) {
#if RINGFLOW_CUDA
  if (handle_) cuda::event_record(handle_, s.handle);
#endif
}
void Event::wait(const Stream& s) const {
#if RINGFLOW_CUDA
  if (handle_ && s.device.is_cuda()) cuda::stream_wait_event(s.handle, handle_);
#endif
}
void Event::synchronize() const {
#if RINGFLOW_CUDA
  if (handle_) cuda::event_synchronize(handle_);
#endif
}
bool Event::done() const {
#if RINGFLOW_CUDA
  if (handle_) return cuda::event_query(handle_);
#endif
  return true;
}

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#if RINGFLOW_CUDA
  cuda::memcpy(dst, dst_dev, src, src_dev, bytes);
#else
  fail("no CUDA backend in this build: cannot copy between ", src_dev.str(), " and ", dst_dev.str());
#endif
}

void set_num_threads(int n) {
  RF_CHECK(n >= 1, "thread count must be >= 1, got ", n);
  kernels::cpu::set_max_threads(n);  // every thread's kernels, not only this thread's OpenMP
  openblas_set_num_threads(n);
}

}  // namespace rf
