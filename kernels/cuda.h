// The CUDA kernel API: the same functions and semantics as kernels/cpu.h, on device buffers,
// each queued on a trailing stream (asynchronous: the caller synchronises when it needs results).
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/batched.h"
#include "kernels/common.h"
#include "kernels/elementwise.h"

namespace rf::kernels::cuda {

// Shape preconditions are checked on the host before launching and throw
// std::invalid_argument, as the CPU kernels do; launch failures throw rf::Error.
// T is float or double unless a function says otherwise.

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
// y = relu(x + b[c]), ReluF's comparison (the fused epilogue; x == y is allowed, as for bias_add).
template <class T>
void bias_add_relu(const T* x, const T* b, T* y, i64 outer, i64 C, i64 inner, cudaStream_t stream);
// bias_grad sums long rows (inner >= 32) in slabs whose partials need bias_grad_workspace_bytes of
// device memory (0: none, workspace may be null); deterministic.
size_t bias_grad_workspace_bytes(i64 outer, i64 C, i64 inner);
template <class T>
void bias_grad(const T* dy, T* db, i64 outer, i64 C, i64 inner, void* workspace, size_t workspace_bytes,
               cudaStream_t stream);

// ---- optimizer updates (elementwise.cu), PyTorch's semantics as in kernels/cpu.h ----
template <class T> void sgd_update(T* w, const T* g, i64 n, double lr, double wd, cudaStream_t stream);
template <class T>
void momentum_update(T* w, T* v, const T* g, i64 n, double lr, double mu, double wd, bool nesterov,
                     cudaStream_t stream);
// t is the 1-based step.
template <class T>
void adam_update(T* w, T* m, T* v, const T* g, i64 n, double lr, double b1, double b2, double eps,
                 double wd, bool decoupled, i64 t, cudaStream_t stream);

// Per-step scalars of one update, formed on the host in double and rounded to T once, as the
// single-tensor functions above do (so a fused update is bit-identical to them).
enum class UpdateKind { SGD, Momentum, Adam };
template <class T> struct UpdateScalars {
  T neg_lr;                    // -lr (SGD, momentum); -lr / (1 - b1^t) (Adam)
  T mu, wd, shrink;            // momentum; weight decay; 1 - lr * wd (AdamW)
  T bc2_sqrt, eps, b2, one_minus_b2;
  T lerp_w, one_minus_lerp_w;  // m.lerp_(g, 1 - b1), in PyTorch's two-sided form
  int decay;                   // 0 none, 1 L2 into g, 2 decoupled (SGD and momentum: 0 or 1)
  bool nesterov, lerp_low;     // lerp_low: 1 - b1 < 0.5
};
template <class T> UpdateScalars<T> sgd_scalars(double lr, double wd);
template <class T> UpdateScalars<T> momentum_scalars(double lr, double mu, double wd, bool nesterov);
template <class T>
UpdateScalars<T> adam_scalars(double lr, double b1, double b2, double eps, double wd, bool decoupled, i64 t);

// ---- fused multi-tensor updates (elementwise.cu), PyTorch's / apex's multi_tensor_apply ----
// One launch applies one update to every tensor of a table: s1 is the velocity (momentum) or m
// (Adam), s2 is v (Adam). The tensors are cut into chunks of kMultiTensorChunk elements and
// blocks stride over the chunk list. entries, chunks and scalars are device memory (the scalars
// are read when the kernel runs, so a captured CUDA graph sees each step's values).
template <class T> struct MultiTensorEntry {
  T* w;
  T* s1;
  T* s2;
  const T* g;
  i64 n;
};
struct MultiTensorChunk {
  int tensor;
  i64 start;
};
// Small enough that a model of a few hundred thousand parameters fills the GPU: apex's 65536 gave
// the CNN's 455k parameters 9 blocks, a 220 us update on an H200.
inline constexpr i64 kMultiTensorChunk = 2048;
std::vector<MultiTensorChunk> multi_tensor_chunks(const i64* sizes, int count);
template <class T>
void multi_tensor_update(UpdateKind kind, const MultiTensorEntry<T>* entries, const MultiTensorChunk* chunks,
                         i64 nchunks, const UpdateScalars<T>* scalars, cudaStream_t stream);

// ---- dense algebra (matmul.cu, cuBLAS) ----
// Row-major C[m,n] = alpha * op(A) op(B) + beta * C; op(A) is [m,k], op(B) is [k,n]. Runs on
// `stream` (the handle is re-bound to it when it is bound to another one).
template <class T>
void gemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda, const T* b,
          i64 ldb, T beta, T* c, i64 ldc, cublasHandle_t handle, cudaStream_t stream);

// Row-major C[m,n] = op(A) op(B) + bias[n], then ReLU when `relu`: one cuBLASLt matmul with the
// bias (and ReLU) epilogue, for a dense layer the Session fused. An object per fused step keeps
// the descriptors and the algorithm the heuristic chose, so a step pays for them once (again
// only if the geometry or the pointers' alignment changes). run() queues nothing and returns
// false when cuBLASLt offers no algorithm (geometry, dtype, alignment), for a dimension of 1, and
// for a bias not 16-byte aligned: the caller then runs gemm and bias_add(_relu). TF32 only when
// allow_tf32 (float). The workspace is the caller's, kGemmEpilogueWorkspace bytes or more.
constexpr size_t kGemmEpilogueWorkspace = size_t(8) << 20;
class GemmEpilogue {
 public:
  GemmEpilogue();
  ~GemmEpilogue();
  GemmEpilogue(const GemmEpilogue&) = delete;
  GemmEpilogue& operator=(const GemmEpilogue&) = delete;
  template <class T>
  bool run(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, const T* a, i64 lda, const T* b, i64 ldb,
           const T* bias, bool relu, T* c, i64 ldc, bool allow_tf32, cublasLtHandle_t handle, void* workspace,
           size_t workspace_bytes, cudaStream_t stream);
  // How many times the heuristic ran (a test checks it runs once for a fixed geometry).
  int plans_made() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};
// cuBLASLt epilogue matmuls queued by every GemmEpilogue in the process (tests: did it run?).
int64_t gemm_epilogue_launches();

// ---- softmax family (softmax.cu); rows x cols, over the last axis, as in kernels/cpu.h ----
// One warp per row up to 1024 columns, one block per row above; exp sums accumulate in double
// (as on the CPU).
template <class T> void softmax(const T* x, T* y, i64 rows, i64 cols, cudaStream_t stream);
template <class T> void log_softmax(const T* x, T* y, i64 rows, i64 cols, cudaStream_t stream);
template <class T> void softmax_grad(const T* dy, const T* y, T* dx, i64 rows, i64 cols, cudaStream_t stream);
template <class T> void log_softmax_grad(const T* dy, const T* y, T* dx, i64 rows, i64 cols, cudaStream_t stream);
// L = int32_t or int64_t. Labels live on the device, so a label outside [0, cols) cannot throw
// without a synchronisation: its row's loss and backprop are NaN instead (TensorFlow's GPU rule).
// ignore_index and label_smoothing as in kernels/cpu.h (a row labelled ignore_index: zeros).
template <class T, class L>
void sparse_xent(const T* logits, const L* labels, T* loss, T* backprop, i64 rows, i64 cols, cudaStream_t stream,
                 i64 ignore_index = INT64_MIN, double label_smoothing = 0);
template <class T>
void sparse_xent_grad(const T* dloss, const T* backprop, T* dlogits, i64 rows, i64 cols, cudaStream_t stream);

// ---- masks (mask.cu), as in kernels/cpu.h: operand shapes have the output's rank ----
template <class T>
void where(const uint8_t* cond, const Shape& cs, const T* x, const Shape& xs, const T* y, const Shape& ys, T* out,
           const Shape& os, cudaStream_t stream);
// T is float, double, int32_t or int64_t.
template <class T>
void compare(CompareOp op, const T* a, const Shape& as, const T* b, const Shape& bs, uint8_t* out, const Shape& os,
             cudaStream_t stream);
// A row per warp (<= 1024 columns) or per block, as softmax; fully masked rows give zeros.
template <class T>
void masked_softmax(const T* x, const Shape& xs, const T* mask, const Shape& ms, T* y, cudaStream_t stream);

// ---- layout, casts, dropout (layout.cu) ----
// y = transpose of x by perm (y.dims[i] = x.dims[perm[i]]).
template <class T> void transpose(const T* x, const Shape& xs, const int* perm, T* y, cudaStream_t stream);
// The CPU's casts (cast_cpu.cpp), with the same integer rounding rules (kernels/half.h).
void f32_to_f64(const float* x, double* y, i64 n, cudaStream_t stream);
void f64_to_f32(const double* x, float* y, i64 n, cudaStream_t stream);
void f32_to_f16(const float* x, uint16_t* y, i64 n, cudaStream_t stream);
void f16_to_f32(const uint16_t* x, float* y, i64 n, cudaStream_t stream);
void f32_to_bf16(const float* x, uint16_t* y, i64 n, cudaStream_t stream);  // round to nearest even
void bf16_to_f32(const uint16_t* x, float* y, i64 n, cudaStream_t stream);
// mask[i] = keep ? 1/(1-rate) : 0 from (seed, counter, i) by kernels/random.h: the CPU's mask.
template <class T>
void dropout(const T* x, T* y, T* mask, i64 n, double rate, uint64_t seed, uint64_t counter, cudaStream_t stream);

// ---- pooling (pool.cu); PyTorch's semantics and the CPU's argmax and tie rule (first maximum in
// row-major window order wins, NaN wins). The gradients gather per input element, in the CPU's
// output order: deterministic, no atomics, bit-identical sums. ----
template <class T> void max_pool2d(const T* x, T* y, int32_t* argmax, const PoolGeom& g, cudaStream_t stream);
// An argmax entry outside its window (never produced by max_pool2d) contributes nothing.
template <class T>
void max_pool2d_grad(const T* dy, const int32_t* argmax, T* dx, const PoolGeom& g, cudaStream_t stream);
template <class T> void avg_pool2d(const T* x, T* y, const PoolGeom& g, cudaStream_t stream);
template <class T> void avg_pool2d_grad(const T* dy, T* dx, const PoolGeom& g, cudaStream_t stream);

// ---- convolution (conv.cu, cuDNN); NCHW, filters OIHW, as conv2d in kernels/cpu.h ----
// Descriptors and the algorithm of each pass are chosen once per (handle, geometry, dtype, math)
// and cached. The algorithm is the first cuDNN heuristic choice that is deterministic and uses
// no tensor-op math unless allow_tf32 (fp32 only; fp64 never uses it). The caller asks for the
// pass's workspace size and hands in that much device memory.
enum class ConvPass { Forward, BackwardData, BackwardFilter };
template <class T>
size_t conv2d_workspace_bytes(ConvPass pass, const ConvGeom& g, bool allow_tf32, cudnnHandle_t handle);
// The handle must be bound to `stream` (cudnnSetStream); the runtime's handles are.
template <class T>
void conv2d(const T* x, const T* w, T* y, const ConvGeom& g, bool allow_tf32, void* workspace, size_t workspace_bytes,
            cudnnHandle_t handle);
template <class T>
void conv2d_grad_input(const T* dy, const T* w, T* dx, const ConvGeom& g, bool allow_tf32, void* workspace,
                       size_t workspace_bytes, cudnnHandle_t handle);
template <class T>
void conv2d_grad_filter(const T* x, const T* dy, T* dw, const ConvGeom& g, bool allow_tf32, void* workspace,
                        size_t workspace_bytes, cudnnHandle_t handle);

// ---- sparse rows (sparse.cu): the CPU's gather_rows / scatter_add_rows / sparse_update ----
// I = int32_t or int64_t. Indices live on the device, so one outside [0, V) cannot throw without
// a synchronisation: Gather writes NaN over its output row (sparse_xent's rule for a bad label),
// ScatterAdd and the sparse updates skip it.
template <class T, class I>
void gather_rows(const T* params, i64 V, i64 D, const I* idx, i64 N, T* out, cudaStream_t stream);
// Duplicates: CUB's stable radix sort of (index, position) pairs groups each distinct index's
// positions in increasing order, and one thread per (distinct index, column) sums its rows in
// that order from 0: no atomics, deterministic, the CPU's sums bit for bit. The sort needs
// sparse_rows_workspace_bytes<I>(N) bytes of device scratch (the caller's: cuda::workspace).
template <class I> size_t sparse_rows_workspace_bytes(i64 N);
template <class T, class I>
void scatter_add_rows(const T* rows, const I* idx, i64 N, i64 D, T* out, i64 V, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream);
// TF LazyAdam's scalars in UpdateScalars' fields: neg_lr = -lr sqrt(1 - b2^t) / (1 - b1^t), the
// moments' as adam_scalars; no weight decay.
template <class T> UpdateScalars<T> lazy_adam_scalars(double lr, double b1, double b2, double eps, i64 t);
// kind SGD (s1, s2 unused), Momentum (s1 = velocity), Adam (the lazy one: s1 = m, s2 = v). The
// scalars are read from device memory when dev_scalars is non-null (cuda::FusedUpdates: a
// captured graph then sees each step's), else passed by value.
template <class T, class I>
void sparse_update(UpdateKind kind, T* w, T* s1, T* s2, i64 V, i64 D, const T* rows, const I* idx, i64 N,
                   const UpdateScalars<T>& scalars, const UpdateScalars<T>* dev_scalars, void* workspace,
                   size_t workspace_bytes, cudaStream_t stream);
// ---- batched matmul, layer norm, slicing along one axis (as in kernels/cpu.h) ----
// (batch_matmul.cu) C[i] = op(A_i) op(B_i) for every output matrix of g: cublasGemmStridedBatchedEx
// over the batch dimensions whose strides are regular (an operand broadcast whole has stride 0),
// a loop over the rest. f32 in CUBLAS_COMPUTE_32F unless allow_tf32. The handle is re-bound to
// `stream` when needed.
template <class T>
void batch_matmul(const BatchGemm& g, bool trans_a, bool trans_b, const T* a, const T* b, T* c, bool allow_tf32,
                  cublasHandle_t handle, cudaStream_t stream);
// (layernorm.cu) PyTorch's F.layer_norm over the last axis of [rows, cols]; statistics in double.
template <class T>
void layer_norm(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, i64 rows, i64 cols, double eps,
                cudaStream_t stream);
// dx per row; dgamma, dbeta as deterministic column sums through layer_norm_grad_workspace_bytes of
// device memory.
size_t layer_norm_grad_workspace_bytes(i64 rows, i64 cols);
template <class T>
void layer_norm_grad(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd, T* dx, T* dgamma,
                     T* dbeta, i64 rows, i64 cols, void* workspace, size_t workspace_bytes, cudaStream_t stream);
// (slicing.cu) y[r, 0:n] = x[r, 0:n], rows ldx and ldy elements apart.
template <class T> void copy_rows(const T* x, i64 ldx, T* y, i64 ldy, i64 rows, i64 n, cudaStream_t stream);
// y[r] = xs[0][r, 0:widths[0]], ..., xs[count-1][r, ...]; 1 <= count <= kMaxConcat host-side
// pointers to device buffers (passed to the kernel by value).
inline constexpr int kMaxConcat = 16;
template <class T>
void concat_rows(const T* const* xs, const i64* widths, int count, T* y, i64 rows, cudaStream_t stream);
// y[r] = before values, x[r, 0:n], after values.
template <class T>
void pad_rows(const T* x, T* y, i64 rows, i64 n, i64 before, i64 after, double value, cudaStream_t stream);

}  // namespace rf::kernels::cuda
