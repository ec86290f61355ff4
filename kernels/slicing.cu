// Slice, Concat and Pad along one axis for the CUDA backend, the [outer, axis * inner] row view
// of slicing_cpu.cpp: one grid-stride kernel per op (a contiguous copy is one cudaMemcpyAsync).
// Concat takes its inputs' pointers by value in the kernel's parameters: one launch, nothing to
// upload, and a captured CUDA graph keeps them.
#include <stdexcept>
#include <string>

#include "kernels/cuda.h"
#include "kernels/launch.cuh"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

template <class T> __global__ void copy_rows_kernel(const T* x, i64 ldx, T* y, i64 ldy, i64 n, i64 total) {
  RF_GRID_STRIDE(i, total) {
    const i64 r = i / n, j = i - r * n;
    y[r * ldy + j] = x[r * ldx + j];
  }
}

template <class T> struct ConcatArgs {
  const T* x[kMaxConcat];
  i64 start[kMaxConcat + 1];  // input k covers columns [start[k], start[k + 1]) of an output row
  int count;
};

template <class T> __global__ void concat_kernel(ConcatArgs<T> args, T* y, i64 width, i64 total) {
  RF_GRID_STRIDE(i, total) {
    const i64 r = i / width, j = i - r * width;
    int k = 0;
    while (j >= args.start[k + 1]) ++k;  // a few inputs: a linear scan
    const i64 w = args.start[k + 1] - args.start[k];
    y[i] = args.x[k][r * w + (j - args.start[k])];
  }
}

template <class T> __global__ void pad_kernel(const T* x, T* y, i64 n, i64 before, i64 width, i64 total, T value) {
  RF_GRID_STRIDE(i, total) {
    const i64 r = i / width, j = i - r * width - before;
    y[i] = (j >= 0 && j < n) ? x[r * n + j] : value;
  }
}

}  // namespace

template <class T> void copy_rows(const T* x, i64 ldx, T* y, i64 ldy, i64 rows, i64 n, cudaStream_t stream) {
  if (rows < 0 || n < 0 || ldx < n || ldy < n) throw std::invalid_argument("copy_rows: bad geometry");
  if (rows == 0 || n == 0) return;
  if ((ldx == n && ldy == n) || rows == 1) {
    CUDA_CHECK(cudaMemcpyAsync(y, x, size_t(rows * n) * sizeof(T), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  copy_rows_kernel<T><<<grid_for(rows * n), kBlock, 0, stream>>>(x, ldx, y, ldy, n, rows * n);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void concat_rows(const T* const* xs, const i64* widths, int count, T* y, i64 rows, cudaStream_t stream) {
  if (count < 1 || count > kMaxConcat)
    throw std::invalid_argument("concat_rows: " + std::to_string(count) + " inputs (1 to " +
                                std::to_string(kMaxConcat) + ")");
  ConcatArgs<T> args{};
  args.count = count;
  args.start[0] = 0;
  for (int k = 0; k < count; ++k) {
    if (widths[k] < 0) throw std::invalid_argument("concat_rows: negative width");
    args.x[k] = xs[k];
    args.start[k + 1] = args.start[k] + widths[k];
  }
  const i64 width = args.start[count];
  if (rows < 0) throw std::invalid_argument("concat_rows: negative rows");
  if (rows == 0 || width == 0) return;
  for (int k = count; k < kMaxConcat; ++k) args.start[k + 1] = width + 1;  // never reached by the scan
  concat_kernel<T><<<grid_for(rows * width), kBlock, 0, stream>>>(args, y, width, rows * width);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void pad_rows(const T* x, T* y, i64 rows, i64 n, i64 before, i64 after, double value, cudaStream_t stream) {
  if (rows < 0 || n < 0 || before < 0 || after < 0) throw std::invalid_argument("pad_rows: bad geometry");
  const i64 width = before + n + after;
  if (rows == 0 || width == 0) return;
  pad_kernel<T><<<grid_for(rows * width), kBlock, 0, stream>>>(x, y, n, before, width, rows * width, T(value));
  CUDA_CHECK_LAUNCH();
}

#define RF_INSTANTIATE(T)                                                                    \
  template void copy_rows<T>(const T*, i64, T*, i64, i64, i64, cudaStream_t);                \
  template void concat_rows<T>(const T* const*, const i64*, int, T*, i64, cudaStream_t);     \
  template void pad_rows<T>(const T*, T*, i64, i64, i64, i64, double, cudaStream_t);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
#undef RF_INSTANTIATE

}  // namespace rf::kernels::cuda
