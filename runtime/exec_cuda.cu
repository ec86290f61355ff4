// The CUDA execution table: one case per Op, each running the op's kernels (kernels/cuda.h) on
// the context's compute stream (cuBLAS and cuDNN through handles bound to it).

// CMake gives -Werror=switch to C++ only; this keeps "every Op has a case" an error under nvcc.
#pragma GCC diagnostic error "-Wswitch"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kernels/cuda.h"
#include "runtime/cuda_backend.h"
#include "runtime/cuda_options.h"
#include "runtime/error.h"
#include "runtime/exec.h"
#include "runtime/exec_cuda_common.h"
#include "runtime/geometry.h"

namespace rf {

namespace {

namespace kc = kernels::cuda;
using cuda_exec::dispatch;
using cuda_exec::Hyper;
using cuda_exec::read_hyper;
using cuda_exec::stream_of;
using kernels::BinaryOp;
using kernels::ScalarOp;
using kernels::UnaryOp;





void check_same_numel(const Node& node, const Tensor& a, const Tensor& b) {
  RF_CHECK(a.numel() == b.numel(), "node '", node.name, "' (", op_name(node.op), "): ", a.shape().str(), " vs ",
           b.shape().str());
}

void run_unary(const Node& node, UnaryOp op, Tensor* const* in, Tensor* const* out, cudaStream_t st) {
  const Tensor& x = *in[0];
  Tensor& y = *out[0];
  check_same_numel(node, x, y);
  dispatch(node, y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    kc::unary<T>(op, x.data<T>(), y.data<T>(), y.numel(), st);
  });
}

void run_binary(const Node& node, BinaryOp op, Tensor* const* in, Tensor* const* out, cudaStream_t st) {
  const Tensor& a = *in[0];
  const Tensor& b = *in[1];
  Tensor& y = *out[0];
  dispatch(node, y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (a.shape() == y.shape() && b.shape() == y.shape()) {
      kc::binary<T>(op, a.data<T>(), b.data<T>(), y.data<T>(), y.numel(), st);
    } else {
      const int r = y.shape().rank;
      kc::binary_broadcast<T>(op, a.data<T>(), geometry::left_pad(node, a.shape(), r), b.data<T>(),
                              geometry::left_pad(node, b.shape(), r), y.data<T>(), y.shape(), st);
    }
  });
}

void run_scalar(const Node& node, ScalarOp op, Tensor* const* in, Tensor* const* out, cudaStream_t st) {
  const Tensor& x = *in[0];
  Tensor& y = *out[0];
  check_same_numel(node, x, y);
  dispatch(node, y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    kc::scalar<T>(op, x.data<T>(), node.attrs.scalar, y.data<T>(), y.numel(), st);
  });
}

// reduce_sum from x's shape to ys (same rank, reduced axes 1); y's own shape may drop them.
void run_reduce(const Node& node, const Tensor& x, const Shape& ys, Tensor& y, double scale, cudaStream_t st) {
  RF_CHECK(ys.numel() == y.numel(), "node '", node.name, "': reduced shape ", ys.str(), " does not fit output ",
           y.shape().str());
  dispatch(node, y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    kc::reduce_sum<T>(x.data<T>(), x.shape(), y.data<T>(), ys, scale, st);
  });
}

// Sum and Mean over attrs.axes (empty: all). keepdims only changes the output's shape, which the
// plan already allocated, so the kernel always sees the rank-preserving form.
void run_sum_mean(const Node& node, bool mean, Tensor* const* in, Tensor* const* out, cudaStream_t st) {
  const Tensor& x = *in[0];
  const Shape& xs = x.shape();
  bool reduced[Shape::kMaxRank] = {};
  if (node.attrs.axes.empty()) {
    for (int d = 0; d < xs.rank; ++d) reduced[d] = true;
  } else {
    for (int ax : node.attrs.axes) {
      const int a = ax < 0 ? ax + xs.rank : ax;
      RF_CHECK(a >= 0 && a < xs.rank, "node '", node.name, "': axis ", ax, " out of range for ", xs.str());
      reduced[a] = true;
    }
  }
  Shape ys = xs;
  i64 count = 1;
  for (int d = 0; d < xs.rank; ++d)
    if (reduced[d]) {
      count *= xs.dims[d];
      ys.dims[d] = 1;
    }
  run_reduce(node, x, ys, *out[0], mean ? 1.0 / double(count) : 1.0, st);
}


// MatMul's row-major geometry: A is [m,k] ([k,m] when transposed), B is [k,n] ([n,k] when
// transposed); each leading dimension is the stored row length (shape()[1]).
struct MatDims {
  i64 m, n, k;
};
MatDims matmul_dims(const Node& node, const Tensor& a, const Tensor& b, const Tensor& c) {
  const Attrs& at = node.attrs;
  RF_CHECK(a.shape().rank == 2 && b.shape().rank == 2, "node '", node.name,
           "' (MatMul): needs rank-2 operands, got ", a.shape().str(), " and ", b.shape().str());
  const i64 m = at.transpose_a ? a.shape()[1] : a.shape()[0];
  const i64 k = at.transpose_a ? a.shape()[0] : a.shape()[1];
  const i64 kb = at.transpose_b ? b.shape()[1] : b.shape()[0];
  const i64 n = at.transpose_b ? b.shape()[0] : b.shape()[1];
  RF_CHECK(k == kb && c.numel() == m * n, "node '", node.name, "' (MatMul): ", a.shape().str(),
           at.transpose_a ? "^T" : "", " x ", b.shape().str(), at.transpose_b ? "^T" : "", " -> ", c.shape().str());
  return {m, n, k};
}




// One cuDNN convolution pass, with the device's persistent workspace (cuda::workspace): no
// allocation per call, and a captured CUDA graph keeps pointing at memory nobody else gets.
template <class T, class F>
void run_conv(const ExecContext& ctx, kc::ConvPass pass, const kernels::ConvGeom& g, F&& call) {
  auto handle = static_cast<cudnnHandle_t>(cuda::cudnn_handle(ctx.device.index));
  const bool tf32 = cuda::allow_tf32();
  const size_t bytes = kc::conv2d_workspace_bytes<T>(pass, g, tf32, handle);
  call(tf32, bytes ? cuda::workspace(ctx.device.index, bytes) : nullptr, bytes, handle);
}

// Rows and columns of the softmax family: the last axis against all the others.
void rows_cols(const Tensor& t, i64* rows, i64* cols) {
  *cols = t.shape().rank ? t.shape().dim(-1) : 1;
  *rows = *cols ? t.numel() / *cols : 0;
}

void exec(const Node& node, Tensor* const* in, Tensor* const* out, const ExecContext& ctx) {
  const cudaStream_t st = stream_of(ctx);
  const Attrs& at = node.attrs;
  switch (node.op) {
    case Op::Placeholder:
    case Op::Const:
    case Op::Variable:
    case Op::InitVariable:
    case Op::Reshape:
    case Op::ReshapeLike:
      fail("internal: exec_cuda reached ", op_name(node.op), " (node '", node.name,
           "'), which the Session handles itself");

    case Op::MatMul: {
      const Tensor& a = *in[0];
      const Tensor& b = *in[1];
      Tensor& c = *out[0];
      const MatDims d = matmul_dims(node, a, b, c);
      auto handle = static_cast<cublasHandle_t>(cuda::cublas_handle(ctx.device.index));
      dispatch(node, c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::gemm<T>(at.transpose_a, at.transpose_b, d.m, d.n, d.k, T(1), a.data<T>(), a.shape()[1], b.data<T>(),
                    b.shape()[1], T(0), c.data<T>(), d.n, handle, st);
      });
      return;
    }

    case Op::Add: return run_binary(node, BinaryOp::Add, in, out, st);
    case Op::Sub: return run_binary(node, BinaryOp::Sub, in, out, st);
    case Op::Mul: return run_binary(node, BinaryOp::Mul, in, out, st);
    case Op::Div: return run_binary(node, BinaryOp::Div, in, out, st);

    case Op::Neg: return run_unary(node, UnaryOp::Neg, in, out, st);
    case Op::Exp: return run_unary(node, UnaryOp::Exp, in, out, st);
    case Op::Log: return run_unary(node, UnaryOp::Log, in, out, st);
    case Op::Sqrt: return run_unary(node, UnaryOp::Sqrt, in, out, st);
    case Op::Square: return run_unary(node, UnaryOp::Square, in, out, st);
    case Op::Relu: return run_unary(node, UnaryOp::Relu, in, out, st);
    case Op::Tanh: return run_unary(node, UnaryOp::Tanh, in, out, st);
    case Op::Sigmoid: return run_unary(node, UnaryOp::Sigmoid, in, out, st);
    case Op::Gelu: return run_unary(node, UnaryOp::Gelu, in, out, st);

    case Op::ReluGrad: return run_binary(node, BinaryOp::ReluGrad, in, out, st);
    case Op::TanhGrad: return run_binary(node, BinaryOp::TanhGrad, in, out, st);
    case Op::SigmoidGrad: return run_binary(node, BinaryOp::SigmoidGrad, in, out, st);
    case Op::GeluGrad: return run_binary(node, BinaryOp::GeluGrad, in, out, st);

    case Op::AddScalar: return run_scalar(node, ScalarOp::Add, in, out, st);
    case Op::MulScalar: return run_scalar(node, ScalarOp::Mul, in, out, st);
    case Op::PowScalar: return run_scalar(node, ScalarOp::Pow, in, out, st);

    case Op::Rsqrt: return run_unary(node, UnaryOp::Rsqrt, in, out, st);
    case Op::RsqrtGrad: return run_binary(node, BinaryOp::RsqrtGrad, in, out, st);
    case Op::Where: {  // (cond U8, x, y)
      Tensor& y = *out[0];
      const int r = y.shape().rank;
      RF_CHECK(in[0]->dtype() == DType::U8, "node '", node.name, "' (Where): condition is ",
               dtype_name(in[0]->dtype()), ", not U8");
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::where<T>(in[0]->data<uint8_t>(), geometry::left_pad(node, in[0]->shape(), r), in[1]->data<T>(),
                     geometry::left_pad(node, in[1]->shape(), r), in[2]->data<T>(), geometry::left_pad(node, in[2]->shape(), r),
                     y.data<T>(), y.shape(), st);
      });
      return;
    }
    case Op::Compare: {  // (a, b) -> U8
      const Tensor& a = *in[0];
      const Tensor& b = *in[1];
      Tensor& y = *out[0];
      const int r = y.shape().rank;
      const auto op = kernels::CompareOp(at.compare);
      auto run = [&](auto tag) {
        using T = decltype(tag);
        kc::compare<T>(op, a.data<T>(), geometry::left_pad(node, a.shape(), r), b.data<T>(), geometry::left_pad(node, b.shape(), r),
                       y.data<uint8_t>(), y.shape(), st);
      };
      if (a.dtype() == DType::I32) run(int32_t{});
      else if (a.dtype() == DType::I64) run(int64_t{});
      else dispatch(node, a.dtype(), run);
      return;
    }
    case Op::MaskedSoftmax: {  // (x, mask)
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      check_same_numel(node, x, y);
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::masked_softmax<T>(x.data<T>(), x.shape(), in[1]->data<T>(), geometry::left_pad(node, in[1]->shape(), x.shape().rank),
                              y.data<T>(), st);
      });
      return;
    }

    case Op::Sum: return run_sum_mean(node, false, in, out, st);
    case Op::Mean: return run_sum_mean(node, true, in, out, st);
    case Op::SumLike: {
      const Tensor& x = *in[0];
      return run_reduce(node, x, geometry::left_pad(node, in[1]->shape(), x.shape().rank), *out[0], 1.0, st);
    }
    case Op::BroadcastLike: {
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      const Shape xs = geometry::broadcast_source_shape(node, x.shape(), y.shape().rank);
      double scale = at.scalar == 0 ? 1.0 : at.scalar;
      if (at.average && y.numel() > 0) scale *= double(xs.numel()) / double(y.numel());
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::broadcast_to<T>(x.data<T>(), xs, y.data<T>(), y.shape(), scale, st);
      });
      return;
    }

    case Op::BiasAdd: {
      const Tensor& x = *in[0];
      const Tensor& b = *in[1];
      Tensor& y = *out[0];
      i64 outer, C, inner;
      geometry::bias_dims(node, x.shape(), &outer, &C, &inner);
      RF_CHECK(b.numel() == C, "node '", node.name, "' (BiasAdd): bias ", b.shape().str(), " for ", C, " channels");
      check_same_numel(node, x, y);
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::bias_add<T>(x.data<T>(), b.data<T>(), y.data<T>(), outer, C, inner, st);
      });
      return;
    }
    case Op::BiasAddGrad: {
      const Tensor& dy = *in[0];
      Tensor& db = *out[0];
      i64 outer, C, inner;
      geometry::bias_dims(node, dy.shape(), &outer, &C, &inner);
      RF_CHECK(db.numel() == C, "node '", node.name, "' (BiasAddGrad): output ", db.shape().str(), " for ", C,
               " channels");
      dispatch(node, db.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const size_t ws = kc::bias_grad_workspace_bytes(outer, C, inner);
        kc::bias_grad<T>(dy.data<T>(), db.data<T>(), outer, C, inner, ws ? cuda::workspace(ctx.device.index, ws) : nullptr,
                         ws, st);
      });
      return;
    }

    case Op::Gather:      // (params[V, D...], indices) -> [indices..., D...]
    case Op::ScatterAdd:  // (rows[N, D...], indices[N], like[V, D...]) -> [V, D...]
    case Op::ApplySGDSparse:
    case Op::ApplyMomentumSparse:
    case Op::ApplyAdamSparse: {  // (var, slots..., rows, indices, hyper)
      // Run here only when a node is executed on its own (tests); a CUDA plan applies its sparse
      // updates in cuda::FusedUpdates, with the scalars in device memory.
      const int nin = int(node.inputs.size());
      const bool update = nin >= 4;
      const Tensor& dense = node.op == Op::ScatterAdd ? *out[0] : *in[0];
      const Tensor& idx = update ? *in[nin - 2] : *in[1];
      const Tensor& src = node.op == Op::Gather ? *in[0] : *in[update ? nin - 3 : 0];  // params or rows
      const i64 V = dense.shape().rank ? dense.shape()[0] : 0;
      const i64 D = V ? dense.numel() / V : 0;
      const i64 N = idx.numel();
      RF_CHECK(idx.dtype() == DType::I32 || idx.dtype() == DType::I64, "node '", node.name, "' (", op_name(node.op),
               "): indices are ", dtype_name(idx.dtype()));
      RF_CHECK(node.op == Op::Gather ? out[0]->numel() == N * D : src.numel() == N * D, "node '", node.name, "' (",
               op_name(node.op), "): ", N, " indices of rows of ", D, " elements, rows ", src.shape().str(),
               ", dense ", dense.shape().str());
      const Hyper h = update ? read_hyper(node, *in[nin - 1]) : Hyper{0, 0};
      dispatch(node, dense.dtype(), [&](auto tag) {
        using T = decltype(tag);
        auto run = [&](auto index_tag) {
          using I = decltype(index_tag);
          const I* ix = idx.data<I>();
          if (node.op == Op::Gather) {
            kc::gather_rows<T, I>(src.data<T>(), V, D, ix, N, out[0]->data<T>(), st);
            return;
          }
          const size_t ws_bytes = kc::sparse_rows_workspace_bytes<I>(N);
          void* ws = ws_bytes ? cuda::workspace(ctx.device.index, ws_bytes) : nullptr;
          if (node.op == Op::ScatterAdd) {
            kc::scatter_add_rows<T, I>(src.data<T>(), ix, N, D, out[0]->data<T>(), V, ws, ws_bytes, st);
            return;
          }
          T* s1 = nin >= 5 ? in[1]->data<T>() : nullptr;
          T* s2 = nin >= 6 ? in[2]->data<T>() : nullptr;
          const kc::UpdateKind kind = node.op == Op::ApplySGDSparse        ? kc::UpdateKind::SGD
                                      : node.op == Op::ApplyMomentumSparse ? kc::UpdateKind::Momentum
                                                                           : kc::UpdateKind::Adam;
          const kc::UpdateScalars<T> sc =
              kind == kc::UpdateKind::SGD        ? kc::sgd_scalars<T>(h.lr, 0.0)
              : kind == kc::UpdateKind::Momentum ? kc::momentum_scalars<T>(h.lr, at.momentum, 0.0, at.nesterov)
                                                 : kc::lazy_adam_scalars<T>(h.lr, at.beta1, at.beta2, at.eps, h.step);
          kc::sparse_update<T, I>(kind, in[0]->data<T>(), s1, s2, V, D, src.data<T>(), ix, N, sc, nullptr, ws,
                                  ws_bytes, st);
        };
        if (idx.dtype() == DType::I32) run(int32_t{});
        else run(int64_t{});
      });
      return;
    }

    case Op::ApplySGD: {  // (var, grad, hyper)
      Tensor& w = *in[0];
      const Tensor& g = *in[1];
      check_same_numel(node, w, g);
      const Hyper h = read_hyper(node, *in[2]);
      dispatch(node, w.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::sgd_update<T>(w.data<T>(), g.data<T>(), w.numel(), h.lr, at.weight_decay, st);
      });
      return;
    }
    case Op::ApplyMomentum: {  // (var, velocity, grad, hyper)
      Tensor& w = *in[0];
      Tensor& v = *in[1];
      const Tensor& g = *in[2];
      check_same_numel(node, w, v);
      check_same_numel(node, w, g);
      const Hyper h = read_hyper(node, *in[3]);
      dispatch(node, w.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::momentum_update<T>(w.data<T>(), v.data<T>(), g.data<T>(), w.numel(), h.lr, at.momentum,
                               at.weight_decay, at.nesterov, st);
      });
      return;
    }
    case Op::ApplyAdam: {  // (var, m, v, grad, hyper)
      Tensor& w = *in[0];
      Tensor& m = *in[1];
      Tensor& v = *in[2];
      const Tensor& g = *in[3];
      check_same_numel(node, w, m);
      check_same_numel(node, w, v);
      check_same_numel(node, w, g);
      const Hyper h = read_hyper(node, *in[4]);
      dispatch(node, w.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::adam_update<T>(w.data<T>(), m.data<T>(), v.data<T>(), g.data<T>(), w.numel(), h.lr, at.beta1, at.beta2,
                           at.eps, at.weight_decay, at.decoupled, h.step, st);
      });
      return;
    }

    case Op::Softmax:
    case Op::LogSoftmax: {
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      check_same_numel(node, x, y);
      i64 rows, cols;
      rows_cols(y, &rows, &cols);
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        if (node.op == Op::Softmax) kc::softmax<T>(x.data<T>(), y.data<T>(), rows, cols, st);
        else kc::log_softmax<T>(x.data<T>(), y.data<T>(), rows, cols, st);
      });
      return;
    }
    case Op::SoftmaxGrad:
    case Op::LogSoftmaxGrad: {  // (dy, y)
      const Tensor& dy = *in[0];
      const Tensor& y = *in[1];
      Tensor& dx = *out[0];
      check_same_numel(node, dy, dx);
      check_same_numel(node, y, dx);
      i64 rows, cols;
      rows_cols(dx, &rows, &cols);
      dispatch(node, dx.dtype(), [&](auto tag) {
        using T = decltype(tag);
        if (node.op == Op::SoftmaxGrad) kc::softmax_grad<T>(dy.data<T>(), y.data<T>(), dx.data<T>(), rows, cols, st);
        else kc::log_softmax_grad<T>(dy.data<T>(), y.data<T>(), dx.data<T>(), rows, cols, st);
      });
      return;
    }
    case Op::SparseSoftmaxXent: {  // (logits, labels) -> (loss, backprop)
      const Tensor& x = *in[0];
      const Tensor& labels = *in[1];
      Tensor& loss = *out[0];
      Tensor& backprop = *out[1];
      RF_CHECK(x.shape().rank == 2 && labels.numel() == x.shape()[0] && loss.numel() == x.shape()[0], "node '",
               node.name, "' (SparseSoftmaxXent): logits ", x.shape().str(), ", labels ", labels.shape().str());
      check_same_numel(node, x, backprop);
      const i64 rows = x.shape()[0], cols = x.shape()[1];
      dispatch(node, x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        if (labels.dtype() == DType::I32)
          kc::sparse_xent<T, int32_t>(x.data<T>(), labels.data<int32_t>(), loss.data<T>(), backprop.data<T>(), rows,
                                      cols, st, at.ignore_index, at.label_smoothing);
        else
          kc::sparse_xent<T, int64_t>(x.data<T>(), labels.data<int64_t>(), loss.data<T>(), backprop.data<T>(), rows,
                                      cols, st, at.ignore_index, at.label_smoothing);
      });
      return;
    }
    case Op::SparseSoftmaxXentGrad: {  // (dloss[N], backprop[N,C]) -> dlogits
      const Tensor& dloss = *in[0];
      const Tensor& backprop = *in[1];
      Tensor& dx = *out[0];
      RF_CHECK(backprop.shape().rank == 2 && dloss.numel() == backprop.shape()[0], "node '", node.name,
               "' (SparseSoftmaxXentGrad): dloss ", dloss.shape().str(), ", backprop ", backprop.shape().str());
      check_same_numel(node, backprop, dx);
      dispatch(node, dx.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::sparse_xent_grad<T>(dloss.data<T>(), backprop.data<T>(), dx.data<T>(), backprop.shape()[0],
                                backprop.shape()[1], st);
      });
      return;
    }

    case Op::Transpose: {
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      RF_CHECK(int(at.perm.size()) == x.shape().rank, "node '", node.name, "' (Transpose): perm has ", at.perm.size(),
               " entries for ", x.shape().str());
      check_same_numel(node, x, y);
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::transpose<T>(x.data<T>(), x.shape(), at.perm.data(), y.data<T>(), st);
      });
      return;
    }

    case Op::Conv2D: {  // (x, w)
      const Tensor& x = *in[0];
      const Tensor& w = *in[1];
      Tensor& y = *out[0];
      const kernels::ConvGeom g = geometry::conv_geom(node, x.shape(), w.shape(), y.shape());
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        run_conv<T>(ctx, kc::ConvPass::Forward, g, [&](bool tf32, void* ws, size_t bytes, cudnnHandle_t h) {
          kc::conv2d<T>(x.data<T>(), w.data<T>(), y.data<T>(), g, tf32, ws, bytes, h);
        });
      });
      return;
    }
    case Op::Conv2DGradInput: {  // (dy, w, x_like)
      const Tensor& dy = *in[0];
      const Tensor& w = *in[1];
      Tensor& dx = *out[0];
      const kernels::ConvGeom g = geometry::conv_geom(node, dx.shape(), w.shape(), dy.shape());
      dispatch(node, dx.dtype(), [&](auto tag) {
        using T = decltype(tag);
        run_conv<T>(ctx, kc::ConvPass::BackwardData, g, [&](bool tf32, void* ws, size_t bytes, cudnnHandle_t h) {
          kc::conv2d_grad_input<T>(dy.data<T>(), w.data<T>(), dx.data<T>(), g, tf32, ws, bytes, h);
        });
      });
      return;
    }
    case Op::Conv2DGradFilter: {  // (x, dy, w_like)
      const Tensor& x = *in[0];
      const Tensor& dy = *in[1];
      Tensor& dw = *out[0];
      const kernels::ConvGeom g = geometry::conv_geom(node, x.shape(), dw.shape(), dy.shape());
      dispatch(node, dw.dtype(), [&](auto tag) {
        using T = decltype(tag);
        run_conv<T>(ctx, kc::ConvPass::BackwardFilter, g, [&](bool tf32, void* ws, size_t bytes, cudnnHandle_t h) {
          kc::conv2d_grad_filter<T>(x.data<T>(), dy.data<T>(), dw.data<T>(), g, tf32, ws, bytes, h);
        });
      });
      return;
    }

    case Op::MaxPool2D: {  // x -> (y, argmax)
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      const kernels::PoolGeom g = geometry::pool_geom(node, x.shape(), y.shape());
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::max_pool2d<T>(x.data<T>(), y.data<T>(), out[1]->data<int32_t>(), g, st);
      });
      return;
    }
    case Op::MaxPool2DGrad: {  // (dy, argmax, x_like)
      const Tensor& dy = *in[0];
      Tensor& dx = *out[0];
      const kernels::PoolGeom g = geometry::pool_geom(node, dx.shape(), dy.shape());
      check_same_numel(node, dy, *in[1]);
      dispatch(node, dx.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::max_pool2d_grad<T>(dy.data<T>(), in[1]->data<int32_t>(), dx.data<T>(), g, st);
      });
      return;
    }
    case Op::AvgPool2D: {
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      const kernels::PoolGeom g = geometry::pool_geom(node, x.shape(), y.shape());
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::avg_pool2d<T>(x.data<T>(), y.data<T>(), g, st);
      });
      return;
    }
    case Op::AvgPool2DGrad: {  // (dy, x_like)
      const Tensor& dy = *in[0];
      Tensor& dx = *out[0];
      const kernels::PoolGeom g = geometry::pool_geom(node, dx.shape(), dy.shape());
      dispatch(node, dx.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::avg_pool2d_grad<T>(dy.data<T>(), dx.data<T>(), g, st);
      });
      return;
    }

    case Op::BatchMatMul: {
      const Tensor& a = *in[0];
      const Tensor& b = *in[1];
      Tensor& c = *out[0];
      kernels::BatchGemm bg;
      RF_CHECK(geometry::batch_layout(a.shape(), b.shape(), c.shape(), at.transpose_a, at.transpose_b, &bg), "node '",
               node.name, "' (BatchMatMul): ", a.shape().str(), " x ", b.shape().str(), " -> ", c.shape().str());
      auto handle = static_cast<cublasHandle_t>(cuda::cublas_handle(ctx.device.index));
      dispatch(node, c.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::batch_matmul<T>(bg, at.transpose_a, at.transpose_b, a.data<T>(), b.data<T>(), c.data<T>(),
                            cuda::allow_tf32(), handle, st);
      });
      return;
    }

    case Op::LayerNorm: {  // (x, gamma, beta) -> (y, mean, rstd)
      const Tensor& x = *in[0];
      const i64 cols = x.shape().rank ? x.shape().dim(-1) : 1, rows = out[1]->numel();
      RF_CHECK(rows * cols == x.numel() && in[1]->numel() == cols && in[2]->numel() == cols && out[2]->numel() == rows,
               "node '", node.name, "' (LayerNorm): x ", x.shape().str(), ", gamma ", in[1]->shape().str(), ", beta ",
               in[2]->shape().str());
      check_same_numel(node, x, *out[0]);
      dispatch(node, x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::layer_norm<T>(x.data<T>(), in[1]->data<T>(), in[2]->data<T>(), out[0]->data<T>(), out[1]->data<T>(),
                          out[2]->data<T>(), rows, cols, at.ln_eps, st);
      });
      return;
    }
    case Op::LayerNormGrad: {  // (dy, x, gamma, mean, rstd) -> (dx, dgamma, dbeta)
      const Tensor& x = *in[1];
      const i64 cols = x.shape().rank ? x.shape().dim(-1) : 1, rows = in[3]->numel();
      RF_CHECK(rows * cols == x.numel() && in[2]->numel() == cols && in[4]->numel() == rows &&
                   out[1]->numel() == cols && out[2]->numel() == cols,
               "node '", node.name, "' (LayerNormGrad): x ", x.shape().str(), ", gamma ", in[2]->shape().str(),
               ", mean ", in[3]->shape().str());
      check_same_numel(node, x, *in[0]);
      check_same_numel(node, x, *out[0]);
      dispatch(node, x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const size_t ws = kc::layer_norm_grad_workspace_bytes(rows, cols);
        kc::layer_norm_grad<T>(in[0]->data<T>(), x.data<T>(), in[2]->data<T>(), in[3]->data<T>(), in[4]->data<T>(),
                               out[0]->data<T>(), out[1]->data<T>(), out[2]->data<T>(), rows, cols,
                               ws ? cuda::workspace(ctx.device.index, ws) : nullptr, ws, st);
      });
      return;
    }

    case Op::Slice: {
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      const Shape& xs = x.shape();
      const int ax = geometry::normalize_axis(at.axis, xs.rank);
      i64 b = 0, e = 0;
      RF_CHECK(ax >= 0 && geometry::resolve_slice(xs[ax], at.begin, at.end, &b, &e), "node '", node.name,
               "' (Slice): [", at.begin, ", ", at.end, ") along axis ", at.axis, " does not fit ", xs.str());
      const geometry::AxisView v = geometry::axis_view(xs, ax);
      RF_CHECK(y.numel() == v.outer * (e - b) * v.inner, "node '", node.name, "' (Slice): output ", y.shape().str());
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::copy_rows<T>(x.data<T>() + b * v.inner, v.row(), y.data<T>(), (e - b) * v.inner, v.outer,
                         (e - b) * v.inner, st);
      });
      return;
    }
    case Op::Concat: {
      Tensor& y = *out[0];
      const int count = int(node.inputs.size());
      RF_CHECK(count >= 1 && count <= kc::kMaxConcat, "node '", node.name, "' (Concat): ", count, " inputs");
      const int ax = geometry::normalize_axis(at.axis, y.shape().rank);
      RF_CHECK(ax >= 0, "node '", node.name, "' (Concat): axis ", at.axis, " for ", y.shape().str());
      i64 widths[kc::kMaxConcat], total = 0;
      for (int i = 0; i < count; ++i) total += widths[i] = geometry::axis_view(in[i]->shape(), ax).row();
      const geometry::AxisView v = geometry::axis_view(y.shape(), ax);
      RF_CHECK(total == v.row(), "node '", node.name, "' (Concat): inputs do not fill ", y.shape().str());
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xs[kc::kMaxConcat];
        for (int i = 0; i < count; ++i) xs[i] = in[i]->data<T>();
        kc::concat_rows<T>(xs, widths, count, y.data<T>(), v.outer, st);
      });
      return;
    }
    case Op::Pad: {
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      const int ax = geometry::normalize_axis(at.axis, x.shape().rank);
      RF_CHECK(ax >= 0, "node '", node.name, "' (Pad): axis ", at.axis, " for ", x.shape().str());
      const geometry::AxisView v = geometry::axis_view(x.shape(), ax);
      RF_CHECK(y.numel() == v.outer * (v.axis + at.pad_before + at.pad_after) * v.inner, "node '", node.name,
               "' (Pad): output ", y.shape().str());
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::pad_rows<T>(x.data<T>(), y.data<T>(), v.outer, v.row(), at.pad_before * v.inner, at.pad_after * v.inner,
                        at.pad_value, st);
      });
      return;
    }

    case Op::Dropout: {  // x -> (y, mask); the plan's run count is the draw's counter, as on the CPU
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      check_same_numel(node, x, y);
      check_same_numel(node, x, *out[1]);
      dispatch(node, y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kc::dropout<T>(x.data<T>(), y.data<T>(), out[1]->data<T>(), y.numel(), at.scalar, at.seed, ctx.run_index, st);
      });
      return;
    }

    case Op::Cast: {  // the CPU's pairs (exec_cpu.cpp)
      const Tensor& x = *in[0];
      Tensor& y = *out[0];
      check_same_numel(node, x, y);
      const DType from = x.dtype(), to = y.dtype();
      const i64 n = y.numel();
      auto* y16 = static_cast<uint16_t*>(y.raw());
      auto* x16 = static_cast<const uint16_t*>(x.raw());
      if (from == to) {
        if (y.nbytes()) CUDA_CHECK(cudaMemcpyAsync(y.raw(), x.raw(), y.nbytes(), cudaMemcpyDeviceToDevice, st));
      } else if (from == DType::F32 && to == DType::F64) {
        kc::f32_to_f64(x.data<float>(), y.data<double>(), n, st);
      } else if (from == DType::F64 && to == DType::F32) {
        kc::f64_to_f32(x.data<double>(), y.data<float>(), n, st);
      } else if (from == DType::F32 && to == DType::F16) {
        kc::f32_to_f16(x.data<float>(), y16, n, st);
      } else if (from == DType::F16 && to == DType::F32) {
        kc::f16_to_f32(x16, y.data<float>(), n, st);
      } else if (from == DType::F32 && to == DType::BF16) {
        kc::f32_to_bf16(x.data<float>(), y16, n, st);
      } else if (from == DType::BF16 && to == DType::F32) {
        kc::bf16_to_f32(x16, y.data<float>(), n, st);
      } else {
        fail("node '", node.name, "': no cast from ", dtype_name(from), " to ", dtype_name(to));
      }
      return;
    }

    case Op::COUNT: break;
  }
  fail("internal: exec_cuda: bad op ", int(node.op), " (node '", node.name, "')");
}

void exec_fused(FusedChain& f, Tensor* const* in, Tensor* const* out, const ExecContext& ctx) {
  const cudaStream_t st = stream_of(ctx);
  Tensor& y = *out[0];
  const Tensor& bias = *in[f.root->inputs.size()];
  i64 outer, C, inner;
  geometry::bias_dims(*f.bias_add, y.shape(), &outer, &C, &inner);
  RF_CHECK(bias.numel() == C, "node '", f.bias_add->name, "' (BiasAdd): bias ", bias.shape().str(), " for ", C,
           " channels");
  bool done = false;
  if (f.root->op == Op::MatMul) {
    // One cuBLASLt matmul with the bias (+ ReLU) epilogue, when cuBLASLt has an algorithm for it.
    if (!f.state) f.state = std::make_shared<kc::GemmEpilogue>();
    auto& lt = *static_cast<kc::GemmEpilogue*>(f.state.get());
    const Tensor& a = *in[0];
    const Tensor& b = *in[1];
    const MatDims d = matmul_dims(*f.root, a, b, y);
    const Attrs& at = f.root->attrs;
    auto handle = static_cast<cublasLtHandle_t>(cuda::cublaslt_handle(ctx.device.index));
    void* ws = cuda::workspace(ctx.device.index, kc::kGemmEpilogueWorkspace);
    dispatch(*f.root, y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      done = lt.run<T>(at.transpose_a, at.transpose_b, d.m, d.n, d.k, a.data<T>(), a.shape()[1], b.data<T>(),
                       b.shape()[1], bias.data<T>(), f.relu != nullptr, y.data<T>(), d.n, cuda::allow_tf32(), handle,
                       ws, kc::kGemmEpilogueWorkspace, st);
    });
  }
  if (done) return;
  // The root's own kernel (cuBLAS gemm, cuDNN convolution) into the output, then one bias
  // (+ ReLU) pass over it in place.
  exec(*f.root, in, out, ctx);
  dispatch(*f.bias_add, y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (f.relu)
      kc::bias_add_relu<T>(y.data<T>(), bias.data<T>(), y.data<T>(), outer, C, inner, st);
    else
      kc::bias_add<T>(y.data<T>(), bias.data<T>(), y.data<T>(), outer, C, inner, st);
  });
}

}  // namespace

// The switch in exec() has a case for every op (no default; -Wswitch is an error here), so an op
// added to op_list.h without a CUDA kernel does not compile: every op listed there has one.
bool cuda_has_kernel(Op op) {
  switch (op) {
#define RF_OP_CASE(name, nin, nout) case Op::name:
    RF_OPS(RF_OP_CASE)
#undef RF_OP_CASE
    return true;
    case Op::COUNT: break;
  }
  return false;
}


void exec_cuda(const Node& node, Tensor* const* in, Tensor* const* out, const ExecContext& ctx) {
  RF_CHECK(ctx.device.is_cuda(), "internal: exec_cuda for node '", node.name, "' on ", ctx.device.str());
  // Kernels launch on ctx.stream, which belongs to ctx.device: make that device current.
  CUDA_CHECK(cudaSetDevice(ctx.device.index));
  try {
    exec(node, in, out, ctx);
  } catch (const std::invalid_argument& e) {
    // Kernel precondition failures do not know which node they ran for.
    fail("node '", node.name, "' (", op_name(node.op), "): ", e.what());
  }
}

void exec_fused_cuda(FusedChain& f, Tensor* const* in, Tensor* const* out, const ExecContext& ctx) {
  RF_CHECK(ctx.device.is_cuda(), "internal: exec_fused_cuda for '", f.label, "' on ", ctx.device.str());
  CUDA_CHECK(cudaSetDevice(ctx.device.index));
  try {
    exec_fused(f, in, out, ctx);
  } catch (const std::invalid_argument& e) {
    fail("node '", f.root->name, "' (", f.label, "): ", e.what());
  }
}

}  // namespace rf
