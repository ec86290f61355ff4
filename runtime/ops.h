// Graph-building functions: ops::relu(x) adds a Relu node to x's graph and returns its output.
#pragma once
#include <string>
#include <vector>

#include "runtime/graph.h"

namespace rf::ops {

Value matmul(Value a, Value b, bool transpose_a = false, bool transpose_b = false, const std::string& name = "");
Value add(Value a, Value b, const std::string& name = "");
Value sub(Value a, Value b, const std::string& name = "");
Value mul(Value a, Value b, const std::string& name = "");
Value div(Value a, Value b, const std::string& name = "");
Value neg(Value x, const std::string& name = "");
Value exp(Value x, const std::string& name = "");
Value log(Value x, const std::string& name = "");
Value sqrt(Value x, const std::string& name = "");
Value square(Value x, const std::string& name = "");
Value relu(Value x, const std::string& name = "");
Value tanh(Value x, const std::string& name = "");
Value sigmoid(Value x, const std::string& name = "");
Value gelu(Value x, const std::string& name = "");
Value add_scalar(Value x, double c, const std::string& name = "");
Value mul_scalar(Value x, double c, const std::string& name = "");
Value pow_scalar(Value x, double c, const std::string& name = "");
Value softmax(Value x, const std::string& name = "");      // last axis
Value log_softmax(Value x, const std::string& name = "");  // last axis
// Per-sample loss [N] of logits [N, C] against integer labels [N].
Value sparse_softmax_cross_entropy(Value logits, Value labels, const std::string& name = "");
// PyTorch's F.cross_entropy(logits, labels, reduction='none', ignore_index, label_smoothing) per
// row: a row labelled ignore_index has loss 0 (and gradient 0); otherwise the target is
// (1 - eps) on the label plus eps / C on every class. Pass an XentOptions object (a bare braced
// list is ambiguous with the name overload above).
struct XentOptions {
  int64_t ignore_index = INT64_MIN;  // INT64_MIN: no label is ignored
  double label_smoothing = 0;        // eps, in [0, 1)
};
Value sparse_softmax_cross_entropy(Value logits, Value labels, const XentOptions& opts, const std::string& name = "");
// The number of labels [N] (I32 or I64) that are not ignore_index, as a scalar of dtype (F32 or F64):
// Sum(Where(labels != ignore_index, 1, 0)). INT64_MIN (or a value the labels' dtype cannot hold): N.
Value count_not_ignored(Value labels, int64_t ignore_index, DType dtype, const std::string& name = "");
// PyTorch's reduction='mean': the sum of the per-row losses over the number of non-ignored rows;
// 0 when every row is ignored (PyTorch gives NaN there). Without ignore_index: ops::mean.
Value sparse_softmax_cross_entropy_mean(Value logits, Value labels, const XentOptions& opts = {},
                                        const std::string& name = "");
Value rsqrt(Value x, const std::string& name = "");  // 1 / sqrt(x)
// cond (U8, nonzero = true) ? x : y, with numpy broadcasting of all three.
Value where(Value cond, Value x, Value y, const std::string& name = "");
// x with the entries where cond is true replaced by value: where(cond, value, x).
Value masked_fill(Value x, Value cond, double value, const std::string& name = "");
// Broadcasting comparisons -> U8 (1 or 0); F32, F64, I32 or I64 operands of one dtype.
Value equal(Value a, Value b, const std::string& name = "");
Value not_equal(Value a, Value b, const std::string& name = "");
Value less(Value a, Value b, const std::string& name = "");
Value less_equal(Value a, Value b, const std::string& name = "");
Value greater(Value a, Value b, const std::string& name = "");
Value greater_equal(Value a, Value b, const std::string& name = "");
// softmax(x + mask) over the last axis, fused (x + mask is never stored). mask is additive (0 to
// keep, -inf to drop, or any finite bias) and broadcasts to x: [T, T] against [B, H, T, T],
// [B, 1, 1, T] padding. A row whose entries are all -inf gives all zeros (PyTorch gives NaN).
Value masked_softmax(Value x, Value mask, const std::string& name = "");
// A Const [T, T] additive causal mask: 0 on and below the diagonal, -inf above (query i sees keys <= i).
Value causal_mask(Graph& g, i64 T, DType dtype, const std::string& name = "");
// An additive padding mask [B, 1, 1, T] from lengths [B] (I32 or I64): 0 where t < lengths[b],
// -inf from there on. A length of 0 masks the whole row, which masked_softmax turns into zeros.
Value padding_mask(Value lengths, i64 T, DType dtype, const std::string& name = "");
Value sum(Value x, std::vector<int> axes = {}, bool keepdims = false, const std::string& name = "");
Value mean(Value x, std::vector<int> axes = {}, bool keepdims = false, const std::string& name = "");
Value reshape(Value x, const Shape& shape, const std::string& name = "");
Value flatten(Value x, const std::string& name = "");  // [N, ...] -> [N, prod(...)]
Value transpose(Value x, std::vector<int> perm, const std::string& name = "");
Value bias_add(Value x, Value bias, const std::string& name = "");  // bias over axis 1
Value conv2d(Value x, Value w, int stride = 1, int pad = 0, const std::string& name = "");
Value max_pool2d(Value x, int kernel, int stride = -1, int pad = 0, const std::string& name = "");
Value avg_pool2d(Value x, int kernel, int stride = -1, int pad = 0, const std::string& name = "");
// Batched matmul: a [..., M, K] ([..., K, M] transposed), b [..., K, N] ([..., N, K]), rank >= 2
// each and one of them >= 3; the batch dimensions broadcast numpy-style -> [..., M, N].
Value batch_matmul(Value a, Value b, bool transpose_a = false, bool transpose_b = false, const std::string& name = "");
// PyTorch's F.layer_norm over the last axis (gamma, beta: [D]). Returns y; the node's other
// outputs, mean and rstd [rows], are what its gradient reads.
Value layer_norm(Value x, Value gamma, Value beta, double eps = 1e-5, const std::string& name = "");
// x[..., begin:end, ...] along axis (negative axis, begin and end count from the end;
// Attrs::kSliceToEnd as end: to the end). Bounds outside the axis are an error, not clamped.
Value slice(Value x, int axis, int64_t begin, int64_t end, const std::string& name = "");
// Joined along axis; more than Attrs::kMaxConcatInputs inputs become nested Concat nodes.
Value concat(const std::vector<Value>& xs, int axis, const std::string& name = "");
// `before` and `after` elements of `value` added along axis.
Value pad(Value x, int axis, int64_t before, int64_t after, double value = 0, const std::string& name = "");
// Consecutive Slices of the given sizes along axis (their sum must be the axis's size).
std::vector<Value> split(Value x, int axis, const std::vector<int64_t>& sizes, const std::string& name = "");
Value dropout(Value x, double rate, uint64_t seed, const std::string& name = "");
Value cast(Value x, DType dtype, const std::string& name = "");
// Embedding lookup: params[V, D...] at indices[I...] (I32 or I64) -> [I..., D...].
Value gather(Value params, Value indices, const std::string& name = "");
// Zeros of like's shape [V, D...] with rows[n] added at indices[n] (rows [N, D...], indices [N]).
Value scatter_add(Value rows, Value indices, Value like, const std::string& name = "");

}  // namespace rf::ops
