// Image classification on the device (classify_cuda.h): the batch gather and the accuracy count.
// Moved from runtime/updates_cuda.cu and kernels/batch.cu: the runtime keeps only generic pieces.
#include <cuda_runtime_api.h>

#include "kernels/launch.cuh"
#include "models/classify_cuda.h"
#include "runtime/cuda_backend.h"
#include "runtime/error.h"

namespace rf::classify {

namespace {

using kernels::cuda::kBlock;

__global__ void gather_kernel(const float* images, const int32_t* labels, const int32_t* idx, i64 batch, i64 row,
                              float* out_images, int32_t* out_labels) {
  const i64 n = batch * row;
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(blockDim.x) * gridDim.x) {
    const i64 b = i / row;
    const i64 src = i64(idx[b]);
    out_images[i] = images[src * row + (i - b * row)];
    if (i - b * row == 0) out_labels[b] = labels[src];
  }
}

// One block: each thread takes rows, the counts meet in shared memory.
template <class T>
__global__ void accuracy_kernel(const T* logits, const int32_t* labels, i64 rows, i64 cols, double* out) {
  __shared__ unsigned long long count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  unsigned long long mine = 0;
  for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {
    const T* l = logits + r * cols;
    i64 best = 0;
    for (i64 c = 1; c < cols; ++c)
      if (l[best] < l[c]) best = c;
    mine += best == i64(labels[r]);
  }
  atomicAdd(&count, mine);
  __syncthreads();
  if (threadIdx.x == 0) {
    out[0] = double(count);
    out[1] = double(rows);
  }
}

cudaStream_t stream_of(Device d) { return static_cast<cudaStream_t>(cuda::compute_stream(d.index)); }

}  // namespace

void gather_batch(const Tensor& images, const Tensor& labels, const Tensor& idx, Tensor& out_images,
                  Tensor& out_labels) {
  const Device d = out_images.device();
  RF_CHECK(d.is_cuda() && images.device() == d && labels.device() == d && idx.device() == d &&
               out_labels.device() == d,
           "gather_batch: every tensor must be on one CUDA device");
  CUDA_CHECK(cudaSetDevice(d.index));  // the kernel launches on d's stream, as exec_cuda's do
  RF_CHECK(images.dtype() == DType::F32 && out_images.dtype() == DType::F32 && labels.dtype() == DType::I32 &&
               out_labels.dtype() == DType::I32 && idx.dtype() == DType::I32,
           "gather_batch: images F32, labels and indices I32");
  const i64 batch = out_labels.numel(), n = labels.numel();
  RF_CHECK(batch <= idx.numel() && n > 0 && images.numel() % n == 0 &&
               out_images.numel() == batch * (images.numel() / n),
           "gather_batch: ", images.shape().str(), " / ", labels.shape().str(), " into ", out_images.shape().str(),
           " / ", out_labels.shape().str(), " with ", idx.numel(), " indices");
  if (batch == 0) return;
  const i64 row = images.numel() / n;
  const i64 blocks = (batch * row + kBlock - 1) / kBlock;
  gather_kernel<<<unsigned(blocks < 65536 ? blocks : 65536), kBlock, 0, stream_of(d)>>>(
      images.data<float>(), labels.data<int32_t>(), idx.data<int32_t>(), batch, row, out_images.data<float>(),
      out_labels.data<int32_t>());
  CUDA_CHECK_LAUNCH();
}

void accuracy_stats(const Tensor& logits, const Tensor& labels, Tensor& out) {
  const Device d = out.device();
  RF_CHECK(d.is_cuda() && logits.device() == d && labels.device() == d,
           "accuracy_stats: every tensor must be on one CUDA device");
  CUDA_CHECK(cudaSetDevice(d.index));
  RF_CHECK(logits.shape().rank == 2 && logits.shape()[1] >= 1 && labels.dtype() == DType::I32 &&
               labels.numel() == logits.shape()[0] && out.dtype() == DType::F64 && out.numel() == 2,
           "accuracy_stats: logits ", logits.shape().str(), ", labels ", labels.shape().str(), ", out ",
           out.shape().str());
  const i64 rows = logits.shape()[0], cols = logits.shape()[1];
  if (logits.dtype() == DType::F64) {
    accuracy_kernel<double><<<1, kBlock, 0, stream_of(d)>>>(logits.data<double>(), labels.data<int32_t>(), rows,
                                                             cols, out.data<double>());
  } else {
    RF_CHECK(logits.dtype() == DType::F32, "accuracy_stats: logits must be F32 or F64");
    accuracy_kernel<float><<<1, kBlock, 0, stream_of(d)>>>(logits.data<float>(), labels.data<int32_t>(), rows, cols,
                                                            out.data<double>());
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace rf::classify
