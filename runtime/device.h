// Devices (cpu, cuda:N), their allocators and streams. On the CPU the stream is trivial; the
// CUDA implementations live in cuda_device.cu and are compiled wherever nvcc exists.
#pragma once
#include <cstddef>
#include <string>

namespace rf {

struct Device {
  enum class Kind : unsigned char { CPU, CUDA };
  Kind kind = Kind::CPU;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {Kind::CUDA, i}; }
  bool is_cpu() const { return kind == Kind::CPU; }
  bool is_cuda() const { return kind == Kind::CUDA; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }

  // "cpu", "cuda", "cuda:N" or "auto" (cuda:0 when a CUDA device is present, else cpu).
  // Throws rf::Error for a malformed name or a CUDA device that is not present.
  static Device parse(const std::string& s);
};

// Number of usable CUDA devices: 0 when built without CUDA or when no device/driver is present.
int cuda_device_count();
// Why no CUDA device is usable ("built without CUDA", the driver's message, ...).
std::string cuda_unavailable_reason();

// Raw memory for one device. CPU: 64-byte aligned heap. CUDA: a caching allocator that keeps
// freed blocks by size class, so a training loop in steady state never calls cudaMalloc.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) = 0;
  // Bytes obtained from the system so far and bytes handed out now (tests and reports).
  virtual size_t reserved_bytes() const = 0;
  virtual size_t allocated_bytes() const = 0;
  // Number of calls that went to the system allocator (cudaMalloc/aligned_alloc).
  virtual size_t system_allocations() const = 0;
};
Allocator& allocator_for(Device d);

// An ordered queue of device work. CPU work runs inline, so its stream is the null handle.
struct Stream {
  Device device;
  void* handle = nullptr;  // cudaStream_t on CUDA
  void synchronize() const;
};
// The default compute stream of a device (one per device, created on first use).
Stream compute_stream(Device d);

// A marker in a stream: record() after some work, then wait() makes another stream (or
// synchronize() the host) wait for that work only. On the CPU work is already done when it is
// enqueued, so every operation is a no-op. Move-only; releases the CUDA event when destroyed.
class Event {
 public:
  Event() = default;
  explicit Event(Device d);
  ~Event();
  Event(Event&& o) noexcept : device_(o.device_), handle_(o.handle_) { o.handle_ = nullptr; }
  Event& operator=(Event&& o) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(const Stream& s);
  void wait(const Stream& s) const;  // s waits for the recorded work, the host does not
  void synchronize() const;          // the host waits
  bool done() const;                 // non-blocking query

 private:
  Device device_;
  void* handle_ = nullptr;  // cudaEvent_t
};

// Copies bytes between any two devices (synchronously with respect to the host).
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);

// Sets the CPU threads used by our kernels (OpenMP) and by OpenBLAS.
void set_num_threads(int n);

}  // namespace rf
