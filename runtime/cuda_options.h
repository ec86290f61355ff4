// Process-wide switches of the CUDA backend (cuda_device.cu). Declared only when the build has
// CUDA; callers guard with #if RINGFLOW_CUDA.
#pragma once
#if RINGFLOW_CUDA

namespace rf::cuda {

// TF32 tensor-core math in cuBLAS fp32 GEMMs and cuDNN fp32 convolutions. Off by default
// because the differential tests compare against the CPU at fp32 accuracy (TF32 keeps ~10
// mantissa bits). Applies to every existing cuBLAS handle and to those created later; cuDNN
// convolutions read it at each call.
void set_allow_tf32(bool allow);
bool allow_tf32();

}  // namespace rf::cuda

#endif
