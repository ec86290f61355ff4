// The runtime's entry points into the CUDA backend (cuda_device.cu). Only declared when the
// build has CUDA; device.cpp routes CUDA devices here.
#pragma once
#if RINGFLOW_CUDA
#include <cstddef>
#include <string>

#include "runtime/device.h"

namespace rf::cuda {

int device_count();             // 0 when no driver/device; never throws
std::string unavailable_reason();
Allocator& caching_allocator(int device);
void* compute_stream(int device);  // cudaStream_t, created on first use
void stream_synchronize(void* stream);
// dst/src device kinds decide the cudaMemcpyKind; synchronous on the compute stream.
void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
void memset_zero(void* dst, int device, size_t bytes);
void* cublas_handle(int device);  // cublasHandle_t bound to the compute stream
void* cudnn_handle(int device);   // cudnnHandle_t bound to the compute stream
// Events (cudaEvent_t as void*), created without timing.
void* event_create(int device);
void event_destroy(void* event) noexcept;
void event_record(void* event, void* stream);
void stream_wait_event(void* stream, void* event);
void event_synchronize(void* event);
bool event_query(void* event);

}  // namespace rf::cuda
#endif
