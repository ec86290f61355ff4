// The CPU kernel API: plain functions over buffers and shapes, float and double (T), one
// thread pool (OpenMP) whose size the runtime sets. Every function checks its own shape
// preconditions that the caller cannot (label ranges, broadcast compatibility) and throws
// std::invalid_argument with a clear message.
#pragma once
#include <type_traits>
#include <cstdint>

#include "kernels/batched.h"
#include "kernels/common.h"
#include "kernels/elementwise.h"

namespace rf::kernels::cpu {

// ---- elementwise (elementwise_cpu.cpp) ----
template <class T> void unary(UnaryOp op, const T* x, T* y, i64 n);
// Same-shape binary op.
template <class T> void binary(BinaryOp op, const T* a, const T* b, T* y, i64 n);
// Numpy broadcasting. as, bs, ys have the same rank (the caller left-pads with 1s); every
// as[i], bs[i] is 1 or ys[i].
template <class T>
void binary_broadcast(BinaryOp op, const T* a, const Shape& as, const T* b, const Shape& bs, T* y,
                      const Shape& ys);
template <class T> void scalar(ScalarOp op, const T* x, double c, T* y, i64 n);

// ---- reductions and broadcasting (reduce_cpu.cpp) ----
// y[ys] = sum of x[xs] over the axes where ys[i] == 1 != xs[i]; ys.rank == xs.rank. Sums in
// the accumulation type of T (double for double, float for float with pairwise blocking).
template <class T> void reduce_sum(const T* x, const Shape& xs, T* y, const Shape& ys, double scale);
// y[ys] = x broadcast; xs.rank == ys.rank and every xs[i] is 1 or ys[i].
template <class T> void broadcast_to(const T* x, const Shape& xs, T* y, const Shape& ys, double scale);
// y = transpose of x by perm (y.dims[i] = x.dims[perm[i]]).
template <class T> void transpose(const T* x, const Shape& xs, const int* perm, T* y);
// Bias over the channel axis of [outer, C, inner] (NCHW conv output: outer=N, inner=H*W; a
// dense layer: outer=N, inner=1). bias_add: y = x + b[c]. bias_grad: db[c] = sum dy[., c, .].
template <class T> void bias_add(const T* x, const T* b, T* y, i64 outer, i64 C, i64 inner);
template <class T> void bias_grad(const T* dy, T* db, i64 outer, i64 C, i64 inner);
// Fused dense epilogue: y = relu(x + b) over [outer, C] (inner = 1).
template <class T> void bias_add_relu(const T* x, const T* b, T* y, i64 outer, i64 C, i64 inner);

// ---- softmax family (softmax_cpu.cpp); rows x cols, over the last axis ----
template <class T> void softmax(const T* x, T* y, i64 rows, i64 cols);
template <class T> void log_softmax(const T* x, T* y, i64 rows, i64 cols);
// dx = y * (dy - sum(dy * y)), y = softmax(x).
template <class T> void softmax_grad(const T* dy, const T* y, T* dx, i64 rows, i64 cols);
// dx = dy - exp(y) * sum(dy), y = log_softmax(x).
template <class T> void log_softmax_grad(const T* dy, const T* y, T* dx, i64 rows, i64 cols);
// Sparse softmax cross-entropy with integer labels (L = int32_t or int64_t), fused and stable:
// loss[r] = logsumexp(x[r]) - x[r, label[r]]; backprop[r] = softmax(x[r]) - onehot(label[r]).
// PyTorch's F.cross_entropy(reduction='none', ignore_index, label_smoothing = eps): the target
// is (1 - eps) onehot + eps / cols, so loss[r] = lse - (1 - eps) x[r, label] - eps/cols sum_c x[r, c]
// and backprop[r] = softmax(x[r]) - target; a row whose label == ignore_index has loss 0 and
// backprop 0 (INT64_MIN: no label is ignored). Throws std::invalid_argument if a label other
// than ignore_index is outside [0, cols).
template <class T, class L>
void sparse_xent(const T* logits, const L* labels, T* loss, T* backprop, i64 rows, i64 cols,
                 i64 ignore_index = INT64_MIN, double label_smoothing = 0);
// dlogits[r, :] = dloss[r] * backprop[r, :].
template <class T> void sparse_xent_grad(const T* dloss, const T* backprop, T* dlogits, i64 rows, i64 cols);

// ---- masks (mask_cpu.cpp) ----
// Broadcasting operands: every shape has the output's rank (the caller left-pads with 1s) and
// each of its dimensions is 1 or the output's. T is float or double unless said otherwise.
// out = cond != 0 ? x : y.
template <class T>
void where(const uint8_t* cond, const Shape& cs, const T* x, const Shape& xs, const T* y, const Shape& ys, T* out,
           const Shape& os);
// out = a OP b as 1 or 0; T is float, double, int32_t or int64_t.
template <class T>
void compare(CompareOp op, const T* a, const Shape& as, const T* b, const Shape& bs, uint8_t* out, const Shape& os);
// y = softmax over the last axis of x + mask, without forming x + mask; x and y have shape xs,
// mask broadcasts to it (ms). A row whose every x + mask is -inf (fully masked) gives zeros.
template <class T> void masked_softmax(const T* x, const Shape& xs, const T* mask, const Shape& ms, T* y);

// ---- dense algebra (matmul_cpu.cpp, OpenBLAS) ----
// Row-major C[m,n] = alpha * op(A) op(B) + beta * C; op(A) is [m,k], op(B) is [k,n].
template <class T>
void gemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda, const T* b,
          i64 ldb, T beta, T* c, i64 ldc);

// ---- convolution and pooling (conv_cpu.cpp, pool_cpu.cpp); NCHW, filters OIHW ----
using kernels::ConvGeom;  // kernels/common.h
template <class T> void conv2d(const T* x, const T* w, T* y, const ConvGeom& g);
// y = conv2d(x, w) + b[k], then ReLU when relu: bitwise conv2d then bias_add(_relu) (the fused
// epilogue of a Conv2D -> BiasAdd [-> Relu] step), with the bias and ReLU applied as the direct
// kernel writes its output instead of in a second pass.
template <class T> void conv2d_bias(const T* x, const T* w, const T* b, bool relu, T* y, const ConvGeom& g);
template <class T> void conv2d_grad_input(const T* dy, const T* w, T* dx, const ConvGeom& g);
template <class T> void conv2d_grad_filter(const T* x, const T* dy, T* dw, const ConvGeom& g);

using kernels::PoolGeom;
// argmax holds, per output element, the flat h*W+w index of the chosen input within its plane.
template <class T> void max_pool2d(const T* x, T* y, int32_t* argmax, const PoolGeom& g);
template <class T> void max_pool2d_grad(const T* dy, const int32_t* argmax, T* dx, const PoolGeom& g);
// Average over the window including padding (PyTorch's count_include_pad=True).
template <class T> void avg_pool2d(const T* x, T* y, const PoolGeom& g);
template <class T> void avg_pool2d_grad(const T* dy, T* dx, const PoolGeom& g);

// ---- randomness (random_cpu.cpp), counter-based so results do not depend on threads ----
// mask[i] = keep ? 1/(1-rate) : 0 with P(keep) = 1-rate, from (seed, counter, i); y = x * mask.
template <class T> void dropout(const T* x, T* y, T* mask, i64 n, double rate, uint64_t seed, uint64_t counter);
template <class T> void fill_uniform(T* y, i64 n, double lo, double hi, uint64_t seed);
template <class T> void fill_normal(T* y, i64 n, double mean, double stddev, uint64_t seed);
template <class T> void fill_constant(T* y, i64 n, double value);

// ---- optimizer updates (optim_cpu.cpp), PyTorch's semantics ----
// The gradient an update reads: one buffer, or the mean of `count` buffers, formed element by
// element as ((g0 + g1) + ... + g_{count-1}) / count in T: the arithmetic of an Avg allreduce, so
// an update that averages the replicas' gradients itself (the Reducer's fused update, reading
// them in place from shared memory) is bit-identical to allreduce-then-update.
// (The parameters are std::type_identity_t<GradIn<T>> so that T comes from w and a plain
// pointer converts.)
template <class T> struct GradIn {
  GradIn(const T* g) : one(g) {}  // one buffer
  GradIn(const T* const* srcs, int n) : many(srcs), count(n) {}
  const T* src(int k) const { return many ? many[k] : one; }
  const T* one = nullptr;
  const T* const* many = nullptr;
  int count = 1;
};
template <class T> using GradArg = std::type_identity_t<GradIn<T>>;
// SGD: g' = g + wd*w; w -= lr*g'.
template <class T> void sgd_update(T* w, GradArg<T> g, i64 n, double lr, double wd);
// Momentum: g' = g + wd*w; v = mu*v + g'; w -= lr * (nesterov ? g' + mu*v : v).
template <class T>
void momentum_update(T* w, T* v, GradArg<T> g, i64 n, double lr, double mu, double wd, bool nesterov);
// Adam (decoupled=false: g' = g + wd*w) / AdamW (decoupled=true: w *= 1 - lr*wd first);
// m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2; w -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps).
// t is the 1-based step.
template <class T>
void adam_update(T* w, T* m, T* v, GradArg<T> g, i64 n, double lr, double b1, double b2, double eps,
                 double wd, bool decoupled, i64 t);

// ---- casts (cast_cpu.cpp); 16-bit floats as raw bits ----
void f32_to_f16(const float* x, uint16_t* y, i64 n);
void f16_to_f32(const uint16_t* x, float* y, i64 n);
void f32_to_bf16(const float* x, uint16_t* y, i64 n);  // round to nearest even
void bf16_to_f32(const uint16_t* x, float* y, i64 n);

// ---- sparse rows (sparse_cpu.cpp): embeddings and their sparse gradients ----
// I = int32_t or int64_t; a "row" is D contiguous elements; V rows in the dense tensor. An index
// outside [0, V) throws std::invalid_argument naming it and its position (before any write).
// out[n, :] = params[idx[n], :] for n < N.
template <class T, class I> void gather_rows(const T* params, i64 V, i64 D, const I* idx, i64 N, T* out);
// out[V, D] = 0, then out[idx[n], :] += rows[n, :] for n = 0, 1, ..., N-1 (duplicates in order).
template <class T, class I> void scatter_add_rows(const T* rows, const I* idx, i64 N, i64 D, T* out, i64 V);
// Lazy optimizer updates of the rows present in (rows, idx): each distinct index's gradient row is
// first formed exactly as scatter_add_rows forms it (0 + its rows in position order), then that
// row of w (and of the slots) is updated; rows not present are untouched. No weight decay.
//   SGD:      sgd_update's arithmetic on the row: bitwise sgd_update(w, scatter_add_rows(...)).
//   Momentum: momentum_update's on the row (TF SparseApplyMomentum; nesterov supported): s1 = v.
//   LazyAdam: TF's LazyAdamOptimizer: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2 (m by PyTorch's
//             lerp, as adam_update), w -= lr sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps), t the
//             global 1-based step (eps outside the bias correction, unlike the dense Adam).
// Scratch (the sorted positions, the summed row) is thread_local and only grows: no allocation
// per step in steady state.
enum class SparseOpt { SGD, Momentum, LazyAdam };
struct SparseHyper {
  double lr = 0, mu = 0, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  bool nesterov = false;
  i64 step = 1;
};
template <class T, class I>
void sparse_update(SparseOpt opt, T* w, T* s1, T* s2, i64 V, i64 D, const T* rows, const I* idx, i64 N,
                   const SparseHyper& h);
// ---- batched matmul, layer norm, slicing along one axis ----
// (batch_matmul_cpu.cpp) C[i] = op(A_i) op(B_i) for every output matrix i of g (kernels/batched.h);
// c holds g.count row-major [m, n] matrices. Small products split the batch over threads, large
// ones thread inside gemm.
template <class T> void batch_matmul(const BatchGemm& g, bool trans_a, bool trans_b, const T* a, const T* b, T* c);
// (layernorm_cpu.cpp) Over the last axis of [rows, cols], PyTorch's F.layer_norm: mean[r], biased
// variance, rstd[r] = 1 / sqrt(var + eps), y = (x - mean) * rstd * gamma + beta. Row statistics
// accumulate in double.
template <class T>
void layer_norm(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, i64 rows, i64 cols, double eps);
// xhat = (x - mean) * rstd, g = dy * gamma: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) per
// row; dgamma[c] = sum_r dy * xhat, dbeta[c] = sum_r dy (column sums in double, rows in order:
// the result does not depend on the thread count).
template <class T>
void layer_norm_grad(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd, T* dx, T* dgamma,
                     T* dbeta, i64 rows, i64 cols);
// (slicing_cpu.cpp) y[r, 0:n] = x[r, 0:n] for r < rows, rows ldx and ldy elements apart (Slice:
// x points at the slice's first element). memcpy per contiguous run.
template <class T> void copy_rows(const T* x, i64 ldx, T* y, i64 ldy, i64 rows, i64 n);
// y[r] = concatenation of xs[i][r, 0:widths[i]] over the count inputs (Concat as [outer, w*inner]).
template <class T> void concat_rows(const T* const* xs, const i64* widths, int count, T* y, i64 rows);
// y[r] = before values, x[r, 0:n], after values (Pad as [outer, n]; before/after scaled by inner).
template <class T> void pad_rows(const T* x, T* y, i64 rows, i64 n, i64 before, i64 after, double value);

}  // namespace rf::kernels::cpu
