// The gradient rules, one per op, in one table (a switch with no default: an op added to
// op_list.h without a row here fails to compile), and the reverse sweep that applies them.
#include "autodiff/gradients.h"

#include <algorithm>
#include <cmath>

#include "runtime/geometry.h"
#include "runtime/ops.h"

namespace rf {

namespace {

// What a rule sees: the forward node, the incoming gradient of each output (invalid where the
// output has none) and which inputs need a gradient.
struct GradContext {
  Graph& g;
  const Node& n;
  const std::vector<Value>& dy;
  const std::vector<char>& on_path;
  Value in(int i) const { return n.inputs[size_t(i)]; }
  Value out(int j) const { return Value{&g, n.id, j}; }
  bool needs(int i) const { return on_path[size_t(n.inputs[size_t(i)].node)] != 0; }
};

bool static_same_shape(const Graph& g, Value a, Value b) {
  const Shape &sa = g.spec(a).shape, &sb = g.spec(b).shape;
  return sa.defined() && sa == sb;
}
// dy summed down to x's shape where x was broadcast in the forward op.
Value unbroadcast(Graph& g, Value dy, Value x) {
  if (static_same_shape(g, dy, x)) return dy;
  return g.add(Op::SumLike, {dy, x});
}
Value add2(Graph& g, Op op, Value a, Value b) { return g.add(op, {a, b}); }

[[noreturn]] void no_rule(const Node& n) {
  fail("gradients(): no gradient rule for op ", op_name(n.op), " (node '", n.name,
       "'); second-order gradients and this op's derivative are not implemented");
}

// Returns one Value per input (invalid = no gradient flows there).
std::vector<Value> rule(const GradContext& c) {
  Graph& g = c.g;
  const Node& n = c.n;
  const Attrs& a = n.attrs;
  const Value dy = c.dy[0];
  std::vector<Value> dx(n.inputs.size());
  switch (n.op) {
    case Op::Placeholder:
    case Op::Const:
    case Op::Variable:
      return dx;
    case Op::Gather: {
      // d params: dy's rows scattered back to their indices, as ScatterAdd(rows[N, D...],
      // indices[N], params) -- the sparse gradient (as_sparse() recognises it). Integer indices
      // get none.
      if (!c.needs(0)) return dx;
      const Shape& ps = g.spec(c.in(0)).shape;
      Shape rows_shape{-1};
      for (int i = 1; i < ps.rank; ++i) {
        RF_CHECK(ps[i] >= 0, "gradients(): Gather '", n.name, "' needs params' row shape known to build its gradient, got ",
                 ps.str());
        rows_shape.push_back(ps[i]);
      }
      const Value idx = g.spec(c.in(1)).shape.rank == 1 ? c.in(1) : ops::reshape(c.in(1), Shape{-1});
      const Value rows = g.spec(dy).shape.rank == rows_shape.rank ? dy : ops::reshape(dy, rows_shape);
      dx[0] = ops::scatter_add(rows, idx, c.in(0));
      return dx;
    }
    case Op::ScatterAdd:  // d rows = dy's rows at the indices; like only gives the shape
      if (c.needs(0)) dx[0] = ops::gather(dy, c.in(1));
      return dx;
    case Op::ApplySGDSparse:
    case Op::ApplyMomentumSparse:
    case Op::ApplyAdamSparse:
      no_rule(n);

    case Op::InitVariable:
    case Op::ApplySGD:
    case Op::ApplyMomentum:
    case Op::ApplyAdam:
      no_rule(n);

    case Op::MatMul: {
      const Value A = c.in(0), B = c.in(1);
      const bool ta = a.transpose_a, tb = a.transpose_b;
      if (c.needs(0))
        dx[0] = !ta ? ops::matmul(dy, B, false, !tb) : ops::matmul(B, dy, tb, true);
      if (c.needs(1))
        dx[1] = !tb ? ops::matmul(A, dy, !ta, false) : ops::matmul(dy, A, true, ta);
      return dx;
    }

    case Op::Add:
      if (c.needs(0)) dx[0] = unbroadcast(g, dy, c.in(0));
      if (c.needs(1)) dx[1] = unbroadcast(g, dy, c.in(1));
      return dx;
    case Op::Sub:
      if (c.needs(0)) dx[0] = unbroadcast(g, dy, c.in(0));
      if (c.needs(1)) dx[1] = unbroadcast(g, ops::neg(dy), c.in(1));
      return dx;
    case Op::Mul:
      if (c.needs(0)) dx[0] = unbroadcast(g, ops::mul(dy, c.in(1)), c.in(0));
      if (c.needs(1)) dx[1] = unbroadcast(g, ops::mul(dy, c.in(0)), c.in(1));
      return dx;
    case Op::Div:
      if (c.needs(0)) dx[0] = unbroadcast(g, ops::div(dy, c.in(1)), c.in(0));
      if (c.needs(1)) dx[1] = unbroadcast(g, ops::neg(ops::div(ops::mul(dy, c.out(0)), c.in(1))), c.in(1));
      return dx;

    case Op::Neg: dx[0] = ops::neg(dy); return dx;
    case Op::Exp: dx[0] = ops::mul(dy, c.out(0)); return dx;
    case Op::Log: dx[0] = ops::div(dy, c.in(0)); return dx;
    case Op::Sqrt: dx[0] = ops::div(ops::mul_scalar(dy, 0.5), c.out(0)); return dx;
    case Op::Square: dx[0] = ops::mul(dy, ops::mul_scalar(c.in(0), 2.0)); return dx;
    // relu'(x) = [x > 0] = [relu(x) > 0]: reading the output lets the input die early.
    case Op::Relu: dx[0] = add2(g, Op::ReluGrad, dy, c.out(0)); return dx;
    case Op::Tanh: dx[0] = add2(g, Op::TanhGrad, dy, c.out(0)); return dx;
    case Op::Sigmoid: dx[0] = add2(g, Op::SigmoidGrad, dy, c.out(0)); return dx;
    case Op::Gelu: dx[0] = add2(g, Op::GeluGrad, dy, c.in(0)); return dx;
    case Op::ReluGrad:
    case Op::TanhGrad:
    case Op::SigmoidGrad:
    case Op::GeluGrad:
      no_rule(n);

    case Op::AddScalar: dx[0] = dy; return dx;
    case Op::MulScalar: dx[0] = ops::mul_scalar(dy, a.scalar); return dx;
    case Op::PowScalar:
      dx[0] = ops::mul(dy, ops::mul_scalar(ops::pow_scalar(c.in(0), a.scalar - 1.0), a.scalar));
      return dx;

    case Op::Softmax: dx[0] = add2(g, Op::SoftmaxGrad, dy, c.out(0)); return dx;
    case Op::LogSoftmax: dx[0] = add2(g, Op::LogSoftmaxGrad, dy, c.out(0)); return dx;
    case Op::SoftmaxGrad:
    case Op::LogSoftmaxGrad:
      no_rule(n);
    case Op::SparseSoftmaxXent:
      RF_CHECK(!c.dy[1].valid(), "gradients(): the backprop output of '", n.name, "' is not differentiable");
      if (dy.valid()) dx[0] = add2(g, Op::SparseSoftmaxXentGrad, dy, c.out(1));
      return dx;
    case Op::SparseSoftmaxXentGrad:
      no_rule(n);

    // rsqrt'(x) = -x^(-3/2) / 2 = -y^3 / 2: reads the output.
    case Op::Rsqrt: dx[0] = add2(g, Op::RsqrtGrad, dy, c.out(0)); return dx;
    case Op::RsqrtGrad:
      no_rule(n);
    // The selected operand gets dy where it was selected and 0 elsewhere, summed down to its
    // shape; the condition gets none.
    case Op::Where: {
      Tensor z(Shape{}, g.spec(dy).dtype);
      if (z.dtype() == DType::F32) *z.data<float>() = 0.0f;
      else *z.data<double>() = 0.0;
      const Value zero = g.constant(z);
      if (c.needs(1)) dx[1] = unbroadcast(g, g.add(Op::Where, {c.in(0), dy, zero}), c.in(1));
      if (c.needs(2)) dx[2] = unbroadcast(g, g.add(Op::Where, {c.in(0), zero, dy}), c.in(2));
      return dx;
    }
    case Op::Compare:  // piecewise constant: no gradient flows to the operands
      return dx;
    // d softmax(x + mask): SoftmaxGrad on the output (0 at masked entries, and on fully masked
    // rows). The mask gets the same gradient summed down to its shape, built only when the mask
    // is on the path (a learned additive bias); a Const or fed mask costs nothing.
    case Op::MaskedSoftmax: {
      const Value d = add2(g, Op::SoftmaxGrad, dy, c.out(0));
      if (c.needs(0)) dx[0] = d;
      if (c.needs(1)) dx[1] = unbroadcast(g, d, c.in(1));
      return dx;
    }

    case Op::Sum:
    case Op::Mean: {
      Attrs b;
      b.axes.clear();
      const int rank = g.spec(c.in(0)).shape.rank;
      for (int ax : a.axes) b.axes.push_back(ax < 0 ? ax + rank : ax);
      std::sort(b.axes.begin(), b.axes.end());
      b.keepdims = a.keepdims;
      b.average = n.op == Op::Mean;
      dx[0] = g.add(Op::BroadcastLike, {dy, c.in(0)}, std::move(b));
      return dx;
    }
    case Op::BroadcastLike:
      if (!a.axes.empty() || a.average || (a.scalar != 0 && a.scalar != 1)) no_rule(n);
      dx[0] = g.add(Op::SumLike, {dy, c.in(0)});
      return dx;
    case Op::SumLike:
      dx[0] = g.add(Op::BroadcastLike, {dy, c.in(0)});
      return dx;

    case Op::Reshape:
    case Op::ReshapeLike:
      dx[0] = g.add(Op::ReshapeLike, {dy, c.in(0)});
      return dx;
    case Op::Transpose: {
      std::vector<int> inv(a.perm.size());
      for (size_t i = 0; i < a.perm.size(); ++i) inv[size_t(a.perm[i])] = int(i);
      dx[0] = ops::transpose(dy, inv);
      return dx;
    }

    case Op::BiasAdd:
      if (c.needs(0)) dx[0] = dy;
      if (c.needs(1)) dx[1] = g.add(Op::BiasAddGrad, {dy});
      return dx;
    case Op::BiasAddGrad:
      no_rule(n);

    case Op::Conv2D: {
      Attrs geo;
      geo.stride_h = a.stride_h;
      geo.stride_w = a.stride_w;
      geo.pad_h = a.pad_h;
      geo.pad_w = a.pad_w;
      if (c.needs(0)) dx[0] = g.add(Op::Conv2DGradInput, {dy, c.in(1), c.in(0)}, geo);
      if (c.needs(1)) dx[1] = g.add(Op::Conv2DGradFilter, {c.in(0), dy, c.in(1)}, geo);
      return dx;
    }
    case Op::Conv2DGradInput:
    case Op::Conv2DGradFilter:
      no_rule(n);

    case Op::MaxPool2D: {
      RF_CHECK(!c.dy[1].valid(), "gradients(): the argmax output of '", n.name, "' is not differentiable");
      Attrs geo = a;
      dx[0] = g.add(Op::MaxPool2DGrad, {dy, c.out(1), c.in(0)}, std::move(geo));
      return dx;
    }
    case Op::AvgPool2D: {
      Attrs geo = a;
      dx[0] = g.add(Op::AvgPool2DGrad, {dy, c.in(0)}, std::move(geo));
      return dx;
    }
    case Op::MaxPool2DGrad:
    case Op::AvgPool2DGrad:
      no_rule(n);

    case Op::BatchMatMul: {
      // op(A) op(B) = Y: d op(A) = dY op(B)^T, d op(B) = op(A)^T dY, as for MatMul, batched, then
      // summed over the batch dimensions an operand was broadcast along.
      const Value A = c.in(0), B = c.in(1);
      const bool ta = a.transpose_a, tb = a.transpose_b;
      const Shape as = g.spec(A).shape, bs = g.spec(B).shape;
      const i64 kk = as[as.rank - 1], nn = g.spec(dy).shape.dim(-1);
      if (bs.rank == 2 && !ta && kk >= 0 && nn >= 0) {
        // B is shared by every matrix of A (a Linear layer over a sequence): its gradient is one
        // MatMul over all rows, not a batch of products summed afterwards.
        if (c.needs(0)) dx[0] = ops::batch_matmul(dy, B, false, !tb);
        if (c.needs(1)) {
          const Value a2 = ops::reshape(A, Shape{-1, kk}), dy2 = ops::reshape(dy, Shape{-1, nn});
          dx[1] = !tb ? ops::matmul(a2, dy2, true, false) : ops::matmul(dy2, a2, true, false);
        }
        return dx;
      }
      if (c.needs(0))
        dx[0] = unbroadcast(g, !ta ? ops::batch_matmul(dy, B, false, !tb) : ops::batch_matmul(B, dy, tb, true), A);
      if (c.needs(1))
        dx[1] = unbroadcast(g, !tb ? ops::batch_matmul(A, dy, !ta, false) : ops::batch_matmul(dy, A, true, ta), B);
      return dx;
    }

    case Op::LayerNorm: {
      RF_CHECK(!c.dy[1].valid() && !c.dy[2].valid(), "gradients(): the mean and rstd outputs of '", n.name,
               "' are not differentiable");
      if (!dy.valid()) return dx;
      const Value lg = g.add(Op::LayerNormGrad, {dy, c.in(0), c.in(1), c.out(1), c.out(2)});
      for (int i = 0; i < 3; ++i)
        if (c.needs(i)) dx[size_t(i)] = Value{&g, lg.node, i};
      return dx;
    }
    case Op::LayerNormGrad:
      no_rule(n);

    case Op::Slice: {  // dx: dy padded with zeros back to x's extent
      const Shape xs = g.spec(c.in(0)).shape;
      const int ax = a.axis < 0 ? a.axis + xs.rank : a.axis;
      i64 before = -1, after = -1;
      if (xs[ax] >= 0) {
        i64 b, e;
        RF_CHECK(geometry::resolve_slice(xs[ax], a.begin, a.end, &b, &e), "gradients(): bad slice in '", n.name, "'");
        before = b, after = xs[ax] - e;
      } else if (a.begin >= 0 && a.end == Attrs::kSliceToEnd) {
        before = a.begin, after = 0;
      }
      RF_CHECK(before >= 0, "gradients(): Slice '", n.name, "' along an axis of unknown size (", xs.str(),
               ") has no gradient rule");
      dx[0] = ops::pad(dy, ax, before, after, 0.0);
      return dx;
    }
    case Op::Pad:  // dx: the unpadded part of dy
      dx[0] = ops::slice(dy, a.axis, a.pad_before, a.pad_after > 0 ? -a.pad_after : Attrs::kSliceToEnd);
      return dx;
    case Op::Concat: {  // dx_i: input i's part of dy
      i64 at = 0;
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        const Shape s = g.spec(c.in(int(i))).shape;
        const int ax = a.axis < 0 ? a.axis + s.rank : a.axis;
        RF_CHECK(s[ax] >= 0, "gradients(): Concat '", n.name, "' joins input ", i, " of unknown size ", s.str(),
                 " along axis ", ax, ": no gradient rule");
        if (c.needs(int(i))) dx[i] = ops::slice(dy, ax, at, at + s[ax]);
        at += s[ax];
      }
      return dx;
    }

    case Op::Dropout:
      RF_CHECK(!c.dy[1].valid(), "gradients(): the mask output of '", n.name, "' is not differentiable");
      dx[0] = ops::mul(dy, c.out(1));
      return dx;

    case Op::Cast:
      dx[0] = ops::cast(dy, g.spec(c.in(0)).dtype);
      return dx;

    case Op::COUNT:
      break;
  }
  no_rule(n);
}

}  // namespace

bool as_sparse(Value grad, Value* rows, Value* indices) {
  if (!grad.valid() || grad.graph->node(grad).op != Op::ScatterAdd) return false;
  const Node& n = grad.graph->node(grad);
  if (rows) *rows = n.inputs[0];
  if (indices) *indices = n.inputs[1];
  return true;
}

std::vector<Value> gradients(const std::vector<Value>& ys, const std::vector<Value>& xs,
                             const std::vector<Value>& grad_ys) {
  RF_CHECK(!ys.empty(), "gradients(): no ys");
  RF_CHECK(grad_ys.empty() || grad_ys.size() == ys.size(), "gradients(): ", ys.size(), " ys but ", grad_ys.size(),
           " grad_ys");
  RF_CHECK(ys[0].valid(), "gradients(): invalid y value");
  Graph& g = *ys[0].graph;
  int end = 0;  // nodes from here on (the backward nodes added below) are not differentiated
  for (size_t i = 0; i < ys.size(); ++i) {
    const Value y = ys[i];
    RF_CHECK(y.valid() && y.graph == &g, "gradients(): y ", i, " is not a value of the graph of y 0");
    const OutSpec& ys_spec = g.spec(y);
    RF_CHECK(ys_spec.dtype == DType::F32 || ys_spec.dtype == DType::F64, "gradients(): y ", i, " ('",
             g.node(y).name, "') is ", dtype_name(ys_spec.dtype), ", not F32/F64");
    if (!grad_ys.empty()) {
      const Value gy = grad_ys[i];
      RF_CHECK(gy.valid() && gy.graph == &g, "gradients(): grad_ys ", i, " is not a value of the graph");
      const OutSpec& gs = g.spec(gy);
      RF_CHECK(gs.dtype == ys_spec.dtype && gs.shape.rank == ys_spec.shape.rank, "gradients(): grad_ys ", i, " is ",
               dtype_name(gs.dtype), gs.shape.str(), " but y ", i, " ('", g.node(y).name, "') is ",
               dtype_name(ys_spec.dtype), ys_spec.shape.str());
      for (int d = 0; d < gs.shape.rank; ++d)
        RF_CHECK(gs.shape[d] < 0 || ys_spec.shape[d] < 0 || gs.shape[d] == ys_spec.shape[d], "gradients(): grad_ys ",
                 i, " is ", gs.shape.str(), " but y ", i, " ('", g.node(y).name, "') is ", ys_spec.shape.str());
    }
    end = std::max(end, y.node + 1);
  }

  // on_path: depends on some x (forward) and some y depends on it (backward).
  std::vector<char> from_x(size_t(end), 0), to_y(size_t(end), 0), on_path(size_t(end), 0);
  for (const Value& x : xs) {
    RF_CHECK(x.valid() && x.graph == &g, "gradients(): a value is not of the ys' graph");
    if (x.node < end) from_x[size_t(x.node)] = 1;
  }
  for (int id = 0; id < end; ++id)
    for (const Value& in : g.node(id).inputs)
      if (from_x[size_t(in.node)]) from_x[size_t(id)] = 1;
  for (const Value& y : ys) to_y[size_t(y.node)] = 1;
  for (int id = end - 1; id >= 0; --id)
    if (to_y[size_t(id)])
      for (const Value& in : g.node(id).inputs) to_y[size_t(in.node)] = 1;
  for (int id = 0; id < end; ++id) on_path[size_t(id)] = from_x[size_t(id)] && to_y[size_t(id)];

  // Pending gradients per (node, output); summed when the node is processed.
  std::vector<std::vector<std::vector<Value>>> pending(static_cast<size_t>(end));
  auto push = [&](Value v, Value grad) {
    auto& slots = pending[size_t(v.node)];
    if (slots.empty()) slots.resize(g.node(v.node).outputs.size());
    slots[size_t(v.index)].push_back(grad);
  };
  auto total = [&](int id, int j) -> Value {
    auto& slots = pending[size_t(id)];
    if (slots.empty() || slots[size_t(j)].empty()) return {};
    Value s = slots[size_t(j)][0];
    for (size_t k = 1; k < slots[size_t(j)].size(); ++k) s = ops::add(s, slots[size_t(j)][k]);
    slots[size_t(j)] = {s};
    return s;
  };

  // The seeds: grad_ys, or ones shaped like each y (tf.gradients' default). Unnamed constants:
  // gradients() may be called again on the same ys.
  for (size_t i = 0; i < ys.size(); ++i) {
    if (!grad_ys.empty()) {
      push(ys[i], grad_ys[i]);
      continue;
    }
    const OutSpec& sp = g.spec(ys[i]);
    Tensor one(Shape{}, sp.dtype);
    if (sp.dtype == DType::F32) *one.data<float>() = 1.0f;
    else *one.data<double>() = 1.0;
    const Value c = g.constant(one);
    push(ys[i], sp.shape.rank == 0 ? c : g.add(Op::BroadcastLike, {c, ys[i]}));
  }

  for (int id = end - 1; id >= 0; --id) {
    if (!on_path[size_t(id)] || pending[size_t(id)].empty()) continue;
    // A copy: summing the gradients (total) and the rules add nodes, which may move g's node
    // storage (a reference taken before the sums dangled once they grew it).
    const Node node_copy = g.node(id);
    if (node_copy.inputs.empty()) continue;
    std::vector<Value> dys(node_copy.outputs.size());
    for (size_t j = 0; j < dys.size(); ++j) dys[j] = total(id, int(j));
    GradContext ctx{g, node_copy, dys, on_path};
    std::vector<Value> dxs = rule(ctx);
    for (size_t i = 0; i < dxs.size(); ++i)
      if (dxs[i].valid() && on_path[size_t(node_copy.inputs[i].node)]) push(node_copy.inputs[i], dxs[i]);
  }

  std::vector<Value> out;
  for (const Value& x : xs) out.push_back(x.node < end ? total(x.node, x.index) : Value{});
  return out;
}

std::vector<Value> gradients(Value loss, const std::vector<Value>& xs) {
  RF_CHECK(loss.valid(), "gradients(): invalid loss value");
  Graph& g = *loss.graph;
  const OutSpec& ls = g.spec(loss);
  RF_CHECK(ls.shape.rank == 0 && (ls.dtype == DType::F32 || ls.dtype == DType::F64),
           "gradients(): the loss must be an F32/F64 scalar, got ", dtype_name(ls.dtype), ls.shape.str(),
           " from '", g.node(loss).name, "'");
  return gradients(std::vector<Value>{loss}, xs);
}

}  // namespace rf
