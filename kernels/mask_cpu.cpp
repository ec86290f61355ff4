// CPU masks: Where (select with broadcasting), Compare (broadcasting comparison to uint8) and the
// fused masked softmax (softmax(x + mask) over the last axis, x + mask never stored).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <limits>
#include <string>

#include "kernels/cpu.h"
#include "kernels/vmath.h"
#include "kernels/parallel.h"

namespace rf::kernels::cpu {

namespace {

constexpr i64 kGrain = 1 << 15;  // elements per thread below which one thread does the op
constexpr i64 kSoftmaxGrain = 1 << 12;  // softmax: an exp per element (softmax_cpu.cpp's grain)

std::string shape_str(const Shape& s) {  // not Shape::str(): see elementwise_cpu.cpp
  std::string r = "[";
  for (int i = 0; i < s.rank; ++i) {
    if (i) r += ',';
    r += std::to_string(s[i]);
  }
  return r + "]";
}

// K operands broadcast to an output shape, walked as [rows, inner] with inner the last axis:
// st[k][d] is operand k's element stride along output axis d (0 where it is broadcast).
template <int K> struct Bcast {
  Shape out;
  i64 st[K][Shape::kMaxRank] = {};
  i64 inner = 1, rows = 0;
};

template <int K> Bcast<K> make_bcast(const char* fn, const Shape& os, const Shape* const (&ins)[K]) {
  Bcast<K> b;
  b.out = os.rank ? os : Shape{1};  // a scalar output walks as one row of one element
  for (int k = 0; k < K; ++k) {
    const Shape s = ins[k]->rank || os.rank ? *ins[k] : Shape{1};
    if (s.rank != b.out.rank)
      throw std::invalid_argument(std::string(fn) + ": operand " + shape_str(s) + " does not have the rank of " +
                                  shape_str(os) + " (pad with 1s first)");
    i64 acc = 1;
    for (int d = s.rank - 1; d >= 0; --d) {
      if (s[d] != 1 && s[d] != b.out[d])
        throw std::invalid_argument(std::string(fn) + ": operand " + shape_str(s) + " does not broadcast to " +
                                    shape_str(os));
      b.st[k][d] = s[d] == 1 ? 0 : acc;
      acc *= s[d];
    }
  }
  b.inner = b.out[b.out.rank - 1];
  b.rows = b.inner ? b.out.numel() / b.inner : 0;
  return b;
}

// Calls body(row, off) for the rows [r0, r1) of b, off[k] being operand k's offset of the row.
template <int K, class F> void walk_rows(const Bcast<K>& b, i64 r0, i64 r1, F&& body) {
  const int outer = b.out.rank - 1;
  i64 idx[Shape::kMaxRank] = {};
  i64 off[K] = {};
  i64 lin = r0;
  for (int d = outer - 1; d >= 0; --d) {
    idx[d] = lin % b.out[d];
    lin /= b.out[d];
    for (int k = 0; k < K; ++k) off[k] += idx[d] * b.st[k][d];
  }
  for (i64 r = r0; r < r1; ++r) {
    body(r, static_cast<const i64*>(off));
    for (int d = outer - 1; d >= 0; --d) {
      for (int k = 0; k < K; ++k) off[k] += b.st[k][d];
      if (++idx[d] < b.out[d]) break;
      for (int k = 0; k < K; ++k) off[k] -= b.st[k][d] * b.out[d];
      idx[d] = 0;
    }
  }
}

}  // namespace

template <class T>
void where(const uint8_t* cond, const Shape& cs, const T* x, const Shape& xs, const T* y, const Shape& ys, T* out,
           const Shape& os) {
  const Shape* const ins[3] = {&cs, &xs, &ys};
  const Bcast<3> b = make_bcast("where", os, ins);
  const i64 n = b.inner, last = b.out.rank - 1;
  const i64 sc = b.st[0][last], sx = b.st[1][last], sy = b.st[2][last];
  parallel_range(b.rows, std::max<i64>(1, kGrain / std::max<i64>(1, n)), [&](i64 r0, i64 r1) {
    walk_rows(b, r0, r1, [&](i64 r, const i64* off) {
      const uint8_t* c = cond + off[0];
      const T* xr = x + off[1];
      const T* yr = y + off[2];
      T* o = out + r * n;
      if (sc && sx && sy) {
        for (i64 i = 0; i < n; ++i) o[i] = c[i] ? xr[i] : yr[i];
      } else {
        for (i64 i = 0; i < n; ++i) o[i] = c[i * sc] ? xr[i * sx] : yr[i * sy];
      }
    });
  });
}

template <class T>
void compare(CompareOp op, const T* a, const Shape& as, const T* b, const Shape& bs, uint8_t* out, const Shape& os) {
  const Shape* const ins[2] = {&as, &bs};
  const Bcast<2> bc = make_bcast("compare", os, ins);
  const i64 n = bc.inner, last = bc.out.rank - 1;
  const i64 sa = bc.st[0][last], sb = bc.st[1][last];
  parallel_range(bc.rows, std::max<i64>(1, kGrain / std::max<i64>(1, n)), [&](i64 r0, i64 r1) {
    walk_rows(bc, r0, r1, [&](i64 r, const i64* off) {
      const T* ar = a + off[0];
      const T* br = b + off[1];
      uint8_t* o = out + r * n;
      for (i64 i = 0; i < n; ++i) o[i] = compare_values(op, ar[i * sa], br[i * sb]) ? 1 : 0;
    });
  });
}

constexpr i64 kMaxRowBlock = 512;

// One row of softmax(x + mask): y = exp(x + m - max) / sum, mask elements mc apart (1, or 0 for
// one value broadcast along the row). A fully masked row (max -inf) is zeros, not NaN. The max
// and the double sum run in independent lanes (one serial chain each would bound the row's time);
// f32 exponentials are libmvec's 8-wide expf (kernels/vmath.h), which takes a slow scalar path for
// a vector with a lane that underflows (every masked -inf): such lanes are clamped to kExpFloor
// for the call and set to 0 after it (kernels/vmath.h: below 1.8e-35, nothing an f32 sum of >= 1 resolves).
template <class T>
void softmax_row(const T* __restrict x, const T* __restrict mask, i64 mc, T* __restrict y, i64 cols) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  if (mc == 1) {
    for (i64 i = 0; i < cols; ++i) y[i] = x[i] + mask[i];
  } else {
    const T m0 = mask[0];
    for (i64 i = 0; i < cols; ++i) y[i] = x[i] + m0;
  }
  T lane[8] = {kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf};
  i64 i = 0;
  for (; i + 8 <= cols; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] = y[i + l] > lane[l] ? y[i + l] : lane[l];
  for (; i < cols; ++i) lane[0] = y[i] > lane[0] ? y[i] : lane[0];
  T m = lane[0];
  for (int l = 1; l < 8; ++l) m = lane[l] > m ? lane[l] : m;
  if (m == kNegInf) {
    for (i64 k = 0; k < cols; ++k) y[k] = T(0);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    for (i64 k = 0; k < cols; ++k) y[k] -= m;
    // Underflowing lanes: remembered as a sign (y - m <= floor) before the clamp.
    float floor_hit[kMaxRowBlock];
    for (i64 k0 = 0; k0 < cols; k0 += kMaxRowBlock) {
      const i64 n = std::min(kMaxRowBlock, cols - k0);
      float* yk = y + k0;
      for (i64 k = 0; k < n; ++k) {
        floor_hit[k] = yk[k] <= kExpFloor ? 0.0f : 1.0f;
        yk[k] = yk[k] < kExpFloor ? kExpFloor : yk[k];
      }
      vexp(yk, yk, n);
      for (i64 k = 0; k < n; ++k) yk[k] *= floor_hit[k];
    }
  } else {
    for (i64 k = 0; k < cols; ++k) y[k] = std::exp(y[k] - m);
  }
  double part[4] = {0, 0, 0, 0};  // the sum in double (as softmax_cpu.cpp), 4 lanes added in order
  i = 0;
  for (; i + 4 <= cols; i += 4)
    for (int l = 0; l < 4; ++l) part[l] += double(y[i + l]);
  for (; i < cols; ++i) part[0] += double(y[i]);
  const T inv = static_cast<T>(1.0 / ((part[0] + part[1]) + (part[2] + part[3])));
  for (i64 k = 0; k < cols; ++k) y[k] *= inv;
}

template <class T> void masked_softmax(const T* x, const Shape& xs, const T* mask, const Shape& ms, T* y) {
  const Shape* const ins[1] = {&ms};
  const Bcast<1> b = make_bcast("masked_softmax", xs, ins);
  const i64 cols = b.inner;
  if (cols <= 0) return;
  const i64 mc = b.st[0][b.out.rank - 1];  // 1, or 0 for a mask broadcast along the row
  parallel_range(b.rows, std::max<i64>(1, kSoftmaxGrain / cols), [&](i64 r0, i64 r1) {
    walk_rows(b, r0, r1, [&](i64 r, const i64* off) {
      const T* xr = x + r * cols;
      const T* mr = mask + off[0];
      T* yr = y + r * cols;
      softmax_row(xr, mr, mc, yr, cols);
    });
  });
}

template void where<float>(const uint8_t*, const Shape&, const float*, const Shape&, const float*, const Shape&, float*,
                           const Shape&);
template void where<double>(const uint8_t*, const Shape&, const double*, const Shape&, const double*, const Shape&,
                            double*, const Shape&);
template void compare<float>(CompareOp, const float*, const Shape&, const float*, const Shape&, uint8_t*, const Shape&);
template void compare<double>(CompareOp, const double*, const Shape&, const double*, const Shape&, uint8_t*,
                              const Shape&);
template void compare<int32_t>(CompareOp, const int32_t*, const Shape&, const int32_t*, const Shape&, uint8_t*,
                               const Shape&);
template void compare<int64_t>(CompareOp, const int64_t*, const Shape&, const int64_t*, const Shape&, uint8_t*,
                               const Shape&);
template void masked_softmax<float>(const float*, const Shape&, const float*, const Shape&, float*);
template void masked_softmax<double>(const double*, const Shape&, const double*, const Shape&, double*);

}  // namespace rf::kernels::cpu
