// The CUDA side of runtime/device.h: device discovery, the per-device caching allocator,
// compute streams, copies and cuBLAS / cuDNN handles (declared in runtime/cuda_backend.h).
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/cuda_backend.h"
#include "runtime/cuda_options.h"
#include "runtime/error.h"

namespace rf {

const char* cublas_status_string(cublasStatus_t s) {
  const char* str = cublasGetStatusString(s);
  return str ? str : "unknown cuBLAS status";
}

}  // namespace rf

namespace rf::cuda {

namespace {

// ---- device discovery: asked once, the answer (or the driver's reason) is remembered ----

struct DeviceInfo {
  int count = 0;
  std::string reason;  // why count == 0
};

const DeviceInfo& device_info() {
  static const DeviceInfo info = [] {
    DeviceInfo d;
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      // No driver, driver older than the runtime, no device...: the CPU path must still work,
      // so this is an answer (0 devices), not an error. Clear it so that it does not surface
      // at the next unrelated CUDA_CHECK.
      (void)cudaGetLastError();
      d.reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
      return d;
    }
    if (n == 0) {
      d.reason = "the CUDA driver reports no device (check CUDA_VISIBLE_DEVICES)";
      return d;
    }
    d.count = n;
    return d;
  }();
  return info;
}

void check_device(int device) {
  const DeviceInfo& info = device_info();
  if (info.count == 0) fail("CUDA device ", device, " requested but no CUDA device is present (", info.reason, ")");
  RF_CHECK(device >= 0 && device < info.count, "CUDA device ", device, " does not exist (", info.count,
           " device(s) present)");
}

constexpr double kMiB = 1024.0 * 1024.0;

// ---- caching allocator (PyTorch's CUDACachingAllocator, much simplified) ----
//
// cudaMalloc/cudaFree synchronise the device and cost tens of microseconds, so freed blocks are
// kept and handed out again. A freed block may still be read by kernels queued on the compute
// stream; reusing it right away is safe because every user of this device's memory runs on that
// one stream, so the next user's kernels are ordered after the previous user's. (Work on other
// streams, e.g. collectives, will need PyTorch-style record_stream/events before it may share.)
class CachingAllocator final : public Allocator {
 public:
  explicit CachingAllocator(int device) : device_(device) {}

  ~CachingAllocator() override {
    // At process exit the CUDA runtime may already be unloaded: cudaFree then fails, and there
    // is nothing useful to do about it (the driver reclaims the memory anyway).
    for (auto& [size, p] : free_) (void)cudaFree(p);
    free_.clear();
    (void)cudaGetLastError();
  }

  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    const size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    size_t block = 0;  // a cached block may be larger than this request's size class
    void* p = take_cached(size, &block);
    if (!p) {
      RF_CHECK(!capturing_, "cuda:", device_, " allocator: ", bytes,
               " bytes requested while a CUDA graph is being captured and no cached block fits (the warm-up "
               "steps should have left one): cudaMalloc cannot run in a capture");
      p = system_alloc(bytes, size);
      block = size;
    }
    live_.emplace(p, block);
    allocated_ += block;
    return p;
  }

  void deallocate(void* p, size_t bytes) override {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) {
      // Called from Storage's destructor: report the bug rather than throw.
      std::fprintf(stderr, "ringflow: cuda:%d allocator: free of unknown pointer %p (%zu bytes) ignored\n",
                   device_, p, bytes);
      return;
    }
    const size_t size = it->second;
    live_.erase(it);
    allocated_ -= size;
    if (capturing_) held_.emplace_back(p);  // a captured graph may use it: never hand it out again
    else free_.emplace(size, p);
  }

  void set_capturing(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    capturing_ = on;
  }

  size_t reserved_bytes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return reserved_;
  }
  size_t allocated_bytes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return allocated_;
  }
  size_t system_allocations() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  // Rounding makes slightly different requests (a smaller last batch, say) share size classes.
  static constexpr size_t kSmallSize = size_t(1) << 20;  // <= 1 MiB counts as small
  static constexpr size_t kSmallRound = 512;
  static constexpr size_t kLargeRound = size_t(2) << 20;

  static size_t round_size(size_t bytes) {
    const size_t r = bytes <= kSmallSize ? kSmallRound : kLargeRound;
    return (bytes + r - 1) / r * r;
  }

  // Best fit among cached blocks. Blocks are never split, so a block more than twice the
  // request is not used: a small tensor must not pin a huge block.
  void* take_cached(size_t size, size_t* block) {
    auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > 2 * size) return nullptr;
    void* p = it->second;
    *block = it->first;
    free_.erase(it);
    return p;
  }

  void* system_alloc(size_t bytes, size_t size) {
    DeviceGuard guard(device_);
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      // Out of memory: give every cached block back to the driver and try once more.
      (void)cudaGetLastError();
      release_cache();
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      fail(e == cudaErrorMemoryAllocation ? "CUDA out of memory" : "CUDA error", " on cuda:", device_,
           " allocating ", bytes, " bytes (", size, " rounded; ", double(reserved_) / kMiB,
           " MiB reserved by ringflow, ", double(allocated_) / kMiB, " MiB in use): ", cudaGetErrorString(e));
    }
    ++calls_;
    reserved_ += size;
    return p;
  }

  // Frees every cached block (lock held, device current). The blocks may still be read by queued
  // kernels, so wait for the device first.
  void release_cache() {
    (void)cudaDeviceSynchronize();
    for (auto& [size, p] : free_) {
      (void)cudaFree(p);
      reserved_ -= size;
    }
    free_.clear();
    (void)cudaGetLastError();
  }

  int device_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;       // cached blocks by size
  std::unordered_map<void*, size_t> live_;  // handed-out block -> its size
  size_t reserved_ = 0;                     // bytes held from cudaMalloc (live + cached)
  size_t allocated_ = 0;                    // bytes of handed-out blocks
  size_t calls_ = 0;                        // cudaMalloc calls
  bool capturing_ = false;                  // a CUDA graph capture is running on this device
  std::vector<void*> held_;                 // freed during a capture: kept out of circulation
};

// ---- per-device state, created on first use ----

struct DeviceState {
  explicit DeviceState(int device) : alloc(device) {}
  std::mutex mu;  // serialises the lazy creation below
  std::atomic<cudaStream_t> stream{nullptr};
  std::atomic<cublasHandle_t> cublas{nullptr};
  std::atomic<cublasLtHandle_t> cublaslt{nullptr};
  std::atomic<cudnnHandle_t> cudnn{nullptr};
  CachingAllocator alloc;
  // workspace(): the current scratch block, and the replaced ones (graphs may point at them).
  std::mutex ws_mu;
  void* ws = nullptr;
  size_t ws_bytes = 0;
  std::vector<void*> ws_retired;
  // Streams and cuBLAS / cuDNN handles are deliberately never destroyed: destroying them from a static
  // destructor can run after the CUDA runtime has shut down, and the driver frees them at exit.
};

std::atomic<bool> g_allow_tf32{false};

cublasMath_t math_mode() { return g_allow_tf32.load() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH; }

class Registry {
 public:
  Registry() {
    const int n = device_info().count;
    for (int i = 0; i < n; ++i) devices_.push_back(std::make_unique<DeviceState>(i));
  }
  DeviceState& at(int device) {
    check_device(device);
    return *devices_[size_t(device)];
  }
  int size() const { return int(devices_.size()); }
  DeviceState& raw(int i) { return *devices_[size_t(i)]; }

 private:
  std::vector<std::unique_ptr<DeviceState>> devices_;
};

Registry& registry() {
  static Registry r;
  return r;
}

// Double-checked lazy creation of one of a device's objects: make() runs once, under the
// device's lock, with the device current.
template <class H, class Make> H lazy(int device, std::atomic<H> DeviceState::*slot, Make&& make) {
  DeviceState& s = registry().at(device);
  H h = (s.*slot).load(std::memory_order_acquire);
  if (h) return h;
  std::lock_guard<std::mutex> lock(s.mu);
  h = (s.*slot).load(std::memory_order_relaxed);
  if (!h) {
    DeviceGuard guard(device);
    h = make();
    (s.*slot).store(h, std::memory_order_release);
  }
  return h;
}

cudaStream_t stream_of(int device) {
  return lazy(device, &DeviceState::stream, [] {
    // Non-blocking: our work must not serialise against the legacy default stream that
    // libraries or user code may use.
    cudaStream_t st = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    return st;
  });
}

}  // namespace

DeviceGuard::DeviceGuard(int device) : device_(device) {
  CUDA_CHECK(cudaGetDevice(&prev_));
  if (prev_ != device_) CUDA_CHECK(cudaSetDevice(device_));
}

DeviceGuard::~DeviceGuard() {
  if (prev_ != device_) (void)cudaSetDevice(prev_);  // destructors do not throw
}

// ---- rf::cuda API ----

int device_count() { return device_info().count; }

std::string unavailable_reason() { return device_info().reason; }

Allocator& caching_allocator(int device) { return registry().at(device).alloc; }

void* compute_stream(int device) { return stream_of(device); }

void stream_synchronize(void* stream) { CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream))); }

void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  if (src_dev.is_cpu() || dst_dev.is_cpu() || src_dev.index == dst_dev.index) {
    // One CUDA device involved: run on its compute stream so the copy is ordered after the
    // kernels that produce (or still read) the device buffer.
    const int dev = dst_dev.is_cuda() ? dst_dev.index : src_dev.index;
    const cudaMemcpyKind kind = src_dev.is_cpu()   ? cudaMemcpyHostToDevice
                                : dst_dev.is_cpu() ? cudaMemcpyDeviceToHost
                                                   : cudaMemcpyDeviceToDevice;
    cudaStream_t st = stream_of(dev);
    DeviceGuard guard(dev);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    return;
  }
  // Two devices: dst's pending work must finish before dst is overwritten; the copy itself is
  // ordered after src's producers by running on src's stream.
  cudaStream_t dst_st = stream_of(dst_dev.index);
  cudaStream_t src_st = stream_of(src_dev.index);
  CUDA_CHECK(cudaStreamSynchronize(dst_st));
  DeviceGuard guard(src_dev.index);
  CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_dev.index, src, src_dev.index, bytes, src_st));
  CUDA_CHECK(cudaStreamSynchronize(src_st));
}

void memset_zero(void* dst, int device, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t st = stream_of(device);
  DeviceGuard guard(device);
  CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, st));
}

void* host_alloc(size_t bytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault));
  return p;
}

void host_free(void* p) noexcept {
  if (p) (void)cudaFreeHost(p);
}

void copy_async(void* dst, const void* src, size_t bytes, int device) {
  if (bytes == 0) return;
  cudaStream_t st = stream_of(device);
  DeviceGuard guard(device);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, st));
}

void* workspace(int device, size_t bytes) {
  DeviceState& s = registry().at(device);
  std::lock_guard<std::mutex> lock(s.ws_mu);
  if (bytes > s.ws_bytes) {
    if (s.ws) s.ws_retired.push_back(s.ws);
    s.ws = s.alloc.allocate(bytes);
    s.ws_bytes = bytes;
  }
  return s.ws;
}

void capture_begin(int device, void* stream) {
  DeviceState& s = registry().at(device);
  DeviceGuard guard(device);
  // Thread-local mode: this thread may not make unsafe calls (cudaMalloc, synchronisation) while
  // capturing; other threads (e.g. a collective's) are not affected.
  CUDA_CHECK(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeThreadLocal));
  s.alloc.set_capturing(true);
}

void* capture_end(int device, void* stream, size_t* kernels) {
  DeviceState& s = registry().at(device);
  DeviceGuard guard(device);
  s.alloc.set_capturing(false);
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph));
  cudaError_t e = cudaSuccess;
  if (kernels) {
    *kernels = 0;
    size_t n = 0;
    e = cudaGraphGetNodes(graph, nullptr, &n);
    std::vector<cudaGraphNode_t> nodes(n);
    if (e == cudaSuccess && n > 0) e = cudaGraphGetNodes(graph, nodes.data(), &n);
    for (size_t i = 0; e == cudaSuccess && i < n; ++i) {
      cudaGraphNodeType type{};
      e = cudaGraphNodeGetType(nodes[i], &type);
      if (e == cudaSuccess && type == cudaGraphNodeTypeKernel) ++*kernels;
    }
    if (e != cudaSuccess) {
      (void)cudaGraphDestroy(graph);
      CUDA_CHECK(e);
    }
  }
  cudaGraphExec_t exec = nullptr;
  e = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  CUDA_CHECK(e);
  return exec;
}

void capture_abort(int device, void* stream) noexcept {
  DeviceState& s = registry().at(device);
  s.alloc.set_capturing(false);
  cudaGraph_t graph = nullptr;
  if (cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph) == cudaSuccess && graph)
    (void)cudaGraphDestroy(graph);
  (void)cudaGetLastError();
}

void graph_launch(void* exec, void* stream) {
  CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), static_cast<cudaStream_t>(stream)));
}

void graph_destroy(void* exec) noexcept {
  if (exec) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
}

// The handles are bound to the compute stream, created first: stream_of takes the same lock.
void* cublas_handle(int device) {
  const cudaStream_t st = stream_of(device);
  return lazy(device, &DeviceState::cublas, [st] {
    cublasHandle_t h = nullptr;
    CUBLAS_CHECK(cublasCreate(&h));
    CUBLAS_CHECK(cublasSetStream(h, st));
    CUBLAS_CHECK(cublasSetMathMode(h, math_mode()));
    return h;
  });
}

void* cublaslt_handle(int device) {
  return lazy(device, &DeviceState::cublaslt, [] {
    cublasLtHandle_t h = nullptr;
    CUBLAS_CHECK(cublasLtCreate(&h));
    return h;
  });
}

void* cudnn_handle(int device) {
  const cudaStream_t st = stream_of(device);
  return lazy(device, &DeviceState::cudnn, [st] {
    cudnnHandle_t h = nullptr;
    CUDNN_CHECK(cudnnCreate(&h));
    CUDNN_CHECK(cudnnSetStream(h, st));
    return h;
  });
}

void set_allow_tf32(bool allow) {
  g_allow_tf32.store(allow);
  // Handles created after this point read the flag; update those that exist.
  Registry& r = registry();
  for (int i = 0; i < r.size(); ++i) {
    DeviceState& s = r.raw(i);
    std::lock_guard<std::mutex> lock(s.mu);
    if (cublasHandle_t h = s.cublas.load()) CUBLAS_CHECK(cublasSetMathMode(h, math_mode()));
  }
}

bool allow_tf32() { return g_allow_tf32.load(); }

void* event_create(int device) {
  check_device(device);
  DeviceGuard guard(device);
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

void event_destroy(void* event) noexcept { cudaEventDestroy(static_cast<cudaEvent_t>(event)); }

void event_record(void* event, void* stream) {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
}

void stream_wait_event(void* stream, void* event) {
  CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0));
}

void event_synchronize(void* event) { CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event))); }

bool event_query(void* event) {
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();  // not-ready is an answer, not a sticky error
    return false;
  }
  CUDA_CHECK(e);
  return true;
}

}  // namespace rf::cuda
