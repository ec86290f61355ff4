// Elementwise math written once as __host__ __device__ functors; the CPU loops
// (elementwise_cpu.cpp) and the CUDA kernels (elementwise.cu) both instantiate these.
#pragma once
#include <cmath>

#include "kernels/common.h"

namespace rf::kernels {

#if !defined(__CUDACC__)
// Host code: unqualified exp(float) must find std's float overloads, not ::exp(double). Names
// are bound where the functors are defined, so this has to be here, not at the call site.
// (CUDA device code gets float overloads from the CUDA math headers.)
using std::erf, std::exp, std::log, std::pow, std::sqrt, std::tanh;
#endif

enum class UnaryOp { Neg, Exp, Log, Sqrt, Square, Abs, Relu, Tanh, Sigmoid, Gelu, Rsqrt };
// Binary ops on two equally shaped (or broadcast) operands. The *Grad ops take (dy, saved) and
// return dx: ReluGrad(dy, x), TanhGrad(dy, y=tanh x), SigmoidGrad(dy, y=sigmoid x), GeluGrad(dy, x),
// RsqrtGrad(dy, y=rsqrt x).
enum class BinaryOp { Add, Sub, Mul, Div, ReluGrad, TanhGrad, SigmoidGrad, GeluGrad, RsqrtGrad };
// y = f(x, c) with a host scalar c.
enum class ScalarOp { Add, Mul, Pow, RSub /* c - x */, RDiv /* c / x */ };
// a OP b (the Compare op, 1 or 0 as uint8). Every comparison with a NaN is false except Ne.
enum class CompareOp { Eq, Ne, Lt, Le, Gt, Ge };
template <class T> RF_HD bool compare_values(CompareOp op, T a, T b) {
  switch (op) {
    case CompareOp::Eq: return a == b;
    case CompareOp::Ne: return a != b;
    case CompareOp::Lt: return a < b;
    case CompareOp::Le: return a <= b;
    case CompareOp::Gt: return a > b;
    case CompareOp::Ge: return a >= b;
  }
  return false;
}

struct NegF { template <class T> RF_HD T operator()(T x) const { return -x; } };
struct ExpF { template <class T> RF_HD T operator()(T x) const { return exp(x); } };
struct LogF { template <class T> RF_HD T operator()(T x) const { return log(x); } };
struct SqrtF { template <class T> RF_HD T operator()(T x) const { return sqrt(x); } };
struct SquareF { template <class T> RF_HD T operator()(T x) const { return x * x; } };
struct AbsF { template <class T> RF_HD T operator()(T x) const { return x < T(0) ? -x : x; } };
struct ReluF { template <class T> RF_HD T operator()(T x) const { return x > T(0) ? x : T(0); } };
struct TanhF { template <class T> RF_HD T operator()(T x) const { return tanh(x); } };
struct SigmoidF {
  template <class T> RF_HD T operator()(T x) const { return T(1) / (T(1) + exp(-x)); }
};
// Exact (erf) GELU, PyTorch's default: x * Phi(x).
struct GeluF {
  template <class T> RF_HD T operator()(T x) const {
    return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
  }
};
// 1 / sqrt(x), as a correctly rounded sqrt then a division on both backends (not CUDA's rsqrt
// intrinsic, which is not correctly rounded), so the CPU and the GPU agree to the last bit or two.
struct RsqrtF { template <class T> RF_HD T operator()(T x) const { return T(1) / sqrt(x); } };

struct AddF { template <class T> RF_HD T operator()(T a, T b) const { return a + b; } };
struct SubF { template <class T> RF_HD T operator()(T a, T b) const { return a - b; } };
struct MulF { template <class T> RF_HD T operator()(T a, T b) const { return a * b; } };
struct DivF { template <class T> RF_HD T operator()(T a, T b) const { return a / b; } };
struct ReluGradF {
  template <class T> RF_HD T operator()(T dy, T x) const { return x > T(0) ? dy : T(0); }
};
struct TanhGradF {
  template <class T> RF_HD T operator()(T dy, T y) const { return dy * (T(1) - y * y); }
};
struct SigmoidGradF {
  template <class T> RF_HD T operator()(T dy, T y) const { return dy * y * (T(1) - y); }
};
// d/dx [x Phi(x)] = Phi(x) + x phi(x).
struct GeluGradF {
  template <class T> RF_HD T operator()(T dy, T x) const {
    const T cdf = T(0.5) * (T(1) + erf(x * T(0.70710678118654752440)));
    const T pdf = T(0.39894228040143267794) * exp(T(-0.5) * x * x);
    return dy * (cdf + x * pdf);
  }
};
// d/dx x^(-1/2) = -x^(-3/2) / 2 = -y^3 / 2 with y = rsqrt(x).
struct RsqrtGradF {
  template <class T> RF_HD T operator()(T dy, T y) const { return T(-0.5) * dy * (y * y * y); }
};

struct ScalarAddF { template <class T> RF_HD T operator()(T x, T c) const { return x + c; } };
struct ScalarMulF { template <class T> RF_HD T operator()(T x, T c) const { return x * c; } };
struct ScalarPowF { template <class T> RF_HD T operator()(T x, T c) const { return pow(x, c); } };
struct ScalarRSubF { template <class T> RF_HD T operator()(T x, T c) const { return c - x; } };
struct ScalarRDivF { template <class T> RF_HD T operator()(T x, T c) const { return c / x; } };

// Calls f(Functor{}) for the functor of a runtime op: the one place that maps enum -> functor.
template <class F> auto visit_unary(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::Neg: return f(NegF{});
    case UnaryOp::Exp: return f(ExpF{});
    case UnaryOp::Log: return f(LogF{});
    case UnaryOp::Sqrt: return f(SqrtF{});
    case UnaryOp::Square: return f(SquareF{});
    case UnaryOp::Abs: return f(AbsF{});
    case UnaryOp::Relu: return f(ReluF{});
    case UnaryOp::Tanh: return f(TanhF{});
    case UnaryOp::Sigmoid: return f(SigmoidF{});
    case UnaryOp::Gelu: return f(GeluF{});
    case UnaryOp::Rsqrt: return f(RsqrtF{});
  }
  return f(NegF{});
}
template <class F> auto visit_binary(BinaryOp op, F&& f) {
  switch (op) {
    case BinaryOp::Add: return f(AddF{});
    case BinaryOp::Sub: return f(SubF{});
    case BinaryOp::Mul: return f(MulF{});
    case BinaryOp::Div: return f(DivF{});
    case BinaryOp::ReluGrad: return f(ReluGradF{});
    case BinaryOp::TanhGrad: return f(TanhGradF{});
    case BinaryOp::SigmoidGrad: return f(SigmoidGradF{});
    case BinaryOp::GeluGrad: return f(GeluGradF{});
    case BinaryOp::RsqrtGrad: return f(RsqrtGradF{});
  }
  return f(AddF{});
}
template <class F> auto visit_scalar(ScalarOp op, F&& f) {
  switch (op) {
    case ScalarOp::Add: return f(ScalarAddF{});
    case ScalarOp::Mul: return f(ScalarMulF{});
    case ScalarOp::Pow: return f(ScalarPowF{});
    case ScalarOp::RSub: return f(ScalarRSubF{});
    case ScalarOp::RDiv: return f(ScalarRDivF{});
  }
  return f(ScalarAddF{});
}

}  // namespace rf::kernels
