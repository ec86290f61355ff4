// The gradient compressors' CUDA kernels (kernels/compress_cuda.h) against the host code of
// collective/compress.cpp: bit-identical 16-bit casts, error feedback, top-k selection (ties, k = 1,
// k = n, sizes that are not multiples of 32), gather and sparse sum; Gram-Schmidt within 1e-5; and
// each compressor's whole step on the GPU against the host compressor at world size 1. Every test
// skips without a CUDA device.
#include <gtest/gtest.h>

#include "tests/gpu_compare.h"
#include "runtime/device.h"

#if RINGFLOW_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "collective/communicator.h"
#include "collective/compress.h"
#include "kernels/compress_cuda.h"
#include "kernels/cpu.h"
#include "kernels/random.h"
#include "runtime/cuda_backend.h"
#include "runtime/error.h"
#include "runtime/tensor.h"

namespace {

using rf::i64;
using rf::Shape;
using rf::Tensor;
namespace cpu = rf::kernels::cpu;
namespace kc = rf::kernels::cuda;
namespace compress = rf::collective::compress;

#define SKIP_WITHOUT_CUDA()                                                                              \
  do {                                                                                                   \
    if (rf::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << rf::cuda_unavailable_reason(); \
  } while (0)

cudaStream_t stream() { return static_cast<cudaStream_t>(rf::cuda::compute_stream(0)); }

// Device memory for n values of T; copies run on the compute stream, after the kernels queued there.
template <class T> class Dev {
 public:
  explicit Dev(size_t n) : n_(n) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * sizeof(T)));
  }
  explicit Dev(const std::vector<T>& v) : Dev(v.size()) { upload(v); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(p_); }
  T* get() const { return p_; }
  void upload(const std::vector<T>& v) const {
    if (!v.empty())
      CUDA_CHECK(cudaMemcpyAsync(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, stream()));
  }
  std::vector<T> download() const {
    std::vector<T> v(n_);
    if (n_) CUDA_CHECK(cudaMemcpyAsync(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost, stream()));
    CUDA_CHECK(cudaStreamSynchronize(stream()));
    return v;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// A cuBLAS handle of our own: default math (no TF32), whatever the runtime's options say.
struct Blas {
  cublasHandle_t h = nullptr;
  Blas() { CUBLAS_CHECK(cublasCreate(&h)); }
  ~Blas() { cublasDestroy(h); }
};

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
bool f16_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu); }
bool bf16_nan(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu); }

// Equal bits, element by element. nan_any: any NaN matches any NaN (the GPU's arithmetic returns
// the canonical NaN where x86 keeps the operand's payload).
template <class T, class IsNaN>
void expect_same_bits(const std::vector<T>& got, const std::vector<T>& want, const std::string& what, IsNaN is_nan) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) == 0 || (is_nan(got[i]) && is_nan(want[i]))) continue;
    if (bad++ == 0) first = i;
  }
  if (bad) {
    uint32_t g = 0, w = 0;
    std::memcpy(&g, &got[first], sizeof(T));
    std::memcpy(&w, &want[first], sizeof(T));
    ADD_FAILURE() << what << ": " << bad << " of " << got.size() << " differ; first at " << first << ": gpu 0x"
                  << std::hex << g << " vs host 0x" << w;
  }
}
void expect_same_floats(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  expect_same_bits(got, want, what, [](float) { return false; });
}

using rf::testing::expect_close;

std::vector<float> uniform(size_t n, float lo, float hi, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

// Inputs for the casts: the edge cases of both 16-bit formats, then random bits with exponents from
// below half's subnormals (2^-24) to past its overflow (2^16), both signs, a count that is not a
// multiple of the host's 8-wide F16C loop.
std::vector<float> cast_inputs() {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, inf, -inf, nan, -nan,
                          std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::min(), std::numeric_limits<float>::denorm_min(),
                          65504.0f, 65519.99f, 65520.0f, -65520.0f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-26f,
                          0x1p-14f, 0x1.ff8p-15f, 0x1.ffcp-15f,
                          1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f,              // half ties: to even (down, up)
                          from_bits(0x3f808000u), from_bits(0x3f818000u),    // bf16 ties: to even (down, up)
                          from_bits(0x7f7f8000u), from_bits(0x7f7fffffu)};  // bf16 overflow to inf
  std::mt19937 gen(17);
  for (int i = 0; i < 100003; ++i) {
    const uint32_t r = gen();
    const uint32_t exp = 100 + r % 48;  // 2^-27 .. 2^20
    v.push_back(from_bits((r & 0x80000000u) | (exp << 23) | (gen() & 0x7fffffu)));
  }
  return v;
}

TEST(CudaCompress, ScaleCastToHalfMatchesHost) {
  SKIP_WITHOUT_CUDA();
  const std::vector<float> x = cast_inputs();
  const i64 n = i64(x.size());
  Dev<float> dx(x);
  Dev<uint16_t> dy(x.size());
  for (const float s : {1.0f, 1.0f / 3.0f, 0.5f, 1.0f / 7.0f}) {
    std::vector<float> scaled(x.size());
    for (size_t i = 0; i < x.size(); ++i) scaled[i] = x[i] * s;  // the host compressor's pre-division
    std::vector<uint16_t> want(x.size());
    // NaN payloads: only scale 1 (no multiply on either side) keeps them bit for bit.
    const bool any_nan = s != 1.0f;
    cpu::f32_to_f16(scaled.data(), want.data(), n);
    kc::scale_cast_to_f16(dx.get(), s, dy.get(), n, stream());
    expect_same_bits(dy.download(), want, "f16, scale " + std::to_string(s),
                     [any_nan](uint16_t h) { return any_nan && f16_nan(h); });
    cpu::f32_to_bf16(scaled.data(), want.data(), n);
    kc::scale_cast_to_bf16(dx.get(), s, dy.get(), n, stream());
    expect_same_bits(dy.download(), want, "bf16, scale " + std::to_string(s),
                     [any_nan](uint16_t h) { return any_nan && bf16_nan(h); });
  }
}

TEST(CudaCompress, ScaleCastFromHalfMatchesHost) {
  SKIP_WITHOUT_CUDA();
  std::vector<uint16_t> x(1 << 16);  // every 16-bit pattern
  for (size_t i = 0; i < x.size(); ++i) x[i] = uint16_t(i);
  const i64 n = i64(x.size());
  Dev<uint16_t> dx(x);
  Dev<float> dy(x.size());
  for (const float s : {1.0f, 1.0f / 3.0f, 4.0f}) {
    const bool any_nan = s != 1.0f;
    auto is_nan = [any_nan](float f) { return any_nan && std::isnan(f); };
    std::vector<float> want(x.size());
    cpu::f16_to_f32(x.data(), want.data(), n);
    if (s != 1.0f)
      for (float& w : want) w *= s;
    kc::scale_cast_from_f16(dx.get(), s, dy.get(), n, stream());
    expect_same_bits(dy.download(), want, "from f16, scale " + std::to_string(s), is_nan);
    cpu::bf16_to_f32(x.data(), want.data(), n);
    if (s != 1.0f)
      for (float& w : want) w *= s;
    kc::scale_cast_from_bf16(dx.get(), s, dy.get(), n, stream());
    expect_same_bits(dy.download(), want, "from bf16, scale " + std::to_string(s), is_nan);
  }
}

TEST(CudaCompress, ErrorFeedbackMatchesHost) {
  SKIP_WITHOUT_CUDA();
  const size_t n = 10007;
  const std::vector<float> r0 = uniform(n, -3.f, 3.f, 1), u0 = uniform(n, -2.f, 2.f, 2), g = uniform(n, -1.f, 1.f, 3);
  Dev<float> dr(r0), du(u0), dg(g);
  std::vector<float> r = r0, u = u0;
  for (size_t i = 0; i < n; ++i) r[i] += g[i];
  kc::ef_accumulate(dr.get(), dg.get(), i64(n), stream());
  expect_same_floats(dr.download(), r, "r += g");

  // The host loop u = m u + g, compiled with -mfma, is one fused multiply-add.
  const float m = float(0.9);
  dr.upload(r0);
  r = r0;
  for (size_t i = 0; i < n; ++i) {
    u[i] = std::fma(m, u[i], g[i]);
    r[i] += u[i];
  }
  kc::ef_accumulate_momentum(dr.get(), du.get(), dg.get(), i64(n), m, stream());
  expect_same_floats(du.download(), u, "u = m u + g");
  expect_same_floats(dr.download(), r, "r += u");

  dr.upload(r0);
  r = r0;
  for (size_t i = 0; i < n; ++i) r[i] -= g[i];
  kc::ef_subtract(dr.get(), dg.get(), i64(n), stream());
  expect_same_floats(dr.download(), r, "e -= g");
}

// compress::topk_indices and the kernel on x, k; returns the GPU's indices.
std::vector<uint32_t> check_topk(const std::vector<float>& x, i64 k, const std::string& what) {
  const i64 n = i64(x.size());
  const std::vector<uint32_t> want = compress::topk_indices(x.data(), x.size(), size_t(k));
  const size_t ws = kc::topk_workspace_bytes(n, k);
  Dev<float> dx(x);
  Dev<unsigned char> work(ws);
  Dev<uint32_t> idx(size_t(std::max<i64>(k, 1)));
  kc::topk_indices(dx.get(), n, k, idx.get(), work.get(), ws, stream());
  std::vector<uint32_t> got = idx.download();
  got.resize(size_t(std::min(k, n)));
  EXPECT_EQ(got, want) << what << " (n " << n << ", k " << k << ")";
  return got;
}

TEST(CudaCompress, TopkIndicesMatchHost) {
  SKIP_WITHOUT_CUDA();
  std::mt19937 gen(23);
  for (const i64 n : {1, 2, 31, 32, 33, 255, 1000, 4097, 65537, 300001}) {
    // Continuous values (few ties); a few magnitudes with both signs and both zeros (ties
    // everywhere, -0 against +0); one magnitude everywhere (the lowest k indices win).
    std::vector<float> cont = uniform(size_t(n), -1.f, 1.f, unsigned(n));
    std::vector<float> ties(static_cast<size_t>(n)), flat(static_cast<size_t>(n));
    for (i64 i = 0; i < n; ++i) {
      const float mag = float(gen() % 6) * 0.25f;
      ties[size_t(i)] = gen() & 1 ? -mag : mag;
      flat[size_t(i)] = i % 3 ? 0.5f : -0.5f;
    }
    for (const i64 k : {i64(1), i64(2), i64(7), (n + 99) / 100, n / 3, n / 2, n - 1, n, n + 5}) {
      if (k < 1) continue;
      check_topk(cont, k, "continuous");
      check_topk(ties, k, "ties");
      check_topk(flat, k, "flat");
    }
  }
}

TEST(CudaCompress, TopkSpecialValues) {
  SKIP_WITHOUT_CUDA();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // -0 and +0 are the same magnitude: the lower index wins, as on the host.
  EXPECT_EQ(check_topk({-0.0f, 0.0f, -0.0f, 0.0f}, 2, "zeros"), (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(check_topk({1.0f, -inf, 3.0f, inf, -2.0f}, 3, "infinities"), (std::vector<uint32_t>{1, 2, 3}));
  // NaN (no host reference: its order is unspecified there): above +inf, NaNs by index.
  std::vector<float> x = uniform(100, -1.f, 1.f, 5);
  x[70] = nan;
  x[10] = -nan;
  x[40] = -inf;
  x[90] = from_bits(0x7fa00001u);  // a signalling NaN
  const i64 n = i64(x.size());
  const size_t ws = std::max(kc::topk_workspace_bytes(n, 3), kc::topk_workspace_bytes(n, 4));
  Dev<float> dx(x);
  Dev<unsigned char> work(ws);
  Dev<uint32_t> idx(4);
  kc::topk_indices(dx.get(), n, 3, idx.get(), work.get(), ws, stream());
  std::vector<uint32_t> got = idx.download();
  EXPECT_EQ(std::vector<uint32_t>(got.begin(), got.begin() + 3), (std::vector<uint32_t>{10, 70, 90}));
  kc::topk_indices(dx.get(), n, 4, idx.get(), work.get(), ws, stream());
  EXPECT_EQ(idx.download(), (std::vector<uint32_t>{10, 40, 70, 90}));
  // A workspace too small is refused before anything runs.
  EXPECT_THROW(kc::topk_indices(dx.get(), n, 4, idx.get(), work.get(), ws - 1, stream()), std::invalid_argument);
  EXPECT_THROW(kc::topk_workspace_bytes(-1, 1), std::invalid_argument);
}

TEST(CudaCompress, TopkGatherMatchesHost) {
  SKIP_WITHOUT_CUDA();
  const size_t n = 5003, k = 61, at = 17;  // the tensor's pairs start at pair `at` of the send buffer
  const std::vector<float> residual = uniform(n, -1.f, 1.f, 8), velocity = uniform(n, -1.f, 1.f, 9);
  const std::vector<uint32_t> idx = compress::topk_indices(residual.data(), n, k);
  for (const bool momentum : {false, true}) {
    std::vector<float> r = residual, u = velocity, send(2 * (at + k + 3), -7.0f);
    std::vector<float> want = send;
    for (size_t j = 0; j < k; ++j) {  // compress.cpp's TopKCompressor::reduce
      const uint32_t i = idx[j];
      std::memcpy(&want[2 * (at + j)], &i, sizeof i);
      want[2 * (at + j) + 1] = r[i];
      r[i] = 0;
      if (momentum) u[i] = 0;
    }
    Dev<float> dr(residual), du(velocity), dsend(send);
    Dev<uint32_t> didx(idx);
    kc::topk_gather(didx.get(), i64(k), dr.get(), momentum ? du.get() : nullptr, dsend.get() + 2 * at, stream());
    expect_same_floats(dsend.download(), want, "pairs");
    expect_same_floats(dr.download(), r, "residual");
    expect_same_floats(du.download(), u, "velocity");
  }
}

TEST(CudaCompress, SparseDecompressMatchesHost) {
  SKIP_WITHOUT_CUDA();
  std::mt19937 gen(31);
  for (const int world : {1, 2, 3, 5}) {
    // Two tensors in the bucket (pairs at 0 and k0); the indices of the ranks overlap heavily and the
    // values span magnitudes, so the order of the additions shows in the bits.
    const size_t n0 = 500, k0 = 120, n1 = 77, k1 = 77, pairs = k0 + k1;
    std::vector<float> recv(2 * pairs * size_t(world));
    for (int q = 0; q < world; ++q) {
      std::vector<float> key0 = uniform(n0, -1.f, 1.f, gen()), key1 = uniform(n1, -1.f, 1.f, gen());
      const std::vector<uint32_t> i0 = compress::topk_indices(key0.data(), n0, k0);
      const std::vector<uint32_t> i1 = compress::topk_indices(key1.data(), n1, k1);
      float* r = &recv[2 * pairs * size_t(q)];
      for (size_t j = 0; j < k0 + k1; ++j) {
        const uint32_t i = j < k0 ? i0[j] : i1[j - k0];
        std::memcpy(&r[2 * j], &i, sizeof i);
        r[2 * j + 1] = std::ldexp(float(gen() % 2001) - 1000.0f, int(gen() % 40) - 20) / 3.0f;
      }
    }
    Dev<float> drecv(recv);
    const size_t ns[2] = {n0, n1}, ks[2] = {k0, k1}, ats[2] = {0, k0};
    for (int t = 0; t < 2; ++t) {
      std::vector<float> want(ns[t], 0.0f);  // compress.cpp's decompression of tensor t
      for (int q = 0; q < world; ++q) {
        const float* p = &recv[2 * (size_t(q) * pairs + ats[t])];
        for (size_t j = 0; j < ks[t]; ++j) {
          uint32_t i;
          std::memcpy(&i, &p[2 * j], sizeof i);
          want[i] += p[2 * j + 1];
        }
      }
      const float inv = 1.0f / float(world);
      for (float& w : want) w *= inv;
      Dev<float> dg(std::vector<float>(ns[t], 123.0f));  // garbage the decompression must clear
      kc::topk_decompress(drecv.get() + 2 * ats[t], i64(2 * pairs), world, i64(ks[t]), dg.get(), i64(ns[t]),
                          stream());
      expect_same_floats(dg.download(), want, "world " + std::to_string(world) + ", tensor " + std::to_string(t));
    }
  }
}

TEST(CudaCompress, OrthonormalizeMatchesHost) {
  SKIP_WITHOUT_CUDA();
  struct Case {
    size_t n, r;
    int kind;  // 0 random, 1 dependent columns and a zero column, 2 tiny scale
  };
  const Case cases[] = {{1, 1, 0},   {7, 3, 0},    {64, 4, 0},  {1000, 8, 0}, {4097, 32, 0}, {33, 32, 0},
                        {3, 5, 0},   {100, 6, 1},  {257, 4, 2}, {1, 4, 0}};
  for (const Case& c : cases) {
    std::vector<float> p = uniform(c.n * c.r, -1.f, 1.f, unsigned(c.n * 131 + c.r));
    if (c.kind == 1) {
      for (size_t row = 0; row < c.n; ++row) {
        p[row * c.r + 2] = p[row * c.r + 0] - 2.0f * p[row * c.r + 1];  // in the span of 0 and 1
        p[row * c.r + 3] = 0.0f;                                         // zero
        p[row * c.r + 5] = 3.0f * p[row * c.r + 4];                       // parallel to 4
      }
    } else if (c.kind == 2) {
      for (float& v : p) v *= 1e-30f;
    }
    std::vector<float> want = p;
    compress::orthonormalize_columns(want.data(), c.n, c.r);
    Dev<float> dp(p);
    kc::orthonormalize_columns(dp.get(), i64(c.n), i64(c.r), stream());
    const std::vector<float> got = dp.download();
    expect_close(got, want, 1e-5, "n " + std::to_string(c.n) + ", r " + std::to_string(c.r));
    if (c.kind == 1)  // the dropped columns are exactly zero on both
      for (size_t row = 0; row < c.n; ++row)
        for (const size_t j : {size_t(2), size_t(3), size_t(5)}) {
          EXPECT_EQ(got[row * c.r + j], 0.0f) << "column " << j;
          EXPECT_EQ(want[row * c.r + j], 0.0f) << "column " << j;
        }
  }
  // Batched: matrices of different heights back to back, one block each.
  const size_t r = 4, rows[] = {5, 300, 1, 64};
  std::vector<kc::OrthoMatrix> mats;
  size_t total = 0;
  for (const size_t h : rows) {
    mats.push_back({i64(total), i64(h)});
    total += h * r;
  }
  std::vector<float> p = uniform(total, -1.f, 1.f, 99), want = p;
  for (const kc::OrthoMatrix& m : mats) compress::orthonormalize_columns(&want[size_t(m.offset)], size_t(m.rows), r);
  Dev<float> dp(p);
  Dev<kc::OrthoMatrix> dm(mats);
  kc::orthonormalize_columns_batched(dp.get(), dm.get(), i64(mats.size()), i64(r), stream());
  expect_close(dp.download(), want, 1e-5, "batched");
}

TEST(CudaCompress, PowerSGDGemmsMatchHost) {
  SKIP_WITHOUT_CUDA();
  Blas blas;
  const i64 n = 67, m = 45, r = 5;
  const std::vector<float> mat = uniform(size_t(n * m), -1.f, 1.f, 41), q = uniform(size_t(m * r), -1.f, 1.f, 42),
                           p = uniform(size_t(n * r), -1.f, 1.f, 43);
  Dev<float> dm(mat), dq(q), dp(p), out(size_t(n * m));
  std::vector<float> want(size_t(n * r));
  cpu::gemm<float>(false, false, n, r, m, 1.0f, mat.data(), m, q.data(), r, 0.0f, want.data(), r);
  Dev<float> dout_p(size_t(n * r));
  kc::powersgd_project(dm.get(), dq.get(), dout_p.get(), n, m, r, blas.h, stream());
  expect_close(dout_p.download(), want, 1e-5, "P = M Q");
  want.assign(size_t(m * r), 0.0f);
  cpu::gemm<float>(true, false, m, r, n, 1.0f, mat.data(), m, p.data(), r, 0.0f, want.data(), r);
  Dev<float> dout_q(size_t(m * r));
  kc::powersgd_back_project(dm.get(), dp.get(), dout_q.get(), n, m, r, blas.h, stream());
  expect_close(dout_q.download(), want, 1e-5, "Q = M^T P");
  want.assign(size_t(n * m), 0.0f);
  cpu::gemm<float>(false, true, n, m, r, 1.0f, p.data(), r, q.data(), r, 0.0f, want.data(), m);
  kc::powersgd_approximate(dp.get(), dq.get(), out.get(), n, m, r, blas.h, stream());
  expect_close(out.download(), want, 1e-5, "G = P Q^T");
}

// ---- whole compressor steps against the host compressors at world size 1 (allreduce and allgather
// are copies there, so the GPU pipeline skips them) ----

std::vector<float> host_vec(const Tensor& t) { return t.to_vector<float>(); }
void set(const Tensor& t, const std::vector<float>& v) {
  std::memcpy(t.data<float>(), v.data(), v.size() * sizeof(float));
}

rf::collective::CompressSpec spec_of(const std::string& s) {
  rf::collective::CompressSpec c = rf::collective::parse_compress(s);
  c.min_elements = 0;
  c.seed = 5;
  return c;
}

TEST(CudaCompress, HalfStepMatchesHostCompressor) {
  SKIP_WITHOUT_CUDA();
  auto comm = rf::collective::make_communicator("ring");
  ASSERT_EQ(comm->size(), 1);
  for (const std::string kind : {"fp16", "bf16"}) {
    const std::vector<float> g = uniform(4099, -70000.f, 70000.f, 3);
    Tensor t = Tensor::zeros(Shape{4099}, rf::DType::F32);
    set(t, g);
    auto c = rf::collective::make_bucket_compressor(spec_of(kind), {t});
    c->reduce(*comm, 0);
    Dev<float> dg(g);
    Dev<uint16_t> bits16(g.size());
    const float inv = 1.0f / float(comm->size());
    if (kind == "fp16") {
      kc::scale_cast_to_f16(dg.get(), inv, bits16.get(), i64(g.size()), stream());
      kc::scale_cast_from_f16(bits16.get(), 1.0f, dg.get(), i64(g.size()), stream());
    } else {
      kc::scale_cast_to_bf16(dg.get(), inv, bits16.get(), i64(g.size()), stream());
      kc::scale_cast_from_bf16(bits16.get(), 1.0f, dg.get(), i64(g.size()), stream());
    }
    expect_same_floats(dg.download(), host_vec(t), kind);
  }
}

TEST(CudaCompress, TopkStepMatchesHostCompressor) {
  SKIP_WITHOUT_CUDA();
  auto comm = rf::collective::make_communicator("ring");
  ASSERT_EQ(comm->size(), 1);
  for (const double momentum : {0.0, 0.9}) {
    rf::collective::CompressSpec spec = spec_of("topk:0.05");
    spec.momentum = momentum;
    const std::vector<Shape> shapes = {Shape{1000}, Shape{37, 29}, Shape{3}};
    std::vector<Tensor> grads;
    for (const Shape& s : shapes) grads.push_back(Tensor::zeros(s, rf::DType::F32));
    auto c = rf::collective::make_bucket_compressor(spec, grads);
    // The GPU side: per tensor its residual, velocity and k; pairs back to back as on the host.
    struct Side {
      i64 n, k, at;
      std::unique_ptr<Dev<float>> g, residual, velocity;
      std::unique_ptr<Dev<uint32_t>> idx;
    };
    std::vector<Side> sides;
    i64 pairs = 0;
    for (const Tensor& t : grads) {
      const i64 n = t.numel(), k = std::max<i64>(1, i64(std::ceil(spec.ratio * double(n))));
      Side s{n, k, pairs, std::make_unique<Dev<float>>(size_t(n)),
             std::make_unique<Dev<float>>(std::vector<float>(size_t(n), 0.0f)),
             std::make_unique<Dev<float>>(std::vector<float>(size_t(n), 0.0f)),
             std::make_unique<Dev<uint32_t>>(size_t(k))};
      pairs += k;
      sides.push_back(std::move(s));
    }
    Dev<float> send(size_t(2 * pairs));
    for (int step = 0; step < 4; ++step) {
      for (size_t t = 0; t < grads.size(); ++t) {
        const std::vector<float> g = uniform(size_t(grads[t].numel()), -1.f, 1.f, unsigned(100 * step + t));
        set(grads[t], g);
        sides[t].g->upload(g);
      }
      c->reduce(*comm, step);
      for (Side& s : sides) {
        if (momentum > 0)
          kc::ef_accumulate_momentum(s.residual->get(), s.velocity->get(), s.g->get(), s.n, float(momentum), stream());
        else
          kc::ef_accumulate(s.residual->get(), s.g->get(), s.n, stream());
        const size_t ws = kc::topk_workspace_bytes(s.n, s.k);
        Dev<unsigned char> work(ws);
        kc::topk_indices(s.residual->get(), s.n, s.k, s.idx->get(), work.get(), ws, stream());
        kc::topk_gather(s.idx->get(), s.k, s.residual->get(), momentum > 0 ? s.velocity->get() : nullptr,
                        send.get() + 2 * s.at, stream());
        CUDA_CHECK(cudaStreamSynchronize(stream()));  // before `work` is freed
      }
      for (Side& s : sides)
        kc::topk_decompress(send.get() + 2 * s.at, 2 * pairs, comm->size(), s.k, s.g->get(), s.n, stream());
      const std::vector<std::vector<float>> res = c->residuals();
      for (size_t t = 0; t < grads.size(); ++t) {
        const std::string what = "momentum " + std::to_string(momentum) + ", step " + std::to_string(step) +
                                 ", tensor " + std::to_string(t);
        expect_same_floats(sides[t].g->download(), host_vec(grads[t]), what + ": gradient");
        expect_same_floats(sides[t].residual->download(), res[t], what + ": residual");
      }
    }
  }
}

TEST(CudaCompress, PowerSGDStepMatchesHostCompressor) {
  SKIP_WITHOUT_CUDA();
  auto comm = rf::collective::make_communicator("ring");
  ASSERT_EQ(comm->size(), 1);
  Blas blas;
  const rf::collective::CompressSpec spec = spec_of("powersgd:4");
  const i64 r = spec.rank;
  const std::vector<Shape> shapes = {Shape{64, 48}, Shape{30, 20, 2}};
  std::vector<Tensor> grads;
  for (const Shape& s : shapes) grads.push_back(Tensor::zeros(s, rf::DType::F32));
  auto c = rf::collective::make_bucket_compressor(spec, grads);
  // The host's initial Q: every matrix's Q back to back, standard normals from the shared seed.
  struct Mat {
    i64 n, m, p, q;
    std::unique_ptr<Dev<float>> g, err;
  };
  std::vector<Mat> mats;
  std::vector<kc::OrthoMatrix> ortho;
  i64 p_elems = 0, q_elems = 0;
  for (const Shape& s : shapes) {
    const i64 n = s[0], m = s.numel() / n;
    ASSERT_LT(r * (n + m), n * m) << "the host would not compress this matrix";
    mats.push_back(Mat{n, m, p_elems, q_elems, std::make_unique<Dev<float>>(size_t(n * m)),
                       std::make_unique<Dev<float>>(std::vector<float>(size_t(n * m), 0.0f))});
    ortho.push_back({p_elems, n});
    p_elems += n * r;
    q_elems += m * r;
  }
  std::vector<float> q0(static_cast<size_t>(q_elems));
  const uint64_t key = rf::kernels::rng::stream_key(spec.seed, 0x9051d);
  for (size_t i = 0; i < q0.size(); ++i) q0[i] = float(rf::kernels::rng::normal(key, i));
  Dev<float> dp(static_cast<size_t>(p_elems)), dq(q0);
  Dev<kc::OrthoMatrix> dortho(ortho);
  for (int step = 0; step < 3; ++step) {
    for (size_t t = 0; t < grads.size(); ++t) {
      const std::vector<float> g = uniform(size_t(grads[t].numel()), -1.f, 1.f, unsigned(7 * step + t + 1));
      set(grads[t], g);
      mats[t].g->upload(g);
    }
    c->reduce(*comm, step);
    for (Mat& a : mats) {  // M = G + E, P = M Q
      kc::ef_accumulate(a.err->get(), a.g->get(), a.n * a.m, stream());
      kc::powersgd_project(a.err->get(), dq.get() + a.q, dp.get() + a.p, a.n, a.m, r, blas.h, stream());
    }
    kc::orthonormalize_columns_batched(dp.get(), dortho.get(), i64(ortho.size()), r, stream());
    for (Mat& a : mats)  // Q = M^T P
      kc::powersgd_back_project(a.err->get(), dp.get() + a.p, dq.get() + a.q, a.n, a.m, r, blas.h, stream());
    for (Mat& a : mats) {  // G = P Q^T, E = M - G
      kc::powersgd_approximate(dp.get() + a.p, dq.get() + a.q, a.g->get(), a.n, a.m, r, blas.h, stream());
      kc::ef_subtract(a.err->get(), a.g->get(), a.n * a.m, stream());
    }
    const std::vector<std::vector<float>> res = c->residuals();
    for (size_t t = 0; t < mats.size(); ++t) {
      const std::string what = "step " + std::to_string(step) + ", matrix " + std::to_string(t);
      expect_close(mats[t].g->download(), host_vec(grads[t]), 1e-4, what + ": gradient");
      expect_close(mats[t].err->download(), res[t], 1e-4, what + ": error feedback");
    }
  }
}

}  // namespace

#else  // !RINGFLOW_CUDA

TEST(CudaCompress, NeedsCudaBuild) {
  GTEST_SKIP() << "built without CUDA (RINGFLOW_CUDA off): no CUDA compressor kernels";
}

#endif
