// Per-op tests of every differentiable forward op: the forward value against a plain reference
// computed here with straightforward loops in double precision, and the gradient built by
// gradients() against central finite differences of the same graph, all in float64 on the CPU.
//
// The shared machinery is check_op(): it feeds random F64 Placeholders (std::mt19937, fixed
// seed), builds the op, forms loss = sum(out * R) with a fixed random Const R (so every output
// element matters), runs {out, loss, d loss / d inputs} once and then the loss alone at
// x +- h for every element of every differentiated input, reusing one Session (the plan of the
// loss-only signature is compiled once and cached).
//
// Non-smooth points are avoided by the input distributions (see In below):
//   Relu        inputs are +-[0.05, 1] (never within 0.05 >> h of the kink at 0);
//   MaxPool2D   inputs are a shuffled grid with spacing 0.05 >> 2h, so no two elements of a window
//               tie and a perturbation of h never changes the argmax;
//   Log, Sqrt, PowScalar, Div's denominator   kept in [0.5, 2] (or +-[0.5, 2]) away from 0.
// Every other op is smooth everywhere.
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

namespace {

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
In U(Shape s, double lo = -1, double hi = 1) { return {s, Dist::Uniform, lo, hi, DType::F64}; }
In Pos(Shape s) { return {s, Dist::Uniform, 0.5, 2.0, DType::F64}; }
In NonZero(Shape s, double lo = 0.05, double hi = 1) { return {s, Dist::AwayFromZero, lo, hi, DType::F64}; }
In Distinct(Shape s) { return {s, Dist::Distinct, 0.05, 0, DType::F64}; }
In Labels(Shape s, int classes, DType t) { return {s, Dist::Labels, 0, double(classes), t}; }

Vec generate(const In& in, std::mt19937& rng) {
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

rf::Tensor make_tensor(const Vec& v, const In& in) {
  switch (in.dtype) {
    case DType::F64: return rf::Tensor::from_vector<double>(v, in.shape);
    case DType::I32: return rf::Tensor::from_vector<int32_t>(std::vector<int32_t>(v.begin(), v.end()), in.shape);
    case DType::I64: return rf::Tensor::from_vector<int64_t>(std::vector<int64_t>(v.begin(), v.end()), in.shape);
    default: ADD_FAILURE() << "unsupported input dtype " << rf::dtype_name(in.dtype); return {};
  }
}

Vec to_doubles(const rf::Tensor& t) {
  switch (t.dtype()) {
    case DType::F64: return t.to_vector<double>();
    case DType::F32: { auto v = t.to_vector<float>(); return Vec(v.begin(), v.end()); }
    case DType::I32: { auto v = t.to_vector<int32_t>(); return Vec(v.begin(), v.end()); }
    case DType::I64: { auto v = t.to_vector<int64_t>(); return Vec(v.begin(), v.end()); }
    default: ADD_FAILURE() << "unsupported output dtype " << rf::dtype_name(t.dtype()); return {};
  }
}

// Every element within tol * max(1, |want|); reports the count of misses and the worst one.
void expect_close(const Vec& got, const Vec& want, double tol, const std::string& what) {
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
void check_op(const std::string& what, const std::vector<In>& ins, const Build& build, const Shape& out_shape,
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

std::vector<i64> strides_of(const Shape& s) {
  std::vector<i64> st(size_t(s.rank), 1);
  for (int d = s.rank - 2; d >= 0; --d) st[size_t(d)] = st[size_t(d + 1)] * s[d + 1];
  return st;
}
std::vector<i64> unravel(i64 flat, const Shape& s) {
  std::vector<i64> idx(size_t(s.rank));
  for (int d = s.rank - 1; d >= 0; --d) {
    idx[size_t(d)] = flat % s[d];
    flat /= s[d];
  }
  return idx;
}
Shape left_pad(const Shape& s, int rank) {
  Shape o;
  for (int i = s.rank; i < rank; ++i) o.push_back(1);
  for (int i = 0; i < s.rank; ++i) o.push_back(s[i]);
  return o;
}

Vec ref_unary(const Vec& x, const std::function<double(double)>& f) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = f(x[i]);
  return y;
}

// Numpy broadcasting of a (shape as) and b (shape bs) to ys.
Vec ref_binary(const Vec& a, const Shape& as, const Vec& b, const Shape& bs, const Shape& ys,
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

Vec ref_matmul(const Vec& a, const Shape& as, const Vec& b, const Shape& bs, bool ta, bool tb) {
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
Vec ref_softmax(const Vec& x, i64 cols, bool log_) {
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
Vec ref_reduce(const Vec& x, const Shape& xs, std::vector<int> axes, bool mean) {
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

Vec ref_transpose(const Vec& x, const Shape& xs, const std::vector<int>& perm) {
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

Vec ref_bias_add(const Vec& x, const Shape& xs, const Vec& b) {
  i64 inner = 1;
  for (int d = 2; d < xs.rank; ++d) inner *= xs[d];
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] + b[size_t((i64(i) / inner) % xs[1])];
  return y;
}

i64 out_dim(i64 in, i64 k, i64 stride, i64 pad) { return (in + 2 * pad - k) / stride + 1; }

// NCHW input, OIHW filter, zero padding.
Vec ref_conv(const Vec& x, const Shape& xs, const Vec& w, const Shape& ws, i64 st, i64 pad) {
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
Vec ref_pool(const Vec& x, const Shape& xs, i64 k, i64 st, i64 pad, PoolOut what) {
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

double gelu_ref(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double sigmoid_ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---------------------------------------------------------------------------------------------
// Per-op tests
// ---------------------------------------------------------------------------------------------

TEST(OpsGradcheck, MatMulAllTransposeCombinations) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const Shape as = ta ? Shape{4, 3} : Shape{3, 4}, bs = tb ? Shape{5, 4} : Shape{4, 5};
      check_op("MatMul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb), {U(as), U(bs)},
               [=](const Values& x) { return ops::matmul(x[0], x[1], ta, tb); }, Shape{3, 5},
               [=](const std::vector<Vec>& v) { return ref_matmul(v[0], as, v[1], bs, ta, tb); });
    }
}

// Add, Sub, Mul, Div on one pair of shapes; Div's denominator is kept in +-[0.5, 2].
void check_binary_family(const Shape& as, const Shape& bs, const Shape& ys) {
  struct B {
    const char* name;
    Value (*build)(Value, Value, const std::string&);
    double (*f)(double, double);
  };
  const B table[] = {
      {"Add", ops::add, [](double a, double b) { return a + b; }},
      {"Sub", ops::sub, [](double a, double b) { return a - b; }},
      {"Mul", ops::mul, [](double a, double b) { return a * b; }},
      {"Div", ops::div, [](double a, double b) { return a / b; }},
  };
  for (const B& op : table) {
    const In b = std::string(op.name) == "Div" ? NonZero(bs, 0.5, 2.0) : U(bs);
    check_op(std::string(op.name) + " " + as.str() + " op " + bs.str(), {U(as), b},
             [=](const Values& x) { return op.build(x[0], x[1], ""); }, ys,
             [=](const std::vector<Vec>& v) { return ref_binary(v[0], as, v[1], bs, ys, op.f); });
  }
}

TEST(OpsGradcheck, BinarySameShape) { check_binary_family({2, 3, 4}, {2, 3, 4}, {2, 3, 4}); }
TEST(OpsGradcheck, BinaryBroadcastRightOperand) {
  check_binary_family({2, 3, 4}, {3, 1}, {2, 3, 4});
  check_binary_family({2, 3, 4}, {4}, {2, 3, 4});
  check_binary_family({2, 3, 4}, {}, {2, 3, 4});  // a scalar operand
}
TEST(OpsGradcheck, BinaryBroadcastLeftOperandAndBoth) {
  check_binary_family({3, 1}, {2, 3, 4}, {2, 3, 4});
  check_binary_family({2, 1, 4}, {1, 3, 1}, {2, 3, 4});  // both operands broadcast
}

TEST(OpsGradcheck, Unary) {
  struct U1 {
    const char* name;
    Value (*build)(Value, const std::string&);
    double (*f)(double);
    In in;
  };
  const Shape s{3, 4, 5};
  const U1 table[] = {
      {"Neg", ops::neg, [](double x) { return -x; }, U(s)},
      {"Exp", ops::exp, [](double x) { return std::exp(x); }, U(s, -2, 2)},
      {"Log", ops::log, [](double x) { return std::log(x); }, Pos(s)},      // positive inputs
      {"Sqrt", ops::sqrt, [](double x) { return std::sqrt(x); }, Pos(s)},   // positive inputs
      {"Square", ops::square, [](double x) { return x * x; }, U(s, -2, 2)},
      {"Relu", ops::relu, [](double x) { return x > 0 ? x : 0.0; }, NonZero(s)},  // |x| >= 0.05
      {"Tanh", ops::tanh, [](double x) { return std::tanh(x); }, U(s, -3, 3)},
      {"Sigmoid", ops::sigmoid, sigmoid_ref, U(s, -4, 4)},
      {"Gelu", ops::gelu, gelu_ref, U(s, -3, 3)},
  };
  for (const U1& op : table)
    check_op(op.name, {op.in}, [=](const Values& x) { return op.build(x[0], ""); }, s,
             [=](const std::vector<Vec>& v) { return ref_unary(v[0], op.f); });
}

TEST(OpsGradcheck, ScalarOps) {
  const Shape s{4, 6};
  for (double c : {0.5, -1.25}) {
    check_op("AddScalar " + std::to_string(c), {U(s)}, [=](const Values& x) { return ops::add_scalar(x[0], c); }, s,
             [=](const std::vector<Vec>& v) { return ref_unary(v[0], [=](double x) { return x + c; }); });
    check_op("MulScalar " + std::to_string(c), {U(s)}, [=](const Values& x) { return ops::mul_scalar(x[0], c); }, s,
             [=](const std::vector<Vec>& v) { return ref_unary(v[0], [=](double x) { return x * c; }); });
  }
  for (double c : {2.0, 3.0, 2.5, 0.5, -1.5})  // positive inputs: every exponent is smooth there
    check_op("PowScalar " + std::to_string(c), {Pos(s)}, [=](const Values& x) { return ops::pow_scalar(x[0], c); },
             s, [=](const std::vector<Vec>& v) { return ref_unary(v[0], [=](double x) { return std::pow(x, c); }); });
}

TEST(OpsGradcheck, SoftmaxAndLogSoftmax) {
  for (const Shape& s : {Shape{3, 5}, Shape{2, 3, 4}, Shape{7}}) {
    check_op("Softmax " + s.str(), {U(s, -3, 3)}, [](const Values& x) { return ops::softmax(x[0]); }, s,
             [=](const std::vector<Vec>& v) { return ref_softmax(v[0], s.dim(-1), false); });
    check_op("LogSoftmax " + s.str(), {U(s, -3, 3)}, [](const Values& x) { return ops::log_softmax(x[0]); }, s,
             [=](const std::vector<Vec>& v) { return ref_softmax(v[0], s.dim(-1), true); });
  }
}

TEST(OpsGradcheck, SparseSoftmaxXent) {
  const i64 N = 4, C = 5;
  for (DType lt : {DType::I32, DType::I64}) {
    const std::string tag = std::string(" labels ") + rf::dtype_name(lt);
    const std::vector<In> ins{U({N, C}, -3, 3), Labels({N}, int(C), lt)};
    // loss[r] = logsumexp(x[r]) - x[r, label[r]]
    check_op("SparseSoftmaxXent loss" + tag, ins,
             [](const Values& x) { return ops::sparse_softmax_cross_entropy(x[0], x[1]); }, Shape{N},
             [=](const std::vector<Vec>& v) {
               const Vec ls = ref_softmax(v[0], C, true);
               Vec y(static_cast<size_t>(N));
               for (i64 r = 0; r < N; ++r) y[size_t(r)] = -ls[size_t(r * C + i64(v[1][size_t(r)]))];
               return y;
             });
    // backprop[r] = softmax(x[r]) - onehot(label[r]) (forward value only: not differentiable)
    check_op("SparseSoftmaxXent backprop" + tag, ins,
             [](const Values& x) {
               const Value l = ops::sparse_softmax_cross_entropy(x[0], x[1]);
               return Value{l.graph, l.node, 1};
             },
             Shape{N, C},
             [=](const std::vector<Vec>& v) {
               Vec y = ref_softmax(v[0], C, false);
               for (i64 r = 0; r < N; ++r) y[size_t(r * C + i64(v[1][size_t(r)]))] -= 1.0;
               return y;
             },
             Opts{.grad = false});
  }
}

TEST(OpsGradcheck, SumAndMean) {
  const Shape xs{2, 3, 4};
  struct R {
    std::vector<int> axes;
    bool keepdims;
    Shape out;
  };
  const R cases[] = {
      {{}, false, Shape{}},          {{}, true, Shape{1, 1, 1}},     {{1}, false, Shape{2, 4}},
      {{1}, true, Shape{2, 1, 4}},   {{0, 2}, false, Shape{3}},      {{0, 2}, true, Shape{1, 3, 1}},
      {{-1}, false, Shape{2, 3}},    {{2, 0}, true, Shape{1, 3, 1}}, {{0, 1, 2}, false, Shape{}},
  };
  for (const R& c : cases)
    for (bool mean : {false, true}) {
      std::string axes;
      for (int a : c.axes) axes += std::to_string(a) + ",";
      check_op(std::string(mean ? "Mean" : "Sum") + " axes={" + axes + "} keepdims=" + std::to_string(c.keepdims),
               {U(xs)},
               [=](const Values& x) {
                 return mean ? ops::mean(x[0], c.axes, c.keepdims) : ops::sum(x[0], c.axes, c.keepdims);
               },
               c.out, [=](const std::vector<Vec>& v) { return ref_reduce(v[0], xs, c.axes, mean); });
    }
}

TEST(OpsGradcheck, Reshape) {
  const Shape xs{2, 3, 4};
  for (const auto& [target, out] : std::vector<std::pair<Shape, Shape>>{
           {Shape{6, 4}, Shape{6, 4}}, {Shape{4, -1}, Shape{4, 6}}, {Shape{24}, Shape{24}}, {Shape{2, 2, 3, 2}, Shape{2, 2, 3, 2}}})
    // A copy to capture: clang before 16 cannot capture a structured binding.
    check_op("Reshape to " + target.str(), {U(xs)}, [to = target](const Values& x) { return ops::reshape(x[0], to); }, out,
             [](const std::vector<Vec>& v) { return v[0]; });
  // A reshape in the middle of a chain (the view feeds a kernel and receives a kernel's gradient).
  check_op("Exp(Reshape(Square))", {U(xs)},
           [](const Values& x) { return ops::exp(ops::reshape(ops::square(x[0]), Shape{3, 8})); }, Shape{3, 8},
           [](const std::vector<Vec>& v) { return ref_unary(v[0], [](double x) { return std::exp(x * x); }); });
}

TEST(OpsGradcheck, TransposeRank3) {
  const Shape xs{2, 3, 4};
  for (const std::vector<int>& perm : {std::vector<int>{2, 0, 1}, {1, 2, 0}, {0, 2, 1}, {2, 1, 0}, {0, 1, 2}}) {
    Shape ys;
    for (int p : perm) ys.push_back(xs[p]);
    check_op("Transpose perm " + std::to_string(perm[0]) + std::to_string(perm[1]) + std::to_string(perm[2]), {U(xs)},
             [=](const Values& x) { return ops::transpose(x[0], perm); }, ys,
             [=](const std::vector<Vec>& v) { return ref_transpose(v[0], xs, perm); });
  }
}

TEST(OpsGradcheck, BiasAdd) {
  for (const Shape& xs : {Shape{3, 4}, Shape{2, 3, 4, 5}, Shape{2, 3, 5}}) {
    const Shape bs{xs[1]};
    check_op("BiasAdd " + xs.str(), {U(xs), U(bs)}, [](const Values& x) { return ops::bias_add(x[0], x[1]); }, xs,
             [=](const std::vector<Vec>& v) { return ref_bias_add(v[0], xs, v[1]); });
  }
}

TEST(OpsGradcheck, Conv2D) {
  struct C {
    Shape xs, ws;
    int stride, pad;
  };
  const C cases[] = {
      {{2, 3, 5, 5}, {4, 3, 3, 3}, 1, 0},
      {{2, 3, 5, 5}, {4, 3, 3, 3}, 1, 1},
      {{2, 3, 6, 5}, {2, 3, 3, 3}, 2, 1},  // H != W, stride 2
      {{1, 2, 5, 6}, {3, 2, 3, 2}, 1, 2},  // non-square filter, pad 2
      {{2, 2, 7, 7}, {3, 2, 3, 3}, 2, 2},
      {{2, 3, 4, 4}, {2, 3, 1, 1}, 1, 0},  // 1x1
  };
  for (const C& c : cases) {
    const Shape ys{c.xs[0], c.ws[0], out_dim(c.xs[2], c.ws[2], c.stride, c.pad), out_dim(c.xs[3], c.ws[3], c.stride, c.pad)};
    check_op("Conv2D x" + c.xs.str() + " w" + c.ws.str() + " stride " + std::to_string(c.stride) + " pad " +
                 std::to_string(c.pad),
             {U(c.xs), U(c.ws)}, [=](const Values& x) { return ops::conv2d(x[0], x[1], c.stride, c.pad); }, ys,
             [=](const std::vector<Vec>& v) { return ref_conv(v[0], c.xs, v[1], c.ws, c.stride, c.pad); });
  }
}

struct PoolCase {
  Shape xs;
  int k, stride, pad;
};
const PoolCase kPoolCases[] = {
    {{2, 2, 5, 5}, 3, 2, 1},  // stride < kernel, padding
    {{2, 2, 5, 5}, 2, 1, 0},  // stride < kernel
    {{1, 3, 6, 5}, 3, 1, 1},  // H != W
    {{2, 2, 6, 6}, 2, 2, 0},  // non-overlapping
    {{1, 2, 7, 7}, 4, 3, 2},  // pad = kernel / 2
};
Shape pool_out(const PoolCase& c) {
  return {c.xs[0], c.xs[1], out_dim(c.xs[2], c.k, c.stride, c.pad), out_dim(c.xs[3], c.k, c.stride, c.pad)};
}
std::string pool_name(const char* op, const PoolCase& c) {
  return std::string(op) + " x" + c.xs.str() + " k" + std::to_string(c.k) + " s" + std::to_string(c.stride) + " p" +
         std::to_string(c.pad);
}

// Inputs are Distinct (a shuffled grid of spacing 0.05, half of it negative): no ties within a
// window, and windows that overlap the padding with only negative values show that padding is
// not read as 0.
TEST(OpsGradcheck, MaxPool2D) {
  for (const PoolCase& c : kPoolCases) {
    check_op(pool_name("MaxPool2D", c), {Distinct(c.xs)},
             [=](const Values& x) { return ops::max_pool2d(x[0], c.k, c.stride, c.pad); }, pool_out(c),
             [=](const std::vector<Vec>& v) { return ref_pool(v[0], c.xs, c.k, c.stride, c.pad, PoolOut::Max); });
    check_op(pool_name("MaxPool2D argmax", c), {Distinct(c.xs)},
             [=](const Values& x) {
               const Value y = ops::max_pool2d(x[0], c.k, c.stride, c.pad);
               return Value{y.graph, y.node, 1};
             },
             pool_out(c),
             [=](const std::vector<Vec>& v) { return ref_pool(v[0], c.xs, c.k, c.stride, c.pad, PoolOut::Argmax); },
             Opts{.fwd_tol = 0, .grad = false});
  }
}

TEST(OpsGradcheck, AvgPool2D) {
  for (const PoolCase& c : kPoolCases)
    check_op(pool_name("AvgPool2D", c), {U(c.xs)},
             [=](const Values& x) { return ops::avg_pool2d(x[0], c.k, c.stride, c.pad); }, pool_out(c),
             [=](const std::vector<Vec>& v) { return ref_pool(v[0], c.xs, c.k, c.stride, c.pad, PoolOut::Avg); });
}

// Dropout draws a new mask every run (the plan's run counter), so finite differences across runs
// do not apply: the gradient is checked against the mask output of the same run
// (d sum(y * R) / dx = R * mask), and the forward against y = x * mask.
TEST(OpsGradcheck, Dropout) {
  const double rate = 0.3;
  const Shape s{8, 50};
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(-1, 1);
  Vec xv(size_t(s.numel())), r(size_t(s.numel()));
  for (double& v : xv) v = u(rng);
  for (double& v : r) v = u(rng);
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, s);
  const Value y = ops::dropout(x, rate, 99);
  const Value mask{y.graph, y.node, 1};
  const Value loss = ops::sum(ops::mul(y, g.constant(rf::Tensor::from_vector<double>(r, s))));
  const Values gr = rf::gradients(loss, {x});
  ASSERT_TRUE(gr[0].valid());
  rf::Session sess(g);
  const auto& res = sess.run({y, mask, gr[0]}, {{x, rf::Tensor::from_vector<double>(xv, s)}});
  const Vec yv = res[0].to_vector<double>(), mv = res[1].to_vector<double>(), dv = res[2].to_vector<double>();
  const double keep = 1.0 / (1.0 - rate);
  size_t dropped = 0, odd = 0;
  for (double m : mv) {
    if (m == 0) ++dropped;
    else if (std::fabs(m - keep) > 1e-12 * keep) ++odd;
  }
  EXPECT_EQ(odd, 0u) << "mask values must be 0 or 1/(1-rate)";
  const double frac = double(dropped) / double(mv.size());
  EXPECT_NEAR(frac, rate, 0.1) << dropped << " of " << mv.size() << " dropped";
  Vec want_y(xv.size()), want_d(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) { want_y[i] = xv[i] * mv[i]; want_d[i] = r[i] * mv[i]; }
  expect_close(yv, want_y, 1e-12, "dropout forward = x * mask");
  expect_close(dv, want_d, 1e-12, "dropout gradient = R * mask");
}

// Cast F64 -> F32 -> F64: the value and the gradient are each rounded through float once, so both
// are checked exactly (finite differences at h = 1e-6 would be dominated by float rounding).
TEST(OpsGradcheck, CastRoundTrip) {
  const Shape s{3, 4};
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> u(-1, 1);
  Vec xv(size_t(s.numel())), r(size_t(s.numel()));
  for (double& v : xv) v = u(rng);
  for (double& v : r) v = u(rng);
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, s);
  const Value y = ops::cast(ops::cast(x, DType::F32), DType::F64);
  ASSERT_EQ(g.spec(y).dtype, DType::F64);
  const Value loss = ops::sum(ops::mul(y, g.constant(rf::Tensor::from_vector<double>(r, s))));
  const Values gr = rf::gradients(loss, {x});
  ASSERT_TRUE(gr[0].valid());
  ASSERT_EQ(g.spec(gr[0]).dtype, DType::F64);
  rf::Session sess(g);
  const auto& res = sess.run({y, gr[0]}, {{x, rf::Tensor::from_vector<double>(xv, s)}});
  const Vec yv = res[0].to_vector<double>(), dv = res[1].to_vector<double>();
  for (size_t i = 0; i < xv.size(); ++i) {
    EXPECT_EQ(yv[i], double(float(xv[i]))) << i;
    EXPECT_EQ(dv[i], double(float(r[i]))) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// gradients() behaviour
// ---------------------------------------------------------------------------------------------

// y = x*x + x: x reaches the loss through Mul (twice) and Add; the contributions must be summed.
TEST(Gradients, SumsContributionsOfSeveralConsumers) {
  const Shape s{3, 4};
  Vec xv(size_t(s.numel()));
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(-2, 2);
  for (double& v : xv) v = u(rng);
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, s);
  const Value loss = ops::sum(ops::add(ops::mul(x, x), x));
  const Values gr = rf::gradients(loss, {x});
  ASSERT_TRUE(gr[0].valid());
  rf::Session sess(g);
  const Vec dv = sess.run({gr[0]}, {{x, rf::Tensor::from_vector<double>(xv, s)}})[0].to_vector<double>();
  Vec want(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) want[i] = 2 * xv[i] + 1;
  expect_close(dv, want, 1e-12, "d sum(x*x + x) / dx = 2x + 1");
}

TEST(Gradients, ThroughOpWithoutRuleThrowsNamingTheOp) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{2, 3});
  const Value rg = g.add(rf::Op::ReluGrad, {x, ops::relu(x)});
  const Value loss = ops::sum(rg);
  try {
    rf::gradients(loss, {x});
    FAIL() << "gradients() through a ReluGrad node did not throw";
  } catch (const rf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("ReluGrad"), std::string::npos) << e.what();
  }
}

size_t count_op(const rf::Graph& g, rf::Op op) {
  size_t n = 0;
  for (const rf::Node& node : g.nodes()) n += node.op == op;
  return n;
}

// Two convolutions over a data placeholder x: loss = sum(conv(relu(conv(x, w1)), w2)).
struct TwoConvs {
  rf::Graph g;
  Value x, w1, w2, loss;
  TwoConvs() {
    x = g.placeholder("x", DType::F64, Shape{2, 3, 6, 6});
    w1 = g.placeholder("w1", DType::F64, Shape{4, 3, 3, 3});
    w2 = g.placeholder("w2", DType::F64, Shape{2, 4, 3, 3});
    loss = ops::sum(ops::conv2d(ops::relu(ops::conv2d(x, w1, 1, 1)), w2, 1, 1));
  }
};

// The input gradient of a data placeholder that is not asked for is never built.
TEST(Gradients, UnrequestedPlaceholderGradientIsNotBuilt) {
  {
    TwoConvs t;
    const Values gr = rf::gradients(t.loss, {t.w2});
    ASSERT_TRUE(gr[0].valid());
    EXPECT_EQ(count_op(t.g, rf::Op::Conv2DGradInput), 0u);
    EXPECT_EQ(count_op(t.g, rf::Op::Conv2DGradFilter), 1u);
    EXPECT_EQ(count_op(t.g, rf::Op::ReluGrad), 0u);
  }
  {
    TwoConvs t;
    const Values gr = rf::gradients(t.loss, {t.w1, t.w2});
    ASSERT_TRUE(gr[0].valid() && gr[1].valid());
    // One GradFilter per weight and one GradInput (into conv 2's input); none into x.
    EXPECT_EQ(count_op(t.g, rf::Op::Conv2DGradInput), 1u);
    EXPECT_EQ(count_op(t.g, rf::Op::Conv2DGradFilter), 2u);
  }
}

// gradients() may be called more than once on one loss (as tf.gradients can), e.g. once per
// parameter group; each call adds its own backward nodes.
TEST(Gradients, CanBeCalledTwiceOnOneLoss) {
  TwoConvs t;
  Values g2, g12;
  ASSERT_NO_THROW(g2 = rf::gradients(t.loss, {t.w2}));
  ASSERT_NO_THROW(g12 = rf::gradients(t.loss, {t.w1, t.w2}));
  ASSERT_TRUE(g2[0].valid() && g12[1].valid());
  std::mt19937 rng(5);
  std::vector<rf::Session::Feed> feeds;
  for (const Value& v : {t.x, t.w1, t.w2}) {
    const Shape s = t.g.spec(v).shape;
    feeds.push_back({v, rf::Tensor::from_vector<double>(generate(U(s), rng), s)});
  }
  rf::Session sess(t.g);
  const auto& res = sess.run({g2[0], g12[1]}, feeds);
  expect_close(res[0].to_vector<double>(), res[1].to_vector<double>(), 1e-12, "d loss / d w2 of both calls");
}

TEST(Gradients, NonScalarLossThrows) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{2, 3});
  EXPECT_THROW(rf::gradients(ops::square(x), {x}), rf::Error);
  EXPECT_THROW(rf::gradients(ops::sum(x, {1}), {x}), rf::Error);              // [2]
  EXPECT_THROW(rf::gradients(ops::sum(x, {}, /*keepdims=*/true), {x}), rf::Error);  // [1, 1]
  EXPECT_NO_THROW(rf::gradients(ops::sum(x), {x}));
}

TEST(Gradients, UnrelatedInputGetsInvalidValue) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{2, 3});
  const Value z = g.placeholder("z", DType::F64, Shape{2, 3});
  const Values gr = rf::gradients(ops::sum(ops::exp(x)), {x, z});
  EXPECT_TRUE(gr[0].valid());
  EXPECT_FALSE(gr[1].valid());
}

}  // namespace
