// Layer normalisation over the last axis of a [rows, cols] matrix (LayerNorm, LayerNormGrad),
// PyTorch's F.layer_norm: biased variance, eps inside the square root. The forward pass and dx
// are one pass of work per row, split over rows; dgamma and dbeta are column sums, split over
// column blocks, each summing every row in order (so no result depends on the thread count).
#include <algorithm>
#include <cmath>

#include "kernels/cpu.h"
#include "kernels/parallel.h"

namespace rf::kernels::cpu {

namespace {

constexpr i64 kGrain = 1 << 14;  // elements per thread below which one thread does the whole op
constexpr i64 kColBlock = 64;    // columns per block of the dgamma / dbeta sums

// Sum of a row in double, with 4 independent lanes (vectorises without -ffast-math).
template <class T> double row_sum(const T* x, i64 n) {
  double l[4] = {0, 0, 0, 0};
  i64 i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) l[j] += double(x[i + j]);
  for (; i < n; ++i) l[0] += double(x[i]);
  return (l[0] + l[1]) + (l[2] + l[3]);
}

// Sum of (x - m)^2 in double.
template <class T> double row_sq_dev(const T* x, double m, i64 n) {
  double l[4] = {0, 0, 0, 0};
  i64 i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) {
      const double d = double(x[i + j]) - m;
      l[j] += d * d;
    }
  for (; i < n; ++i) {
    const double d = double(x[i]) - m;
    l[0] += d * d;
  }
  return (l[0] + l[1]) + (l[2] + l[3]);
}

}  // namespace

template <class T>
void layer_norm(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, i64 rows, i64 cols, double eps) {
  if (rows <= 0) return;
  if (cols <= 0) {  // no elements: the mean of nothing, as PyTorch gives (NaN)
    for (i64 r = 0; r < rows; ++r) mean[r] = rstd[r] = T(NAN);
    return;
  }
  parallel_range(rows, std::max<i64>(1, kGrain / cols), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      // Two passes over the row (mean, then the squared deviations): no cancellation.
      const double m = row_sum(xr, cols) / double(cols);
      const double var = row_sq_dev(xr, m, cols) / double(cols);
      const double rs = 1.0 / std::sqrt(var + eps);
      mean[r] = T(m);
      rstd[r] = T(rs);
      const T mt = T(m), rt = T(rs);
      RF_IVDEP
      for (i64 c = 0; c < cols; ++c) yr[c] = (xr[c] - mt) * rt * gamma[c] + beta[c];
    }
  });
}

template <class T>
void layer_norm_grad(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd, T* dx, T* dgamma,
                     T* dbeta, i64 rows, i64 cols) {
  if (cols <= 0) return;
  // dx, a row at a time: the two row means in double, then one elementwise pass.
  parallel_range(rows, std::max<i64>(1, kGrain / cols), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      const T* dyr = dy + r * cols;
      const T* xr = x + r * cols;
      T* dxr = dx + r * cols;
      const T mt = mean[r], rt = rstd[r];
      double sg[4] = {0, 0, 0, 0}, sgx[4] = {0, 0, 0, 0};
      i64 c = 0;
      for (; c + 4 <= cols; c += 4)
        for (int j = 0; j < 4; ++j) {
          const double g = double(dyr[c + j]) * double(gamma[c + j]);
          sg[j] += g;
          sgx[j] += g * (double(xr[c + j] - mt) * double(rt));
        }
      for (; c < cols; ++c) {
        const double g = double(dyr[c]) * double(gamma[c]);
        sg[0] += g;
        sgx[0] += g * (double(xr[c] - mt) * double(rt));
      }
      const T a = T(((sg[0] + sg[1]) + (sg[2] + sg[3])) / double(cols));
      const T b = T(((sgx[0] + sgx[1]) + (sgx[2] + sgx[3])) / double(cols));
      RF_IVDEP
      for (i64 k = 0; k < cols; ++k) {
        const T xhat = (xr[k] - mt) * rt;
        dxr[k] = rt * (dyr[k] * gamma[k] - a - xhat * b);
      }
    }
  });
  // dgamma, dbeta: blocks of columns, every row in order.
  const i64 blocks = (cols + kColBlock - 1) / kColBlock;
  parallel_range(blocks, std::max<i64>(1, kGrain / std::max<i64>(1, rows * kColBlock)), [&](i64 b0, i64 b1) {
    double sg[kColBlock], sb[kColBlock];
    for (i64 blk = b0; blk < b1; ++blk) {
      const i64 c0 = blk * kColBlock, w = std::min(kColBlock, cols - c0);
      std::fill(sg, sg + w, 0.0);
      std::fill(sb, sb + w, 0.0);
      for (i64 r = 0; r < rows; ++r) {
        const T* dyr = dy + r * cols + c0;
        const T* xr = x + r * cols + c0;
        const T mt = mean[r], rt = rstd[r];
        for (i64 j = 0; j < w; ++j) {
          sg[j] += double(dyr[j]) * double((xr[j] - mt) * rt);
          sb[j] += double(dyr[j]);
        }
      }
      for (i64 j = 0; j < w; ++j) {
        dgamma[c0 + j] = T(sg[j]);
        dbeta[c0 + j] = T(sb[j]);
      }
    }
  });
}

template void layer_norm<float>(const float*, const float*, const float*, float*, float*, float*, i64, i64, double);
template void layer_norm<double>(const double*, const double*, const double*, double*, double*, double*, i64, i64,
                                 double);
template void layer_norm_grad<float>(const float*, const float*, const float*, const float*, const float*, float*,
                                     float*, float*, i64, i64);
template void layer_norm_grad<double>(const double*, const double*, const double*, const double*, const double*,
                                      double*, double*, double*, i64, i64);

}  // namespace rf::kernels::cpu
