// The runtime's entry points into the CUDA backend (cuda_device.cu). Only declared when the
// build has CUDA; device.cpp routes CUDA devices here.
#pragma once
#if RINGFLOW_CUDA
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/exec.h"

namespace rf::cuda {

// Makes `device` current for the scope and restores the caller's device after, so that backend
// calls never change which device the calling thread's own CUDA code targets.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();  // restores without throwing
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int prev_ = 0;
};

int device_count();             // 0 when no driver/device; never throws
std::string unavailable_reason();
Allocator& caching_allocator(int device);
void* compute_stream(int device);  // cudaStream_t, created on first use
void stream_synchronize(void* stream);
// dst/src device kinds decide the cudaMemcpyKind; synchronous on the compute stream.
void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
void memset_zero(void* dst, int device, size_t bytes);
void* cublas_handle(int device);  // cublasHandle_t bound to the compute stream
void* cublaslt_handle(int device);  // cublasLtHandle_t (cuBLASLt takes the stream per call)
void* cudnn_handle(int device);   // cudnnHandle_t bound to the compute stream
// Events (cudaEvent_t as void*), created without timing.
void* event_create(int device);
void event_destroy(void* event) noexcept;
void event_record(void* event, void* stream);
void stream_wait_event(void* stream, void* event);
void event_synchronize(void* event);
bool event_query(void* event);

// Pinned (page-locked) host memory: the source or target of copies that run asynchronously or
// inside a CUDA graph.
void* host_alloc(size_t bytes);
void host_free(void* p) noexcept;
// cudaMemcpyAsync on the device's compute stream; the host does not wait (host memory must be
// pinned and must stay untouched until the copy ran).
void copy_async(void* dst, const void* src, size_t bytes, int device);
// A per-device scratch buffer (cuDNN workspaces) of at least `bytes`, shared by every call on the
// compute stream. It only grows, and a replaced buffer is kept, never reused: a captured CUDA
// graph may still point at it.
void* workspace(int device, size_t bytes);

// CUDA graphs of a device's compute stream. While capturing, the device's caching allocator must
// not call cudaMalloc (an allocation without a cached block fails, naming the size) and keeps
// the blocks freed meanwhile out of circulation (the graph may use them).
void capture_begin(int device, void* stream);
// The instantiated graph (cudaGraphExec_t); *kernels, if given, receives its number of kernel
// nodes (what one replay launches: library calls that launch several kernels count them all).
void* capture_end(int device, void* stream, size_t* kernels = nullptr);
void capture_abort(int device, void* stream) noexcept;  // after a failure inside the capture
void graph_launch(void* exec, void* stream);
void graph_destroy(void* exec) noexcept;

// The update (Apply*) nodes of a CUDA plan, fused: nodes with the same op, dtype, attributes
// and hyper feed form a group that one multi-tensor kernel launch applies (its table of pointers
// and sizes is built in device memory on the first launch). Each step's scalars are formed on
// the host from the {lr, step} feed, as the single-tensor kernels form theirs, into pinned memory
// and copied to the device by one cudaMemcpyAsync, so a captured graph sees each step's values.
class FusedUpdates {
 public:
  struct Update {
    const Node* node;
    Tensor* in[6];  // the node's bound inputs (var, slots..., grad or rows and indices, hyper), stable for the plan
  };
  FusedUpdates(Device device, const std::vector<Update>& updates);
  ~FusedUpdates();
  FusedUpdates(const FusedUpdates&) = delete;
  FusedUpdates& operator=(const FusedUpdates&) = delete;

  size_t groups() const;
  const std::vector<int>& nodes(size_t group) const;  // node ids, in plan order
  // Host, before the step is queued: forms every group's scalars. Waits only if the previous
  // step's copy of them has not run yet (the caller ran a whole step ahead without fetching).
  void prepare();
  void upload(const ExecContext& ctx);              // queues the scalars' copy to the device
  void launch(size_t group, const ExecContext& ctx);  // queues the group's one kernel
  void step_queued(const Stream& stream);           // after the step's last work is queued

 private:
  struct Group;
  Device device_;
  std::vector<Group> groups_;
  void* pinned_ = nullptr;
  Tensor scalars_;  // device copy of the pinned scalars
  Event done_;
  bool pending_ = false;
};

}  // namespace rf::cuda
#endif
