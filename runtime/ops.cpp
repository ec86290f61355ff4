// Graph-building functions: thin wrappers that fill Attrs and call Graph::add.
#include "runtime/ops.h"

#include <cmath>

#include "kernels/elementwise.h"

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

namespace {
// A scalar Const of dtype t (F32, F64, I32, I64).
Value scalar_const(Graph& g, DType t, double v) {
  Tensor c(Shape{}, t);
  switch (t) {
    case DType::F32: *c.data<float>() = float(v); break;
    case DType::F64: *c.data<double>() = v; break;
    case DType::I32: *c.data<int32_t>() = int32_t(v); break;
    case DType::I64: *c.data<int64_t>() = int64_t(v); break;
    default: fail("scalar_const: no ", dtype_name(t), " constants");
  }
  return g.constant(c);
}
Value compare(kernels::CompareOp op, Value a, Value b, const std::string& name) {
  RF_CHECK(a.graph == b.graph && a.graph, "Compare: operands belong to different graphs");
  Attrs at;
  at.compare = int(op);
  return a.graph->add(Op::Compare, {a, b}, std::move(at), name);
}
}  // namespace

Value sparse_softmax_cross_entropy(Value logits, Value labels, const XentOptions& opts, const std::string& name) {
  RF_CHECK(logits.graph == labels.graph && logits.graph, "SparseSoftmaxXent: operands belong to different graphs");
  Attrs at;
  at.ignore_index = opts.ignore_index;
  at.label_smoothing = opts.label_smoothing;
  return logits.graph->add(Op::SparseSoftmaxXent, {logits, labels}, std::move(at), name);
}
Value count_not_ignored(Value labels, int64_t ignore_index, DType dtype, const std::string& name) {
  Graph& g = *labels.graph;
  const DType lt = g.spec(labels).dtype;
  RF_CHECK(lt == DType::I32 || lt == DType::I64, "count_not_ignored: labels must be I32 or I64, got ",
           dtype_name(lt));
  RF_CHECK(dtype == DType::F32 || dtype == DType::F64, "count_not_ignored: the count's dtype must be F32 or F64");
  const bool fits = ignore_index != INT64_MIN &&
                    (lt == DType::I64 || (ignore_index >= INT32_MIN && ignore_index <= INT32_MAX));
  // No label can be ignore_index: every row counts (labels == labels, whatever the batch size).
  const Value keep = fits ? not_equal(labels, scalar_const(g, lt, double(ignore_index)))
                          : equal(labels, labels);
  return sum(where(keep, scalar_const(g, dtype, 1), scalar_const(g, dtype, 0)), {}, false, name);
}
Value sparse_softmax_cross_entropy_mean(Value logits, Value labels, const XentOptions& opts, const std::string& name) {
  const Value loss = sparse_softmax_cross_entropy(logits, labels, opts);
  if (opts.ignore_index == INT64_MIN) return mean(loss, {}, false, name);
  Graph& g = *logits.graph;
  const DType dt = g.spec(logits).dtype;
  const Value count = count_not_ignored(labels, opts.ignore_index, dt);
  const Value denom = where(greater(count, scalar_const(g, dt, 0)), count, scalar_const(g, dt, 1));
  return div(sum(loss), denom, name);
}
Value rsqrt(Value x, const std::string& name) { return unary(Op::Rsqrt, x, name); }
Value where(Value cond, Value x, Value y, const std::string& name) {
  RF_CHECK(cond.graph && cond.graph == x.graph && x.graph == y.graph, "Where: operands belong to different graphs");
  return x.graph->add(Op::Where, {cond, x, y}, {}, name);
}
Value masked_fill(Value x, Value cond, double value, const std::string& name) {
  return where(cond, scalar_const(*x.graph, x.graph->spec(x).dtype, value), x, name);
}
Value equal(Value a, Value b, const std::string& name) { return compare(kernels::CompareOp::Eq, a, b, name); }
Value not_equal(Value a, Value b, const std::string& name) { return compare(kernels::CompareOp::Ne, a, b, name); }
Value less(Value a, Value b, const std::string& name) { return compare(kernels::CompareOp::Lt, a, b, name); }
Value less_equal(Value a, Value b, const std::string& name) { return compare(kernels::CompareOp::Le, a, b, name); }
Value greater(Value a, Value b, const std::string& name) { return compare(kernels::CompareOp::Gt, a, b, name); }
Value greater_equal(Value a, Value b, const std::string& name) {
  return compare(kernels::CompareOp::Ge, a, b, name);
}
Value masked_softmax(Value x, Value mask, const std::string& name) { return binary(Op::MaskedSoftmax, x, mask, name); }
Value causal_mask(Graph& g, i64 T, DType dtype, const std::string& name) {
  RF_CHECK(T >= 0, "causal_mask: negative size ", T);
  RF_CHECK(dtype == DType::F32 || dtype == DType::F64, "causal_mask: dtype must be F32 or F64");
  Tensor m(Shape{T, T}, dtype);
  for (i64 i = 0; i < T; ++i)
    for (i64 j = 0; j < T; ++j) {
      const double v = j > i ? -INFINITY : 0.0;
      if (dtype == DType::F32) m.data<float>()[i * T + j] = float(v);
      else m.data<double>()[i * T + j] = v;
    }
  return g.constant(m, name);
}
Value padding_mask(Value lengths, i64 T, DType dtype, const std::string& name) {
  Graph& g = *lengths.graph;
  const OutSpec& ls = g.spec(lengths);
  RF_CHECK(ls.dtype == DType::I32 || ls.dtype == DType::I64, "padding_mask: lengths must be I32 or I64, got ",
           dtype_name(ls.dtype));
  RF_CHECK(ls.shape.rank == 1, "padding_mask: lengths must be [B], got ", ls.shape.str());
  RF_CHECK(T >= 0, "padding_mask: negative size ", T);
  Tensor iota(Shape{T}, ls.dtype);
  for (i64 t = 0; t < T; ++t) {
    if (ls.dtype == DType::I32) iota.data<int32_t>()[t] = int32_t(t);
    else iota.data<int64_t>()[t] = t;
  }
  const Value keep = less(g.constant(iota), reshape(lengths, Shape{-1, 1}));  // [B, T]
  const Value m = where(keep, scalar_const(g, dtype, 0), scalar_const(g, dtype, -INFINITY));
  return reshape(m, Shape{-1, 1, 1, T}, name);
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
Value gather(Value params, Value indices, const std::string& name) {
  return binary(Op::Gather, params, indices, name);
}
Value scatter_add(Value rows, Value indices, Value like, const std::string& name) {
  RF_CHECK(rows.graph && rows.graph == indices.graph && rows.graph == like.graph,
           "ScatterAdd: operands belong to different graphs");
  return rows.graph->add(Op::ScatterAdd, {rows, indices, like}, {}, name);
}

}  // namespace rf::ops
