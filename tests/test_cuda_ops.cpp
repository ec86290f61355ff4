// CUDA-vs-CPU differential tests of every op in runtime/op_list.h, forward and backward: one
// table row per op builds a small graph (forward ops also fetch the gradients that gradients()
// builds for them, so their backward ops run too), which is run by a CPU Session and a cuda:0
// Session from the same inputs, twice (the second run advances Dropout's counter and the
// optimizer state). Float outputs agree to 1e-4 (F32) or 1e-10 (F64) relative to max(1, |cpu|);
// integer and 16-bit outputs (argmax, casts, masks' bits) exactly. A row per op is enforced on
// every machine; the CPU half of each row runs everywhere, the comparison where a GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "autodiff/gradients.h"
#include "runtime/device.h"
#include "runtime/ops.h"
#include "runtime/session.h"

namespace {

using namespace rf;
using Values = std::vector<Value>;

struct Built {
  Values fetches;
  std::vector<Session::Feed> feeds;
  Values targets;  // update ops: fetches are read after them
};

struct Env {
  Graph& g;
  DType dt;
  unsigned seed = 1;

  Tensor rand(const Shape& s, double lo = -1, double hi = 1) { return rand(dt, s, lo, hi); }
  Tensor rand(DType t, const Shape& s, double lo = -1, double hi = 1) {
    std::mt19937 gen(seed++);
    std::uniform_real_distribution<double> dist(lo, hi);
    std::vector<double> v(static_cast<size_t>(s.numel()));
    for (double& x : v) x = dist(gen);
    if (t == DType::F64) return Tensor::from_vector<double>(v, s);
    return Tensor::from_vector<float>(std::vector<float>(v.begin(), v.end()), s);
  }
  // A fed placeholder with random values.
  Value in(Built& b, const Shape& s, double lo = -1, double hi = 1) {
    Value p = g.placeholder("in" + std::to_string(b.feeds.size()), dt, s);
    b.feeds.push_back({p, rand(s, lo, hi)});
    return p;
  }
  Value labels(Built& b, DType t, int rows, int classes) {
    std::vector<int64_t> v(static_cast<size_t>(rows));
    for (int i = 0; i < rows; ++i) v[size_t(i)] = (i * 5 + 3) % classes;
    Value p = g.placeholder("labels" + std::to_string(b.feeds.size()), t, Shape{rows});
    b.feeds.push_back({p, t == DType::I64 ? Tensor::from_vector<int64_t>(v, Shape{rows})
                                          : Tensor::from_vector<int32_t>(std::vector<int32_t>(v.begin(), v.end()),
                                                                         Shape{rows})});
    return p;
  }
  // Fetches y and the gradients of sum(y * R) (R a random constant) with respect to xs.
  void with_grads(Built& b, Value y, const Values& xs) {
    b.fetches.push_back(y);
    Value r = g.constant(rand(g.spec(y).dtype, g.spec(y).shape));
    for (Value d : gradients(ops::sum(ops::mul(y, r)), xs)) b.fetches.push_back(d);
  }
};

Attrs geometry(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Attrs a;
  a.kernel_h = kh, a.kernel_w = kw, a.stride_h = sh, a.stride_w = sw, a.pad_h = ph, a.pad_w = pw;
  return a;
}

// A forward op with its gradients: unary over a positive or signed input.
std::function<Built(Env&)> unary(Value (*f)(Value, const std::string&), bool positive = false) {
  return [f, positive](Env& e) {
    Built b;
    Value x = e.in(b, {4, 33}, positive ? 0.5 : -2, 2);
    e.with_grads(b, f(x, ""), {x});
    return b;
  };
}
std::function<Built(Env&)> binary(Value (*f)(Value, Value, const std::string&)) {
  return [f](Env& e) {
    Built b;
    Value x = e.in(b, {3, 4, 5}), y = e.in(b, {4, 1}, 0.5, 2);  // broadcast, y away from 0
    Value u = e.in(b, {3, 4, 5}), v = e.in(b, {3, 4, 5}, 0.5, 2);  // same shape
    e.with_grads(b, f(x, y, ""), {x, y});
    e.with_grads(b, f(u, v, ""), {u, v});
    return b;
  };
}
// A backward op fed directly: (dy, saved) of the same shape.
std::function<Built(Env&)> grad_op(Op op, double lo = -1, double hi = 1) {
  return [op, lo, hi](Env& e) {
    Built b;
    Value dy = e.in(b, {6, 40}), saved = e.in(b, {6, 40}, lo, hi);
    b.fetches.push_back(e.g.add(op, {dy, saved}));
    Value wide_dy = e.in(b, {2, 1500}), wide = e.in(b, {2, 1500}, lo, hi);  // block-per-row softmax kernels
    b.fetches.push_back(e.g.add(op, {wide_dy, wide}));
    return b;
  };
}
std::function<Built(Env&)> scalar_op(Value (*f)(Value, double, const std::string&), double c) {
  return [f, c](Env& e) {
    Built b;
    Value x = e.in(b, {5, 7}, 0.5, 2);
    e.with_grads(b, f(x, c, ""), {x});
    return b;
  };
}
// One optimizer step on a Variable (and its slots), fetched after the update.
std::function<Built(Env&)> apply(Op op) {
  return [op](Env& e) {
    Built b;
    const Shape s{37};
    Value w = e.g.variable("w", s, e.dt, Initializer::uniform(-1, 1));
    Values in{w};
    const int slots = op == Op::ApplyAdam ? 2 : op == Op::ApplyMomentum ? 1 : 0;
    for (int i = 0; i < slots; ++i) {
      in.push_back(e.g.variable("slot" + std::to_string(i), s, e.dt, Initializer::uniform(0.01, 0.1), false));
      b.fetches.push_back(in.back());
    }
    in.push_back(e.in(b, s));
    Value hyper = e.g.placeholder("hyper", DType::F64, Shape{2});
    b.feeds.push_back({hyper, Tensor::from_vector<double>({0.05, 3.0}, Shape{2})});
    in.push_back(hyper);
    Attrs a;
    a.momentum = 0.9, a.weight_decay = 0.01, a.nesterov = true, a.decoupled = true;
    b.targets.push_back(e.g.add(op, in, a));
    b.fetches.push_back(w);
    return b;
  };
}

// Sparse rows: n indices in [0, rows) with duplicates (i * 7 mod (rows - 1): the last row is
// never hit), fed as dtype t.
Value sparse_indices(Env& e, Built& b, DType t, const Shape& s, int rows) {
  std::vector<int64_t> v(size_t(s.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = int64_t(i * 7) % (rows - 1);
  Value p = e.g.placeholder("indices" + std::to_string(b.feeds.size()), t, s);
  b.feeds.push_back({p, t == DType::I64 ? Tensor::from_vector<int64_t>(v, s)
                                        : Tensor::from_vector<int32_t>(std::vector<int32_t>(v.begin(), v.end()), s)});
  return p;
}
// One sparse optimizer step on an embedding Variable (and its slots), fetched after the update.
std::function<Built(Env&)> apply_sparse(Op op) {
  return [op](Env& e) {
    Built b;
    const Shape s{12, 5};
    Value w = e.g.variable("w", s, e.dt, Initializer::uniform(-1, 1));
    Values in{w};
    const int slots = op == Op::ApplyAdamSparse ? 2 : op == Op::ApplyMomentumSparse ? 1 : 0;
    for (int i = 0; i < slots; ++i) {
      in.push_back(e.g.variable("slot" + std::to_string(i), s, e.dt, Initializer::uniform(0.01, 0.1), false));
      b.fetches.push_back(in.back());
    }
    in.push_back(e.in(b, {17, 5}));
    in.push_back(sparse_indices(e, b, DType::I32, {17}, 12));
    Value hyper = e.g.placeholder("hyper", DType::F64, Shape{2});
    b.feeds.push_back({hyper, Tensor::from_vector<double>({0.05, 3.0}, Shape{2})});
    in.push_back(hyper);
    Attrs a;
    a.momentum = 0.9, a.nesterov = true;
    b.targets.push_back(e.g.add(op, in, a));
    b.fetches.push_back(w);
    return b;
  };
}

struct OpCase {
  Op op;
  std::function<Built(Env&)> build;
};

const std::vector<OpCase>& cases() {
  static const std::vector<OpCase> table = {
      {Op::Placeholder, [](Env& e) { Built b; b.fetches.push_back(ops::neg(e.in(b, {3, 4}))); return b; }},
      {Op::Const, [](Env& e) { Built b; b.fetches.push_back(ops::neg(e.g.constant(e.rand({3, 4})))); return b; }},
      {Op::Variable, [](Env& e) {
         Built b;
         b.fetches.push_back(e.g.variable("v", {5, 6}, e.dt, Initializer::glorot_uniform()));
         b.fetches.push_back(e.g.variable("n", {301}, e.dt, Initializer::normal(0.5, 2)));
         return b;
       }},
      {Op::InitVariable, [](Env& e) {
         Built b;
         b.fetches.push_back(e.g.variable("u", {4, 9}, e.dt, Initializer::he_normal()));
         b.fetches.push_back(e.g.variable("c", {7}, e.dt, Initializer::constant(0.25)));
         return b;
       }},
      {Op::MatMul, [](Env& e) {
         Built b;
         for (bool ta : {false, true})
           for (bool tb : {false, true}) {
             Value x = e.in(b, ta ? Shape{9, 5} : Shape{5, 9}), y = e.in(b, tb ? Shape{7, 9} : Shape{9, 7});
             e.with_grads(b, ops::matmul(x, y, ta, tb), {x, y});
           }
         return b;
       }},
      {Op::Add, binary(ops::add)},
      {Op::Sub, binary(ops::sub)},
      {Op::Mul, binary(ops::mul)},
      {Op::Div, binary(ops::div)},
      {Op::Neg, unary(ops::neg)},
      {Op::Exp, unary(ops::exp)},
      {Op::Log, unary(ops::log, true)},
      {Op::Sqrt, unary(ops::sqrt, true)},
      {Op::Square, unary(ops::square)},
      {Op::Relu, unary(ops::relu)},
      {Op::Tanh, unary(ops::tanh)},
      {Op::Sigmoid, unary(ops::sigmoid)},
      {Op::Gelu, unary(ops::gelu)},
      {Op::ReluGrad, grad_op(Op::ReluGrad)},
      {Op::TanhGrad, grad_op(Op::TanhGrad)},
      {Op::SigmoidGrad, grad_op(Op::SigmoidGrad, 0, 1)},
      {Op::GeluGrad, grad_op(Op::GeluGrad)},
      {Op::AddScalar, scalar_op(ops::add_scalar, 1.5)},
      {Op::MulScalar, scalar_op(ops::mul_scalar, -0.75)},
      {Op::PowScalar, scalar_op(ops::pow_scalar, 2.5)},
      {Op::Softmax, [](Env& e) {
         Built b;
         for (Shape s : {Shape{4, 10}, Shape{2, 3, 33}, Shape{3, 1500}}) {
           Value x = e.in(b, s, -4, 4);
           e.with_grads(b, ops::softmax(x), {x});
         }
         return b;
       }},
      {Op::LogSoftmax, [](Env& e) {
         Built b;
         for (Shape s : {Shape{4, 10}, Shape{2, 3, 33}, Shape{3, 1500}}) {
           Value x = e.in(b, s, -4, 4);
           e.with_grads(b, ops::log_softmax(x), {x});
         }
         return b;
       }},
      {Op::SoftmaxGrad, grad_op(Op::SoftmaxGrad, 0, 1)},
      {Op::LogSoftmaxGrad, grad_op(Op::LogSoftmaxGrad, -5, 0)},
      {Op::SparseSoftmaxXent, [](Env& e) {
         Built b;
         Value x = e.in(b, {6, 10}, -4, 4), wide = e.in(b, {3, 1500}, -4, 4);
         e.with_grads(b, ops::sparse_softmax_cross_entropy(x, e.labels(b, DType::I32, 6, 10)), {x});
         e.with_grads(b, ops::sparse_softmax_cross_entropy(wide, e.labels(b, DType::I64, 3, 1500)), {wide});
         Value both = e.g.add(Op::SparseSoftmaxXent, {x, e.labels(b, DType::I32, 6, 10)});
         b.fetches.push_back(Value{both.graph, both.node, 1});  // backprop
         // ignore_index (-100, and a valid class) and label smoothing; rows 1 and 4 ignored.
         Value ign = e.g.placeholder("ignored_labels", DType::I64, Shape{6});
         b.feeds.push_back({ign, Tensor::from_vector<int64_t>({3, -100, 0, 9, -100, 7}, Shape{6})});
         Value smooth = ops::sparse_softmax_cross_entropy(x, ign, ops::XentOptions{-100, 0.1});
         e.with_grads(b, smooth, {x});
         b.fetches.push_back(Value{smooth.graph, smooth.node, 1});
         e.with_grads(b, ops::sparse_softmax_cross_entropy_mean(x, ign, ops::XentOptions{-100, 0.25}), {x});
         e.with_grads(b, ops::sparse_softmax_cross_entropy(wide, e.labels(b, DType::I32, 3, 1500),
                                                           ops::XentOptions{3, 0.3}), {wide});  // row 0 label 3
         return b;
       }},
      {Op::SparseSoftmaxXentGrad, [](Env& e) {
         Built b;
         b.fetches.push_back(e.g.add(Op::SparseSoftmaxXentGrad, {e.in(b, {5}), e.in(b, {5, 12})}));
         return b;
       }},
      {Op::Rsqrt, unary(ops::rsqrt, true)},
      {Op::RsqrtGrad, grad_op(Op::RsqrtGrad, 0.5, 2)},
      {Op::Where, [](Env& e) {
         Built b;
         std::vector<uint8_t> bits(4 * 5);
         for (size_t i = 0; i < bits.size(); ++i) bits[i] = uint8_t((i * 7 + 3) % 3 == 0 ? 0 : i);
         Value cond = e.g.constant(Tensor::from_vector<uint8_t>(bits, Shape{4, 5}));
         Value x = e.in(b, {3, 4, 5}), y = e.in(b, {5});  // broadcast x, y and cond to [3, 4, 5]
         e.with_grads(b, ops::where(cond, x, y), {x, y});
         Value cond_row = e.g.placeholder("cond_row", DType::U8, Shape{4, 1});  // a fed (staged) condition
         b.feeds.push_back({cond_row, Tensor::from_vector<uint8_t>({1, 0, 0, 1}, Shape{4, 1})});
         Value u = e.in(b, {4, 300}), v = e.in(b, {4, 300});
         e.with_grads(b, ops::where(cond_row, u, v), {u, v});
         e.with_grads(b, ops::masked_fill(u, cond_row, -1e9), {u});
         return b;
       }},
      {Op::Compare, [](Env& e) {
         Built b;
         Value x = e.in(b, {3, 4, 5}), y = e.in(b, {4, 1});
         b.fetches.push_back(ops::less(x, y));
         b.fetches.push_back(ops::greater_equal(x, y));
         b.fetches.push_back(ops::equal(x, x));
         b.fetches.push_back(ops::not_equal(y, y));
         Value lab = e.g.placeholder("cmp_labels", DType::I32, Shape{7});
         b.feeds.push_back({lab, Tensor::from_vector<int32_t>({0, -100, 3, 3, -100, 1, 9}, Shape{7})});
         Value lens = e.g.placeholder("cmp_lens", DType::I64, Shape{3});
         b.feeds.push_back({lens, Tensor::from_vector<int64_t>({0, 4, 9}, Shape{3})});
         b.fetches.push_back(ops::not_equal(lab, e.g.constant(Tensor::scalar<int32_t>(-100))));
         b.fetches.push_back(ops::less_equal(lab, e.g.constant(Tensor::scalar<int32_t>(3))));
         b.fetches.push_back(ops::count_not_ignored(lab, -100, e.dt));
         b.fetches.push_back(ops::padding_mask(lens, 6, e.dt));
         return b;
       }},
      {Op::MaskedSoftmax, [](Env& e) {
         Built b;
         Value scores = e.in(b, {2, 3, 5, 5}, -4, 4);
         e.with_grads(b, ops::masked_softmax(scores, ops::causal_mask(e.g, 5, e.dt)), {scores});
         Value lens = e.g.placeholder("ms_lens", DType::I32, Shape{2});
         b.feeds.push_back({lens, Tensor::from_vector<int32_t>({3, 0}, Shape{2})});  // batch row 1 fully masked
         e.with_grads(b, ops::masked_softmax(scores, ops::padding_mask(lens, 5, e.dt)), {scores});
         Value wide = e.in(b, {3, 1500}, -4, 4), bias = e.in(b, {1500}, -2, 2);  // block-per-row kernel
         e.with_grads(b, ops::masked_softmax(wide, bias), {wide, bias});
         Value rows = e.in(b, {4, 7}), row_mask = e.in(b, {4, 1});  // mask constant along the row
         e.with_grads(b, ops::masked_softmax(rows, row_mask), {rows, row_mask});
         return b;
       }},
      {Op::Sum, [](Env& e) {
         Built b;
         Value x = e.in(b, {4, 5, 6});
         e.with_grads(b, ops::sum(x, {1}), {x});
         e.with_grads(b, ops::sum(x, {0, 2}, true), {x});
         e.with_grads(b, ops::sum(x), {x});
         return b;
       }},
      {Op::Mean, [](Env& e) {
         Built b;
         Value x = e.in(b, {4, 5, 6});
         e.with_grads(b, ops::mean(x, {-1}), {x});
         e.with_grads(b, ops::mean(x, {0, 1}, true), {x});
         return b;
       }},
      {Op::BroadcastLike, [](Env& e) {
         Built b;
         Value like = e.in(b, {4, 5, 6});
         b.fetches.push_back(e.g.add(Op::BroadcastLike, {e.in(b, {5, 1}), like}));
         Attrs a;
         a.axes = {0, 2}, a.average = true;
         b.fetches.push_back(e.g.add(Op::BroadcastLike, {e.in(b, {5}), like}, a));
         return b;
       }},
      {Op::SumLike, [](Env& e) {
         Built b;
         Value x = e.in(b, {4, 5, 6});
         b.fetches.push_back(e.g.add(Op::SumLike, {x, e.in(b, {5, 1})}));
         b.fetches.push_back(e.g.add(Op::SumLike, {x, e.in(b, {6})}));
         return b;
       }},
      {Op::Reshape, [](Env& e) {
         Built b;
         Value x = e.in(b, {4, 6});
         e.with_grads(b, ops::exp(ops::reshape(x, {2, -1, 3})), {x});
         return b;
       }},
      {Op::ReshapeLike, [](Env& e) {
         Built b;
         Value x = e.in(b, {4, 6});
         b.fetches.push_back(ops::exp(e.g.add(Op::ReshapeLike, {x, e.in(b, {3, 8})})));
         return b;
       }},
      {Op::Transpose, [](Env& e) {
         Built b;
         Value x = e.in(b, {3, 4, 5}), y = e.in(b, {7, 9});
         e.with_grads(b, ops::transpose(x, {2, 0, 1}), {x});
         e.with_grads(b, ops::transpose(y, {1, 0}), {y});
         return b;
       }},
      {Op::BiasAdd, [](Env& e) {
         Built b;
         Value x = e.in(b, {3, 4, 5, 5}), c = e.in(b, {4}), d = e.in(b, {6, 8}), db = e.in(b, {8});
         e.with_grads(b, ops::bias_add(x, c), {x, c});
         e.with_grads(b, ops::bias_add(d, db), {d, db});
         return b;
       }},
      {Op::BiasAddGrad, [](Env& e) {
         Built b;
         b.fetches.push_back(e.g.add(Op::BiasAddGrad, {e.in(b, {3, 4, 5, 5})}));
         return b;
       }},
      {Op::Conv2D, [](Env& e) {
         Built b;
         Value x = e.in(b, {2, 3, 9, 8}), w = e.in(b, {4, 3, 3, 3});
         e.with_grads(b, ops::conv2d(x, w, 1, 1), {x, w});
         Value x2 = e.in(b, {3, 2, 11, 7}), w2 = e.in(b, {5, 2, 4, 2});  // asymmetric stride and padding
         e.with_grads(b, e.g.add(Op::Conv2D, {x2, w2}, geometry(0, 0, 2, 1, 1, 0)), {x2, w2});
         return b;
       }},
      {Op::Conv2DGradInput, [](Env& e) {
         Built b;
         Value x = e.in(b, {2, 3, 9, 8}), w = e.in(b, {4, 3, 3, 3});
         b.fetches.push_back(e.g.add(Op::Conv2DGradInput, {e.in(b, {2, 4, 5, 8}), w, x}, geometry(0, 0, 2, 1, 1, 1)));
         return b;
       }},
      {Op::Conv2DGradFilter, [](Env& e) {
         Built b;
         Value x = e.in(b, {2, 3, 9, 8}), w = e.in(b, {4, 3, 3, 3});
         b.fetches.push_back(e.g.add(Op::Conv2DGradFilter, {x, e.in(b, {2, 4, 5, 8}), w}, geometry(0, 0, 2, 1, 1, 1)));
         return b;
       }},
      {Op::MaxPool2D, [](Env& e) {
         Built b;
         Value x = e.in(b, {2, 3, 9, 8});
         Value p = ops::max_pool2d(x, 3, 2, 1);  // overlapping windows, padding
         e.with_grads(b, p, {x});
         b.fetches.push_back(Value{p.graph, p.node, 1});  // argmax
         Value y = e.in(b, {2, 2, 8, 6});
         e.with_grads(b, ops::max_pool2d(y, 2), {y});  // windows tile the input: the tiled gradient kernel
         e.with_grads(b, ops::max_pool2d(x, 2), {x});  // 9 rows: the last is in no window
         return b;
       }},
      {Op::MaxPool2DGrad, [](Env& e) {
         Built b;
         Value x = e.in(b, {2, 3, 9, 8});
         Value p = e.g.add(Op::MaxPool2D, {x}, geometry(3, 2, 2, 1, 1, 1));
         b.fetches.push_back(
             e.g.add(Op::MaxPool2DGrad, {e.in(b, e.g.spec(p).shape), Value{p.graph, p.node, 1}, x}, geometry(3, 2, 2, 1, 1, 1)));
         return b;
       }},
      {Op::AvgPool2D, [](Env& e) {
         Built b;
         Value x = e.in(b, {2, 3, 9, 8});
         e.with_grads(b, ops::avg_pool2d(x, 3, 2, 1), {x});
         e.with_grads(b, e.g.add(Op::AvgPool2D, {x}, geometry(2, 3, 1, 2, 0, 1)), {x});
         return b;
       }},
      {Op::AvgPool2DGrad, [](Env& e) {
         Built b;
         Value x = e.in(b, {2, 3, 9, 8});
         const Attrs a = geometry(3, 3, 2, 2, 1, 1);
         b.fetches.push_back(e.g.add(Op::AvgPool2DGrad, {e.in(b, {2, 3, 5, 4}), x}, a));
         return b;
       }},
      {Op::BatchMatMul, [](Env& e) {
         Built b;
         for (bool ta : {false, true})
           for (bool tb : {false, true}) {  // every transpose pair over a regular [2, 3] batch
             Value x = e.in(b, ta ? Shape{2, 3, 9, 5} : Shape{2, 3, 5, 9});
             Value y = e.in(b, tb ? Shape{2, 3, 7, 9} : Shape{2, 3, 9, 7});
             e.with_grads(b, ops::batch_matmul(x, y, ta, tb), {x, y});
           }
         Value seq = e.in(b, {3, 6, 8}), w = e.in(b, {8, 5}), wt = e.in(b, {5, 8});  // a Linear over a sequence
         e.with_grads(b, ops::batch_matmul(seq, w), {seq, w});
         e.with_grads(b, ops::batch_matmul(seq, wt, false, true), {seq, wt});
         Value p = e.in(b, {2, 1, 4, 6}), q = e.in(b, {3, 6, 5});  // mixed broadcast: a loop of strided batches
         e.with_grads(b, ops::batch_matmul(p, q), {p, q});
         return b;
       }},
      {Op::LayerNorm, [](Env& e) {
         Built b;
         for (Shape s : {Shape{4, 6, 10}, Shape{3, 1500}}) {  // warp-per-row and block-per-row kernels
           Value x = e.in(b, s, -3, 3), g = e.in(b, {s.dim(-1)}, 0.5, 1.5), be = e.in(b, {s.dim(-1)});
           Value y = ops::layer_norm(x, g, be, 1e-5);
           e.with_grads(b, y, {x, g, be});
           b.fetches.push_back(Value{y.graph, y.node, 1});  // mean
           b.fetches.push_back(Value{y.graph, y.node, 2});  // rstd
         }
         return b;
       }},
      {Op::LayerNormGrad, [](Env& e) {
         Built b;
         Value x = e.in(b, {700, 40}, -3, 3), g = e.in(b, {40}, 0.5, 1.5);  // 700 rows: three slabs of partials
         Value y = ops::layer_norm(x, g, e.in(b, {40}), 1e-5);
         Value ln = e.g.add(Op::LayerNormGrad, {e.in(b, {700, 40}), x, g, Value{y.graph, y.node, 1},
                                                Value{y.graph, y.node, 2}});
         for (int j = 0; j < 3; ++j) b.fetches.push_back(Value{ln.graph, ln.node, j});
         return b;
       }},
      {Op::Slice, [](Env& e) {
         Built b;
         Value x = e.in(b, {4, 6, 5});
         e.with_grads(b, ops::slice(x, 1, 2, 5), {x});
         e.with_grads(b, ops::slice(x, 0, 1, 2), {x});  // one contiguous run
         e.with_grads(b, ops::slice(x, -1, -3, Attrs::kSliceToEnd), {x});
         return b;
       }},
      {Op::Concat, [](Env& e) {
         Built b;
         Value x = e.in(b, {3, 2, 5}), y = e.in(b, {3, 4, 5}), z = e.in(b, {3, 1, 5});
         e.with_grads(b, ops::concat({x, y, z}, 1), {x, y, z});
         e.with_grads(b, ops::concat({x, x}, 0), {x});
         return b;
       }},
      {Op::Pad, [](Env& e) {
         Built b;
         Value x = e.in(b, {3, 4, 5});
         e.with_grads(b, ops::pad(x, 1, 2, 1, -0.5), {x});
         e.with_grads(b, ops::pad(x, -1, 0, 3), {x});
         return b;
       }},
      {Op::Dropout, [](Env& e) {
         Built b;
         Value x = e.in(b, {7, 300});
         Value d = ops::dropout(x, 0.3, 1234);
         e.with_grads(b, d, {x});
         b.fetches.push_back(Value{d.graph, d.node, 1});  // mask
         return b;
       }},
      {Op::Cast, [](Env& e) {
         Built b;
         Value x = e.in(b, {5, 61}, -70000, 70000);  // past F16's range: inf
         if (e.dt == DType::F64) {
           e.with_grads(b, ops::cast(x, DType::F32), {x});
           return b;
         }
         Value small = e.in(b, {301}, -1e-6, 1e-6);  // F16 subnormals
         e.with_grads(b, ops::cast(x, DType::F64), {x});
         for (Value v : {x, small})
           for (DType t : {DType::F16, DType::BF16}) {
             Value c = ops::cast(v, t);
             b.fetches.push_back(c);
             b.fetches.push_back(ops::cast(c, DType::F32));
           }
         b.fetches.push_back(ops::cast(x, DType::F32));  // same dtype: a copy
         return b;
       }},
      // Sparse rows: indices with duplicates (and, on the GPU, rows that none hits).
      {Op::Gather, [](Env& e) {
         Built b;
         Value params = e.in(b, {9, 5});
         e.with_grads(b, ops::gather(params, sparse_indices(e, b, DType::I32, {11}, 9)), {params});
         Value deep = e.in(b, {6, 2, 3});
         e.with_grads(b, ops::gather(deep, sparse_indices(e, b, DType::I64, {3, 4}, 6)), {deep});  // [B, T]
         return b;
       }},
      {Op::ScatterAdd, [](Env& e) {
         Built b;
         Value rows = e.in(b, {13, 7}), like = e.in(b, {10, 7});
         e.with_grads(b, ops::scatter_add(rows, sparse_indices(e, b, DType::I64, {13}, 10), like), {rows});
         Value wide = e.in(b, {40, 300}), wlike = e.in(b, {33, 300});
         b.fetches.push_back(ops::scatter_add(wide, sparse_indices(e, b, DType::I32, {40}, 33), wlike));
         return b;
       }},
      {Op::ApplySGDSparse, apply_sparse(Op::ApplySGDSparse)},
      {Op::ApplyMomentumSparse, apply_sparse(Op::ApplyMomentumSparse)},
      {Op::ApplyAdamSparse, apply_sparse(Op::ApplyAdamSparse)},
      {Op::ApplySGD, apply(Op::ApplySGD)},
      {Op::ApplyMomentum, apply(Op::ApplyMomentum)},
      {Op::ApplyAdam, apply(Op::ApplyAdam)},
  };
  return table;
}

constexpr int kRuns = 2;

// Host copies of every fetch of kRuns runs on `device`.
std::vector<Tensor> run_on(const Graph& g, const Built& b, Device device) {
  Session s(g, device);
  s.run({}, {}, g.initializers());
  std::vector<Tensor> got;
  for (int r = 0; r < kRuns; ++r) {
    // Fetched Variables are their storage: read after the run, they hold the updated values.
    for (const Tensor& t : s.run(b.fetches, b.feeds, b.targets)) got.push_back(t.to(Device::cpu()));
  }
  return got;
}

std::vector<double> as_doubles(const Tensor& t) {
  if (t.dtype() == DType::F32) {
    const std::vector<float> v = t.to_vector<float>();
    return {v.begin(), v.end()};
  }
  return t.to_vector<double>();
}

void expect_match(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  ASSERT_EQ(gpu.dtype(), cpu.dtype()) << what;
  ASSERT_EQ(gpu.shape(), cpu.shape()) << what;
  if (cpu.dtype() != DType::F32 && cpu.dtype() != DType::F64) {  // integers and 16-bit floats: bit-exact
    EXPECT_EQ(std::memcmp(gpu.raw(), cpu.raw(), cpu.nbytes()), 0) << what << ": " << dtype_name(cpu.dtype())
                                                                   << " output differs";
    return;
  }
  const double tol = cpu.dtype() == DType::F32 ? 1e-4 : 1e-10;
  const std::vector<double> got = as_doubles(gpu), want = as_doubles(cpu);
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool same = got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]));  // inf, NaN
    const double err = same ? 0 : std::fabs(got[i] - want[i]) / std::max(1.0, std::fabs(want[i]));
    if (!(err <= worst)) worst = err, at = i;  // also catches NaN
  }
  EXPECT_LE(worst, tol) << what << ": worst at " << at << ": cuda " << got[at] << " vs cpu " << want[at];
}

std::string case_name(Op op, DType dt) { return std::string(op_name(op)) + " " + dtype_name(dt); }

TEST(CudaOpsTable, EveryOpHasADifferentialCase) {
  std::set<Op> covered;
  for (const OpCase& c : cases()) EXPECT_TRUE(covered.insert(c.op).second) << op_name(c.op) << " has two rows";
  for (int i = 0; i < int(Op::COUNT); ++i)
    EXPECT_TRUE(covered.count(Op(i))) << "op " << op_name(Op(i))
                                      << " has no CUDA-vs-CPU case in tests/test_cuda_ops.cpp: add one";
}

// Runs everywhere: each row's graph contains its op and runs on the CPU.
TEST(CudaOpsTable, CasesBuildAndRunOnCpu) {
  for (const OpCase& c : cases())
    for (DType dt : {DType::F32, DType::F64}) {
      SCOPED_TRACE(case_name(c.op, dt));
      try {
        Graph g(7);
        Env env{g, dt};
        const Built b = c.build(env);
        EXPECT_TRUE(std::any_of(g.nodes().begin(), g.nodes().end(), [&](const Node& n) { return n.op == c.op; }));
        EXPECT_EQ(run_on(g, b, Device::cpu()).size(), b.fetches.size() * kRuns);
      } catch (const Error& e) {
        ADD_FAILURE() << e.what();
      }
    }
}

TEST(CudaOps, EveryOpMatchesCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
  for (const OpCase& c : cases())
    for (DType dt : {DType::F32, DType::F64}) {
      Graph g(7);
      Env env{g, dt};
      const Built b = c.build(env);
      const std::vector<Tensor> want = run_on(g, b, Device::cpu());
      std::vector<Tensor> got;
      try {
        got = run_on(g, b, Device::cuda(0));
      } catch (const Error& e) {
        ADD_FAILURE() << case_name(c.op, dt) << ": " << e.what();
        continue;
      }
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i)
        expect_match(got[i], want[i],
                     case_name(c.op, dt) + " run " + std::to_string(i / b.fetches.size()) + " fetch " +
                         std::to_string(i % b.fetches.size()) + " ('" + g.node(b.fetches[i % b.fetches.size()]).name +
                         "')");
    }
}

TEST(CudaOps, EveryOpHasACudaKernel) {
#if RINGFLOW_CUDA
  constexpr bool kCudaBuild = true;
#else
  constexpr bool kCudaBuild = false;
#endif
  for (int i = 0; i < int(Op::COUNT); ++i) EXPECT_EQ(cuda_has_kernel(Op(i)), kCudaBuild) << op_name(Op(i));
}

}  // namespace
