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

}  // namespace rf::ops
