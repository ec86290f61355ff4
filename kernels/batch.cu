// Training-loop kernels (kernels/cuda.h): the batch gather from a data set held on the device,
// and the per-step loss and accuracy count that come back to the host in one small copy.
#include <stdexcept>
#include <string>

#include "kernels/cuda.h"
#include "kernels/launch.cuh"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

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

template <class L, class T>
__global__ void step_stats_kernel(const L* loss, const T* logits, const int32_t* labels, i64 rows, i64 cols,
                                  double* stats) {
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
    stats[0] = double(*loss);
    stats[1] = double(count);
  }
}

}  // namespace

void gather_batch(const float* images, const int32_t* labels, const int32_t* idx, i64 batch, i64 row_size,
                  float* out_images, int32_t* out_labels, cudaStream_t stream) {
  if (batch < 0 || row_size < 1) throw std::invalid_argument("gather_batch: bad batch or row size");
  if (batch == 0) return;
  const i64 blocks = (batch * row_size + kBlock - 1) / kBlock;
  gather_kernel<<<unsigned(blocks < 65536 ? blocks : 65536), kBlock, 0, stream>>>(images, labels, idx, batch, row_size,
                                                                                  out_images, out_labels);
  CUDA_CHECK_LAUNCH();
}

template <class L, class T>
void step_stats(const L* loss, const T* logits, const int32_t* labels, i64 rows, i64 cols, double* stats,
                cudaStream_t stream) {
  if (rows < 0 || cols < 1) throw std::invalid_argument("step_stats: bad logits shape");
  step_stats_kernel<L, T><<<1, kBlock, 0, stream>>>(loss, logits, labels, rows, cols, stats);
  CUDA_CHECK_LAUNCH();
}

#define RF_INSTANTIATE(L, T) \
  template void step_stats<L, T>(const L*, const T*, const int32_t*, i64, i64, double*, cudaStream_t);
RF_INSTANTIATE(float, float)
RF_INSTANTIATE(double, float)
RF_INSTANTIATE(float, double)
RF_INSTANTIATE(double, double)
#undef RF_INSTANTIATE

}  // namespace rf::kernels::cuda
