// The finite-difference machinery of the op tests (tests/test_ops_gradcheck*.cpp): random
// inputs by distribution, check_op() (forward value against a plain double reference, then
// d sum(out * R) / d x against central differences, all in float64 on the CPU), and the plain-loop
// reference implementations shared by several ops. See test_ops_gradcheck.cpp for the method.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "autodiff/gradients.h"
#include "runtime/error.h"
#include "runtime/graph.h"
#include "runtime/ops.h"
#include "runtime/session.h"
#include "runtime/tensor.h"

namespace rf_gradcheck {

namespace ops = rf::ops;
using rf::DType;
using rf::i64;
using rf::Shape;
using rf::Value;
using Vec = std::vector<double>;
using Values = std::vector<Value>;

// ---------------------------------------------------------------------------------------------
// Inputs, options and the checker
// ---------------------------------------------------------------------------------------------

enum class Dist {
  Uniform,       // U[lo, hi)
  AwayFromZero,  // random sign times U[lo, hi), lo > 0
  Distinct,      // a shuffled grid (i - n/2) * lo: pairwise distinct by lo
  Labels,        // integers in [0, hi) (class labels); dtype I32 or I64
};

struct In {
  Shape shape;
  Dist dist = Dist::Uniform;
  double lo = -1, hi = 1;
  DType dtype = DType::F64;
};
inline In U(Shape s, double lo = -1, double hi = 1) { return {s, Dist::Uniform, lo, hi, DType::F64}; }
inline In Pos(Shape s) { return {s, Dist::Uniform, 0.5, 2.0, DType::F64}; }
inline In NonZero(Shape s, double lo = 0.05, double hi = 1) { return {s, Dist::AwayFromZero, lo, hi, DType::F64}; }
inline In Distinct(Shape s) { return {s, Dist::Distinct, 0.05, 0, DType::F64}; }
inline In Labels(Shape s, int classes, DType t) { return {s, Dist::Labels, 0, double(classes), t}; }

inline Vec generate(const In& in, std::mt19937& rng) {
  const size_t n = size_t(in.shape.numel());
  Vec v(n);
  switch (in.dist) {
    case Dist::Uniform: {
      std::uniform_real_distribution<double> u(in.lo, in.hi);
      for (double& x : v) x = u(rng);
      break;
    }
    case Dist::AwayFromZero: {
      std::uniform_real_distribution<double> u(in.lo, in.hi);
      std::bernoulli_distribution sign(0.5);
      for (double& x : v) x = sign(rng) ? u(rng) : -u(rng);
      break;
    }
    case Dist::Distinct: {
      for (size_t i = 0; i < n; ++i) v[i] = (double(i) - double(n) / 2) * in.lo;
      std::shuffle(v.begin(), v.end(), rng);
      break;
    }
    case Dist::Labels: {
      std::uniform_int_distribution<int> u(0, int(in.hi) - 1);
      for (double& x : v) x = u(rng);
      break;
    }
  }
  return v;
}

inline rf::Tensor make_tensor(const Vec& v, const In& in) {
  switch (in.dtype) {
    case DType::F64: return rf::Tensor::from_vector<double>(v, in.shape);
    case DType::I32: return rf::Tensor::from_vector<int32_t>(std::vector<int32_t>(v.begin(), v.end()), in.shape);
    case DType::I64: return rf::Tensor::from_vector<int64_t>(std::vector<int64_t>(v.begin(), v.end()), in.shape);
    default: ADD_FAILURE() << "unsupported input dtype " << rf::dtype_name(in.dtype); return {};
  }
}

inline Vec to_doubles(const rf::Tensor& t) {
  switch (t.dtype()) {
    case DType::F64: return t.to_vector<double>();
    case DType::F32: { auto v = t.to_vector<float>(); return Vec(v.begin(), v.end()); }
    case DType::I32: { auto v = t.to_vector<int32_t>(); return Vec(v.begin(), v.end()); }
    case DType::I64: { auto v = t.to_vector<int64_t>(); return Vec(v.begin(), v.end()); }
    default: ADD_FAILURE() << "unsupported output dtype " << rf::dtype_name(t.dtype()); return {};
  }
}

// Every element within tol * max(1, |want|); reports the count of misses and the worst one.
inline void expect_close(const Vec& got, const Vec& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_ratio = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double lim = tol * std::max(1.0, std::fabs(want[i]));
    const double err = std::fabs(got[i] - want[i]);
    const double ratio = std::isnan(err) ? INFINITY : err / lim;
    if (!(err <= lim)) ++bad;
    if (ratio > worst_ratio) { worst_ratio = ratio; worst = i; }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements off (tol " << tol
                     << "); worst at flat index " << worst << ": got " << got[worst] << ", want "
                     << want[worst] << ", diff " << got[worst] - want[worst];
}

struct Opts {
  double fwd_tol = 1e-12;  // relative (to max(1, |ref|)) tolerance of the forward value
  double grad_tol = 1e-6;  // relative (to max(1, |fd|)) tolerance of analytic vs central differences
  double h = 1e-6;         // finite-difference step
  bool grad = true;        // false: forward value only (non-differentiable outputs)
  unsigned seed = 1234;
};

using Build = std::function<Value(const Values&)>;
using Ref = std::function<Vec(const std::vector<Vec>&)>;

// Builds `build(placeholders)` on inputs drawn per `ins`, checks its shape against out_shape and
// its value against ref(inputs), then checks d sum(out * R) / d x for every F64 input x against
// central finite differences.
inline void check_op(const std::string& what, const std::vector<In>& ins, const Build& build, const Shape& out_shape,
              const Ref& ref, const Opts& o = {}) {
  SCOPED_TRACE(what);
  std::mt19937 rng(o.seed);
  rf::Graph g;
  Values ph;
  std::vector<Vec> xv;
  std::vector<rf::Session::Feed> feeds;
  for (size_t i = 0; i < ins.size(); ++i) {
    ph.push_back(g.placeholder("x" + std::to_string(i), ins[i].dtype, ins[i].shape));
    xv.push_back(generate(ins[i], rng));
    feeds.push_back({ph.back(), make_tensor(xv.back(), ins[i])});
  }
  const Value out = build(ph);
  const rf::OutSpec spec = g.spec(out);
  ASSERT_EQ(spec.shape.str(), out_shape.str()) << "inferred output shape";
  const Vec want = ref(xv);
  ASSERT_EQ(i64(want.size()), out_shape.numel()) << "reference has the wrong size (test bug)";

  if (!o.grad) {
    rf::Session s(g);
    expect_close(to_doubles(s.run({out}, feeds)[0]), want, o.fwd_tol, "forward");
    return;
  }
  ASSERT_EQ(spec.dtype, DType::F64);

  std::uniform_real_distribution<double> u(-1, 1);
  Vec r(size_t(out_shape.numel()));
  for (double& x : r) x = u(rng);
  const Value loss = ops::sum(ops::mul(out, g.constant(rf::Tensor::from_vector<double>(r, out_shape), "R")));
  std::vector<size_t> diff;  // indices of the differentiated (F64) inputs
  Values xs;
  for (size_t i = 0; i < ins.size(); ++i)
    if (ins[i].dtype == DType::F64) { diff.push_back(i); xs.push_back(ph[i]); }
  const Values grads = rf::gradients(loss, xs);
  ASSERT_EQ(grads.size(), xs.size());
  for (size_t k = 0; k < grads.size(); ++k) {
    ASSERT_TRUE(grads[k].valid()) << "no gradient for input " << diff[k];
    ASSERT_EQ(g.spec(grads[k]).shape.str(), ins[diff[k]].shape.str()) << "inferred shape of the gradient of input "
                                                                      << diff[k];
  }

  rf::Session s(g);
  Values fetches{out, loss};
  fetches.insert(fetches.end(), grads.begin(), grads.end());
  std::vector<Vec> analytic;
  {
    const std::vector<rf::Tensor>& res = s.run(fetches, feeds);
    ASSERT_EQ(res[0].shape().str(), out_shape.str()) << "run-time output shape";
    expect_close(to_doubles(res[0]), want, o.fwd_tol, "forward");
    for (size_t k = 0; k < grads.size(); ++k) {
      ASSERT_EQ(res[2 + k].shape().str(), ins[diff[k]].shape.str()) << "run-time gradient shape of input " << diff[k];
      analytic.push_back(to_doubles(res[2 + k]));
    }
  }

  for (size_t k = 0; k < diff.size(); ++k) {
    const size_t i = diff[k];
    rf::Tensor pert = feeds[i].second.clone();  // perturbed in place; the original stays intact
    feeds[i].second = pert;
    double* p = pert.data<double>();
    Vec fd(xv[i].size());
    for (size_t e = 0; e < fd.size(); ++e) {
      p[e] = xv[i][e] + o.h;
      const double lp = s.run({loss}, feeds)[0].item();
      p[e] = xv[i][e] - o.h;
      const double lm = s.run({loss}, feeds)[0].item();
      p[e] = xv[i][e];
      fd[e] = (lp - lm) / (2 * o.h);
    }
    feeds[i].second = make_tensor(xv[i], ins[i]);
    expect_close(analytic[k], fd, o.grad_tol, "gradient of input " + std::to_string(i) + " vs finite differences");
  }
}

// ---------------------------------------------------------------------------------------------
// Reference implementations (plain loops, double)
// ---------------------------------------------------------------------------------------------

inline std::vector<i64> strides_of(const Shape& s) {
  std::vector<i64> st(size_t(s.rank), 1);
  for (int d = s.rank - 2; d >= 0; --d) st[size_t(d)] = st[size_t(d + 1)] * s[d + 1];
  return st;
}
inline std::vector<i64> unravel(i64 flat, const Shape& s) {
  std::vector<i64> idx(size_t(s.rank));
  for (int d = s.rank - 1; d >= 0; --d) {
    idx[size_t(d)] = flat % s[d];
    flat /= s[d];
  }
  return idx;
}
inline Shape left_pad(const Shape& s, int rank) {
  Shape o;
  for (int i = s.rank; i < rank; ++i) o.push_back(1);
  for (int i = 0; i < s.rank; ++i) o.push_back(s[i]);
  return o;
}

inline Vec ref_unary(const Vec& x, const std::function<double(double)>& f) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = f(x[i]);
  return y;
}

// Numpy broadcasting of a (shape as) and b (shape bs) to ys.
inline Vec ref_binary(const Vec& a, const Shape& as, const Vec& b, const Shape& bs, const Shape& ys,
               const std::function<double(double, double)>& f) {
  const Shape pa = left_pad(as, ys.rank), pb = left_pad(bs, ys.rank);
  const auto sa = strides_of(pa), sb = strides_of(pb);
  Vec y(size_t(ys.numel()));
  for (i64 i = 0; i < ys.numel(); ++i) {
    const auto idx = unravel(i, ys);
    i64 ia = 0, ib = 0;
    for (int d = 0; d < ys.rank; ++d) {
      ia += (pa[d] == 1 ? 0 : idx[size_t(d)]) * sa[size_t(d)];
      ib += (pb[d] == 1 ? 0 : idx[size_t(d)]) * sb[size_t(d)];
    }
    y[size_t(i)] = f(a[size_t(ia)], b[size_t(ib)]);
  }
  return y;
}

inline Vec ref_matmul(const Vec& a, const Shape& as, const Vec& b, const Shape& bs, bool ta, bool tb) {
  const i64 m = ta ? as[1] : as[0], k = ta ? as[0] : as[1], n = tb ? bs[0] : bs[1];
  auto A = [&](i64 i, i64 p) { return ta ? a[size_t(p * as[1] + i)] : a[size_t(i * as[1] + p)]; };
  auto B = [&](i64 p, i64 j) { return tb ? b[size_t(j * bs[1] + p)] : b[size_t(p * bs[1] + j)]; };
  Vec y(size_t(m * n), 0.0);
  for (i64 i = 0; i < m; ++i)
    for (i64 j = 0; j < n; ++j) {
      double acc = 0;
      for (i64 p = 0; p < k; ++p) acc += A(i, p) * B(p, j);
      y[size_t(i * n + j)] = acc;
    }
  return y;
}

// Softmax (log_ = false) or log-softmax over the last axis of rows x cols.
inline Vec ref_softmax(const Vec& x, i64 cols, bool log_) {
  Vec y(x.size());
  for (size_t r = 0; r < x.size() / size_t(cols); ++r) {
    const double* xr = &x[r * size_t(cols)];
    const double mx = *std::max_element(xr, xr + cols);
    double s = 0;
    for (i64 c = 0; c < cols; ++c) s += std::exp(xr[c] - mx);
    for (i64 c = 0; c < cols; ++c)
      y[r * size_t(cols) + size_t(c)] = log_ ? xr[c] - mx - std::log(s) : std::exp(xr[c] - mx) / s;
  }
  return y;
}

// Sum (or mean) over axes (empty: all); the result in row-major order of the kept axes (the same
// flat layout with or without keepdims).
inline Vec ref_reduce(const Vec& x, const Shape& xs, std::vector<int> axes, bool mean) {
  if (axes.empty()) { axes.resize(size_t(xs.rank)); std::iota(axes.begin(), axes.end(), 0); }
  Shape ys = xs;
  for (int& a : axes) { if (a < 0) a += xs.rank; ys[a] = 1; }
  const auto sy = strides_of(ys);
  Vec y(size_t(ys.numel()), 0.0);
  for (i64 i = 0; i < xs.numel(); ++i) {
    const auto idx = unravel(i, xs);
    i64 o = 0;
    for (int d = 0; d < xs.rank; ++d) o += (ys[d] == 1 ? 0 : idx[size_t(d)]) * sy[size_t(d)];
    y[size_t(o)] += x[size_t(i)];
  }
  if (mean)
    for (double& v : y) v /= double(xs.numel() / ys.numel());
  return y;
}

inline Vec ref_transpose(const Vec& x, const Shape& xs, const std::vector<int>& perm) {
  Shape ys;
  for (int p : perm) ys.push_back(xs[p]);
  const auto sx = strides_of(xs);
  Vec y(x.size());
  for (i64 j = 0; j < ys.numel(); ++j) {
    const auto idx = unravel(j, ys);
    i64 src = 0;
    for (int d = 0; d < ys.rank; ++d) src += idx[size_t(d)] * sx[size_t(perm[size_t(d)])];
    y[size_t(j)] = x[size_t(src)];
  }
  return y;
}

inline Vec ref_bias_add(const Vec& x, const Shape& xs, const Vec& b) {
  i64 inner = 1;
  for (int d = 2; d < xs.rank; ++d) inner *= xs[d];
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] + b[size_t((i64(i) / inner) % xs[1])];
  return y;
}

inline i64 out_dim(i64 in, i64 k, i64 stride, i64 pad) { return (in + 2 * pad - k) / stride + 1; }

// NCHW input, OIHW filter, zero padding.
inline Vec ref_conv(const Vec& x, const Shape& xs, const Vec& w, const Shape& ws, i64 st, i64 pad) {
  const i64 N = xs[0], C = xs[1], H = xs[2], W = xs[3], K = ws[0], R = ws[2], S = ws[3];
  const i64 P = out_dim(H, R, st, pad), Q = out_dim(W, S, st, pad);
  Vec y(size_t(N * K * P * Q), 0.0);
  for (i64 n = 0; n < N; ++n)
    for (i64 k = 0; k < K; ++k)
      for (i64 p = 0; p < P; ++p)
        for (i64 q = 0; q < Q; ++q) {
          double acc = 0;
          for (i64 c = 0; c < C; ++c)
            for (i64 r = 0; r < R; ++r)
              for (i64 s = 0; s < S; ++s) {
                const i64 h = p * st - pad + r, ww = q * st - pad + s;
                if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
                acc += x[size_t(((n * C + c) * H + h) * W + ww)] * w[size_t(((k * C + c) * R + r) * S + s)];
              }
          y[size_t(((n * K + k) * P + p) * Q + q)] = acc;
        }
  return y;
}

enum class PoolOut { Max, Argmax, Avg };
// Max ignores padding (-inf); Avg counts it (count_include_pad, the documented semantics);
// Argmax: the flat h*W+w index of the max within its plane.
inline Vec ref_pool(const Vec& x, const Shape& xs, i64 k, i64 st, i64 pad, PoolOut what) {
  const i64 NC = xs[0] * xs[1], H = xs[2], W = xs[3];
  const i64 P = out_dim(H, k, st, pad), Q = out_dim(W, k, st, pad);
  Vec y(size_t(NC * P * Q));
  for (i64 nc = 0; nc < NC; ++nc)
    for (i64 p = 0; p < P; ++p)
      for (i64 q = 0; q < Q; ++q) {
        double mx = -INFINITY, sum = 0;
        i64 arg = -1;
        for (i64 r = 0; r < k; ++r)
          for (i64 s = 0; s < k; ++s) {
            const i64 h = p * st - pad + r, w = q * st - pad + s;
            if (h < 0 || h >= H || w < 0 || w >= W) continue;
            const double v = x[size_t((nc * H + h) * W + w)];
            sum += v;
            if (v > mx) { mx = v; arg = h * W + w; }
          }
        y[size_t((nc * P + p) * Q + q)] =
            what == PoolOut::Max ? mx : what == PoolOut::Argmax ? double(arg) : sum / double(k * k);
      }
  return y;
}

inline double gelu_ref(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
inline double sigmoid_ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace rf_gradcheck
