// The CPU execution table: one case per op, translating a node's attributes and bound tensors
// into a call of the CPU kernels (kernels/cpu.h).
#include <algorithm>

#include "kernels/cpu.h"
#include "runtime/exec.h"
#include "runtime/geometry.h"

namespace rf {

namespace kc = kernels::cpu;
using kernels::BinaryOp;
using kernels::ScalarOp;
using kernels::UnaryOp;

namespace {

// Calls f(T{}) with T = float or double for the tensor's dtype.
template <class F> void with_float(const Node& n, DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); return;
    case DType::F64: f(double{}); return;
    default: fail("node '", n.name, "' (", op_name(n.op), "): no CPU kernel for ", dtype_name(t));
  }
}





UnaryOp unary_of(Op op) {
  switch (op) {
    case Op::Neg: return UnaryOp::Neg;
    case Op::Exp: return UnaryOp::Exp;
    case Op::Log: return UnaryOp::Log;
    case Op::Sqrt: return UnaryOp::Sqrt;
    case Op::Square: return UnaryOp::Square;
    case Op::Relu: return UnaryOp::Relu;
    case Op::Tanh: return UnaryOp::Tanh;
    case Op::Sigmoid: return UnaryOp::Sigmoid;
    case Op::Gelu: return UnaryOp::Gelu;
    case Op::Rsqrt: return UnaryOp::Rsqrt;
    default: break;  // the callers pass only the ops above; anything else is a bug here, not a GELU
  }
  fail("internal: op ", op_name(op), " is not a unary elementwise op");
}
BinaryOp binary_of(Op op) {
  switch (op) {
    case Op::Add: return BinaryOp::Add;
    case Op::Sub: return BinaryOp::Sub;
    case Op::Mul: return BinaryOp::Mul;
    case Op::Div: return BinaryOp::Div;
    case Op::ReluGrad: return BinaryOp::ReluGrad;
    case Op::TanhGrad: return BinaryOp::TanhGrad;
    case Op::SigmoidGrad: return BinaryOp::SigmoidGrad;
    case Op::GeluGrad: return BinaryOp::GeluGrad;
    case Op::RsqrtGrad: return BinaryOp::RsqrtGrad;
    default: break;  // the callers pass only the ops above; anything else is a bug here
  }
  fail("internal: op ", op_name(op), " is not a binary elementwise op");
}

}  // namespace

#if !RINGFLOW_CUDA
bool cuda_has_kernel(Op) { return false; }
#endif

void exec_cpu(const Node& n, Tensor* const* in, Tensor* const* out, const ExecContext& ctx) {
  const Attrs& a = n.attrs;
  switch (n.op) {
    case Op::Placeholder:
    case Op::Const:
    case Op::Variable:
    case Op::InitVariable:
    case Op::Reshape:
    case Op::ReshapeLike:
      fail("internal: node '", n.name, "' (", op_name(n.op), ") is run by the Session, not a kernel");

    case Op::MatMul:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const Shape& as = in[0]->shape();
        const Shape& bs = in[1]->shape();
        const i64 m = out[0]->shape()[0], nn = out[0]->shape()[1];
        const i64 k = a.transpose_a ? as[0] : as[1];
        kc::gemm<T>(a.transpose_a, a.transpose_b, m, nn, k, T(1), in[0]->data<T>(), as[1], in[1]->data<T>(),
                    bs[1], T(0), out[0]->data<T>(), nn);
      });
      return;

    case Op::Add:
    case Op::Sub:
    case Op::Mul:
    case Op::Div:
    case Op::ReluGrad:
    case Op::TanhGrad:
    case Op::SigmoidGrad:
    case Op::GeluGrad:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const Shape& ys = out[0]->shape();
        if (in[0]->shape() == ys && in[1]->shape() == ys) {
          kc::binary<T>(binary_of(n.op), in[0]->data<T>(), in[1]->data<T>(), out[0]->data<T>(), ys.numel());
        } else {
          kc::binary_broadcast<T>(binary_of(n.op), in[0]->data<T>(), geometry::left_pad(n, in[0]->shape(), ys.rank),
                                  in[1]->data<T>(), geometry::left_pad(n, in[1]->shape(), ys.rank), out[0]->data<T>(), ys);
        }
      });
      return;

    case Op::Neg:
    case Op::Exp:
    case Op::Log:
    case Op::Sqrt:
    case Op::Square:
    case Op::Relu:
    case Op::Tanh:
    case Op::Sigmoid:
    case Op::Gelu:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::unary<T>(unary_of(n.op), in[0]->data<T>(), out[0]->data<T>(), out[0]->numel());
      });
      return;

    case Op::AddScalar:
    case Op::MulScalar:
    case Op::PowScalar:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const ScalarOp s = n.op == Op::AddScalar ? ScalarOp::Add : n.op == Op::MulScalar ? ScalarOp::Mul : ScalarOp::Pow;
        kc::scalar<T>(s, in[0]->data<T>(), a.scalar, out[0]->data<T>(), out[0]->numel());
      });
      return;

    case Op::Softmax:
    case Op::LogSoftmax:
    case Op::SoftmaxGrad:
    case Op::LogSoftmaxGrad:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const i64 cols = out[0]->shape().dim(-1);
        const i64 rows = cols ? out[0]->numel() / cols : 0;
        T* y = out[0]->data<T>();
        if (n.op == Op::Softmax) kc::softmax<T>(in[0]->data<T>(), y, rows, cols);
        else if (n.op == Op::LogSoftmax) kc::log_softmax<T>(in[0]->data<T>(), y, rows, cols);
        else if (n.op == Op::SoftmaxGrad) kc::softmax_grad<T>(in[0]->data<T>(), in[1]->data<T>(), y, rows, cols);
        else kc::log_softmax_grad<T>(in[0]->data<T>(), in[1]->data<T>(), y, rows, cols);
      });
      return;

    case Op::SparseSoftmaxXent:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const i64 rows = in[0]->shape()[0], cols = in[0]->shape()[1];
        try {
          if (in[1]->dtype() == DType::I32)
            kc::sparse_xent<T, int32_t>(in[0]->data<T>(), in[1]->data<int32_t>(), out[0]->data<T>(),
                                        out[1]->data<T>(), rows, cols, a.ignore_index, a.label_smoothing);
          else
            kc::sparse_xent<T, int64_t>(in[0]->data<T>(), in[1]->data<int64_t>(), out[0]->data<T>(),
                                        out[1]->data<T>(), rows, cols, a.ignore_index, a.label_smoothing);
        } catch (const std::invalid_argument& e) {
          fail("node '", n.name, "': ", e.what());
        }
      });
      return;
    case Op::SparseSoftmaxXentGrad:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::sparse_xent_grad<T>(in[0]->data<T>(), in[1]->data<T>(), out[0]->data<T>(), in[1]->shape()[0],
                                in[1]->shape()[1]);
      });
      return;

    case Op::Rsqrt:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::unary<T>(UnaryOp::Rsqrt, in[0]->data<T>(), out[0]->data<T>(), out[0]->numel());
      });
      return;
    case Op::RsqrtGrad:  // (dy, y)
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::binary<T>(BinaryOp::RsqrtGrad, in[0]->data<T>(), in[1]->data<T>(), out[0]->data<T>(), out[0]->numel());
      });
      return;
    case Op::Where:  // (cond, x, y)
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const Shape& os = out[0]->shape();
        try {
          kc::where<T>(in[0]->data<uint8_t>(), geometry::left_pad(n, in[0]->shape(), os.rank), in[1]->data<T>(),
                       geometry::left_pad(n, in[1]->shape(), os.rank), in[2]->data<T>(), geometry::left_pad(n, in[2]->shape(), os.rank),
                       out[0]->data<T>(), os);
        } catch (const std::invalid_argument& e) {
          fail("node '", n.name, "' (Where): ", e.what());
        }
      });
      return;
    case Op::Compare: {
      const Shape& os = out[0]->shape();
      auto run = [&](auto t) {
        using T = decltype(t);
        try {
          kc::compare<T>(kernels::CompareOp(a.compare), in[0]->data<T>(), geometry::left_pad(n, in[0]->shape(), os.rank),
                         in[1]->data<T>(), geometry::left_pad(n, in[1]->shape(), os.rank), out[0]->data<uint8_t>(), os);
        } catch (const std::invalid_argument& e) {
          fail("node '", n.name, "' (Compare): ", e.what());
        }
      };
      switch (in[0]->dtype()) {
        case DType::I32: run(int32_t{}); return;
        case DType::I64: run(int64_t{}); return;
        default: with_float(n, in[0]->dtype(), run); return;
      }
    }
    case Op::MaskedSoftmax:  // (x, mask)
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const Shape& xs = in[0]->shape();
        try {
          kc::masked_softmax<T>(in[0]->data<T>(), xs, in[1]->data<T>(), geometry::left_pad(n, in[1]->shape(), xs.rank),
                                out[0]->data<T>());
        } catch (const std::invalid_argument& e) {
          fail("node '", n.name, "' (MaskedSoftmax): ", e.what());
        }
      });
      return;

    case Op::Sum:
    case Op::Mean:
    case Op::SumLike:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const Shape& xs = in[0]->shape();
        // The reduced shape at the input's rank: 1 on reduced axes.
        Shape ys;
        if (n.op == Op::SumLike) {
          ys = geometry::left_pad(n, out[0]->shape(), xs.rank);
        } else {
          ys = xs;
          if (a.axes.empty())
            for (int i = 0; i < xs.rank; ++i) ys[i] = 1;
          for (int ax : a.axes) ys[ax < 0 ? ax + xs.rank : ax] = 1;
        }
        const double count = ys.numel() ? double(xs.numel()) / double(ys.numel()) : 1.0;
        kc::reduce_sum<T>(in[0]->data<T>(), xs, out[0]->data<T>(), ys, n.op == Op::Mean ? 1.0 / count : 1.0);
      });
      return;
    case Op::BroadcastLike:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const Shape& ys = out[0]->shape();
        const Shape xs = geometry::broadcast_source_shape(n, in[0]->shape(), ys.rank);
        double scale = a.scalar == 0 ? 1.0 : a.scalar;
        if (a.average && ys.numel() > 0) scale *= double(xs.numel()) / double(ys.numel());
        kc::broadcast_to<T>(in[0]->data<T>(), xs, out[0]->data<T>(), ys, scale);
      });
      return;

    case Op::Transpose:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::transpose<T>(in[0]->data<T>(), in[0]->shape(), a.perm.data(), out[0]->data<T>());
      });
      return;

    case Op::BiasAdd:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        i64 outer, c, inner;
        geometry::bias_dims(n, in[0]->shape(), &outer, &c, &inner);
        kc::bias_add<T>(in[0]->data<T>(), in[1]->data<T>(), out[0]->data<T>(), outer, c, inner);
      });
      return;
    case Op::BiasAddGrad:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        i64 outer, c, inner;
        geometry::bias_dims(n, in[0]->shape(), &outer, &c, &inner);
        kc::bias_grad<T>(in[0]->data<T>(), out[0]->data<T>(), outer, c, inner);
      });
      return;

    case Op::Conv2D:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::conv2d<T>(in[0]->data<T>(), in[1]->data<T>(), out[0]->data<T>(),
                      geometry::conv_geom(n, in[0]->shape(), in[1]->shape(), out[0]->shape()));
      });
      return;
    case Op::Conv2DGradInput:  // (dy, w, x_like)
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::conv2d_grad_input<T>(in[0]->data<T>(), in[1]->data<T>(), out[0]->data<T>(),
                                 geometry::conv_geom(n, out[0]->shape(), in[1]->shape(), in[0]->shape()));
      });
      return;
    case Op::Conv2DGradFilter:  // (x, dy, w_like)
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::conv2d_grad_filter<T>(in[0]->data<T>(), in[1]->data<T>(), out[0]->data<T>(),
                                  geometry::conv_geom(n, in[0]->shape(), out[0]->shape(), in[1]->shape()));
      });
      return;

    case Op::MaxPool2D:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::max_pool2d<T>(in[0]->data<T>(), out[0]->data<T>(), out[1]->data<int32_t>(),
                          geometry::pool_geom(n, in[0]->shape(), out[0]->shape()));
      });
      return;
    case Op::MaxPool2DGrad:  // (dy, argmax, x_like)
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::max_pool2d_grad<T>(in[0]->data<T>(), in[1]->data<int32_t>(), out[0]->data<T>(),
                               geometry::pool_geom(n, out[0]->shape(), in[0]->shape()));
      });
      return;
    case Op::AvgPool2D:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::avg_pool2d<T>(in[0]->data<T>(), out[0]->data<T>(), geometry::pool_geom(n, in[0]->shape(), out[0]->shape()));
      });
      return;
    case Op::AvgPool2DGrad:  // (dy, x_like)
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::avg_pool2d_grad<T>(in[0]->data<T>(), out[0]->data<T>(), geometry::pool_geom(n, out[0]->shape(), in[0]->shape()));
      });
      return;

    case Op::BatchMatMul:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kernels::BatchGemm bg;
        RF_CHECK(geometry::batch_layout(in[0]->shape(), in[1]->shape(), out[0]->shape(), a.transpose_a,
                                        a.transpose_b, &bg),
                 "node '", n.name, "' (BatchMatMul): ", in[0]->shape().str(), " x ", in[1]->shape().str(), " -> ",
                 out[0]->shape().str());
        kc::batch_matmul<T>(bg, a.transpose_a, a.transpose_b, in[0]->data<T>(), in[1]->data<T>(), out[0]->data<T>());
      });
      return;

    case Op::LayerNorm:  // (x, gamma, beta) -> (y, mean, rstd)
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const i64 cols = in[0]->shape().dim(-1), rows = out[1]->numel();
        kc::layer_norm<T>(in[0]->data<T>(), in[1]->data<T>(), in[2]->data<T>(), out[0]->data<T>(), out[1]->data<T>(),
                          out[2]->data<T>(), rows, cols, a.ln_eps);
      });
      return;
    case Op::LayerNormGrad:  // (dy, x, gamma, mean, rstd) -> (dx, dgamma, dbeta)
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const i64 cols = in[1]->shape().dim(-1), rows = in[3]->numel();
        kc::layer_norm_grad<T>(in[0]->data<T>(), in[1]->data<T>(), in[2]->data<T>(), in[3]->data<T>(),
                               in[4]->data<T>(), out[0]->data<T>(), out[1]->data<T>(), out[2]->data<T>(), rows, cols);
      });
      return;

    case Op::Slice:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const Shape& xs = in[0]->shape();
        const int ax = geometry::normalize_axis(a.axis, xs.rank);
        i64 b = 0, e = 0;
        RF_CHECK(ax >= 0 && geometry::resolve_slice(xs[ax], a.begin, a.end, &b, &e), "node '", n.name,
                 "' (Slice): [", a.begin, ", ", a.end, ") along axis ", a.axis, " does not fit ", xs.str());
        const geometry::AxisView v = geometry::axis_view(xs, ax);
        kc::copy_rows<T>(in[0]->data<T>() + b * v.inner, v.row(), out[0]->data<T>(), (e - b) * v.inner, v.outer,
                         (e - b) * v.inner);
      });
      return;
    case Op::Concat:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const int count = int(n.inputs.size());
        RF_CHECK(count <= Attrs::kMaxConcatInputs, "node '", n.name, "' (Concat): ", count, " inputs");
        const int ax = geometry::normalize_axis(a.axis, out[0]->shape().rank);
        const T* xs[Attrs::kMaxConcatInputs];
        i64 widths[Attrs::kMaxConcatInputs];
        for (int i = 0; i < count; ++i) {
          xs[i] = in[i]->data<T>();
          widths[i] = geometry::axis_view(in[i]->shape(), ax).row();
        }
        kc::concat_rows<T>(xs, widths, count, out[0]->data<T>(), geometry::axis_view(out[0]->shape(), ax).outer);
      });
      return;
    case Op::Pad:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const Shape& xs = in[0]->shape();
        const int ax = geometry::normalize_axis(a.axis, xs.rank);
        const geometry::AxisView v = geometry::axis_view(xs, ax);
        kc::pad_rows<T>(in[0]->data<T>(), out[0]->data<T>(), v.outer, v.row(), a.pad_before * v.inner,
                        a.pad_after * v.inner, a.pad_value);
      });
      return;

    case Op::Dropout:
      with_float(n, out[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        kc::dropout<T>(in[0]->data<T>(), out[0]->data<T>(), out[1]->data<T>(), out[0]->numel(), a.scalar, a.seed,
                       ctx.run_index);
      });
      return;

    case Op::Cast: {
      const DType from = in[0]->dtype(), to = out[0]->dtype();
      const i64 cnt = out[0]->numel();
      if (from == to) {
        out[0]->copy_from(*in[0]);
      } else if (from == DType::F32 && to == DType::F64) {
        std::copy_n(in[0]->data<float>(), cnt, out[0]->data<double>());
      } else if (from == DType::F64 && to == DType::F32) {
        std::copy_n(in[0]->data<double>(), cnt, out[0]->data<float>());
      } else if (from == DType::F32 && to == DType::F16) {
        kc::f32_to_f16(in[0]->data<float>(), static_cast<uint16_t*>(out[0]->raw()), cnt);
      } else if (from == DType::F16 && to == DType::F32) {
        kc::f16_to_f32(static_cast<const uint16_t*>(in[0]->raw()), out[0]->data<float>(), cnt);
      } else if (from == DType::F32 && to == DType::BF16) {
        kc::f32_to_bf16(in[0]->data<float>(), static_cast<uint16_t*>(out[0]->raw()), cnt);
      } else if (from == DType::BF16 && to == DType::F32) {
        kc::bf16_to_f32(static_cast<const uint16_t*>(in[0]->raw()), out[0]->data<float>(), cnt);
      } else {
        fail("node '", n.name, "': no cast from ", dtype_name(from), " to ", dtype_name(to));
      }
      return;
    }

    case Op::Gather:
    case Op::ScatterAdd:
    case Op::ApplySGDSparse:
    case Op::ApplyMomentumSparse:
    case Op::ApplyAdamSparse: {
      // The dense tensor [V, D...] these index, and the index input.
      const int nin = int(n.inputs.size());
      const bool update = nin >= 4;
      const Tensor& dense = n.op == Op::Gather ? *in[0] : n.op == Op::ScatterAdd ? *out[0] : *in[0];
      const Tensor& idx = n.op == Op::Gather ? *in[1] : *in[update ? nin - 2 : 1];
      RF_CHECK(!update || !ctx.grad_sources, "node '", n.name, "' (", op_name(n.op),
               "): a sparse update cannot average replicas' gradients in place (RunOptions::update_grads)");
      const i64 V = dense.shape().rank ? dense.shape()[0] : 0;
      const i64 D = V ? dense.numel() / V : 0;
      const i64 N = idx.numel();
      with_float(n, dense.dtype(), [&](auto t) {
        using T = decltype(t);
        auto run = [&](auto index_tag) {
          using I = decltype(index_tag);
          const I* ix = idx.data<I>();
          if (n.op == Op::Gather) {
            kc::gather_rows<T, I>(in[0]->data<T>(), V, D, ix, N, out[0]->data<T>());
          } else if (n.op == Op::ScatterAdd) {
            kc::scatter_add_rows<T, I>(in[0]->data<T>(), ix, N, D, out[0]->data<T>(), V);
          } else {
            kc::SparseHyper h;
            const double* hyper = in[nin - 1]->data<double>();
            h.lr = hyper[0];
            h.step = i64(hyper[1]);
            h.mu = a.momentum, h.nesterov = a.nesterov, h.b1 = a.beta1, h.b2 = a.beta2, h.eps = a.eps;
            const kc::SparseOpt opt = n.op == Op::ApplySGDSparse        ? kc::SparseOpt::SGD
                                      : n.op == Op::ApplyMomentumSparse ? kc::SparseOpt::Momentum
                                                                        : kc::SparseOpt::LazyAdam;
            T* s1 = nin >= 5 ? in[1]->data<T>() : nullptr;
            T* s2 = nin >= 6 ? in[2]->data<T>() : nullptr;
            kc::sparse_update<T, I>(opt, in[0]->data<T>(), s1, s2, V, D, in[nin - 3]->data<T>(), ix, N, h);
          }
        };
        try {
          if (idx.dtype() == DType::I32) run(int32_t{});
          else run(int64_t{});
        } catch (const std::invalid_argument& e) {
          fail("node '", n.name, "' (", op_name(n.op), "): ", e.what());
        }
      });
      return;
    }

    case Op::ApplySGD:
    case Op::ApplyMomentum:
    case Op::ApplyAdam: {
      const double* hyper = in[n.inputs.size() - 1]->data<double>();
      const double lr = hyper[0];
      const i64 step = i64(hyper[1]);
      const int gi = int(n.inputs.size()) - 2;  // the gradient: the input before the hyper-parameters
      with_float(n, in[0]->dtype(), [&](auto t) {
        using T = decltype(t);
        const i64 cnt = in[0]->numel();
        // Several sources (the fused update): typed copies of the pointers, on the stack up to 16.
        const std::vector<const void*>* src = ctx.grad_sources;
        const T* inline_src[16];
        std::vector<const T*> heap_src;
        const T** typed = inline_src;
        if (src && src->size() > std::size(inline_src)) typed = (heap_src.resize(src->size()), heap_src.data());
        if (src)
          for (size_t i = 0; i < src->size(); ++i) typed[i] = static_cast<const T*>((*src)[i]);
        const kc::GradIn<T> g = src ? kc::GradIn<T>(typed, int(src->size())) : kc::GradIn<T>(in[gi]->data<T>());
        if (n.op == Op::ApplySGD)
          kc::sgd_update<T>(in[0]->data<T>(), g, cnt, lr, a.weight_decay);
        else if (n.op == Op::ApplyMomentum)
          kc::momentum_update<T>(in[0]->data<T>(), in[1]->data<T>(), g, cnt, lr, a.momentum, a.weight_decay,
                                 a.nesterov);
        else
          kc::adam_update<T>(in[0]->data<T>(), in[1]->data<T>(), in[2]->data<T>(), g, cnt, lr, a.beta1, a.beta2,
                             a.eps, a.weight_decay, a.decoupled, step);
      });
      return;
    }

    case Op::COUNT:
      break;
  }
  fail("internal: unknown op in node '", n.name, "'");
}

void exec_fused_cpu(FusedChain& f, Tensor* const* in, Tensor* const* out, const ExecContext& ctx) {
  Tensor& y = *out[0];
  const Tensor& bias = *in[f.root->inputs.size()];
  if (f.root->op == Op::Conv2D) {  // the bias and ReLU on the way out of the convolution kernel
    with_float(*f.root, y.dtype(), [&](auto t) {
      using T = decltype(t);
      kc::conv2d_bias<T>(in[0]->data<T>(), in[1]->data<T>(), bias.data<T>(), f.relu != nullptr, y.data<T>(),
                         geometry::conv_geom(*f.root, in[0]->shape(), in[1]->shape(), y.shape()));
    });
    return;
  }
  exec_cpu(*f.root, in, out, ctx);  // the product, straight into the chain's output
  with_float(*f.bias_add, y.dtype(), [&](auto t) {
    using T = decltype(t);
    i64 outer, c, inner;
    geometry::bias_dims(*f.bias_add, y.shape(), &outer, &c, &inner);
    if (f.relu)
      kc::bias_add_relu<T>(y.data<T>(), bias.data<T>(), y.data<T>(), outer, c, inner);
    else
      kc::bias_add<T>(y.data<T>(), bias.data<T>(), y.data<T>(), outer, c, inner);
  });
}

}  // namespace rf
