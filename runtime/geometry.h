// Geometry shared by the shape inference and both execution tables (exec_cpu.cpp,
// exec_cuda.cu): the [outer, axis, inner] view of a row-major tensor around one axis (Slice,
// Concat, Pad), BatchMatMul's batch layout (kernels::BatchGemm) from the operands' shapes, and
// the broadcast, bias, convolution and pooling geometry of a node (once, where each table kept a copy). Header-only, no allocation, C++17 (nvcc).
#pragma once
#include <cstdint>

#include "kernels/batched.h"
#include "kernels/common.h"
#include "runtime/error.h"
#include "runtime/graph.h"

namespace rf::geometry {

// The axis in [0, rank), or -1 when `axis` (negative: counted from the end) is out of range.
inline int normalize_axis(int axis, int rank) {
  const int a = axis < 0 ? axis + rank : axis;
  return a >= 0 && a < rank ? a : -1;
}

// A row-major tensor seen as [outer, axis, inner]: outer = product of the dimensions before the
// axis, inner = product after it. A block of consecutive positions [p, p + n) along the axis is
// then `outer` contiguous runs of n * inner elements, run o starting at (o * axis + p) * inner.
struct AxisView {
  i64 outer = 1, axis = 1, inner = 1;
  i64 row() const { return axis * inner; }  // elements per outer index
};
inline AxisView axis_view(const Shape& s, int axis) {  // axis already normalised
  AxisView v;
  for (int d = 0; d < axis; ++d) v.outer *= s[d];
  v.axis = s[axis];
  for (int d = axis + 1; d < s.rank; ++d) v.inner *= s[d];
  return v;
}

// Slice bounds against a known dimension: negative begin / end count from the end, INT64_MAX
// (Attrs::kSliceToEnd) as end is the end. Writes [*b, *e) and returns true when
// 0 <= *b <= *e <= dim; no clamping (a bound outside the axis is an error, not an empty slice).
inline bool resolve_slice(i64 dim, i64 begin, i64 end, i64* b, i64* e) {
  const i64 rb = begin < 0 ? begin + dim : begin;
  const i64 re = end == INT64_MAX ? dim : end < 0 ? end + dim : end;
  *b = rb;
  *e = re;
  return rb >= 0 && rb <= re && re <= dim;
}

// The layout of C = op(A) op(B) for A of shape as, B of shape bs (rank >= 2 each) and C of shape
// cs; returns false when the shapes do not fit together (the caller names the node).
inline bool batch_layout(const Shape& as, const Shape& bs, const Shape& cs, bool ta, bool tb, kernels::BatchGemm* L) {
  if (as.rank < 2 || bs.rank < 2 || cs.rank < 2) return false;
  const i64 ar = as[as.rank - 2], ac = as[as.rank - 1], br = bs[bs.rank - 2], bc = bs[bs.rank - 1];
  L->m = ta ? ac : ar;
  L->k = ta ? ar : ac;
  L->n = tb ? br : bc;
  if ((tb ? bc : br) != L->k || cs[cs.rank - 2] != L->m || cs[cs.rank - 1] != L->n) return false;
  L->lda = ac;
  L->ldb = bc;
  L->mat_a = ar * ac;
  L->mat_b = br * bc;
  L->rank = cs.rank - 2;
  L->count = 1;
  const int pa = L->rank - (as.rank - 2), pb = L->rank - (bs.rank - 2);  // left padding
  if (pa < 0 || pb < 0) return false;
  i64 sa = L->mat_a, sb = L->mat_b;
  for (int d = L->rank - 1; d >= 0; --d) {
    const i64 od = cs[d];
    const i64 ad = d >= pa ? as[d - pa] : 1, bd = d >= pb ? bs[d - pb] : 1;
    if ((ad != od && ad != 1) || (bd != od && bd != 1)) return false;
    L->dims[d] = od;
    L->stride_a[d] = ad == 1 ? 0 : sa;
    L->stride_b[d] = bd == 1 ? 0 : sb;
    sa *= ad;
    sb *= bd;
    L->count *= od;
  }
  return true;
}

// ---- node geometry of the elementwise, bias, convolution and pooling ops (both tables) ----

// Numpy broadcasting aligns shapes at the right: prepend size-1 axes up to `rank`.
inline Shape left_pad(const Node& node, const Shape& s, int rank) {
  RF_CHECK(s.rank <= rank, "node '", node.name, "': cannot align shape ", s.str(), " to rank ", rank);
  Shape r;
  for (int i = s.rank; i < rank; ++i) r.push_back(1);
  for (int i = 0; i < s.rank; ++i) r.push_back(s.dims[i]);
  return r;
}

// BroadcastLike's input shape at the output's rank (op_list.h): with attrs.axes and no keepdims,
// x lacks those axes (it came from a Sum/Mean without keepdims), so 1s go back in there; else x
// is left-padded like any numpy broadcast.
inline Shape broadcast_source_shape(const Node& node, const Shape& x, int rank) {
  const Attrs& a = node.attrs;
  if (a.axes.empty() || a.keepdims) return left_pad(node, x, rank);
  bool inserted[Shape::kMaxRank] = {};
  int n_inserted = 0;
  for (int ax : a.axes) {
    const int d = ax < 0 ? ax + rank : ax;
    RF_CHECK(d >= 0 && d < rank, "node '", node.name, "' (BroadcastLike): axis ", ax, " out of range for rank ", rank);
    if (!inserted[d]) ++n_inserted;
    inserted[d] = true;
  }
  RF_CHECK(x.rank + n_inserted == rank, "node '", node.name, "' (BroadcastLike): ", x.str(), " with ", n_inserted,
           " reduced axes does not have rank ", rank);
  Shape out;
  int src = 0;
  for (int d = 0; d < rank; ++d) out.push_back(inserted[d] ? 1 : x.dims[src++]);
  return out;
}

// (x[outer, C, inner...]): the channel axis is 1.
inline void bias_dims(const Node& node, const Shape& s, i64* outer, i64* C, i64* inner) {
  RF_CHECK(s.rank >= 2, "node '", node.name, "' (", op_name(node.op), "): needs rank >= 2, got ", s.str());
  *outer = s.dims[0];
  *C = s.dims[1];
  *inner = 1;
  for (int d = 2; d < s.rank; ++d) *inner *= s.dims[d];
}

inline kernels::ConvGeom conv_geom(const Node& n, const Shape& x, const Shape& w, const Shape& y) {
  RF_CHECK(x.rank == 4 && w.rank == 4 && y.rank == 4, "node '", n.name, "' (", op_name(n.op), "): needs NCHW / OIHW, got ",
           x.str(), ", ", w.str(), ", ", y.str());
  return {x[0], x[1], x[2], x[3], w[0], w[2], w[3], n.attrs.stride_h, n.attrs.stride_w, n.attrs.pad_h, n.attrs.pad_w,
          y[2], y[3]};
}

inline kernels::PoolGeom pool_geom(const Node& n, const Shape& x, const Shape& y) {
  RF_CHECK(x.rank == 4 && y.rank == 4, "node '", n.name, "' (", op_name(n.op), "): needs NCHW, got ", x.str(), " and ",
           y.str());
  const Attrs& a = n.attrs;
  return {x[0], x[1], x[2], x[3], a.kernel_h, a.kernel_w, a.stride_h, a.stride_w, a.pad_h, a.pad_w, y[2], y[3]};
}

}  // namespace rf::geometry
