// CPU reductions, broadcasts, transposes and the bias ops. Shapes are first collapsed (size-1 dims
// dropped, adjacent dims of the same kind merged) so every case runs as a few contiguous loops.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <string>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "kernels/cpu.h"
#include "kernels/parallel.h"


namespace rf::kernels::cpu {

namespace {

constexpr int kMaxRank = Shape::kMaxRank;

// Below this many elements per thread one thread does the whole op: starting an OpenMP team
// costs microseconds, more than an entire op at the batch sizes we train with.
constexpr i64 kGrain = 1 << 15;


// Not Shape::str(): inlined at -O3, its `const char* + std::string&&` trips a GCC 12 -Wrestrict
// false positive (GCC PR 105329).
std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (int i = 0; i < s.rank; ++i) {
    if (i) r += ',';
    r += std::to_string(s[i]);
  }
  r += ']';
  return r;
}

// A set of dims (outer to inner) with element strides, visited in row-major order.
struct Walk {
  int r = 0;
  i64 n[kMaxRank];
  i64 st[kMaxRank];
  void add(i64 size, i64 stride) {
    n[r] = size;
    st[r] = stride;
    ++r;
  }
  i64 count() const {
    i64 c = 1;
    for (int d = 0; d < r; ++d) c *= n[d];
    return c;
  }
};

// Offset of successive points of a Walk, starting at its lin-th point.
struct Cursor {
  const Walk& w;
  i64 idx[kMaxRank] = {};
  i64 off = 0;
  Cursor(const Walk& walk, i64 lin) : w(walk) {
    for (int d = w.r - 1; d >= 0; --d) {
      idx[d] = lin % w.n[d];
      lin /= w.n[d];
      off += idx[d] * w.st[d];
    }
  }
  void next() {
    for (int d = w.r - 1; d >= 0; --d) {
      off += w.st[d];
      if (++idx[d] < w.n[d]) return;
      off -= w.st[d] * w.n[d];
      idx[d] = 0;
    }
  }
};

// Contiguous sum. 16 independent partial sums let GCC vectorize without -ffast-math; above a
// block the range is halved recursively (pairwise), so float error grows like log n, not n.
template <class T>
T sum_contig(const T* x, i64 n) {
  constexpr i64 kBlock = 2048;
  if (n > kBlock) {
    const i64 h = n / 2 / 16 * 16;
    return sum_contig(x, h) + sum_contig(x + h, n - h);
  }
  T acc[16] = {};
  i64 i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j];
  T tail = 0;
  for (; i < n; ++i) tail += x[i];
  for (int w = 8; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0] + tail;
}

template <class T>
void scale_copy(const T* x, T* y, i64 n, T s) {
  if (s == T(1)) {
    if (x != y) std::memcpy(y, x, n * sizeof(T));
    return;
  }
  RF_IVDEP
  for (i64 i = 0; i < n; ++i) y[i] = x[i] * s;
}

// y[k] = scale * sum over rows of x[rows[j] + k], k in [0, K). Rows are summed in two levels of
// blocks (64 rows into `part`, 64 parts into `mid`) before joining the total, which keeps float
// error near (64 + 64 + rows/4096) ulps instead of rows, with the vectorizable row-add inside.
template <class T>
void sum_rows(const T* x, const Walk& rows, i64 K, T* y, T scale) {
  constexpr i64 kTile = 256, kBlock = 64;
  const i64 nrows = rows.count();
  T part[kTile], mid[kTile];
  for (i64 k0 = 0; k0 < K; k0 += kTile) {
    const i64 kn = std::min(kTile, K - k0);
    T* yt = y + k0;
    std::fill(yt, yt + kn, T(0));
    Cursor c(rows, 0);
    for (i64 r0 = 0; r0 < nrows; r0 += kBlock * kBlock) {
      std::fill(mid, mid + kn, T(0));
      const i64 r1 = std::min(nrows, r0 + kBlock * kBlock);
      for (i64 b0 = r0; b0 < r1; b0 += kBlock) {
        std::fill(part, part + kn, T(0));
        const i64 b1 = std::min(r1, b0 + kBlock);
        for (i64 r = b0; r < b1; ++r, c.next()) {
          const T* xr = x + c.off + k0;
          for (i64 k = 0; k < kn; ++k) part[k] += xr[k];
        }
        for (i64 k = 0; k < kn; ++k) mid[k] += part[k];
      }
      for (i64 k = 0; k < kn; ++k) yt[k] += mid[k];
    }
    if (scale != T(1))
      for (i64 k = 0; k < kn; ++k) yt[k] *= scale;
  }
}

// x collapsed against y for reduce_sum: dims of x that are 1 dropped, adjacent dims merged when
// both are reduced or both kept. Both stay contiguous under the merge.
struct ReducePlan {
  int r = 0;
  i64 n[kMaxRank];
  bool red[kMaxRank];
  i64 xst[kMaxRank];  // x's element stride of each merged dim
  i64 yst[kMaxRank];  // y's element stride (0 for reduced dims)
};

ReducePlan plan_reduce(const Shape& xs, const Shape& ys) {
  ReducePlan p;
  for (int d = 0; d < xs.rank; ++d) {
    if (xs[d] == 1) continue;
    const bool red = ys[d] == 1;
    if (p.r > 0 && p.red[p.r - 1] == red) {
      p.n[p.r - 1] *= xs[d];
    } else {
      p.n[p.r] = xs[d];
      p.red[p.r] = red;
      ++p.r;
    }
  }
  i64 sx = 1, sy = 1;
  for (int d = p.r - 1; d >= 0; --d) {
    p.xst[d] = sx;
    sx *= p.n[d];
    p.yst[d] = p.red[d] ? 0 : sy;
    if (!p.red[d]) sy *= p.n[d];
  }
  return p;
}

void check_same_rank(const char* fn, const Shape& xs, const Shape& ys) {
  if (xs.rank != ys.rank)
    throw std::invalid_argument(std::string(fn) + ": ranks of " + shape_str(xs) + " and " + shape_str(ys) +
                                " differ");
}

template <class T>
void reduce_impl(const T* x, const Shape& xs, T* y, const Shape& ys, T scale) {
  const ReducePlan p = plan_reduce(xs, ys);
  const i64 nx = xs.numel(), ny = ys.numel();
  if (ny == 0) return;
  if (nx == 0) {
    std::fill(y, y + ny, T(0));
    return;
  }
  bool any_red = false;
  for (int d = 0; d < p.r; ++d) any_red |= p.red[d];
  if (!any_red) {
    parallel_range(nx, kGrain, [&](i64 b, i64 e) { scale_copy(x + b, y + b, e - b, scale); });
    return;
  }
  const int in = p.r - 1;
  if (p.red[in]) {
    // Innermost dim reduced: each output is a sum of contiguous runs of length L.
    const i64 L = p.n[in];
    Walk kept, runs;
    for (int d = 0; d < in; ++d) (p.red[d] ? runs : kept).add(p.n[d], p.xst[d]);
    const i64 nruns = runs.count();
    parallel_range(ny, kGrain / std::max<i64>(1, nruns * L), [&](i64 o0, i64 o1) {
      Cursor ko(kept, o0);
      for (i64 o = o0; o < o1; ++o, ko.next()) {
        T acc = 0;
        Cursor rc(runs, 0);
        for (i64 j = 0; j < nruns; ++j, rc.next()) acc += sum_contig(x + ko.off + rc.off, L);
        y[o] = acc * scale;
      }
    });
  } else {
    // Innermost dim kept: each output row of K is a sum of contiguous rows of x.
    const i64 K = p.n[in];
    Walk kept, rows;
    for (int d = 0; d < in; ++d) (p.red[d] ? rows : kept).add(p.n[d], p.xst[d]);
    const i64 nrows = rows.count(), nout = ny / K;
    constexpr i64 kTile = 256;
    const i64 ktiles = (K + kTile - 1) / kTile;
    // Work items are (output row, column tile) pairs so a single output row still threads.
    parallel_range(nout * ktiles, kGrain / std::max<i64>(1, nrows * std::min(K, kTile)), [&](i64 w0, i64 w1) {
      for (i64 w = w0; w < w1; ++w) {
        const i64 o = w / ktiles, k0 = (w % ktiles) * kTile;
        const Cursor ko(kept, o);
        sum_rows(x + ko.off + k0, rows, std::min(kTile, K - k0), y + o * K + k0, scale);
      }
    });
  }
}

// Edge of the square block the SIMD transpose kernels handle (1: no SIMD kernel).
template <class T>
constexpr i64 kVecBlock = 1;

#if defined(__AVX__)
template <>
constexpr i64 kVecBlock<float> = 8;
template <>
constexpr i64 kVecBlock<double> = 4;

// y[i * ys + j] = x[i + j * xs] for an 8x8 float block, in registers: ~4x faster than the
// element loop, whose strided loads cannot vectorize.
inline void block_transpose(const float* x, i64 xs, float* y, i64 ys) {
  const __m256 r0 = _mm256_loadu_ps(x), r1 = _mm256_loadu_ps(x + xs), r2 = _mm256_loadu_ps(x + 2 * xs),
               r3 = _mm256_loadu_ps(x + 3 * xs), r4 = _mm256_loadu_ps(x + 4 * xs), r5 = _mm256_loadu_ps(x + 5 * xs),
               r6 = _mm256_loadu_ps(x + 6 * xs), r7 = _mm256_loadu_ps(x + 7 * xs);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(y, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(y + ys, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(y + 2 * ys, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(y + 3 * ys, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(y + 4 * ys, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(y + 5 * ys, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(y + 6 * ys, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(y + 7 * ys, _mm256_permute2f128_ps(u3, u7, 0x31));
}

inline void block_transpose(const double* x, i64 xs, double* y, i64 ys) {
  const __m256d r0 = _mm256_loadu_pd(x), r1 = _mm256_loadu_pd(x + xs), r2 = _mm256_loadu_pd(x + 2 * xs),
                r3 = _mm256_loadu_pd(x + 3 * xs);
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
  const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  _mm256_storeu_pd(y, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(y + ys, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(y + 2 * ys, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(y + 3 * ys, _mm256_permute2f128_pd(t1, t3, 0x31));
}
#endif

// y[i * ys_row + j] = x[i + j * xs_col] over rows x cols, in 32x32 tiles so each tile's source
// lines stay in L1; inside a tile, full SIMD blocks where available and element copies at the
// ragged edges.
template <class T>
void transpose_2d_tile(const T* x, i64 xs_col, T* y, i64 ys_row, i64 rows, i64 cols) {
  constexpr i64 kT = 32, V = kVecBlock<T>;
  for (i64 i0 = 0; i0 < rows; i0 += kT) {
    const i64 i1 = std::min(rows, i0 + kT);
    for (i64 j0 = 0; j0 < cols; j0 += kT) {
      const i64 j1 = std::min(cols, j0 + kT);
      i64 ib = i0;
      if constexpr (V > 1) {
        for (; ib + V <= i1; ib += V) {
          i64 jb = j0;
          for (; jb + V <= j1; jb += V) block_transpose(x + ib + jb * xs_col, xs_col, y + ib * ys_row + jb, ys_row);
          for (i64 i = ib; i < ib + V; ++i)
            for (i64 j = jb; j < j1; ++j) y[i * ys_row + j] = x[i + j * xs_col];
        }
      }
      for (i64 i = ib; i < i1; ++i)
        for (i64 j = j0; j < j1; ++j) y[i * ys_row + j] = x[i + j * xs_col];
    }
  }
}

}  // namespace

template <class T>
void reduce_sum(const T* x, const Shape& xs, T* y, const Shape& ys, double scale) {
  check_same_rank("reduce_sum", xs, ys);
  for (int d = 0; d < xs.rank; ++d)
    if (ys[d] != xs[d] && ys[d] != 1)
      throw std::invalid_argument("reduce_sum: cannot reduce " + shape_str(xs) + " to " + shape_str(ys));
  reduce_impl(x, xs, y, ys, static_cast<T>(scale));
}

template <class T>
void broadcast_to(const T* x, const Shape& xs, T* y, const Shape& ys, double scale) {
  check_same_rank("broadcast_to", xs, ys);
  for (int d = 0; d < xs.rank; ++d)
    if (xs[d] != ys[d] && xs[d] != 1)
      throw std::invalid_argument("broadcast_to: cannot broadcast " + shape_str(xs) + " to " + shape_str(ys));
  const i64 ny = ys.numel();
  if (ny == 0) return;
  const T s = static_cast<T>(scale);
  // Collapse y's dims by whether x repeats along them; x's stride is 0 on repeated dims.
  int r = 0;
  i64 n[kMaxRank];
  bool rep[kMaxRank];
  for (int d = 0; d < ys.rank; ++d) {
    if (ys[d] == 1) continue;
    const bool rp = xs[d] == 1;
    if (r > 0 && rep[r - 1] == rp) {
      n[r - 1] *= ys[d];
    } else {
      n[r] = ys[d];
      rep[r] = rp;
      ++r;
    }
  }
  if (r == 0 || (r == 1 && !rep[0])) {
    parallel_range(ny, kGrain, [&](i64 b, i64 e) { scale_copy(x + b, y + b, e - b, s); });
    return;
  }
  Walk outer;
  i64 sx = 1, inner_st = 0;
  i64 xst[kMaxRank];
  for (int d = r - 1; d >= 0; --d) {
    xst[d] = rep[d] ? 0 : sx;
    if (!rep[d]) sx *= n[d];
  }
  for (int d = 0; d < r - 1; ++d) outer.add(n[d], xst[d]);
  inner_st = xst[r - 1];
  const i64 inner = n[r - 1];
  parallel_range(ny / inner, kGrain / std::max<i64>(1, inner), [&](i64 r0, i64 r1) {
    Cursor c(outer, r0);
    for (i64 row = r0; row < r1; ++row, c.next()) {
      T* yr = y + row * inner;
      if (inner_st == 0) std::fill(yr, yr + inner, x[c.off] * s);
      else scale_copy(x + c.off, yr, inner, s);
    }
  });
}

template <class T>
void transpose(const T* x, const Shape& xs, const int* perm, T* y) {
  const int rank = xs.rank;
  bool seen[kMaxRank] = {};
  for (int i = 0; i < rank; ++i) {
    if (perm[i] < 0 || perm[i] >= rank || seen[perm[i]])
      throw std::invalid_argument("transpose: perm is not a permutation of the axes of " + shape_str(xs));
    seen[perm[i]] = true;
  }
  const i64 total = xs.numel();
  if (total == 0) return;
  i64 xst[kMaxRank];
  i64 s = 1;
  for (int d = rank - 1; d >= 0; --d) {
    xst[d] = s;
    s *= xs[d];
  }
  // Dims in y's order with their x strides; merge neighbours that are also neighbours in x.
  int r = 0;
  i64 n[kMaxRank], st[kMaxRank];
  for (int i = 0; i < rank; ++i) {
    const i64 len = xs[perm[i]], xs_i = xst[perm[i]];
    if (len == 1) continue;
    if (r > 0 && st[r - 1] == xs_i * len) {
      n[r - 1] *= len;
      st[r - 1] = xs_i;
    } else {
      n[r] = len;
      st[r] = xs_i;
      ++r;
    }
  }
  if (r <= 1) {
    if (x != y) std::memcpy(y, x, total * sizeof(T));
    return;
  }
  i64 yst[kMaxRank];
  s = 1;
  for (int d = r - 1; d >= 0; --d) {
    yst[d] = s;
    s *= n[d];
  }
  if (st[r - 1] == 1) {
    // The last axis stays last: copy contiguous runs.
    const i64 run = n[r - 1];
    Walk xo;
    for (int d = 0; d < r - 1; ++d) xo.add(n[d], st[d]);
    parallel_range(total / run, kGrain / std::max<i64>(1, run), [&](i64 o0, i64 o1) {
      Cursor cx(xo, o0);
      for (i64 o = o0; o < o1; ++o, cx.next()) std::memcpy(y + o * run, x + cx.off, run * sizeof(T));
    });
    return;
  }
  // Otherwise the dim c with x stride 1 is transposed against y's innermost dim in tiles (the
  // 2-D case is just this), and the remaining dims are walked around it.
  int c = 0;
  while (st[c] != 1) ++c;
  Walk xo, yo;
  for (int d = 0; d < r - 1; ++d)
    if (d != c) {
      xo.add(n[d], st[d]);
      yo.add(n[d], yst[d]);
    }
  const i64 rows = n[c], cols = n[r - 1];
  parallel_range(xo.count(), kGrain / std::max<i64>(1, rows * cols), [&](i64 o0, i64 o1) {
    Cursor cx(xo, o0), cy(yo, o0);
    for (i64 o = o0; o < o1; ++o, cx.next(), cy.next())
      transpose_2d_tile(x + cx.off, st[r - 1], y + cy.off, yst[c], rows, cols);
  });
}

template <class T>
void bias_add(const T* x, const T* b, T* y, i64 outer, i64 C, i64 inner) {
  if (inner == 1) {
    parallel_range(outer, kGrain / std::max<i64>(1, C), [&](i64 o0, i64 o1) {
      for (i64 o = o0; o < o1; ++o) {
        const T* xr = x + o * C;
        T* yr = y + o * C;
        RF_IVDEP
        for (i64 c = 0; c < C; ++c) yr[c] = xr[c] + b[c];
      }
    });
    return;
  }
  parallel_range(outer * C, kGrain / std::max<i64>(1, inner), [&](i64 p0, i64 p1) {
    for (i64 p = p0; p < p1; ++p) {
      const T bv = b[p % C];
      const T* xr = x + p * inner;
      T* yr = y + p * inner;
      RF_IVDEP
      for (i64 i = 0; i < inner; ++i) yr[i] = xr[i] + bv;
    }
  });
}

template <class T>
void bias_add_relu(const T* x, const T* b, T* y, i64 outer, i64 C, i64 inner) {
  // Same comparison as ReluF (x > 0 ? x : 0) so NaN maps the same way in the fused and unfused paths.
  if (inner == 1) {
    parallel_range(outer, kGrain / std::max<i64>(1, C), [&](i64 o0, i64 o1) {
      for (i64 o = o0; o < o1; ++o) {
        const T* xr = x + o * C;
        T* yr = y + o * C;
        RF_IVDEP
        for (i64 c = 0; c < C; ++c) {
          const T v = xr[c] + b[c];
          yr[c] = v > T(0) ? v : T(0);
        }
      }
    });
    return;
  }
  parallel_range(outer * C, kGrain / std::max<i64>(1, inner), [&](i64 p0, i64 p1) {
    for (i64 p = p0; p < p1; ++p) {
      const T bv = b[p % C];
      const T* xr = x + p * inner;
      T* yr = y + p * inner;
      RF_IVDEP
      for (i64 i = 0; i < inner; ++i) {
        const T v = xr[i] + bv;
        yr[i] = v > T(0) ? v : T(0);
      }
    }
  });
}

template <class T>
void bias_grad(const T* dy, T* db, i64 outer, i64 C, i64 inner) {
  // A reduction of [outer, C, inner] to [1, C, 1]; reduce_impl picks the column-sum or the
  // contiguous-run path.
  reduce_impl(dy, Shape{outer, C, inner}, db, Shape{1, C, 1}, T(1));
}

template void reduce_sum<float>(const float*, const Shape&, float*, const Shape&, double);
template void reduce_sum<double>(const double*, const Shape&, double*, const Shape&, double);
template void broadcast_to<float>(const float*, const Shape&, float*, const Shape&, double);
template void broadcast_to<double>(const double*, const Shape&, double*, const Shape&, double);
template void transpose<float>(const float*, const Shape&, const int*, float*);
template void transpose<double>(const double*, const Shape&, const int*, double*);
template void bias_add<float>(const float*, const float*, float*, i64, i64, i64);
template void bias_add<double>(const double*, const double*, double*, i64, i64, i64);
template void bias_grad<float>(const float*, float*, i64, i64, i64);
template void bias_grad<double>(const double*, double*, i64, i64, i64);
template void bias_add_relu<float>(const float*, const float*, float*, i64, i64, i64);
template void bias_add_relu<double>(const double*, const double*, double*, i64, i64, i64);

}  // namespace rf::kernels::cpu
