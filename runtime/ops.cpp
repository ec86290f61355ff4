// Graph-building functions: thin wrappers that fill Attrs and call Graph::add.
#include "runtime/ops.h"

namespace rf::ops {

namespace {
Value unary(Op op, Value x, const std::string& name) { return x.graph->add(op, {x}, {}, name); }
Value binary(Op op, Value a, Value b, const std::string& name) {
  RF_CHECK(a.graph == b.graph && a.graph, op_name(op), ": operands belong to different graphs");
  return a.graph->add(op, {a, b}, {}, name);
}
Value with_scalar(Op op, Value x, double c, const std::string& name) {
  Attrs at;
  at.scalar = c;
  return x.graph->add(op, {x}, std::move(at), name);
}
Value reduce(Op op, Value x, std::vector<int> axes, bool keepdims, const std::string& name) {
  Attrs at;
  at.axes = std::move(axes);
  at.keepdims = keepdims;
  return x.graph->add(op, {x}, std::move(at), name);
}
Value pool(Op op, Value x, int kernel, int stride, int pad, const std::string& name) {
  Attrs at;
  at.kernel_h = at.kernel_w = kernel;
  at.stride_h = at.stride_w = stride < 0 ? kernel : stride;
  at.pad_h = at.pad_w = pad;
  return x.graph->add(op, {x}, std::move(at), name);
}
}  // namespace

Value matmul(Value a, Value b, bool ta, bool tb, const std::string& name) {
  Attrs at;
  at.transpose_a = ta;
  at.transpose_b = tb;
  return a.graph->add(Op::MatMul, {a, b}, std::move(at), name);
}
Value add(Value a, Value b, const std::string& name) { return binary(Op::Add, a, b, name); }
Value sub(Value a, Value b, const std::string& name) { return binary(Op::Sub, a, b, name); }
Value mul(Value a, Value b, const std::string& name) { return binary(Op::Mul, a, b, name); }
Value div(Value a, Value b, const std::string& name) { return binary(Op::Div, a, b, name); }
Value neg(Value x, const std::string& name) { return unary(Op::Neg, x, name); }
Value exp(Value x, const std::string& name) { return unary(Op::Exp, x, name); }
Value log(Value x, const std::string& name) { return unary(Op::Log, x, name); }
Value sqrt(Value x, const std::string& name) { return unary(Op::Sqrt, x, name); }
Value square(Value x, const std::string& name) { return unary(Op::Square, x, name); }
Value relu(Value x, const std::string& name) { return unary(Op::Relu, x, name); }
Value tanh(Value x, const std::string& name) { return unary(Op::Tanh, x, name); }
Value sigmoid(Value x, const std::string& name) { return unary(Op::Sigmoid, x, name); }
Value gelu(Value x, const std::string& name) { return unary(Op::Gelu, x, name); }
Value add_scalar(Value x, double c, const std::string& name) { return with_scalar(Op::AddScalar, x, c, name); }
Value mul_scalar(Value x, double c, const std::string& name) { return with_scalar(Op::MulScalar, x, c, name); }
Value pow_scalar(Value x, double c, const std::string& name) { return with_scalar(Op::PowScalar, x, c, name); }
Value softmax(Value x, const std::string& name) { return unary(Op::Softmax, x, name); }
Value log_softmax(Value x, const std::string& name) { return unary(Op::LogSoftmax, x, name); }
Value sparse_softmax_cross_entropy(Value logits, Value labels, const std::string& name) {
  return binary(Op::SparseSoftmaxXent, logits, labels, name);
}
Value sum(Value x, std::vector<int> axes, bool keepdims, const std::string& name) {
  return reduce(Op::Sum, x, std::move(axes), keepdims, name);
}
Value mean(Value x, std::vector<int> axes, bool keepdims, const std::string& name) {
  return reduce(Op::Mean, x, std::move(axes), keepdims, name);
}
Value reshape(Value x, const Shape& shape, const std::string& name) {
  Attrs at;
  at.shape = shape;
  return x.graph->add(Op::Reshape, {x}, std::move(at), name);
}
Value flatten(Value x, const std::string& name) {
  const Shape& s = x.graph->spec(x).shape;
  RF_CHECK(s.rank >= 1, "flatten needs rank >= 1");
  i64 rest = 1;
  for (int i = 1; i < s.rank; ++i) {
    RF_CHECK(s[i] >= 0, "flatten of ", s.str(), ": only the first dimension may be unknown");
    rest *= s[i];
  }
  return reshape(x, Shape{-1, rest}, name);
}
Value transpose(Value x, std::vector<int> perm, const std::string& name) {
  Attrs at;
  at.perm = std::move(perm);
  return x.graph->add(Op::Transpose, {x}, std::move(at), name);
}
Value bias_add(Value x, Value bias, const std::string& name) { return binary(Op::BiasAdd, x, bias, name); }
Value conv2d(Value x, Value w, int stride, int pad, const std::string& name) {
  Attrs at;
  at.stride_h = at.stride_w = stride;
  at.pad_h = at.pad_w = pad;
  return x.graph->add(Op::Conv2D, {x, w}, std::move(at), name);
}
Value max_pool2d(Value x, int kernel, int stride, int pad, const std::string& name) {
  return pool(Op::MaxPool2D, x, kernel, stride, pad, name);
}
Value avg_pool2d(Value x, int kernel, int stride, int pad, const std::string& name) {
  return pool(Op::AvgPool2D, x, kernel, stride, pad, name);
}
Value batch_matmul(Value a, Value b, bool ta, bool tb, const std::string& name) {
  RF_CHECK(a.graph == b.graph && a.graph, "BatchMatMul: operands belong to different graphs");
  Attrs at;
  at.transpose_a = ta;
  at.transpose_b = tb;
  return a.graph->add(Op::BatchMatMul, {a, b}, std::move(at), name);
}
Value layer_norm(Value x, Value gamma, Value beta, double eps, const std::string& name) {
  RF_CHECK(x.graph == gamma.graph && x.graph == beta.graph && x.graph, "LayerNorm: operands belong to different graphs");
  Attrs at;
  at.ln_eps = eps;
  return x.graph->add(Op::LayerNorm, {x, gamma, beta}, std::move(at), name);
}
Value slice(Value x, int axis, int64_t begin, int64_t end, const std::string& name) {
  Attrs at;
  at.axis = axis;
  at.begin = begin;
  at.end = end;
  return x.graph->add(Op::Slice, {x}, std::move(at), name);
}
Value concat(const std::vector<Value>& xs, int axis, const std::string& name) {
  RF_CHECK(!xs.empty() && xs[0].graph, "concat of no values");
  for (const Value& v : xs) RF_CHECK(v.graph == xs[0].graph, "Concat: operands belong to different graphs");
  Attrs at;
  at.axis = axis;
  if (int(xs.size()) <= Attrs::kMaxConcatInputs) return xs[0].graph->add(Op::Concat, xs, std::move(at), name);
  std::vector<Value> parts;  // concatenation is associative: groups first, then the groups
  for (size_t i = 0; i < xs.size(); i += size_t(Attrs::kMaxConcatInputs)) {
    const size_t e = std::min(xs.size(), i + size_t(Attrs::kMaxConcatInputs));
    parts.push_back(e - i == 1 ? xs[i] : concat(std::vector<Value>(xs.begin() + long(i), xs.begin() + long(e)), axis));
  }
  return concat(parts, axis, name);
}
Value pad(Value x, int axis, int64_t before, int64_t after, double value, const std::string& name) {
  Attrs at;
  at.axis = axis;
  at.pad_before = before;
  at.pad_after = after;
  at.pad_value = value;
  return x.graph->add(Op::Pad, {x}, std::move(at), name);
}
std::vector<Value> split(Value x, int axis, const std::vector<int64_t>& sizes, const std::string& name) {
  const Shape& s = x.graph->spec(x).shape;
  const int ax = axis < 0 ? axis + s.rank : axis;
  RF_CHECK(ax >= 0 && ax < s.rank, "split: axis ", axis, " is out of range for ", s.str());
  int64_t total = 0;
  for (int64_t n : sizes) {
    RF_CHECK(n >= 0, "split: a negative size ", n);
    total += n;
  }
  RF_CHECK(s[ax] < 0 || total == s[ax], "split: sizes add up to ", total, ", axis ", axis, " of ", s.str(), " has ",
           s[ax]);
  std::vector<Value> out;
  int64_t at = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    out.push_back(slice(x, ax, at, at + sizes[i], name.empty() ? "" : name + "/" + std::to_string(i)));
    at += sizes[i];
  }
  return out;
}
Value dropout(Value x, double rate, uint64_t seed, const std::string& name) {
  Attrs at;
  at.scalar = rate;
  at.seed = seed;
  return x.graph->add(Op::Dropout, {x}, std::move(at), name);
}
Value cast(Value x, DType dtype, const std::string& name) {
  Attrs at;
  at.dtype = dtype;
  return x.graph->add(Op::Cast, {x}, std::move(at), name);
}

}  // namespace rf::ops
