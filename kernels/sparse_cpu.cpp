// CPU kernels of sparse rows: Gather (embedding lookup), ScatterAdd (its gradient made dense) and
// the lazy optimizer updates that consume the gradient as (rows, indices) without forming it.
//
// Duplicate indices: the positions are sorted by (index, position) (std::sort, no allocation),
// so each distinct index is one segment of positions in increasing order; its gradient row is
// 0 + rows[p0] + rows[p1] + ... in that order, which is exactly what scatter_add_rows adds into
// that row. A sparse update therefore sees bitwise the row the dense update would read.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/parallel.h"

namespace rf::kernels::cpu {

namespace {

// Elements of work per thread below which one thread does the whole op (as in optim_cpu.cpp).
constexpr i64 kGrain = 1 << 15;

template <class I>
void check_indices(const I* idx, i64 N, i64 V, const char* op) {
  for (i64 n = 0; n < N; ++n)
    if (idx[n] < 0 || i64(idx[n]) >= V)
      throw std::invalid_argument(std::string(op) + ": index " + std::to_string(static_cast<long long>(idx[n])) +
                                  " at position " + std::to_string(n) + " is outside [0, " + std::to_string(V) +
                                  ")");
}

// The per-thread scratch: positions sorted by (index, position), the segments' starts (one
// past the last at the end), and one summed row. They only grow.
template <class T>
struct Scratch {
  std::vector<i64> order, starts;
  std::vector<T> row;
};
template <class T>
Scratch<T>& scratch() {
  thread_local Scratch<T> s;
  return s;
}

template <class I>
void segments(const I* idx, i64 N, std::vector<i64>& order, std::vector<i64>& starts) {
  order.resize(size_t(N));
  for (i64 n = 0; n < N; ++n) order[size_t(n)] = n;
  std::sort(order.begin(), order.begin() + N,
            [idx](i64 a, i64 b) { return idx[a] < idx[b] || (idx[a] == idx[b] && a < b); });
  starts.clear();
  for (i64 i = 0; i < N; ++i)
    if (i == 0 || idx[order[size_t(i)]] != idx[order[size_t(i - 1)]]) starts.push_back(i);
  starts.push_back(N);
}

// TF LazyAdam on one row, with adam_update's moment arithmetic.
template <class T>
struct LazyAdamScalars {
  T neg_lr_t, eps, b2, one_minus_b2, lerp_w, one_minus_lerp_w;
  bool lerp_low;
};
template <class T>
void lazy_adam_row(T* w, T* m, T* v, const T* g, i64 D, const LazyAdamScalars<T>& s) {
  for (i64 d = 0; d < D; ++d) {
    const T gi = g[d];
    const T mi = s.lerp_low ? m[d] + s.lerp_w * (gi - m[d]) : gi - (gi - m[d]) * s.one_minus_lerp_w;
    const T vi = v[d] * s.b2 + s.one_minus_b2 * gi * gi;
    m[d] = mi;
    v[d] = vi;
    w[d] += s.neg_lr_t * mi / (std::sqrt(vi) + s.eps);
  }
}

}  // namespace

template <class T, class I>
void gather_rows(const T* params, i64 V, i64 D, const I* idx, i64 N, T* out) {
  check_indices(idx, N, V, "Gather");
  parallel_range(N, std::max<i64>(1, kGrain / std::max<i64>(D, 1)), [&](i64 b, i64 e) {
    for (i64 n = b; n < e; ++n) std::memcpy(out + n * D, params + i64(idx[n]) * D, size_t(D) * sizeof(T));
  });
}

template <class T, class I>
void scatter_add_rows(const T* rows, const I* idx, i64 N, i64 D, T* out, i64 V) {
  check_indices(idx, N, V, "ScatterAdd");
  std::fill(out, out + V * D, T(0));
  for (i64 n = 0; n < N; ++n) {
    T* o = out + i64(idx[n]) * D;
    const T* r = rows + n * D;
    RF_IVDEP
    for (i64 d = 0; d < D; ++d) o[d] += r[d];
  }
}

template <class T, class I>
void sparse_update(SparseOpt opt, T* w, T* s1, T* s2, i64 V, i64 D, const T* rows, const I* idx, i64 N,
                   const SparseHyper& h) {
  check_indices(idx, N, V, "sparse update");
  if (opt == SparseOpt::LazyAdam && h.step < 1)
    throw std::invalid_argument("lazy Adam: step t must be >= 1, got " + std::to_string(h.step));
  Scratch<T>& sc = scratch<T>();
  segments(idx, N, sc.order, sc.starts);
  const i64 nseg = i64(sc.starts.size()) - 1;
  const i64* order = sc.order.data();
  const i64* starts = sc.starts.data();

  LazyAdamScalars<T> as{};
  if (opt == SparseOpt::LazyAdam) {  // in double, then rounded to T once
    const double bc1 = 1.0 - std::pow(h.b1, double(h.step));
    const double bc2 = 1.0 - std::pow(h.b2, double(h.step));
    const double lw = 1.0 - h.b1;
    as = {T(-(h.lr * std::sqrt(bc2) / bc1)), T(h.eps), T(h.b2), T(1.0 - h.b2), T(lw), T(1.0 - lw), lw < 0.5};
  }
  // Over segments: each writes its own row of w and the slots, so threads never share a row.
  parallel_range(nseg, std::max<i64>(1, kGrain / std::max<i64>(D * (N / std::max<i64>(nseg, 1)), 1)),
                 [&](i64 b, i64 e) {
                   std::vector<T>& acc = scratch<T>().row;  // this thread's
                   if (acc.size() < size_t(D)) acc.resize(size_t(D));
                   T* g = acc.data();
                   for (i64 s = b; s < e; ++s) {
                     const i64 r = i64(idx[order[starts[s]]]);
                     std::fill(g, g + D, T(0));
                     for (i64 j = starts[s]; j < starts[s + 1]; ++j) {
                       const T* src = rows + order[j] * D;
                       RF_IVDEP
                       for (i64 d = 0; d < D; ++d) g[d] += src[d];
                     }
                     switch (opt) {
                       case SparseOpt::SGD: sgd_update<T>(w + r * D, g, D, h.lr, 0.0); break;
                       case SparseOpt::Momentum:
                         momentum_update<T>(w + r * D, s1 + r * D, g, D, h.lr, h.mu, 0.0, h.nesterov);
                         break;
                       case SparseOpt::LazyAdam: lazy_adam_row<T>(w + r * D, s1 + r * D, s2 + r * D, g, D, as); break;
                     }
                   }
                 });
}

#define RF_SPARSE_INST(T, I)                                                                          \
  template void gather_rows<T, I>(const T*, i64, i64, const I*, i64, T*);                           \
  template void scatter_add_rows<T, I>(const T*, const I*, i64, i64, T*, i64);                      \
  template void sparse_update<T, I>(SparseOpt, T*, T*, T*, i64, i64, const T*, const I*, i64, const SparseHyper&);
RF_SPARSE_INST(float, int32_t)
RF_SPARSE_INST(float, int64_t)
RF_SPARSE_INST(double, int32_t)
RF_SPARSE_INST(double, int64_t)
#undef RF_SPARSE_INST

}  // namespace rf::kernels::cpu
