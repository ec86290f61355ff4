// The one list of ops. Every per-op table (shape inference, CPU and CUDA execution, gradient
// rules) is a switch over Op with no default, compiled with -Werror=switch: adding an op here
// without a row in each table fails to compile.
#pragma once

// X(name, num_inputs, num_outputs); num_inputs -1 = variadic, num_outputs 0 = target-only.
#define RF_OPS(X)                                                                         \
  /* sources */                                                                           \
  X(Placeholder, 0, 1) X(Const, 0, 1) X(Variable, 0, 1)                                   \
  X(InitVariable, 0, 0) /* attrs.var: fills that Variable from its initialiser */        \
  /* dense algebra */                                                                     \
  X(MatMul, 2, 1)                                                                         \
  /* broadcasting binary */                                                               \
  X(Add, 2, 1) X(Sub, 2, 1) X(Mul, 2, 1) X(Div, 2, 1)                                     \
  /* unary */                                                                             \
  X(Neg, 1, 1) X(Exp, 1, 1) X(Log, 1, 1) X(Sqrt, 1, 1) X(Square, 1, 1)                    \
  X(Relu, 1, 1) X(Tanh, 1, 1) X(Sigmoid, 1, 1) X(Gelu, 1, 1)                              \
  /* (dy, saved) -> dx */                                                                 \
  X(ReluGrad, 2, 1) X(TanhGrad, 2, 1) X(SigmoidGrad, 2, 1) X(GeluGrad, 2, 1)              \
  /* with a scalar attribute */                                                           \
  X(AddScalar, 1, 1) X(MulScalar, 1, 1) X(PowScalar, 1, 1)                                \
  /* softmax family, last axis */                                                         \
  X(Softmax, 1, 1) X(LogSoftmax, 1, 1) X(SoftmaxGrad, 2, 1) X(LogSoftmaxGrad, 2, 1)       \
  X(SparseSoftmaxXent, 2, 2) /* (logits, labels) -> (loss[N], backprop[N,C]) */          \
  X(SparseSoftmaxXentGrad, 2, 1) /* (dloss, backprop) -> dlogits */                      \
  /* masks and attention helpers */                                                      \
  X(Rsqrt, 1, 1) X(RsqrtGrad, 2, 1) /* (dy, y = rsqrt x) -> dx */                         \
  X(Where, 3, 1) /* (cond U8, x, y): cond != 0 ? x : y, numpy broadcasting of all three */ \
  X(Compare, 2, 1) /* (a, b) -> U8, attrs.compare, broadcasting; F32/F64/I32/I64 */        \
  X(MaskedSoftmax, 2, 1) /* (x, additive mask broadcast to x): softmax(x + mask), last axis */ \
  /* reductions and shape */                                                              \
  X(Sum, 1, 1) X(Mean, 1, 1)                                                              \
  /* (x, like): x broadcast to like's shape. attrs.axes non-empty and keepdims false: x lacks  \
     those axes (a Sum/Mean without keepdims); else x is left-padded with 1s. Scaled by        \
     attrs.scalar (0 = 1) and, if attrs.average, divided by numel(like)/numel(x). */         \
  X(BroadcastLike, 2, 1)                                                                  \
  X(SumLike, 2, 1)       /* (x, like): x summed down to like's shape */                   \
  X(Reshape, 1, 1) X(ReshapeLike, 2, 1) X(Transpose, 1, 1)                                \
  X(BiasAdd, 2, 1) /* (x[N,C,...], b[C]) */ X(BiasAddGrad, 1, 1)                          \
  /* convolution and pooling, NCHW / OIHW */                                              \
  X(Conv2D, 2, 1) X(Conv2DGradInput, 3, 1) /* (dy, w, x_like) */                          \
  X(Conv2DGradFilter, 3, 1)                /* (x, dy, w_like) */                          \
  X(MaxPool2D, 1, 2) /* -> (y, argmax I32) */ X(MaxPool2DGrad, 3, 1) /* (dy, argmax, x) */ \
  X(AvgPool2D, 1, 1) X(AvgPool2DGrad, 2, 1) /* (dy, x_like) */                            \
  /* batched matmul, layer norm, slicing along one axis */                                 \
  X(BatchMatMul, 2, 1) /* (a[...,M,K], b[...,K,N]), batch dims broadcast */               \
  X(LayerNorm, 3, 3) /* (x, gamma[D], beta[D]) -> (y, mean[rows], rstd[rows]) */          \
  X(LayerNormGrad, 5, 3) /* (dy, x, gamma, mean, rstd) -> (dx, dgamma, dbeta) */          \
  X(Slice, 1, 1) /* attrs axis, begin, end */                                             \
  X(Concat, -1, 1) /* attrs axis; 1 to kMaxConcatInputs inputs */                         \
  X(Pad, 1, 1) /* attrs axis, pad_before, pad_after, pad_value */                         \
  X(Dropout, 1, 2) /* -> (y, mask) */                                                     \
  X(Cast, 1, 1)                                                                           \
  /* sparse rows (embeddings): indices I32/I64; an index outside [0, V) is an error naming it \
     (CUDA: Gather's row is NaN, ScatterAdd and the sparse updates skip it) */              \
  X(Gather, 2, 1)     /* (params[V, D...], indices[I...]) -> [I..., D...]: params[indices] */ \
  X(ScatterAdd, 3, 1) /* (rows[N, D...], indices[N], like[V, D...]) -> zeros of like's   \
                         shape with row n added at indices[n] (duplicates accumulate, in   \
                         order): Gather's gradient, sparse until something reads it dense */ \
  /* lazy updates of the rows present (duplicates summed first, in order); weight_decay 0 */  \
  X(ApplySGDSparse, 4, 0)      /* (var, rows, indices, hyper): bitwise ApplySGD(ScatterAdd) */ \
  X(ApplyMomentumSparse, 5, 0) /* (var, velocity, rows, indices, hyper) */                 \
  X(ApplyAdamSparse, 6, 0)     /* (var, m, v, rows, indices, hyper): TF LazyAdam */        \
  /* optimizer updates: mutate Variables in place; hyper = F64[2] {lr, step} on the host */ \
  X(ApplySGD, 3, 0)      /* (var, grad, hyper) */                                         \
  X(ApplyMomentum, 4, 0) /* (var, velocity, grad, hyper) */                               \
  X(ApplyAdam, 5, 0)     /* (var, m, v, grad, hyper) */

namespace rf {

enum class Op : unsigned short {
#define RF_OP_ENUM(name, nin, nout) name,
  RF_OPS(RF_OP_ENUM)
#undef RF_OP_ENUM
      COUNT
};

struct OpInfo {
  const char* name;
  int num_inputs;
  int num_outputs;
};

inline const OpInfo& op_info(Op op) {
  static const OpInfo table[] = {
#define RF_OP_INFO(name, nin, nout) {#name, nin, nout},
      RF_OPS(RF_OP_INFO)
#undef RF_OP_INFO
  };
  static_assert(sizeof(table) / sizeof(table[0]) == size_t(Op::COUNT), "op table out of sync");
  return table[size_t(op)];
}
inline const char* op_name(Op op) { return op_info(op).name; }

}  // namespace rf
