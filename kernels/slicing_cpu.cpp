// Slice, Concat and Pad along one axis for the CPU backend. Around the axis a row-major tensor is
// [outer, axis * inner]: each op is `outer` rows of contiguous runs, copied with memcpy (a
// Transformer splits qkv and joins heads this way on every step). Rows are split over threads;
// a long run (rows < threads, e.g. along axis 0) is cut into chunks so it still spreads.
#include <algorithm>
#include <cstring>

#include "kernels/cpu.h"
#include "kernels/parallel.h"

namespace rf::kernels::cpu {

namespace {

constexpr i64 kGrain = 1 << 15;   // elements per thread below which one thread copies everything
constexpr i64 kChunk = 1 << 16;   // a run longer than this is copied in pieces of this many elements

template <class T> void fill(T* y, i64 n, T v) { std::fill(y, y + n, v); }

}  // namespace

template <class T> void copy_rows(const T* x, i64 ldx, T* y, i64 ldy, i64 rows, i64 n) {
  if (rows <= 0 || n <= 0) return;
  if (ldx == n && ldy == n) {  // one contiguous block
    n *= rows;
    rows = 1;
  }
  const i64 pieces = (n + kChunk - 1) / kChunk;  // per row
  const i64 piece = std::min(n, kChunk);
  parallel_range(rows * pieces, std::max<i64>(1, kGrain / piece), [&](i64 t0, i64 t1) {
    for (i64 t = t0; t < t1; ++t) {
      const i64 r = t / pieces, p = t % pieces;
      const i64 c0 = p * kChunk, len = std::min(kChunk, n - c0);
      std::memcpy(y + r * ldy + c0, x + r * ldx + c0, size_t(len) * sizeof(T));
    }
  });
}

template <class T> void concat_rows(const T* const* xs, const i64* widths, int count, T* y, i64 rows) {
  i64 total = 0;
  for (int i = 0; i < count; ++i) total += widths[i];
  if (rows <= 0 || total <= 0) return;
  if (rows < 2 * max_threads()) {  // few long rows (along axis 0 or 1): each input's runs in chunks
    i64 off = 0;
    for (int i = 0; i < count; ++i) {
      copy_rows(xs[i], widths[i], y + off, total, rows, widths[i]);
      off += widths[i];
    }
    return;
  }
  parallel_range(rows, std::max<i64>(1, kGrain / total), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      T* yr = y + r * total;
      for (int i = 0; i < count; ++i) {
        if (widths[i] > 0) std::memcpy(yr, xs[i] + r * widths[i], size_t(widths[i]) * sizeof(T));
        yr += widths[i];
      }
    }
  });
}

template <class T> void pad_rows(const T* x, T* y, i64 rows, i64 n, i64 before, i64 after, double value) {
  const i64 w = before + n + after;
  if (rows <= 0 || w <= 0) return;
  const T v = T(value);
  parallel_range(rows, std::max<i64>(1, kGrain / w), [&](i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; ++r) {
      T* yr = y + r * w;
      fill(yr, before, v);
      if (n > 0) std::memcpy(yr + before, x + r * n, size_t(n) * sizeof(T));
      fill(yr + before + n, after, v);
    }
  });
}

#define RF_INSTANTIATE(T)                                                         \
  template void copy_rows<T>(const T*, i64, T*, i64, i64, i64);                   \
  template void concat_rows<T>(const T* const*, const i64*, int, T*, i64);        \
  template void pad_rows<T>(const T*, T*, i64, i64, i64, i64, double);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
#undef RF_INSTANTIATE

}  // namespace rf::kernels::cpu
