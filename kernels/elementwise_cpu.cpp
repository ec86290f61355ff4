// CPU loops for the elementwise ops: the math of every op is the shared functor in elementwise.h;
// this file only supplies the memory layouts (contiguous, scalar, broadcast) and threading.
#include <cmath>
#include <type_traits>

#include "kernels/elementwise.h"

namespace rf::kernels {
static_assert(std::is_same_v<decltype(exp(1.0f)), float>, "float overloads of <cmath> not visible");
}  // namespace rf::kernels

#include <omp.h>

#include <algorithm>
#include <string>

#include "kernels/cpu.h"
#include "kernels/vmath.h"
#include "kernels/parallel.h"


namespace rf::kernels::cpu {

namespace {

// Below this many elements per thread one thread does the whole op: starting an OpenMP team
// costs microseconds, more than an entire op at the batch sizes we train with.
constexpr i64 kGrain = 1 << 15;


// Ops whose functor calls a libm transcendental are ~20x costlier per element than an add, so
// they are worth threading at smaller sizes.
template <class F>
constexpr bool kCostly = std::is_same_v<F, ExpF> || std::is_same_v<F, LogF> || std::is_same_v<F, TanhF> ||
                         std::is_same_v<F, SigmoidF> || std::is_same_v<F, GeluF> ||
                         std::is_same_v<F, GeluGradF> || std::is_same_v<F, ScalarPowF>;
template <class F>
constexpr i64 grain_of() {
  return kCostly<F> ? kGrain / 16 : kGrain;
}

// Outputs may alias an input exactly (in-place ops), never partially: see RF_IVDEP.
template <class T, class F>
void map_v(F f, const T* x, T* y, i64 n) {
  RF_IVDEP
  for (i64 i = 0; i < n; ++i) y[i] = f(x[i]);
}
template <class T, class F>
void map_vv(F f, const T* a, const T* b, T* y, i64 n) {
  RF_IVDEP
  for (i64 i = 0; i < n; ++i) y[i] = f(a[i], b[i]);
}
template <class T, class F>
void map_vs(F f, const T* a, T b, T* y, i64 n) {
  RF_IVDEP
  for (i64 i = 0; i < n; ++i) y[i] = f(a[i], b);
}
template <class T, class F>
void map_sv(F f, T a, const T* b, T* y, i64 n) {
  RF_IVDEP
  for (i64 i = 0; i < n; ++i) y[i] = f(a, b[i]);
}

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

[[noreturn]] void bad_broadcast(const Shape& as, const Shape& bs, const Shape& ys, const std::string& why) {
  throw std::invalid_argument("binary_broadcast: cannot broadcast " + shape_str(as) + " and " + shape_str(bs) +
                              " to " + shape_str(ys) + ": " + why);
}

void check_broadcast(const Shape& as, const Shape& bs, const Shape& ys) {
  if (as.rank != ys.rank || bs.rank != ys.rank) bad_broadcast(as, bs, ys, "ranks differ (pad with 1s first)");
  for (int i = 0; i < ys.rank; ++i) {
    if (ys[i] < 0) bad_broadcast(as, bs, ys, "undefined output dimension");
    if ((as[i] != 1 && as[i] != ys[i]) || (bs[i] != 1 && bs[i] != ys[i]))
      bad_broadcast(as, bs, ys, "dimension " + std::to_string(i) + " mismatch");
  }
}

// True when s is [1,..,1, d_k,..,d_last] with the trailing dims equal to ys's: the operand
// repeats as a whole block along the leading dims (a bias row over a batch, say).
bool leading_broadcast(const Shape& s, const Shape& ys) {
  int k = 0;
  while (k < s.rank && s[k] == 1) ++k;
  for (int i = k; i < s.rank; ++i)
    if (s[i] != ys[i]) return false;
  return true;
}

// The general case. Dims of y that are 1 are dropped and adjacent dims are merged where both
// operands stay affine across them, so e.g. [N,C,H,W] + [1,C,1,1] walks [N,C,HW] with b's
// innermost stride 0. The innermost merged dim then runs as one of the contiguous map_* loops.
template <class T, class F>
void broadcast_general(F f, const T* a, const Shape& as, const T* b, const Shape& bs, T* y, const Shape& ys) {
  i64 ast[Shape::kMaxRank], bst[Shape::kMaxRank];
  i64 sa = 1, sb = 1;
  for (int d = ys.rank - 1; d >= 0; --d) {
    ast[d] = as[d] == 1 ? 0 : sa;
    bst[d] = bs[d] == 1 ? 0 : sb;
    sa *= as[d];
    sb *= bs[d];
  }
  int r = 0;
  i64 n[Shape::kMaxRank], na[Shape::kMaxRank], nb[Shape::kMaxRank];
  for (int d = 0; d < ys.rank; ++d) {
    if (ys[d] == 1) continue;
    if (r > 0 && na[r - 1] == ast[d] * ys[d] && nb[r - 1] == bst[d] * ys[d]) {
      n[r - 1] *= ys[d];
      na[r - 1] = ast[d];
      nb[r - 1] = bst[d];
    } else {
      n[r] = ys[d];
      na[r] = ast[d];
      nb[r] = bst[d];
      ++r;
    }
  }
  if (r == 0) {
    y[0] = f(a[0], b[0]);
    return;
  }
  const i64 inner = n[r - 1];
  const bool va = na[r - 1] != 0, vb = nb[r - 1] != 0;
  const i64 rows = ys.numel() / inner;
  const int outer = r - 1;
  parallel_range(rows, std::max<i64>(1, grain_of<F>() / inner), [&](i64 r0, i64 r1) {
    i64 idx[Shape::kMaxRank];
    i64 oa = 0, ob = 0;
    i64 lin = r0;
    for (int d = outer - 1; d >= 0; --d) {
      idx[d] = lin % n[d];
      lin /= n[d];
      oa += idx[d] * na[d];
      ob += idx[d] * nb[d];
    }
    for (i64 row = r0; row < r1; ++row) {
      T* yr = y + row * inner;
      if (va && vb) map_vv(f, a + oa, b + ob, yr, inner);
      else if (va) map_vs(f, a + oa, b[ob], yr, inner);
      else if (vb) map_sv(f, a[oa], b + ob, yr, inner);
      else std::fill(yr, yr + inner, f(a[oa], b[ob]));
      for (int d = outer - 1; d >= 0; --d) {
        oa += na[d];
        ob += nb[d];
        if (++idx[d] < n[d]) break;
        oa -= na[d] * n[d];
        ob -= nb[d] * n[d];
        idx[d] = 0;
      }
    }
  });
}

}  // namespace

// GELU and its gradient in f32 through the vectorised erf and exp (kernels/vmath.h): the same
// formulas as GeluF / GeluGradF (exact GELU, erf form), 8 floats a call, in blocks of kVBlock so
// the temporaries stay in L1.
constexpr i64 kVBlock = 256;
void gelu_f32(const float* x, float* y, i64 n) {
  parallel_range(n, 4096, [&](i64 s, i64 e) {
    float t[kVBlock];
    for (i64 b = s; b < e; b += kVBlock) {
      const i64 m = std::min(kVBlock, e - b);
      for (i64 i = 0; i < m; ++i) t[i] = x[b + i] * 0.70710678118654752440f;
      verf(t, t, m);
      for (i64 i = 0; i < m; ++i) y[b + i] = 0.5f * x[b + i] * (1.0f + t[i]);
    }
  });
}
void gelu_grad_f32(const float* dy, const float* x, float* dx, i64 n) {
  parallel_range(n, 4096, [&](i64 s, i64 e) {
    float c[kVBlock], p[kVBlock];
    for (i64 b = s; b < e; b += kVBlock) {
      const i64 m = std::min(kVBlock, e - b);
      for (i64 i = 0; i < m; ++i) {
        c[i] = x[b + i] * 0.70710678118654752440f;
        p[i] = std::max(-0.5f * x[b + i] * x[b + i], kExpFloor);  // pdf below 1e-35: as good as 0 (vmath.h)
      }
      verf(c, c, m);
      vexp(p, p, m);
      for (i64 i = 0; i < m; ++i)
        dx[b + i] = dy[b + i] * (0.5f * (1.0f + c[i]) + x[b + i] * (0.39894228040143267794f * p[i]));
    }
  });
}

template <class T>
void unary(UnaryOp op, const T* x, T* y, i64 n) {
  if constexpr (std::is_same_v<T, float>) {
    if (op == UnaryOp::Gelu) return gelu_f32(x, y, n);
  }
  visit_unary(op, [&](auto f) {
    parallel_range(n, grain_of<decltype(f)>(), [&](i64 b, i64 e) { map_v(f, x + b, y + b, e - b); });
  });
}

template <class T>
void binary(BinaryOp op, const T* a, const T* b, T* y, i64 n) {
  if constexpr (std::is_same_v<T, float>) {
    if (op == BinaryOp::GeluGrad) return gelu_grad_f32(a, b, y, n);
  }
  visit_binary(op, [&](auto f) {
    parallel_range(n, grain_of<decltype(f)>(),
                   [&](i64 s, i64 e) { map_vv(f, a + s, b + s, y + s, e - s); });
  });
}

template <class T>
void binary_broadcast(BinaryOp op, const T* a, const Shape& as, const T* b, const Shape& bs, T* y,
                      const Shape& ys) {
  check_broadcast(as, bs, ys);
  const i64 n = ys.numel();
  if (n == 0) return;
  const i64 na = as.numel(), nb = bs.numel();
  visit_binary(op, [&](auto f) {
    constexpr i64 grain = grain_of<decltype(f)>();
    if (na == n && nb == n) {
      parallel_range(n, grain, [&](i64 s, i64 e) { map_vv(f, a + s, b + s, y + s, e - s); });
    } else if (na == n && nb == 1) {
      const T bv = b[0];
      parallel_range(n, grain, [&](i64 s, i64 e) { map_vs(f, a + s, bv, y + s, e - s); });
    } else if (na == 1 && nb == n) {
      const T av = a[0];
      parallel_range(n, grain, [&](i64 s, i64 e) { map_sv(f, av, b + s, y + s, e - s); });
    } else if (na == n && leading_broadcast(bs, ys)) {
      parallel_range(n / nb, std::max<i64>(1, grain / nb), [&](i64 r0, i64 r1) {
        for (i64 r = r0; r < r1; ++r) map_vv(f, a + r * nb, b, y + r * nb, nb);
      });
    } else if (nb == n && leading_broadcast(as, ys)) {
      parallel_range(n / na, std::max<i64>(1, grain / na), [&](i64 r0, i64 r1) {
        for (i64 r = r0; r < r1; ++r) map_vv(f, a, b + r * na, y + r * na, na);
      });
    } else {
      broadcast_general(f, a, as, b, bs, y, ys);
    }
  });
}

template <class T>
void scalar(ScalarOp op, const T* x, double c, T* y, i64 n) {
  // pow(x, 2) is exactly x*x; squaring is common (e.g. L2 terms) and pow is a libm call.
  if (op == ScalarOp::Pow && c == 2.0) return unary(UnaryOp::Square, x, y, n);
  const T cv = static_cast<T>(c);
  visit_scalar(op, [&](auto f) {
    parallel_range(n, grain_of<decltype(f)>(), [&](i64 s, i64 e) { map_vs(f, x + s, cv, y + s, e - s); });
  });
}

template void unary<float>(UnaryOp, const float*, float*, i64);
template void unary<double>(UnaryOp, const double*, double*, i64);
template void binary<float>(BinaryOp, const float*, const float*, float*, i64);
template void binary<double>(BinaryOp, const double*, const double*, double*, i64);
template void binary_broadcast<float>(BinaryOp, const float*, const Shape&, const float*, const Shape&, float*,
                                      const Shape&);
template void binary_broadcast<double>(BinaryOp, const double*, const Shape&, const double*, const Shape&, double*,
                                       const Shape&);
template void scalar<float>(ScalarOp, const float*, double, float*, i64);
template void scalar<double>(ScalarOp, const double*, double, double*, i64);

}  // namespace rf::kernels::cpu
