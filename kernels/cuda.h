// The CUDA kernel API: the same functions and semantics as kernels/cpu.h, on device buffers,
// each queued on a trailing stream (asynchronous: the caller synchronises when it needs results).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/common.h"
#include "kernels/elementwise.h"

namespace rf::kernels::cuda {

// Shape preconditions are checked on the host before launching and throw
// std::invalid_argument, as the CPU kernels do; launch failures throw rf::Error.
// T is float or double throughout.

// ---- elementwise (elementwise.cu) ----
template <class T> void unary(UnaryOp op, const T* x, T* y, i64 n, cudaStream_t stream);
// Same-shape binary op.
template <class T> void binary(BinaryOp op, const T* a, const T* b, T* y, i64 n, cudaStream_t stream);
// Numpy broadcasting. as, bs, ys have the same rank (the caller left-pads with 1s); every
// as[i], bs[i] is 1 or ys[i].
template <class T>
void binary_broadcast(BinaryOp op, const T* a, const Shape& as, const T* b, const Shape& bs, T* y,
                      const Shape& ys, cudaStream_t stream);
template <class T> void scalar(ScalarOp op, const T* x, double c, T* y, i64 n, cudaStream_t stream);

// ---- reductions and broadcasting (elementwise.cu) ----
// y[ys] = scale * sum of x[xs] over the axes where ys[i] == 1 != xs[i]; ys.rank == xs.rank.
// Accumulates in double for both float and double.
template <class T>
void reduce_sum(const T* x, const Shape& xs, T* y, const Shape& ys, double scale, cudaStream_t stream);
// y[ys] = scale * x broadcast; xs.rank == ys.rank and every xs[i] is 1 or ys[i].
template <class T>
void broadcast_to(const T* x, const Shape& xs, T* y, const Shape& ys, double scale, cudaStream_t stream);
// Bias over the channel axis of [outer, C, inner]: y = x + b[c]; db[c] = sum dy[., c, .].
template <class T> void bias_add(const T* x, const T* b, T* y, i64 outer, i64 C, i64 inner, cudaStream_t stream);
template <class T> void bias_grad(const T* dy, T* db, i64 outer, i64 C, i64 inner, cudaStream_t stream);

// ---- optimizer updates (elementwise.cu), PyTorch's semantics as in kernels/cpu.h ----
template <class T> void sgd_update(T* w, const T* g, i64 n, double lr, double wd, cudaStream_t stream);
template <class T>
void momentum_update(T* w, T* v, const T* g, i64 n, double lr, double mu, double wd, bool nesterov,
                     cudaStream_t stream);
// t is the 1-based step.
template <class T>
void adam_update(T* w, T* m, T* v, const T* g, i64 n, double lr, double b1, double b2, double eps,
                 double wd, bool decoupled, i64 t, cudaStream_t stream);

// ---- dense algebra (matmul.cu, cuBLAS) ----
// Row-major C[m,n] = alpha * op(A) op(B) + beta * C; op(A) is [m,k], op(B) is [k,n]. Runs on
// `stream` (the handle is re-bound to it when it is bound to another one).
template <class T>
void gemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda, const T* b,
          i64 ldb, T beta, T* c, i64 ldc, cublasHandle_t handle, cudaStream_t stream);

}  // namespace rf::kernels::cuda
