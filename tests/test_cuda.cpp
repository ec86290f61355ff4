// The CUDA backend: differential tests of the CUDA kernels and exec_cuda against the CPU ones,
// the caching allocator; and, in builds without CUDA, that asking for a CUDA device fails clearly.
#include <gtest/gtest.h>

#include <string>

#include "tests/gpu_compare.h"
#include "runtime/device.h"
#include "runtime/error.h"

#if RINGFLOW_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/cuda.h"
#include "runtime/cuda_backend.h"
#include "runtime/cuda_options.h"
#include "runtime/exec.h"
#include "runtime/graph.h"
#include "runtime/tensor.h"

namespace {

using rf::Device;
using rf::i64;
using rf::Shape;
using rf::Tensor;
using rf::kernels::BinaryOp;
using rf::kernels::ScalarOp;
using rf::kernels::UnaryOp;
namespace cpu = rf::kernels::cpu;
namespace kc = rf::kernels::cuda;

std::vector<float> random_vec(i64 n, float lo, float hi, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(gen);
  return v;
}

// A device copy of host data, through the runtime (its allocator and compute stream).
Tensor to_gpu(const std::vector<float>& v, const Shape& s) {
  return Tensor::from_vector<float>(v, s).to(Device::cuda(0));
}
Tensor gpu_empty(const Shape& s) { return Tensor(s, rf::DType::F32, Device::cuda(0)); }

cudaStream_t stream() { return static_cast<cudaStream_t>(rf::cuda::compute_stream(0)); }

using rf::testing::expect_close;

// Copies the device result back (the copy runs on the compute stream, after the kernel).
std::vector<float> host(const Tensor& t) { return t.to_vector<float>(); }

const UnaryOp kUnary[] = {UnaryOp::Neg, UnaryOp::Exp,  UnaryOp::Log,  UnaryOp::Sqrt,    UnaryOp::Square,
                          UnaryOp::Abs, UnaryOp::Relu, UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Gelu};
const BinaryOp kBinary[] = {BinaryOp::Add,      BinaryOp::Sub,      BinaryOp::Mul,         BinaryOp::Div,
                            BinaryOp::ReluGrad, BinaryOp::TanhGrad, BinaryOp::SigmoidGrad, BinaryOp::GeluGrad};

TEST(CudaKernels, Unary) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  const i64 n = 10007;
  for (UnaryOp op : kUnary) {
    const bool positive = op == UnaryOp::Log || op == UnaryOp::Sqrt;
    const auto x = random_vec(n, positive ? 0.05f : -4.f, 4.f, 1 + unsigned(op));
    std::vector<float> want(static_cast<size_t>(n));
    cpu::unary<float>(op, x.data(), want.data(), n);
    Tensor xd = to_gpu(x, {n}), yd = gpu_empty({n});
    kc::unary<float>(op, xd.data<float>(), yd.data<float>(), n, stream());
    expect_close(host(yd), want, 1e-5, "unary op " + std::to_string(int(op)));
  }
}

TEST(CudaKernels, Binary) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  const i64 n = 4099;
  for (BinaryOp op : kBinary) {
    const auto a = random_vec(n, -3.f, 3.f, 10 + unsigned(op));
    const auto b = op == BinaryOp::Div ? random_vec(n, 0.5f, 2.f, 20) : random_vec(n, -3.f, 3.f, 20 + unsigned(op));
    std::vector<float> want(static_cast<size_t>(n));
    cpu::binary<float>(op, a.data(), b.data(), want.data(), n);
    Tensor ad = to_gpu(a, {n}), bd = to_gpu(b, {n}), yd = gpu_empty({n});
    kc::binary<float>(op, ad.data<float>(), bd.data<float>(), yd.data<float>(), n, stream());
    expect_close(host(yd), want, 1e-5, "binary op " + std::to_string(int(op)));
  }
}

// The flat kernels' 16-byte vector path (aligned pointers), its n % lanes tail, the scalar path
// where any pointer is not 16-byte aligned, and in place (y == x), in float and double; nothing is
// written outside y's view.
template <class T> void check_flat_paths() {
  struct Offsets {
    i64 x, b, y;  // element offsets of the views; 0 and 4 are 16-byte aligned in f32 and f64
  };
  const T sentinel = T(-777);
  for (i64 n : {i64(1), i64(2), i64(3), i64(5), i64(8), i64(1023), i64(4099)})
    for (const Offsets o : {Offsets{0, 0, 0}, Offsets{4, 4, 4}, Offsets{0, 0, 1}, Offsets{1, 1, 0}, Offsets{0, 1, 0},
                            Offsets{1, 0, 0}, Offsets{1, 1, 1}, Offsets{2, 0, 6}}) {
      const auto xf = random_vec(n + 8, -2.f, 2.f, unsigned(90 + n)), bf = random_vec(n + 8, 0.5f, 2.f, 91);
      const std::vector<T> x(xf.begin(), xf.end()), b(bf.begin(), bf.end());
      Tensor xd = Tensor::from_vector<T>(x, {n + 8}).to(Device::cuda(0));
      Tensor bd = Tensor::from_vector<T>(b, {n + 8}).to(Device::cuda(0));
      Tensor yd = Tensor::from_vector<T>(std::vector<T>(size_t(n + 8), sentinel), {n + 8}).to(Device::cuda(0));
      const T* xs = xd.data<T>() + o.x;
      const T* bs = bd.data<T>() + o.b;
      T* ys = yd.data<T>() + o.y;
      const std::string what = std::string(sizeof(T) == 4 ? "f32" : "f64") + " n=" + std::to_string(n) +
                               " offsets x=" + std::to_string(o.x) + " b=" + std::to_string(o.b) +
                               " y=" + std::to_string(o.y);
      std::vector<T> want(static_cast<size_t>(n)), got;
      auto result = [&] {  // y's view; the slack around it must still hold the sentinel
        const std::vector<T> all = yd.to_vector<T>();
        for (i64 i = 0; i < n + 8; ++i) {
          if (i < o.y || i >= o.y + n) {
            EXPECT_EQ(all[size_t(i)], sentinel) << "wrote outside y's view at " << i << ", " << what;
          }
        }
        return std::vector<T>(all.begin() + o.y, all.begin() + o.y + n);
      };
      cpu::unary<T>(UnaryOp::Exp, x.data() + o.x, want.data(), n);
      kc::unary<T>(UnaryOp::Exp, xs, ys, n, stream());
      got = result();
      for (i64 i = 0; i < n; ++i)
        EXPECT_NEAR(got[size_t(i)], want[size_t(i)], 1e-5 * std::abs(want[size_t(i)])) << "exp " << what << " at " << i;
      cpu::binary<T>(BinaryOp::ReluGrad, b.data() + o.b, x.data() + o.x, want.data(), n);
      kc::binary<T>(BinaryOp::ReluGrad, bs, xs, ys, n, stream());
      got = result();
      for (i64 i = 0; i < n; ++i) EXPECT_EQ(got[size_t(i)], want[size_t(i)]) << "relu grad " << what << " at " << i;
      cpu::scalar<T>(ScalarOp::Mul, x.data() + o.x, 3.0, want.data(), n);
      kc::scalar<T>(ScalarOp::Mul, xs, 3.0, ys, n, stream());
      got = result();
      for (i64 i = 0; i < n; ++i)
        EXPECT_EQ(got[size_t(i)], want[size_t(i)]) << "scalar mul " << what << " at " << i;
      // In place over x's view: relu(x) -> x, the rest of x untouched.
      cpu::unary<T>(UnaryOp::Relu, x.data() + o.x, want.data(), n);
      kc::unary<T>(UnaryOp::Relu, xd.data<T>() + o.x, xd.data<T>() + o.x, n, stream());
      const std::vector<T> all = xd.to_vector<T>();
      for (i64 i = 0; i < n + 8; ++i) {
        const bool in_view = i >= o.x && i < o.x + n;
        EXPECT_EQ(all[size_t(i)], in_view ? want[size_t(i - o.x)] : x[size_t(i)])
            << "relu in place " << what << " at " << i;
      }
    }
}

TEST(CudaKernels, FlatKernelsVectorTailAndUnalignedPaths) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  check_flat_paths<float>();
  check_flat_paths<double>();
}

// More 16-byte vectors than one grid has threads (kMaxGrid x kBlock = 2^24): each thread's
// grid-stride loop takes a second turn, and the n % 4 tail still comes last.
TEST(CudaKernels, FlatKernelsLoopPastOneGrid) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  const i64 n = (i64(1) << 26) + 4 * 7 + 3;
  std::vector<float> x(static_cast<size_t>(n)), b(x.size());
  for (i64 i = 0; i < n; ++i) {
    x[size_t(i)] = float(i % 1000) * 0.001f - 0.5f;
    b[size_t(i)] = float(i % 7) + 1.f;
  }
  Tensor xd = to_gpu(x, {n}), bd = to_gpu(b, {n}), yd = gpu_empty({n});
  auto mismatches = [&](const std::vector<float>& got, auto&& want) {
    i64 bad = 0, first = -1;
    for (i64 i = 0; i < n; ++i)
      if (got[size_t(i)] != want(i) && bad++ == 0) first = i;
    return std::to_string(bad) + " (first at " + std::to_string(first) + ")";
  };
  kc::unary<float>(UnaryOp::Relu, xd.data<float>(), yd.data<float>(), n, stream());
  EXPECT_EQ(mismatches(host(yd), [&](i64 i) { return x[size_t(i)] > 0 ? x[size_t(i)] : 0.f; }), "0 (first at -1)")
      << "relu";
  kc::binary<float>(BinaryOp::Mul, xd.data<float>(), bd.data<float>(), yd.data<float>(), n, stream());
  EXPECT_EQ(mismatches(host(yd), [&](i64 i) { return x[size_t(i)] * b[size_t(i)]; }), "0 (first at -1)") << "mul";
}

// Pool geometries at the edges of the kernels' 32-bit index path: a stride that forces the 64-bit
// kernels, a window area (R * S = 2^32) past 32 bits, and a stride near INT32_MAX (the gradient's
// search for covering windows must not wrap). Forward and gradient against the CPU.
TEST(CudaKernels, PoolIndexRanges) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  using rf::kernels::PoolGeom;
  struct Case {
    const char* what;
    PoolGeom g;
  };
  const Case cases[] = {
      {"stride 3e9 (64-bit kernels)", PoolGeom{1, 2, 4, 4, 2, 2, 3000000000, 2, 0, 0, 1, 2}},
      {"window 65536x65536 over a 1x1 plane", PoolGeom{1, 1, 1, 1, 65536, 65536, 1, 1, 32768, 32768, 2, 2}},
      {"stride 2130706000, 16777700 rows", PoolGeom{1, 1, 16777700, 1, 1, 1, 2130706000, 1, 0, 0, 1, 1}},
  };
  for (const Case& c : cases) {
    const PoolGeom& g = c.g;
    const i64 nx = g.N * g.C * g.H * g.W, ny = g.N * g.C * g.P * g.Q;
    const auto x = random_vec(nx, -1.f, 1.f, 95), dy = random_vec(ny, -1.f, 1.f, 96);
    std::vector<float> y(static_cast<size_t>(ny)), dx(static_cast<size_t>(nx));
    std::vector<int32_t> am(static_cast<size_t>(ny));
    Tensor xd = to_gpu(x, {nx}), dyd = to_gpu(dy, {ny}), yd = gpu_empty({ny}), dxd = gpu_empty({nx});
    Tensor amd(Shape{ny}, rf::DType::I32, Device::cuda(0));
    cpu::max_pool2d<float>(x.data(), y.data(), am.data(), g);
    kc::max_pool2d<float>(xd.data<float>(), yd.data<float>(), amd.data<int32_t>(), g, stream());
    expect_close(host(yd), y, 0, std::string("max_pool2d, ") + c.what);
    EXPECT_EQ(amd.to_vector<int32_t>(), am) << "max_pool2d argmax, " << c.what;
    cpu::max_pool2d_grad<float>(dy.data(), am.data(), dx.data(), g);
    kc::max_pool2d_grad<float>(dyd.data<float>(), amd.data<int32_t>(), dxd.data<float>(), g, stream());
    expect_close(host(dxd), dx, 0, std::string("max_pool2d_grad, ") + c.what);
    cpu::avg_pool2d<float>(x.data(), y.data(), g);
    kc::avg_pool2d<float>(xd.data<float>(), yd.data<float>(), g, stream());
    expect_close(host(yd), y, 1e-6, std::string("avg_pool2d, ") + c.what);
    cpu::avg_pool2d_grad<float>(dy.data(), dx.data(), g);
    kc::avg_pool2d_grad<float>(dyd.data<float>(), dxd.data<float>(), g, stream());
    expect_close(host(dxd), dx, 1e-6, std::string("avg_pool2d_grad, ") + c.what);
  }
}

TEST(CudaKernels, BinaryBroadcast) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  struct Case {
    Shape a, b, y;
  };
  const Case cases[] = {
      {{4, 1, 5}, {1, 3, 5}, {4, 3, 5}},
      {{1, 1}, {3, 4}, {3, 4}},
      {{7, 1}, {1, 300}, {7, 300}},
      {{2, 1, 4, 1, 3, 2}, {1, 3, 1, 5, 3, 1}, {2, 3, 4, 5, 3, 2}},
  };
  for (const Case& c : cases)
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div}) {
      const auto a = random_vec(c.a.numel(), -2.f, 2.f, 30);
      const auto b = random_vec(c.b.numel(), 0.5f, 2.f, 31);
      std::vector<float> want(size_t(c.y.numel()));
      cpu::binary_broadcast<float>(op, a.data(), c.a, b.data(), c.b, want.data(), c.y);
      Tensor ad = to_gpu(a, c.a), bd = to_gpu(b, c.b), yd = gpu_empty(c.y);
      kc::binary_broadcast<float>(op, ad.data<float>(), c.a, bd.data<float>(), c.b, yd.data<float>(), c.y, stream());
      expect_close(host(yd), want, 1e-5, c.a.str() + " op " + std::to_string(int(op)) + " " + c.b.str());
    }
}

TEST(CudaKernels, BinaryBroadcastRejectsBadShapes) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  Tensor ad = gpu_empty({2, 3}), bd = gpu_empty({4, 3}), yd = gpu_empty({4, 3});
  EXPECT_THROW(kc::binary_broadcast<float>(BinaryOp::Add, ad.data<float>(), Shape{2, 3}, bd.data<float>(),
                                           Shape{4, 3}, yd.data<float>(), Shape{4, 3}, stream()),
               std::invalid_argument);
}

TEST(CudaKernels, Scalar) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  const i64 n = 3001;
  for (ScalarOp op : {ScalarOp::Add, ScalarOp::Mul, ScalarOp::Pow, ScalarOp::RSub, ScalarOp::RDiv}) {
    const auto x = random_vec(n, 0.1f, 3.f, 40 + unsigned(op));  // positive: Pow and RDiv
    const double c = 2.5;
    std::vector<float> want(static_cast<size_t>(n));
    cpu::scalar<float>(op, x.data(), c, want.data(), n);
    Tensor xd = to_gpu(x, {n}), yd = gpu_empty({n});
    kc::scalar<float>(op, xd.data<float>(), c, yd.data<float>(), n, stream());
    expect_close(host(yd), want, 1e-5, "scalar op " + std::to_string(int(op)));
  }
}

TEST(CudaKernels, ReduceSum) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  struct Case {
    Shape x, y;
  };
  // All three kernels: a block per output (long reductions, few outputs; contiguous rows or any
  // layout) and a thread per output.
  const Case cases[] = {
      {{7, 9, 11}, {1, 9, 1}},   {{7, 9, 11}, {7, 1, 11}},   {{7, 9, 11}, {1, 1, 1}},
      {{1000, 3}, {1, 3}},       {{3, 100000}, {3, 1}},      {{40000, 2}, {40000, 1}},
      {{}, {}},                  {{5, 6}, {5, 6}},           {{2, 3, 4, 5, 6, 7}, {2, 1, 4, 1, 6, 1}},
      {{1, 4, 1}, {1, 1, 1}},
  };
  for (const Case& c : cases)
    for (double scale : {1.0, 0.25}) {
      // Positive values: no cancellation, so the CPU's float sums are accurate to ~1e-6 relative.
      const auto x = random_vec(c.x.numel(), 0.f, 1.f, 50);
      std::vector<float> want(size_t(c.y.numel()));
      cpu::reduce_sum<float>(x.data(), c.x, want.data(), c.y, scale);
      Tensor xd = to_gpu(x, c.x), yd = gpu_empty(c.y);
      kc::reduce_sum<float>(xd.data<float>(), c.x, yd.data<float>(), c.y, scale, stream());
      expect_close(host(yd), want, 1e-5, c.x.str() + " -> " + c.y.str());
    }
}

TEST(CudaKernels, BroadcastTo) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  struct Case {
    Shape x, y;
  };
  const Case cases[] = {{{1, 3, 1}, {4, 3, 5}}, {{1, 1}, {6, 7}}, {{5, 1}, {5, 9}}, {{2, 3}, {2, 3}}};
  for (const Case& c : cases) {
    const auto x = random_vec(c.x.numel(), -1.f, 1.f, 60);
    std::vector<float> want(size_t(c.y.numel()));
    cpu::broadcast_to<float>(x.data(), c.x, want.data(), c.y, 0.5);
    Tensor xd = to_gpu(x, c.x), yd = gpu_empty(c.y);
    kc::broadcast_to<float>(xd.data<float>(), c.x, yd.data<float>(), c.y, 0.5, stream());
    expect_close(host(yd), want, 1e-5, c.x.str() + " -> " + c.y.str());
  }
}

TEST(CudaKernels, BiasAddAndGrad) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  struct Case {
    i64 outer, C, inner;
  };
  // 64x32x196 (3 slabs of 21-22 rows), 512x32x784 (the CNN's conv1 at batch 512) and 1000x1x4096
  // take bias_grad's slab path (a workspace); 600000x1x32 has more rows than a grid's y covers
  // (bias_add: 8 rows a block); 6x5x131, 8x16x49 and 37x3x33 are not whole 16-byte vectors a row
  // (the scalar rows kernel; 200000x3x33 with more rows than a grid's y covers), 256x10x1 takes
  // the flat kernel.
  for (const Case& c : {Case{8, 16, 49}, Case{256, 10, 1}, Case{3, 5, 1000}, Case{64, 32, 196}, Case{512, 32, 784},
                        Case{37, 3, 33}, Case{1000, 1, 4096}, Case{70000, 1, 256}, Case{6, 5, 131},
                        Case{600000, 1, 32}, Case{200000, 3, 33}}) {
    const i64 n = c.outer * c.C * c.inner;
    const auto x = random_vec(n, 0.f, 1.f, 70), b = random_vec(c.C, -1.f, 1.f, 71);  // x >= 0: see ReduceSum
    std::vector<float> want(static_cast<size_t>(n)), want_db(static_cast<size_t>(c.C)), want_relu(want.size());
    cpu::bias_add<float>(x.data(), b.data(), want.data(), c.outer, c.C, c.inner);
    cpu::bias_add_relu<float>(x.data(), b.data(), want_relu.data(), c.outer, c.C, c.inner);
    cpu::bias_grad<float>(x.data(), want_db.data(), c.outer, c.C, c.inner);
    Tensor xd = to_gpu(x, {n}), bd = to_gpu(b, {c.C}), yd = gpu_empty({n}), dbd = gpu_empty({c.C});
    kc::bias_add<float>(xd.data<float>(), bd.data<float>(), yd.data<float>(), c.outer, c.C, c.inner, stream());
    const size_t ws = kc::bias_grad_workspace_bytes(c.outer, c.C, c.inner);
    Tensor wsd = gpu_empty({i64(std::max<size_t>(ws, 1))});  // floats: more bytes than ws asks for
    kc::bias_grad<float>(xd.data<float>(), dbd.data<float>(), c.outer, c.C, c.inner, ws ? wsd.raw() : nullptr, ws,
                         stream());
    const std::string what = std::to_string(c.outer) + "x" + std::to_string(c.C) + "x" + std::to_string(c.inner);
    expect_close(host(yd), want, 1e-5, "bias_add " + what);
    kc::bias_add_relu<float>(xd.data<float>(), bd.data<float>(), xd.data<float>(), c.outer, c.C, c.inner, stream());
    expect_close(host(xd), want_relu, 1e-5, "bias_add_relu in place " + what);  // x is overwritten last
    expect_close(host(dbd), want_db, 1e-5, "bias_grad " + what);
  }
}

TEST(CudaKernels, GemmAllTransposes) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  auto handle = static_cast<cublasHandle_t>(rf::cuda::cublas_handle(0));
  const i64 m = 37, n = 53, k = 129;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (i64 pad : {i64(0), i64(3)}) {  // pad: leading dimensions wider than the rows
        const i64 a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
        const i64 lda = a_cols + pad, ldb = b_cols + pad, ldc = n + pad;
        const auto a = random_vec(a_rows * lda, -1.f, 1.f, 80);
        const auto b = random_vec(b_rows * ldb, -1.f, 1.f, 81);
        const auto c0 = random_vec(m * ldc, -1.f, 1.f, 82);
        std::vector<float> want = c0;
        cpu::gemm<float>(ta, tb, m, n, k, 1.5f, a.data(), lda, b.data(), ldb, 0.5f, want.data(), ldc);
        Tensor ad = to_gpu(a, {a_rows * lda}), bd = to_gpu(b, {b_rows * ldb}), cd = to_gpu(c0, {m * ldc});
        kc::gemm<float>(ta, tb, m, n, k, 1.5f, ad.data<float>(), lda, bd.data<float>(), ldb, 0.5f, cd.data<float>(),
                        ldc, handle, stream());
        const std::string what = std::string("gemm ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0") +
                                 " pad=" + std::to_string(pad);
        expect_close(host(cd), want, 1e-4, what);
      }
}

TEST(CudaKernels, GemmEmptyInnerDimensionScalesC) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  auto handle = static_cast<cublasHandle_t>(rf::cuda::cublas_handle(0));
  const std::vector<float> c0 = {1, 2, 3, 4, 5, 6};
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Tensor cd = to_gpu(c0, {6});
      kc::gemm<float>(ta, tb, 2, 3, 0, 1.f, nullptr, ta ? 2 : 0, nullptr, tb ? 0 : 3, 0.5f, cd.data<float>(), 3, handle,
                      stream());
      EXPECT_EQ(host(cd), (std::vector<float>{0.5f, 1, 1.5f, 2, 2.5f, 3})) << "ta=" << ta << " tb=" << tb;
      Tensor nan = to_gpu(std::vector<float>(6, std::nanf("")), {6});
      kc::gemm<float>(ta, tb, 2, 3, 0, 1.f, nullptr, ta ? 2 : 0, nullptr, tb ? 0 : 3, 0.f, nan.data<float>(), 3,
                      handle, stream());
      EXPECT_EQ(host(nan), std::vector<float>(6, 0.f)) << "beta 0, ta=" << ta << " tb=" << tb;
    }
}

TEST(CudaKernels, GemmTf32IsOptIn) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  EXPECT_FALSE(rf::cuda::allow_tf32());
  struct Reset {
    ~Reset() { rf::cuda::set_allow_tf32(false); }
  } reset;
  auto handle = static_cast<cublasHandle_t>(rf::cuda::cublas_handle(0));
  const i64 m = 64, n = 64, k = 256;
  const auto a = random_vec(m * k, -1.f, 1.f, 90), b = random_vec(k * n, -1.f, 1.f, 91);
  std::vector<float> want(size_t(m * n));
  cpu::gemm<float>(false, false, m, n, k, 1.f, a.data(), k, b.data(), n, 0.f, want.data(), n);
  rf::cuda::set_allow_tf32(true);
  EXPECT_TRUE(rf::cuda::allow_tf32());
  Tensor ad = to_gpu(a, {m * k}), bd = to_gpu(b, {k * n}), cd = gpu_empty({m * n});
  kc::gemm<float>(false, false, m, n, k, 1.f, ad.data<float>(), k, bd.data<float>(), n, 0.f, cd.data<float>(), n,
                  handle, stream());
  expect_close(host(cd), want, 2e-2, "gemm with TF32");  // ~10 mantissa bits
}

TEST(CudaKernels, OptimizerUpdates) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  const i64 n = 5003;
  const auto w0 = random_vec(n, -1.f, 1.f, 100), g = random_vec(n, -1.f, 1.f, 101);
  const auto s0 = random_vec(n, -0.1f, 0.1f, 102), s1 = random_vec(n, 0.f, 0.01f, 103);  // m (any sign), v >= 0
  Tensor gd = to_gpu(g, {n});
  {
    std::vector<float> w = w0;
    cpu::sgd_update<float>(w.data(), g.data(), n, 0.1, 0.01);
    Tensor wd = to_gpu(w0, {n});
    kc::sgd_update<float>(wd.data<float>(), gd.data<float>(), n, 0.1, 0.01, stream());
    expect_close(host(wd), w, 1e-5, "sgd");
  }
  for (bool nesterov : {false, true}) {
    std::vector<float> w = w0, v = s0;
    cpu::momentum_update<float>(w.data(), v.data(), g.data(), n, 0.1, 0.9, 1e-4, nesterov);
    Tensor wd = to_gpu(w0, {n}), vd = to_gpu(s0, {n});
    kc::momentum_update<float>(wd.data<float>(), vd.data<float>(), gd.data<float>(), n, 0.1, 0.9, 1e-4, nesterov,
                               stream());
    expect_close(host(wd), w, 1e-5, nesterov ? "nesterov w" : "momentum w");
    expect_close(host(vd), v, 1e-5, nesterov ? "nesterov v" : "momentum v");
  }
  for (bool decoupled : {false, true}) {
    std::vector<float> w = w0, m = s0, v = s1;
    cpu::adam_update<float>(w.data(), m.data(), v.data(), g.data(), n, 1e-3, 0.9, 0.999, 1e-8, 0.01, decoupled, 3);
    Tensor wd = to_gpu(w0, {n}), md = to_gpu(s0, {n}), vd = to_gpu(s1, {n});
    kc::adam_update<float>(wd.data<float>(), md.data<float>(), vd.data<float>(), gd.data<float>(), n, 1e-3, 0.9,
                           0.999, 1e-8, 0.01, decoupled, 3, stream());
    const std::string what = decoupled ? "adamw " : "adam ";
    expect_close(host(wd), w, 1e-5, what + "w");
    expect_close(host(md), m, 1e-5, what + "m");
    expect_close(host(vd), v, 1e-5, what + "v");
  }
}

// ---- exec_cuda against exec_cpu on hand-built nodes ----

struct ExecCase {
  rf::Node node;
  std::vector<Tensor> inputs;  // on the host
  std::vector<Shape> out_shapes;
};

// Runs the node on both devices; Apply* nodes mutate their inputs, so inputs are compared too.
void expect_exec_matches(const ExecCase& c, double tol) {
  const Device gpu = Device::cuda(0);
  std::vector<Tensor> cin, gin, cout, gout;
  for (const Tensor& t : c.inputs) {
    cin.push_back(t.clone());
    // The optimizer's {lr, step} stays on the host, as the Session keeps it.
    const bool hyper = t.dtype() == rf::DType::F64 && &t == &c.inputs.back() &&
                       (c.node.op == rf::Op::ApplySGD || c.node.op == rf::Op::ApplyMomentum ||
                        c.node.op == rf::Op::ApplyAdam);
    gin.push_back(hyper ? t.clone() : t.to(gpu));
  }
  for (const Shape& s : c.out_shapes) {
    cout.emplace_back(s, rf::DType::F32);
    gout.emplace_back(s, rf::DType::F32, gpu);
  }
  std::vector<Tensor*> cin_p, gin_p, cout_p, gout_p;
  for (auto& t : cin) cin_p.push_back(&t);
  for (auto& t : gin) gin_p.push_back(&t);
  for (auto& t : cout) cout_p.push_back(&t);
  for (auto& t : gout) gout_p.push_back(&t);
  rf::exec_cpu(c.node, cin_p.data(), cout_p.data(), rf::ExecContext{Device::cpu(), rf::compute_stream(Device::cpu())});
  rf::exec_cuda(c.node, gin_p.data(), gout_p.data(), rf::ExecContext{gpu, rf::compute_stream(gpu)});
  for (size_t i = 0; i < cout.size(); ++i)
    expect_close(gout[i].to_vector<float>(), cout[i].to_vector<float>(), tol,
                 c.node.name + " output " + std::to_string(i));
  for (size_t i = 0; i < cin.size(); ++i)
    if (cin[i].dtype() == rf::DType::F32)
      expect_close(gin[i].to_vector<float>(), cin[i].to_vector<float>(), tol,
                   c.node.name + " input " + std::to_string(i));
}

rf::Node make_node(rf::Op op, const std::string& name) {
  rf::Node n;
  n.op = op;
  n.name = name;
  return n;
}

Tensor host_rand(const Shape& s, unsigned seed, float lo = -1.f, float hi = 1.f) {
  return Tensor::from_vector<float>(random_vec(s.numel(), lo, hi, seed), s);
}

TEST(CudaExec, MatchesCpu) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  {  // MatMul with both transposes: a^T [m,k] from [k,m], b^T [k,n] from [n,k]
    ExecCase c{make_node(rf::Op::MatMul, "matmul_tt"), {host_rand({20, 12}, 1), host_rand({7, 20}, 2)}, {{12, 7}}};
    c.node.attrs.transpose_a = c.node.attrs.transpose_b = true;
    expect_exec_matches(c, 1e-4);
  }
  {  // Add with numpy broadcasting over different ranks
    ExecCase c{make_node(rf::Op::Add, "add_bcast"), {host_rand({4, 3, 5}, 3), host_rand({5}, 4)}, {{4, 3, 5}}};
    expect_exec_matches(c, 1e-5);
  }
  {  // Mean over axes {0, -1} without keepdims
    ExecCase c{make_node(rf::Op::Mean, "mean"), {host_rand({6, 4, 9}, 5, 0.f, 1.f)}, {{4}}};
    c.node.attrs.axes = {0, -1};
    expect_exec_matches(c, 1e-5);
  }
  {  // SumLike: [8,3,5] down to [3,1]
    ExecCase c{make_node(rf::Op::SumLike, "sum_like"), {host_rand({8, 3, 5}, 6, 0.f, 1.f), host_rand({3, 1}, 7)},
               {{3, 1}}};
    expect_exec_matches(c, 1e-5);
  }
  {  // BroadcastLike: [3,1] up to [8,3,5], times 0.5
    ExecCase c{make_node(rf::Op::BroadcastLike, "bcast_like"), {host_rand({3, 1}, 8), host_rand({8, 3, 5}, 9)},
               {{8, 3, 5}}};
    c.node.attrs.scalar = 0.5;
    expect_exec_matches(c, 1e-5);
  }
  {  // BroadcastLike as Mean's gradient: [4] from a Mean over axes {0, 2} back to [6,4,9]
    ExecCase c{make_node(rf::Op::BroadcastLike, "mean_grad"), {host_rand({4}, 15), host_rand({6, 4, 9}, 16)},
               {{6, 4, 9}}};
    c.node.attrs.axes = {0, 2};
    c.node.attrs.average = true;
    expect_exec_matches(c, 1e-5);
  }
  {  // BiasAddGrad over NCHW
    ExecCase c{make_node(rf::Op::BiasAddGrad, "bias_grad"), {host_rand({4, 6, 3, 3}, 10, 0.f, 1.f)}, {{6}}};
    expect_exec_matches(c, 1e-5);
  }
  {  // AdamW step 2, hyperparameters on the host
    ExecCase c{make_node(rf::Op::ApplyAdam, "adamw"),
               {host_rand({300}, 11), host_rand({300}, 12, -0.1f, 0.1f), host_rand({300}, 13, 0.f, 0.01f),
                host_rand({300}, 14), Tensor::from_vector<double>({1e-3, 2.0}, {2})},
               {}};
    c.node.inputs.resize(c.inputs.size());  // exec_cpu finds the hyper input by the node's input count
    c.node.attrs.weight_decay = 0.01;
    c.node.attrs.decoupled = true;
    expect_exec_matches(c, 1e-5);
  }
}

// ---- runtime ----

TEST(CudaAllocator, ReusesFreedBlocks) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  rf::Allocator& alloc = rf::allocator_for(Device::cuda(0));
  for (size_t bytes : {size_t(1000), size_t(3) << 20}) {
    const size_t in_use = alloc.allocated_bytes();
    void* p = alloc.allocate(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_GE(alloc.allocated_bytes(), in_use + bytes);
    EXPECT_GE(alloc.reserved_bytes(), alloc.allocated_bytes());
    const size_t calls = alloc.system_allocations();
    alloc.deallocate(p, bytes);
    EXPECT_EQ(alloc.allocated_bytes(), in_use);
    void* q = alloc.allocate(bytes);
    EXPECT_EQ(alloc.system_allocations(), calls) << bytes << " bytes: a cached block should be reused";
    alloc.deallocate(q, bytes);
  }
  EXPECT_EQ(alloc.allocate(0), nullptr);
}

TEST(CudaAllocator, OutOfMemoryThrowsNamingSizeAndDevice) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  rf::Allocator& alloc = rf::allocator_for(Device::cuda(0));
  const size_t huge = size_t(1) << 50;  // 1 PiB
  try {
    alloc.allocate(huge);
    FAIL() << "expected rf::Error";
  } catch (const rf::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("out of memory"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cuda:0"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(huge)), std::string::npos) << msg;
  }
  // The failure must not poison later CUDA calls.
  Tensor t = host_rand({16}, 30).to(Device::cuda(0));
  EXPECT_EQ(t.to_vector<float>().size(), 16u);
}

TEST(CudaRuntime, CopiesAndZeroes) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  const auto v = random_vec(1000, -1.f, 1.f, 40);
  Tensor a = to_gpu(v, {1000});
  Tensor b = a.clone();  // device to device
  EXPECT_EQ(b.to_vector<float>(), v);
  b.zero();
  EXPECT_EQ(b.to_vector<float>(), std::vector<float>(1000, 0.f));
  EXPECT_EQ(a.to_vector<float>(), v);
}

TEST(CudaRuntime, EventsOrderStreamsAndHost) {
  if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason();
  const auto v = random_vec(1 << 20, -1.f, 1.f, 41);
  Tensor a = to_gpu(v, {1 << 20});
  rf::Event e(Device::cuda(0));
  const rf::Stream s = rf::compute_stream(Device::cuda(0));
  a.zero();  // queued on the compute stream
  e.record(s);
  e.wait(s);
  e.synchronize();
  EXPECT_TRUE(e.done());
  rf::Event moved = std::move(e);
  EXPECT_TRUE(moved.done());
  EXPECT_EQ(a.to_vector<float>(), std::vector<float>(1 << 20, 0.f));
}

TEST(CudaRuntime, NoDeviceMeansParseFails) {
  if (rf::cuda_device_count() != 0) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_FALSE(rf::cuda_unavailable_reason().empty());
  try {
    (void)Device::parse("cuda");
    FAIL() << "expected rf::Error";
  } catch (const rf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
}

}  // namespace

#else  // !RINGFLOW_CUDA

TEST(CudaBackend, AbsentWithoutCuda) {
  EXPECT_EQ(rf::cuda_device_count(), 0);
  try {
    (void)rf::Device::parse("cuda");
    FAIL() << "expected rf::Error";
  } catch (const rf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
}

#endif

// Events on the CPU: work is done when enqueued, so every operation is an immediate no-op.
TEST(CpuRuntime, EventsAreTrivial) {
  rf::Event e(rf::Device::cpu());
  const rf::Stream s = rf::compute_stream(rf::Device::cpu());
  e.record(s);
  e.wait(s);
  e.synchronize();
  EXPECT_TRUE(e.done());
  EXPECT_EQ(s.handle, nullptr);
}
