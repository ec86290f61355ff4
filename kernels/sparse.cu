// CUDA kernels of sparse rows (kernels/cuda.h): Gather, ScatterAdd and the lazy optimizer updates,
// the same semantics and per-row arithmetic as kernels/sparse_cpu.cpp.
//
// Duplicate indices: CUB's radix sort of (index, position) pairs is stable, so after it each
// distinct index is one run of sorted entries whose positions increase. The thread of (entry i,
// column d) where entry i starts a run sums rows[position, d] over the run, from 0, in that order
// (the CPU's order, so the sums are bit-identical), and applies the op to row index, column d.
// Every other thread has nothing to do. No atomics: deterministic. A run of length L costs its
// threads L reads each; the work is N x D reads in all, whatever the duplicates.
#include <cub/device/device_radix_sort.cuh>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda.h"
#include "kernels/launch.cuh"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

constexpr size_t kAlign = 256;
size_t aligned(size_t b) { return (b + kAlign - 1) / kAlign * kAlign; }

void check_rows(i64 N, i64 D, i64 V, const char* fn) {
  if (N < 0 || D < 0 || V < 0) throw std::invalid_argument(std::string(fn) + ": negative size");
  if (N > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument(std::string(fn) + ": " + std::to_string(N) + " indices, more than int32 positions");
}

// The workspace: sorted keys [N], positions in [N] and sorted [N] (int32), CUB's scratch.
template <class I>
struct Layout {
  size_t keys = 0, pos = 0, temp = 0;
  size_t total() const { return keys + 2 * pos + temp; }
};
template <class I>
Layout<I> layout(i64 N) {
  Layout<I> l;
  l.keys = aligned(size_t(N) * sizeof(I));
  l.pos = aligned(size_t(N) * sizeof(int32_t));
  size_t temp = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp, static_cast<const I*>(nullptr), static_cast<I*>(nullptr),
                                             static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                             int(N)));
  l.temp = aligned(temp);
  return l;
}

__global__ void iota_kernel(int32_t* p, i64 n) {
  RF_GRID_STRIDE(i, n) p[i] = int32_t(i);
}

template <class T, class I>
__global__ void gather_kernel(const T* params, i64 V, i64 D, const I* idx, i64 N, T* out) {
  RF_GRID_STRIDE(e, N * D) {
    const i64 n = e / D;
    const i64 k = i64(idx[n]);
    out[e] = k >= 0 && k < V ? params[k * D + (e - n * D)] : std::numeric_limits<T>::quiet_NaN();
  }
}

enum class Mode { Scatter, SGD, Momentum, LazyAdam };

// w is ScatterAdd's output for Mode::Scatter (zeroed before), else the Variable.
template <class T, class I, Mode M>
__global__ void segment_kernel(const I* keys, const int32_t* pos, i64 N, i64 D, i64 V, const T* rows, T* w, T* s1,
                               T* s2, UpdateScalars<T> by_value, const UpdateScalars<T>* dev) {
  RF_GRID_STRIDE(e, N * D) {
    const i64 i = e / D, d = e - i * D;
    const I k = keys[i];
    if ((i > 0 && keys[i - 1] == k) || k < 0 || i64(k) >= V) continue;
    T g = T(0);
    for (i64 j = i; j < N && keys[j] == k; ++j) g += rows[i64(pos[j]) * D + d];
    const i64 o = i64(k) * D + d;
    if constexpr (M == Mode::Scatter) {
      w[o] = g;
    } else {
      const UpdateScalars<T>& s = dev ? *dev : by_value;
      if constexpr (M == Mode::SGD) {  // sgd_update's element, no decay
        w[o] += s.neg_lr * g;
      } else if constexpr (M == Mode::Momentum) {  // momentum_update's
        const T vi = s.mu * s1[o] + g;
        s1[o] = vi;
        w[o] += s.neg_lr * (s.nesterov ? g + s.mu * vi : vi);
      } else {  // TF LazyAdam, with adam_update's moments
        const T mo = s1[o];
        const T mi = s.lerp_low ? mo + s.lerp_w * (g - mo) : g - (g - mo) * s.one_minus_lerp_w;
        const T vi = s2[o] * s.b2 + s.one_minus_b2 * g * g;
        s1[o] = mi;
        s2[o] = vi;
        w[o] += s.neg_lr * mi / (sqrt(vi) + s.eps);
      }
    }
  }
}

// Sorts (idx, position) into the workspace and runs segment_kernel<M>.
template <class T, class I, Mode M>
void run_segments(const I* idx, i64 N, i64 D, i64 V, const T* rows, T* w, T* s1, T* s2, const UpdateScalars<T>& s,
                  const UpdateScalars<T>* dev, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                  const char* fn) {
  if (N == 0 || D == 0) return;
  const Layout<I> l = layout<I>(N);
  if (!workspace || workspace_bytes < l.total())
    throw std::invalid_argument(std::string(fn) + ": workspace of " + std::to_string(workspace_bytes) +
                                " bytes, needs " + std::to_string(l.total()));
  char* base = static_cast<char*>(workspace);
  I* keys = reinterpret_cast<I*>(base);
  int32_t* pos_in = reinterpret_cast<int32_t*>(base + l.keys);
  int32_t* pos = reinterpret_cast<int32_t*>(base + l.keys + l.pos);
  void* temp = base + l.keys + 2 * l.pos;
  iota_kernel<<<grid_for(N), kBlock, 0, stream>>>(pos_in, N);
  CUDA_CHECK_LAUNCH();
  size_t temp_bytes = l.temp;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, idx, keys, pos_in, pos, int(N), 0, int(sizeof(I) * 8),
                                             stream));
  segment_kernel<T, I, M><<<grid_for(N * D), kBlock, 0, stream>>>(keys, pos, N, D, V, rows, w, s1, s2, s, dev);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T, class I>
void gather_rows(const T* params, i64 V, i64 D, const I* idx, i64 N, T* out, cudaStream_t stream) {
  check_rows(N, D, V, "gather_rows");
  if (N * D == 0) return;
  gather_kernel<T, I><<<grid_for(N * D), kBlock, 0, stream>>>(params, V, D, idx, N, out);
  CUDA_CHECK_LAUNCH();
}

template <class I> size_t sparse_rows_workspace_bytes(i64 N) {
  check_rows(N, 0, 0, "sparse_rows_workspace_bytes");
  return N == 0 ? 0 : layout<I>(N).total();
}

template <class T, class I>
void scatter_add_rows(const T* rows, const I* idx, i64 N, i64 D, T* out, i64 V, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream) {
  check_rows(N, D, V, "scatter_add_rows");
  if (V * D == 0) return;
  CUDA_CHECK(cudaMemsetAsync(out, 0, size_t(V * D) * sizeof(T), stream));
  run_segments<T, I, Mode::Scatter>(idx, N, D, V, rows, out, nullptr, nullptr, UpdateScalars<T>{}, nullptr, workspace,
                                    workspace_bytes, stream, "scatter_add_rows");
}

template <class T> UpdateScalars<T> lazy_adam_scalars(double lr, double b1, double b2, double eps, i64 t) {
  if (t < 1) throw std::invalid_argument("lazy Adam: step t must be >= 1, got " + std::to_string(t));
  UpdateScalars<T> s = adam_scalars<T>(lr, b1, b2, eps, 0.0, false, t);
  const double bc1 = 1.0 - std::pow(b1, double(t));
  const double bc2 = 1.0 - std::pow(b2, double(t));
  s.neg_lr = T(-(lr * std::sqrt(bc2) / bc1));
  return s;
}

template <class T, class I>
void sparse_update(UpdateKind kind, T* w, T* s1, T* s2, i64 V, i64 D, const T* rows, const I* idx, i64 N,
                   const UpdateScalars<T>& scalars, const UpdateScalars<T>* dev_scalars, void* workspace,
                   size_t workspace_bytes, cudaStream_t stream) {
  check_rows(N, D, V, "sparse_update");
  switch (kind) {
    case UpdateKind::SGD:
      return run_segments<T, I, Mode::SGD>(idx, N, D, V, rows, w, s1, s2, scalars, dev_scalars, workspace,
                                           workspace_bytes, stream, "sparse SGD");
    case UpdateKind::Momentum:
      return run_segments<T, I, Mode::Momentum>(idx, N, D, V, rows, w, s1, s2, scalars, dev_scalars, workspace,
                                                workspace_bytes, stream, "sparse momentum");
    case UpdateKind::Adam:
      return run_segments<T, I, Mode::LazyAdam>(idx, N, D, V, rows, w, s1, s2, scalars, dev_scalars, workspace,
                                                workspace_bytes, stream, "lazy Adam");
  }
}

#define RF_SPARSE_INST(T, I)                                                                                 \
  template void gather_rows<T, I>(const T*, i64, i64, const I*, i64, T*, cudaStream_t);                     \
  template void scatter_add_rows<T, I>(const T*, const I*, i64, i64, T*, i64, void*, size_t, cudaStream_t); \
  template void sparse_update<T, I>(UpdateKind, T*, T*, T*, i64, i64, const T*, const I*, i64,               \
                                    const UpdateScalars<T>&, const UpdateScalars<T>*, void*, size_t, cudaStream_t);
RF_SPARSE_INST(float, int32_t)
RF_SPARSE_INST(float, int64_t)
RF_SPARSE_INST(double, int32_t)
RF_SPARSE_INST(double, int64_t)
#undef RF_SPARSE_INST
template size_t sparse_rows_workspace_bytes<int32_t>(i64);
template size_t sparse_rows_workspace_bytes<int64_t>(i64);
template UpdateScalars<float> lazy_adam_scalars<float>(double, double, double, double, i64);
template UpdateScalars<double> lazy_adam_scalars<double>(double, double, double, double, i64);

}  // namespace rf::kernels::cuda
