// CPU softmax family over the last axis of a [rows, cols] matrix, and the fused sparse softmax
// cross-entropy. Every row subtracts its max before exp, so large logits cannot overflow.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cpu.h"
#include "kernels/parallel.h"


namespace rf::kernels::cpu {

namespace {

// Below this many elements per thread one thread does the whole op: starting an OpenMP team
// costs microseconds, more than an entire op at the batch sizes we train with. Lower than in the
// pure-arithmetic files because every element here costs an exp.
constexpr i64 kGrain = 1 << 12;


// Row max and dot products with 8 independent lanes, which GCC vectorizes without -ffast-math.
template <class T>
T row_max(const T* x, i64 n) {
  T lane[8];
  for (int j = 0; j < 8; ++j) lane[j] = x[0];
  i64 i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  T m = lane[0];
  for (int j = 1; j < 8; ++j) m = lane[j] > m ? lane[j] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

template <class T>
T row_dot(const T* a, const T* b, i64 n) {
  T lane[8] = {};
  i64 i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] += a[i + j] * b[i + j];
  T s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int w = 4; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) lane[j] += lane[j + w];
  return lane[0] + s;
}

template <class T>
T row_sum(const T* a, i64 n) {
  T lane[8] = {};
  i64 i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] += a[i + j];
  T s = 0;
  for (; i < n; ++i) s += a[i];
  for (int w = 4; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) lane[j] += lane[j + w];
  return lane[0] + s;
}

// e[i] = exp(x[i] - m); returns sum e. The sum is kept in double: exp dominates the cost anyway,
// and wide rows (vocabularies) would otherwise lose float bits.
template <class T>
double exp_shifted(const T* x, T m, T* e, i64 n) {
  double s = 0;
  for (i64 i = 0; i < n; ++i) {
    const T v = std::exp(x[i] - m);
    e[i] = v;
    s += v;
  }
  return s;
}

template <class T>
double sum_exp_shifted(const T* x, T m, i64 n) {
  double s = 0;
  for (i64 i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return s;
}

}  // namespace

template <class T>
void softmax(const T* x, T* y, i64 rows, i64 cols) {
  if (cols <= 0) return;
  parallel_range(rows, kGrain / std::max<i64>(1, cols), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      const T m = row_max(xr, cols);
      const T inv = static_cast<T>(1.0 / exp_shifted(xr, m, yr, cols));
      for (i64 i = 0; i < cols; ++i) yr[i] *= inv;
    }
  });
}

template <class T>
void log_softmax(const T* x, T* y, i64 rows, i64 cols) {
  if (cols <= 0) return;
  parallel_range(rows, kGrain / std::max<i64>(1, cols), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      const T m = row_max(xr, cols);
      const T lse = static_cast<T>(std::log(sum_exp_shifted(xr, m, cols)));
      // (x - m) - lse rather than x - (m + lse): rounding m + lse first would cost the entries
      // near the max (the likely classes) their low bits.
      RF_IVDEP
      for (i64 i = 0; i < cols; ++i) yr[i] = (xr[i] - m) - lse;
    }
  });
}

template <class T>
void softmax_grad(const T* dy, const T* y, T* dx, i64 rows, i64 cols) {
  parallel_range(rows, kGrain / std::max<i64>(1, cols / 8 + 1), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      const T* dyr = dy + r * cols;
      const T* yr = y + r * cols;
      T* dxr = dx + r * cols;
      const T s = row_dot(dyr, yr, cols);
      RF_IVDEP
      for (i64 i = 0; i < cols; ++i) dxr[i] = yr[i] * (dyr[i] - s);
    }
  });
}

template <class T>
void log_softmax_grad(const T* dy, const T* y, T* dx, i64 rows, i64 cols) {
  parallel_range(rows, kGrain / std::max<i64>(1, cols), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      const T* dyr = dy + r * cols;
      const T* yr = y + r * cols;
      T* dxr = dx + r * cols;
      const T s = row_sum(dyr, cols);
      RF_IVDEP
      for (i64 i = 0; i < cols; ++i) dxr[i] = dyr[i] - std::exp(yr[i]) * s;
    }
  });
}

template <class T, class L>
void sparse_xent(const T* logits, const L* labels, T* loss, T* backprop, i64 rows, i64 cols, i64 ignore_index,
                 double label_smoothing) {
  // Checked up front and serially: an exception must not leave an OpenMP region.
  for (i64 r = 0; r < rows; ++r)
    if (static_cast<i64>(labels[r]) != ignore_index && (labels[r] < 0 || static_cast<i64>(labels[r]) >= cols))
      throw std::invalid_argument("sparse_xent: label " + std::to_string(static_cast<long long>(labels[r])) +
                                  " at row " + std::to_string(r) + " is outside [0, " + std::to_string(cols) + ")");
  const double eps = label_smoothing;
  // The target: `on` at the label, `off` elsewhere (1 and 0 without smoothing).
  const T off = static_cast<T>(eps / static_cast<double>(cols));
  const T on = static_cast<T>(1.0 - eps + eps / static_cast<double>(cols));
  parallel_range(rows, kGrain / std::max<i64>(1, cols), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      const T* xr = logits + r * cols;
      T* br = backprop + r * cols;
      const i64 label = static_cast<i64>(labels[r]);
      if (label == ignore_index) {
        loss[r] = T(0);
        std::fill(br, br + cols, T(0));
        continue;
      }
      const T m = row_max(xr, cols);
      const double s = exp_shifted(xr, m, br, cols);
      const T inv = static_cast<T>(1.0 / s);
      if (eps == 0) {
        loss[r] = static_cast<T>(std::log(s) - static_cast<double>(xr[label] - m));
        for (i64 i = 0; i < cols; ++i) br[i] *= inv;
        br[label] -= T(1);
        continue;
      }
      double sum_xm = 0;  // sum_c (x_c - m): the smoothing term's logits, shifted as lse is
      for (i64 i = 0; i < cols; ++i) sum_xm += static_cast<double>(xr[i] - m);
      loss[r] = static_cast<T>(std::log(s) - (1.0 - eps) * static_cast<double>(xr[label] - m) -
                               eps / static_cast<double>(cols) * sum_xm);
      for (i64 i = 0; i < cols; ++i) br[i] = br[i] * inv - (i == label ? on : off);
    }
  });
}

template <class T>
void sparse_xent_grad(const T* dloss, const T* backprop, T* dlogits, i64 rows, i64 cols) {
  parallel_range(rows, kGrain / std::max<i64>(1, cols / 8 + 1), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      const T d = dloss[r];
      const T* br = backprop + r * cols;
      T* dr = dlogits + r * cols;
      RF_IVDEP
      for (i64 i = 0; i < cols; ++i) dr[i] = d * br[i];
    }
  });
}

template void softmax<float>(const float*, float*, i64, i64);
template void softmax<double>(const double*, double*, i64, i64);
template void log_softmax<float>(const float*, float*, i64, i64);
template void log_softmax<double>(const double*, double*, i64, i64);
template void softmax_grad<float>(const float*, const float*, float*, i64, i64);
template void softmax_grad<double>(const double*, const double*, double*, i64, i64);
template void log_softmax_grad<float>(const float*, const float*, float*, i64, i64);
template void log_softmax_grad<double>(const double*, const double*, double*, i64, i64);
template void sparse_xent<float, int32_t>(const float*, const int32_t*, float*, float*, i64, i64, i64, double);
template void sparse_xent<float, int64_t>(const float*, const int64_t*, float*, float*, i64, i64, i64, double);
template void sparse_xent<double, int32_t>(const double*, const int32_t*, double*, double*, i64, i64, i64, double);
template void sparse_xent<double, int64_t>(const double*, const int64_t*, double*, double*, i64, i64, i64, double);
template void sparse_xent_grad<float>(const float*, const float*, float*, i64, i64);
template void sparse_xent_grad<double>(const double*, const double*, double*, i64, i64);

}  // namespace rf::kernels::cpu
