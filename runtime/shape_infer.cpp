// Shape and dtype inference for every op: run when a node is added (with -1 for dimensions a
// feed fixes later) and again when a plan is compiled (with the feeds' concrete shapes).
#include <algorithm>

#include "runtime/geometry.h"
#include "runtime/graph.h"

namespace rf {

namespace {

void need_float(const OutSpec& s, const char* what) {
  RF_CHECK(s.dtype == DType::F32 || s.dtype == DType::F64, what, " must be F32 or F64, got ",
           dtype_name(s.dtype));
}
void same_dtype(const OutSpec& a, const OutSpec& b) {
  RF_CHECK(a.dtype == b.dtype, "dtype mismatch: ", dtype_name(a.dtype), " vs ", dtype_name(b.dtype));
}
void need_rank(const OutSpec& s, int rank, const char* what) {
  RF_CHECK(s.shape.rank == rank, what, " must have rank ", rank, ", got shape ", s.shape.str());
}
// Two dimensions that must agree; -1 (unknown) agrees with anything.
bool dims_agree(i64 a, i64 b) { return a < 0 || b < 0 || a == b; }

// Numpy broadcasting of two shapes, with -1 for unknown dimensions.
Shape broadcast_shapes(const Shape& a, const Shape& b) {
  Shape out;
  const int r = std::max(a.rank, b.rank);
  out.rank = r;
  for (int i = 0; i < r; ++i) {
    const int ia = i - (r - a.rank), ib = i - (r - b.rank);
    const i64 da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    i64 d;
    if (da == db) d = da;
    else if (da == 1) d = db;
    else if (db == 1) d = da;
    else if (da < 0) d = db;
    else if (db < 0) d = da;
    else fail("shapes ", a.str(), " and ", b.str(), " do not broadcast");
    out[i] = d;
  }
  return out;
}

std::vector<int> normalize_axes(const std::vector<int>& axes, int rank) {
  std::vector<int> out;
  if (axes.empty())
    for (int i = 0; i < rank; ++i) out.push_back(i);
  for (int a : axes) {
    const int n = a < 0 ? a + rank : a;
    RF_CHECK(n >= 0 && n < rank, "axis ", a, " is out of range for rank ", rank);
    RF_CHECK(std::find(out.begin(), out.end(), n) == out.end(), "axis ", a, " is repeated");
    out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

i64 conv_out(i64 in, i64 k, i64 stride, i64 pad, const char* what) {
  if (in < 0) return -1;
  RF_CHECK(stride >= 1 && pad >= 0 && k >= 1, "bad ", what, " geometry: kernel ", k, ", stride ", stride,
           ", pad ", pad);
  const i64 o = (in + 2 * pad - k) / stride + 1;
  RF_CHECK(in + 2 * pad >= k && o >= 1, what, " kernel ", k, " does not fit input size ", in,
           " with padding ", pad);
  return o;
}

Shape pool_shape(const Node& n, const OutSpec& x) {
  need_rank(x, 4, "pool input");
  const Attrs& a = n.attrs;
  RF_CHECK(a.pad_h * 2 <= a.kernel_h && a.pad_w * 2 <= a.kernel_w, "pool padding ", a.pad_h, "x",
           a.pad_w, " exceeds half the window ", a.kernel_h, "x", a.kernel_w);
  return Shape{x.shape[0], x.shape[1], conv_out(x.shape[2], a.kernel_h, a.stride_h, a.pad_h, "pool"),
               conv_out(x.shape[3], a.kernel_w, a.stride_w, a.pad_w, "pool")};
}

Shape reshape_target(const Shape& in, const Shape& target) {
  int unknown = -1;
  i64 known = 1;
  for (int i = 0; i < target.rank; ++i) {
    if (target[i] == -1) {
      RF_CHECK(unknown < 0, "reshape target ", target.str(), " has more than one -1");
      unknown = i;
    } else {
      RF_CHECK(target[i] >= 0, "reshape target ", target.str(), " has a negative dimension");
      known *= target[i];
    }
  }
  Shape out = target;
  if (!in.defined()) return out;
  const i64 n = in.numel();
  if (unknown >= 0) {
    RF_CHECK(known > 0 && n % known == 0, "cannot reshape ", in.str(), " (", n, " elements) to ",
             target.str());
    out[unknown] = n / known;
  } else {
    RF_CHECK(known == n, "cannot reshape ", in.str(), " (", n, " elements) to ", target.str());
  }
  return out;
}

}  // namespace

std::vector<OutSpec> infer_outputs(const Node& n, const std::vector<OutSpec>& in) {
  const Attrs& a = n.attrs;
  auto same_as = [&](int i) { return std::vector<OutSpec>{in[size_t(i)]}; };
  switch (n.op) {
    case Op::Placeholder:
    case Op::Variable:
      return {{a.dtype, a.shape}};
    case Op::Const:
      return {{a.value.dtype(), a.value.shape()}};
    case Op::InitVariable:
      return {};

    case Op::MatMul: {
      need_float(in[0], "MatMul operand");
      same_dtype(in[0], in[1]);
      need_rank(in[0], 2, "MatMul operand a");
      need_rank(in[1], 2, "MatMul operand b");
      const i64 m = a.transpose_a ? in[0].shape[1] : in[0].shape[0];
      const i64 ka = a.transpose_a ? in[0].shape[0] : in[0].shape[1];
      const i64 kb = a.transpose_b ? in[1].shape[1] : in[1].shape[0];
      const i64 nn = a.transpose_b ? in[1].shape[0] : in[1].shape[1];
      RF_CHECK(dims_agree(ka, kb), "inner dimensions differ: ", in[0].shape.str(),
               a.transpose_a ? "^T" : "", " x ", in[1].shape.str(), a.transpose_b ? "^T" : "");
      return {{in[0].dtype, Shape{m, nn}}};
    }

    case Op::Add:
    case Op::Sub:
    case Op::Mul:
    case Op::Div:
      need_float(in[0], "operand");
      same_dtype(in[0], in[1]);
      return {{in[0].dtype, broadcast_shapes(in[0].shape, in[1].shape)}};

    case Op::Neg:
    case Op::Exp:
    case Op::Log:
    case Op::Sqrt:
    case Op::Square:
    case Op::Relu:
    case Op::Tanh:
    case Op::Sigmoid:
    case Op::Gelu:
    case Op::AddScalar:
    case Op::MulScalar:
    case Op::PowScalar:
    case Op::Softmax:
    case Op::LogSoftmax:
      need_float(in[0], "input");
      if (n.op == Op::Softmax || n.op == Op::LogSoftmax)
        RF_CHECK(in[0].shape.rank >= 1, "softmax needs rank >= 1");
      return same_as(0);

    case Op::ReluGrad:
    case Op::TanhGrad:
    case Op::SigmoidGrad:
    case Op::GeluGrad:
    case Op::SoftmaxGrad:
    case Op::LogSoftmaxGrad:
    case Op::SparseSoftmaxXentGrad: {
      need_float(in[0], "gradient");
      same_dtype(in[0], in[1]);
      if (n.op == Op::SparseSoftmaxXentGrad) {
        need_rank(in[0], 1, "dloss");
        need_rank(in[1], 2, "backprop");
        RF_CHECK(dims_agree(in[0].shape[0], in[1].shape[0]), "dloss ", in[0].shape.str(),
                 " and backprop ", in[1].shape.str(), " differ in rows");
        return same_as(1);
      }
      RF_CHECK(in[0].shape.rank == in[1].shape.rank, "gradient ", in[0].shape.str(), " and saved ",
               in[1].shape.str(), " differ in rank");
      for (int i = 0; i < in[0].shape.rank; ++i)
        RF_CHECK(dims_agree(in[0].shape[i], in[1].shape[i]), "gradient ", in[0].shape.str(),
                 " and saved ", in[1].shape.str(), " differ");
      return same_as(1);
    }

    case Op::SparseSoftmaxXent: {
      need_float(in[0], "logits");
      need_rank(in[0], 2, "logits");
      need_rank(in[1], 1, "labels");
      RF_CHECK(in[1].dtype == DType::I32 || in[1].dtype == DType::I64, "labels must be I32 or I64, got ",
               dtype_name(in[1].dtype));
      RF_CHECK(dims_agree(in[0].shape[0], in[1].shape[0]), "logits ", in[0].shape.str(), " and labels ",
               in[1].shape.str(), " differ in batch size");
      RF_CHECK(a.label_smoothing >= 0 && a.label_smoothing < 1, "label_smoothing must be in [0, 1), got ",
               a.label_smoothing);
      return {{in[0].dtype, Shape{in[0].shape[0]}}, in[0]};
    }

    case Op::Rsqrt:
      need_float(in[0], "input");
      return same_as(0);
    case Op::RsqrtGrad:
      need_float(in[0], "gradient");
      same_dtype(in[0], in[1]);
      RF_CHECK(in[0].shape.rank == in[1].shape.rank, "gradient ", in[0].shape.str(), " and saved ",
               in[1].shape.str(), " differ in rank");
      for (int i = 0; i < in[0].shape.rank; ++i)
        RF_CHECK(dims_agree(in[0].shape[i], in[1].shape[i]), "gradient ", in[0].shape.str(), " and saved ",
                 in[1].shape.str(), " differ");
      return same_as(1);
    case Op::Where:
      RF_CHECK(in[0].dtype == DType::U8, "condition must be U8 (nonzero = true), got ", dtype_name(in[0].dtype));
      need_float(in[1], "x");
      same_dtype(in[1], in[2]);
      return {{in[1].dtype, broadcast_shapes(broadcast_shapes(in[0].shape, in[1].shape), in[2].shape)}};
    case Op::Compare:
      RF_CHECK(in[0].dtype == DType::F32 || in[0].dtype == DType::F64 || in[0].dtype == DType::I32 ||
                   in[0].dtype == DType::I64,
               "operands must be F32, F64, I32 or I64, got ", dtype_name(in[0].dtype));
      same_dtype(in[0], in[1]);
      RF_CHECK(a.compare >= 0 && a.compare <= 5, "attrs.compare ", a.compare, " is not a comparison");
      return {{DType::U8, broadcast_shapes(in[0].shape, in[1].shape)}};
    case Op::MaskedSoftmax: {
      need_float(in[0], "input");
      same_dtype(in[0], in[1]);
      RF_CHECK(in[0].shape.rank >= 1, "masked softmax needs rank >= 1");
      RF_CHECK(in[1].shape.rank <= in[0].shape.rank, "mask ", in[1].shape.str(), " has a higher rank than x ",
               in[0].shape.str());
      const int pad = in[0].shape.rank - in[1].shape.rank;
      for (int i = pad; i < in[0].shape.rank; ++i) {  // mask broadcasts to x, not x to the mask
        const i64 m = in[1].shape[i - pad];
        RF_CHECK(m == 1 || dims_agree(m, in[0].shape[i]), "mask ", in[1].shape.str(), " does not broadcast to x ",
                 in[0].shape.str());
      }
      return same_as(0);
    }

    case Op::Sum:
    case Op::Mean: {
      need_float(in[0], "input");
      const std::vector<int> axes = normalize_axes(a.axes, in[0].shape.rank);
      Shape out;
      for (int i = 0; i < in[0].shape.rank; ++i) {
        const bool reduced = std::find(axes.begin(), axes.end(), i) != axes.end();
        if (!reduced) out.push_back(in[0].shape[i]);
        else if (a.keepdims) out.push_back(1);
      }
      return {{in[0].dtype, out}};
    }

    case Op::BroadcastLike:
      same_dtype(in[0], in[1]);
      RF_CHECK(in[0].shape.rank + (a.keepdims ? 0 : int(a.axes.size())) <= in[1].shape.rank, "cannot broadcast ",
               in[0].shape.str(), " to ", in[1].shape.str());
      return same_as(1);
    case Op::SumLike: {
      same_dtype(in[0], in[1]);
      RF_CHECK(in[1].shape.rank <= in[0].shape.rank, "cannot sum ", in[0].shape.str(), " down to ",
               in[1].shape.str());
      return same_as(1);
    }

    case Op::Reshape:
      return {{in[0].dtype, reshape_target(in[0].shape, a.shape)}};
    case Op::ReshapeLike:
      if (in[0].shape.defined() && in[1].shape.defined())
        RF_CHECK(in[0].shape.numel() == in[1].shape.numel(), "cannot reshape ", in[0].shape.str(), " to ",
                 in[1].shape.str());
      return {{in[0].dtype, in[1].shape}};

    case Op::Transpose: {
      const int r = in[0].shape.rank;
      RF_CHECK(int(a.perm.size()) == r, "perm has ", a.perm.size(), " entries for rank ", r);
      Shape out;
      std::vector<bool> seen(size_t(r), false);
      for (int p : a.perm) {
        RF_CHECK(p >= 0 && p < r && !seen[size_t(p)], "bad permutation for rank ", r);
        seen[size_t(p)] = true;
        out.push_back(in[0].shape[p]);
      }
      return {{in[0].dtype, out}};
    }

    case Op::BiasAdd: {
      need_float(in[0], "input");
      same_dtype(in[0], in[1]);
      RF_CHECK(in[0].shape.rank >= 2, "BiasAdd input needs rank >= 2 ([N, C, ...]), got ", in[0].shape.str());
      need_rank(in[1], 1, "bias");
      RF_CHECK(dims_agree(in[0].shape[1], in[1].shape[0]), "bias ", in[1].shape.str(),
               " does not match channels of ", in[0].shape.str());
      return same_as(0);
    }
    case Op::BiasAddGrad:
      need_float(in[0], "gradient");
      RF_CHECK(in[0].shape.rank >= 2, "BiasAddGrad input needs rank >= 2, got ", in[0].shape.str());
      return {{in[0].dtype, Shape{in[0].shape[1]}}};

    case Op::Conv2D: {
      need_float(in[0], "input");
      same_dtype(in[0], in[1]);
      need_rank(in[0], 4, "conv input (NCHW)");
      need_rank(in[1], 4, "conv filter (OIHW)");
      RF_CHECK(dims_agree(in[0].shape[1], in[1].shape[1]), "input channels ", in[0].shape[1],
               " do not match filter ", in[1].shape.str());
      return {{in[0].dtype,
               Shape{in[0].shape[0], in[1].shape[0],
                     conv_out(in[0].shape[2], in[1].shape[2], a.stride_h, a.pad_h, "conv"),
                     conv_out(in[0].shape[3], in[1].shape[3], a.stride_w, a.pad_w, "conv")}}};
    }
    case Op::Conv2DGradInput:
      need_rank(in[0], 4, "dy");
      same_dtype(in[0], in[1]);
      return same_as(2);
    case Op::Conv2DGradFilter:
      need_rank(in[1], 4, "dy");
      same_dtype(in[0], in[1]);
      return same_as(2);

    case Op::MaxPool2D:
      need_float(in[0], "input");
      return {{in[0].dtype, pool_shape(n, in[0])}, {DType::I32, pool_shape(n, in[0])}};
    case Op::AvgPool2D:
      need_float(in[0], "input");
      return {{in[0].dtype, pool_shape(n, in[0])}};
    case Op::MaxPool2DGrad:
      RF_CHECK(in[1].dtype == DType::I32, "argmax must be I32");
      return same_as(2);
    case Op::AvgPool2DGrad:
      return same_as(1);

    case Op::BatchMatMul: {
      need_float(in[0], "BatchMatMul operand");
      same_dtype(in[0], in[1]);
      const Shape &as = in[0].shape, &bs = in[1].shape;
      RF_CHECK(as.rank >= 2 && bs.rank >= 2 && std::max(as.rank, bs.rank) >= 3,
               "BatchMatMul needs operands of rank >= 2, one of them >= 3 (MatMul multiplies matrices), got ",
               as.str(), " and ", bs.str());
      const i64 m = a.transpose_a ? as[as.rank - 1] : as[as.rank - 2];
      const i64 ka = a.transpose_a ? as[as.rank - 2] : as[as.rank - 1];
      const i64 kb = a.transpose_b ? bs[bs.rank - 1] : bs[bs.rank - 2];
      const i64 nn = a.transpose_b ? bs[bs.rank - 2] : bs[bs.rank - 1];
      RF_CHECK(dims_agree(ka, kb), "inner dimensions differ: ", as.str(), a.transpose_a ? "^T" : "", " x ",
               bs.str(), a.transpose_b ? "^T" : "");
      Shape ab, bb;  // batch dimensions
      for (int i = 0; i + 2 < as.rank; ++i) ab.push_back(as[i]);
      for (int i = 0; i + 2 < bs.rank; ++i) bb.push_back(bs[i]);
      Shape out;
      try {
        out = broadcast_shapes(ab, bb);
      } catch (const Error&) {
        fail("batch dimensions of ", as.str(), " and ", bs.str(), " do not broadcast");
      }
      out.push_back(m);
      out.push_back(nn);
      return {{in[0].dtype, out}};
    }

    case Op::LayerNorm:
    case Op::LayerNormGrad: {
      // LayerNorm (x, gamma, beta); LayerNormGrad (dy, x, gamma, mean, rstd).
      const bool grad = n.op == Op::LayerNormGrad;
      const OutSpec& x = in[grad ? 1 : 0];
      const OutSpec& gamma = in[grad ? 2 : 1];
      need_float(x, "LayerNorm input");
      RF_CHECK(x.shape.rank >= 1, "LayerNorm needs rank >= 1, got a scalar");
      const i64 d = x.shape.dim(-1);
      i64 rows = 1;
      for (int i = 0; i + 1 < x.shape.rank; ++i) rows = (rows < 0 || x.shape[i] < 0) ? -1 : rows * x.shape[i];
      for (size_t i = 0; i < in.size(); ++i) same_dtype(x, in[i]);
      need_rank(gamma, 1, "gamma");
      RF_CHECK(dims_agree(gamma.shape[0], d), "gamma ", gamma.shape.str(), " does not match the last axis of ",
               x.shape.str());
      if (!grad) {
        need_rank(in[2], 1, "beta");
        RF_CHECK(dims_agree(in[2].shape[0], d), "beta ", in[2].shape.str(), " does not match the last axis of ",
                 x.shape.str());
        RF_CHECK(a.ln_eps >= 0, "LayerNorm eps must be >= 0, got ", a.ln_eps);
        return {x, {x.dtype, Shape{rows}}, {x.dtype, Shape{rows}}};
      }
      RF_CHECK(in[0].shape.rank == x.shape.rank, "dy ", in[0].shape.str(), " and x ", x.shape.str(), " differ");
      for (int i = 0; i < x.shape.rank; ++i)
        RF_CHECK(dims_agree(in[0].shape[i], x.shape[i]), "dy ", in[0].shape.str(), " and x ", x.shape.str(),
                 " differ");
      for (int i : {3, 4}) {
        need_rank(in[size_t(i)], 1, i == 3 ? "mean" : "rstd");
        RF_CHECK(dims_agree(in[size_t(i)].shape[0], rows), i == 3 ? "mean " : "rstd ", in[size_t(i)].shape.str(),
                 " does not have one entry per row of ", x.shape.str());
      }
      return {x, gamma, gamma};
    }

    case Op::Slice:
    case Op::Pad: {
      const int ax = geometry::normalize_axis(a.axis, in[0].shape.rank);
      RF_CHECK(ax >= 0, "axis ", a.axis, " is out of range for ", in[0].shape.str());
      Shape out = in[0].shape;
      const i64 dim = out[ax];
      if (n.op == Op::Pad) {
        RF_CHECK(a.pad_before >= 0 && a.pad_after >= 0, "padding must be >= 0, got ", a.pad_before, " before and ",
                 a.pad_after, " after");
        out[ax] = dim < 0 ? -1 : dim + a.pad_before + a.pad_after;
        return {{in[0].dtype, out}};
      }
      if (dim < 0) {  // the length when both bounds count from the same side; checked once a feed fixes dim
        const bool to_end = a.end == Attrs::kSliceToEnd;
        const bool same_side = (a.begin >= 0 && a.end >= 0 && !to_end) || (a.begin < 0 && (a.end < 0 || to_end));
        const i64 len = to_end ? -a.begin : a.end - a.begin;
        RF_CHECK(!same_side || len >= 0, "slice [", a.begin, ", ", a.end, ") ends before it begins");
        out[ax] = same_side ? len : -1;
        return {{in[0].dtype, out}};
      }
      i64 b, e;
      RF_CHECK(geometry::resolve_slice(dim, a.begin, a.end, &b, &e), "slice [", a.begin, ", ",
               a.end == Attrs::kSliceToEnd ? std::string("end") : std::to_string(a.end), ") is outside axis ", ax,
               " of ", in[0].shape.str());
      out[ax] = e - b;
      return {{in[0].dtype, out}};
    }

    case Op::Concat: {
      RF_CHECK(!in.empty() && int(in.size()) <= Attrs::kMaxConcatInputs, "Concat takes 1 to ",
               Attrs::kMaxConcatInputs, " inputs (ops::concat nests more), got ", in.size());
      const Shape& s0 = in[0].shape;
      const int ax = geometry::normalize_axis(a.axis, s0.rank);
      RF_CHECK(ax >= 0, "axis ", a.axis, " is out of range for ", s0.str());
      Shape out = s0;
      for (size_t i = 1; i < in.size(); ++i) {
        same_dtype(in[0], in[i]);
        const Shape& si = in[i].shape;
        RF_CHECK(si.rank == s0.rank, "input ", i, " ", si.str(), " and input 0 ", s0.str(), " differ in rank");
        for (int d = 0; d < s0.rank; ++d) {
          if (d == ax) continue;
          RF_CHECK(dims_agree(si[d], s0[d]), "input ", i, " ", si.str(), " and input 0 ", s0.str(),
                   " differ off the concatenation axis ", ax);
          if (out[d] < 0) out[d] = si[d];
        }
        out[ax] = (out[ax] < 0 || si[ax] < 0) ? -1 : out[ax] + si[ax];
      }
      return {{in[0].dtype, out}};
    }

    case Op::Dropout:
      need_float(in[0], "input");
      RF_CHECK(a.scalar >= 0 && a.scalar < 1, "dropout rate must be in [0, 1), got ", a.scalar);
      return {in[0], in[0]};

    case Op::Cast:
      return {{a.dtype, in[0].shape}};

    case Op::Gather:
    case Op::ScatterAdd:
    case Op::ApplySGDSparse:
    case Op::ApplyMomentumSparse:
    case Op::ApplyAdamSparse: {
      auto need_index = [](const OutSpec& s, const char* what) {
        RF_CHECK(s.dtype == DType::I32 || s.dtype == DType::I64, what, " must be I32 or I64, got ",
                 dtype_name(s.dtype));
      };
      // rows[N, D...] and indices[N] of a sparse gradient, against the dense [V, D...] they index.
      auto check_rows = [&](const OutSpec& rows, const OutSpec& idx, const OutSpec& dense, const char* dense_name) {
        need_float(rows, "rows");
        same_dtype(rows, dense);
        need_index(idx, "indices");
        need_rank(idx, 1, "indices");
        RF_CHECK(rows.shape.rank >= 1 && rows.shape.rank == dense.shape.rank, "rows ", rows.shape.str(), " and ",
                 dense_name, " ", dense.shape.str(), " must have one rank (>= 1)");
        RF_CHECK(dims_agree(rows.shape[0], idx.shape[0]), "rows ", rows.shape.str(), " and indices ",
                 idx.shape.str(), " differ in length");
        for (int i = 1; i < rows.shape.rank; ++i)
          RF_CHECK(dims_agree(rows.shape[i], dense.shape[i]), "rows ", rows.shape.str(),
                   " do not match the rows of ", dense_name, " ", dense.shape.str());
      };
      if (n.op == Op::Gather) {  // (params[V, D...], indices[I...]) -> [I..., D...]
        need_float(in[0], "params");
        need_index(in[1], "indices");
        RF_CHECK(in[0].shape.rank >= 1, "params must have rank >= 1 (rows first), got ", in[0].shape.str());
        RF_CHECK(in[1].shape.rank + in[0].shape.rank - 1 <= Shape::kMaxRank, "indices ", in[1].shape.str(),
                 " and params ", in[0].shape.str(), " give an output of rank above ", Shape::kMaxRank);
        Shape out = in[1].shape;
        for (int i = 1; i < in[0].shape.rank; ++i) out.push_back(in[0].shape[i]);
        return {{in[0].dtype, out}};
      }
      if (n.op == Op::ScatterAdd) {  // (rows[N, D...], indices[N], like[V, D...]) -> like's shape
        check_rows(in[0], in[1], in[2], "like");
        return same_as(2);
      }
      // (var, slots..., rows, indices, hyper)
      const size_t k = in.size();
      need_float(in[0], "variable");
      for (size_t i = 1; i + 3 < k; ++i) {
        same_dtype(in[0], in[i]);
        RF_CHECK(in[i].shape == in[0].shape, "slot ", i, " shape ", in[i].shape.str(), " differs from the variable's ",
                 in[0].shape.str());
      }
      check_rows(in[k - 3], in[k - 2], in[0], "variable");
      RF_CHECK(a.weight_decay == 0, "weight decay ", a.weight_decay,
               " is not supported by a sparse update (it would touch every row): use the dense update");
      RF_CHECK(in[k - 1].dtype == DType::F64 && in[k - 1].shape == Shape{2},
               "hyper must be F64[2] {lr, step}, got ", dtype_name(in[k - 1].dtype), in[k - 1].shape.str());
      return {};
    }

    case Op::ApplySGD:
    case Op::ApplyMomentum:
    case Op::ApplyAdam: {
      const size_t k = in.size();
      need_float(in[0], "variable");
      for (size_t i = 1; i + 1 < k; ++i) {
        same_dtype(in[0], in[i]);
        RF_CHECK(in[i].shape == in[0].shape, "input ", i, " shape ", in[i].shape.str(),
                 " differs from the variable's ", in[0].shape.str());
      }
      RF_CHECK(in[k - 1].dtype == DType::F64 && in[k - 1].shape == Shape{2},
               "hyper must be F64[2] {lr, step}, got ", dtype_name(in[k - 1].dtype), in[k - 1].shape.str());
      return {};
    }

    case Op::COUNT:
      break;
  }
  fail("unknown op");
}

}  // namespace rf
