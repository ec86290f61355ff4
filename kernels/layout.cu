// CUDA transpose, dtype casts and dropout (kernels/cuda.h). Casts use the integer rounding of
// kernels/half.h and dropout the counter-based draws of kernels/random.h, so both give the CPU's
// bits exactly.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda.h"
#include "kernels/launch.cuh"
#include "kernels/half.h"
#include "kernels/random.h"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

struct Strides {
  i64 v[Shape::kMaxRank] = {};
};

// ys is x's shape permuted; src.v[d] is x's element stride along output axis d.
template <class T> __global__ void transpose_kernel(const T* x, T* y, Shape ys, Strides src, i64 n) {
  RF_GRID_STRIDE(i, n) {
    i64 rest = i, off = 0;
    for (int d = ys.rank - 1; d >= 0; --d) {
      off += (rest % ys.dims[d]) * src.v[d];
      rest /= ys.dims[d];
    }
    y[i] = x[off];
  }
}

template <class From, class To, class F> __global__ void convert_kernel(F f, const From* x, To* y, i64 n) {
  RF_GRID_STRIDE(i, n) y[i] = f(x[i]);
}

template <class T> __global__ void dropout_kernel(const T* x, T* y, T* mask, i64 n, double rate, T scale, uint64_t key) {
  RF_GRID_STRIDE(i, n) {
    const T m = rng::keep(key, static_cast<uint64_t>(i), rate) ? scale : T(0);
    mask[i] = m;
    y[i] = x[i] * m;
  }
}


template <class From, class To, class F> void convert(F f, const From* x, To* y, i64 n, cudaStream_t stream) {
  if (n < 0) throw std::invalid_argument("cast: negative element count");
  if (n == 0) return;
  convert_kernel<From, To><<<grid_for(n), kBlock, 0, stream>>>(f, x, y, n);
  CUDA_CHECK_LAUNCH();
}

// Static casts; the 16-bit formats through the integer-only conversions both backends share.
struct ToDouble {
  __device__ double operator()(float v) const { return v; }
};
struct ToFloat {
  __device__ float operator()(double v) const { return static_cast<float>(v); }
};
struct ToHalf {
  __device__ uint16_t operator()(float v) const { return float_to_half_bits(v); }
};
struct FromHalf {
  __device__ float operator()(uint16_t v) const { return half_bits_to_float(v); }
};
struct ToBf16 {
  __device__ uint16_t operator()(float v) const { return float_to_bf16_bits(v); }
};
struct FromBf16 {
  __device__ float operator()(uint16_t v) const { return bf16_bits_to_float(v); }
};

}  // namespace

template <class T> void transpose(const T* x, const Shape& xs, const int* perm, T* y, cudaStream_t stream) {
  Strides x_stride, src;
  i64 acc = 1;
  for (int d = xs.rank - 1; d >= 0; --d) {
    x_stride.v[d] = acc;
    acc *= xs.dims[d];
  }
  Shape ys;
  bool seen[Shape::kMaxRank] = {};
  for (int d = 0; d < xs.rank; ++d) {
    const int p = perm[d];
    if (p < 0 || p >= xs.rank || seen[p])
      throw std::invalid_argument("transpose: perm is not a permutation of rank " + std::to_string(xs.rank));
    seen[p] = true;
    ys.push_back(xs.dims[p]);
    src.v[d] = x_stride.v[p];
  }
  const i64 n = xs.numel();
  if (n == 0) return;
  transpose_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(x, y, ys, src, n);
  CUDA_CHECK_LAUNCH();
}

void f32_to_f64(const float* x, double* y, i64 n, cudaStream_t stream) { convert(ToDouble{}, x, y, n, stream); }
void f64_to_f32(const double* x, float* y, i64 n, cudaStream_t stream) { convert(ToFloat{}, x, y, n, stream); }
void f32_to_f16(const float* x, uint16_t* y, i64 n, cudaStream_t stream) { convert(ToHalf{}, x, y, n, stream); }
void f16_to_f32(const uint16_t* x, float* y, i64 n, cudaStream_t stream) { convert(FromHalf{}, x, y, n, stream); }
void f32_to_bf16(const float* x, uint16_t* y, i64 n, cudaStream_t stream) { convert(ToBf16{}, x, y, n, stream); }
void bf16_to_f32(const uint16_t* x, float* y, i64 n, cudaStream_t stream) { convert(FromBf16{}, x, y, n, stream); }

template <class T>
void dropout(const T* x, T* y, T* mask, i64 n, double rate, uint64_t seed, uint64_t counter, cudaStream_t stream) {
  if (!(rate >= 0.0 && rate <= 1.0))
    throw std::invalid_argument("dropout: rate must be in [0, 1], got " + std::to_string(rate));
  if (n < 0) throw std::invalid_argument("dropout: negative element count");
  if (n == 0) return;
  // As on the CPU: rate 1 drops everything without forming 1/(1-rate) = inf.
  const T scale = rate < 1.0 ? static_cast<T>(1.0 / (1.0 - rate)) : T(0);
  dropout_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(x, y, mask, n, rate, scale, rng::stream_key(seed, counter));
  CUDA_CHECK_LAUNCH();
}

template void transpose<float>(const float*, const Shape&, const int*, float*, cudaStream_t);
template void transpose<double>(const double*, const Shape&, const int*, double*, cudaStream_t);
template void dropout<float>(const float*, float*, float*, i64, double, uint64_t, uint64_t, cudaStream_t);
template void dropout<double>(const double*, double*, double*, i64, double, uint64_t, uint64_t, cudaStream_t);

}  // namespace rf::kernels::cuda
