// Epilogue fusion (FusedChain, runtime/exec.h): MatMul/Conv2D -> BiasAdd [-> Relu] chains run
// as one step. On the CPU a fused step is bitwise the unfused nodes; chains whose intermediate
// values are read elsewhere stay unfused; hooks and the timeline still see every node. With a
// GPU: cuBLASLt's bias/ReLU epilogue (kernels::cuda::GemmEpilogue) and fused training steps
// against the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "autodiff/gradients.h"
#include "autodiff/optimizer.h"
#include "runtime/device.h"
#include "runtime/ops.h"
#include "runtime/session.h"
#include "runtime/timeline.h"
#include "tests/gpu_compare.h"

#if RINGFLOW_CUDA
#include <random>

#include "kernels/cpu.h"
#include "kernels/cuda.h"
#include "runtime/cuda_backend.h"
#endif

namespace {

using namespace rf;

// conv(1->4, 3x3, pad 1) + bias -> relu -> dense(4*6*6 -> 16) + bias -> relu -> dense(16 -> 5)
// + bias -> softmax cross-entropy, trained with momentum: three chains, two with a ReLU.
struct Net {
  Graph g{11};
  Value images, labels, loss, logits;
  TrainOp train;
  std::vector<Session::Feed> feeds;

  explicit Net(DType dt) {
    images = g.placeholder("images", dt, Shape{-1, 1, 6, 6});
    labels = g.placeholder("labels", DType::I32, Shape{-1});
    auto param = [&](const std::string& name, const Shape& s) {
      return g.variable(name, s, dt, Initializer::uniform(-0.5, 0.5));
    };
    Value h = ops::relu(ops::bias_add(ops::conv2d(images, param("conv.w", {4, 1, 3, 3}), 1, 1), param("conv.b", {4})));
    h = ops::relu(ops::bias_add(ops::matmul(ops::flatten(h), param("fc1.w", {16, 144}), false, true),
                                param("fc1.b", {16})));
    logits = ops::bias_add(ops::matmul(h, param("fc2.w", {5, 16}), false, true), param("fc2.b", {5}));
    loss = ops::mean(ops::sparse_softmax_cross_entropy(logits, labels));
    train = minimize(loss, OptimizerConfig{});
    const int n = 8;
    std::vector<double> px(size_t(n * 36));
    for (size_t i = 0; i < px.size(); ++i) px[i] = double((i * 37) % 23) / 11.0 - 1.0;
    std::vector<int32_t> lab(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) lab[size_t(i)] = (i * 3) % 5;
    Tensor x = dt == DType::F64 ? Tensor::from_vector<double>(px, Shape{n, 1, 6, 6})
                                : Tensor::from_vector<float>(std::vector<float>(px.begin(), px.end()), Shape{n, 1, 6, 6});
    feeds = {{images, x}, {labels, Tensor::from_vector<int32_t>(lab, Shape{n})}};
  }

  // Three training steps on `device`; returns each step's loss, then every Variable (host copies).
  std::vector<Tensor> run(Device device, bool fuse, size_t* chains = nullptr) {
    Session s(g, device);
    s.set_fuse_epilogues(fuse);
    s.run({}, {}, g.initializers());
    std::vector<Session::Feed> f;
    for (const auto& [v, t] : feeds) f.push_back({v, t.to(device)});
    f.push_back({train.hyper, Tensor::from_vector<double>({0.1, 1.0}, Shape{2})});
    std::vector<Tensor> out;
    for (int step = 0; step < 3; ++step) out.push_back(s.run({loss}, f, train.updates)[0].to(Device::cpu()));
    for (int id : train.vars) out.push_back(s.variable(id).to(Device::cpu()));
    if (chains) *chains = s.chains_fused();
    return out;
  }
};

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// A host F32 or F64 tensor's values as doubles.
[[maybe_unused]] std::vector<double> values(const Tensor& t) {  // used by the CUDA cases only
  if (t.dtype() == DType::F64) return t.to_vector<double>();
  const std::vector<float> f = t.to_vector<float>();
  return {f.begin(), f.end()};
}

TEST(Fusion, ChainsAreBitwiseTheUnfusedNodes) {
  for (DType dt : {DType::F32, DType::F64}) {
    Net net(dt);
    size_t fused_chains = 0, plain_chains = 0;
    const auto fused = net.run(Device::cpu(), true, &fused_chains);
    const auto plain = net.run(Device::cpu(), false, &plain_chains);
    EXPECT_EQ(fused_chains, 3u) << dtype_name(dt);  // conv+bias+relu, fc1+bias+relu, fc2+bias
    EXPECT_EQ(plain_chains, 0u);
    ASSERT_EQ(fused.size(), plain.size());
    for (size_t i = 0; i < fused.size(); ++i) EXPECT_TRUE(same_bits(fused[i], plain[i])) << dtype_name(dt) << " " << i;
    EXPECT_LT(fused[2].item(), fused[0].item()) << "three steps lower the loss";
  }
}

// y = relu(bias_add(x w^T, b)) over a [4, 3] input, with whatever else reads the chain's values.
struct Dense {
  Graph g{5};
  Value x = g.placeholder("x", DType::F64, Shape{-1, 3});
  Value w = g.variable("w", Shape{2, 3}, DType::F64, Initializer::uniform(-1, 1));
  Value b = g.variable("b", Shape{2}, DType::F64, Initializer::uniform(-1, 1));
  Value mm = ops::matmul(x, w, false, true);
  Value z = ops::bias_add(mm, b);
  Value y = ops::relu(z);
  Tensor in = Tensor::from_vector<double>({1, -2, 3, 0.5, 0.25, -1, 2, 2, 2, -3, 1, 0}, Shape{4, 3});

  // Fetches with fusion on and off: the chains fused, and whether every fetch matched bitwise.
  size_t check(const std::vector<Value>& fetches, const std::function<void(Session&)>& setup = {}) {
    Session on(g), off(g);
    off.set_fuse_epilogues(false);
    std::vector<std::vector<Tensor>> got;
    for (Session* s : {&on, &off}) {
      s->run({}, {}, g.initializers());
      if (setup) setup(*s);
      got.emplace_back();
      for (const Tensor& t : s->run(fetches, {{x, in}})) got.back().push_back(t.clone());
    }
    for (size_t i = 0; i < fetches.size(); ++i) EXPECT_TRUE(same_bits(got[0][i], got[1][i])) << "fetch " << i;
    return on.chains_fused();
  }
};

TEST(Fusion, IntermediatesReadElsewhereStayUnfused) {
  {
    Dense d;
    EXPECT_EQ(d.check({d.y}), 1u);  // the whole chain
  }
  {
    Dense d;
    EXPECT_EQ(d.check({d.y, d.mm}), 0u);  // the product is fetched
  }
  {
    Dense d;
    EXPECT_EQ(d.check({d.y, d.z}), 1u);  // the BiasAdd is fetched: MatMul+BiasAdd only
  }
  {
    Dense d;
    const Value twice = ops::mul_scalar(d.z, 2.0);  // a second reader of the BiasAdd's output
    EXPECT_EQ(d.check({d.y, twice}), 1u);
  }
  {
    Dense d;
    const Value other = ops::neg(d.mm);  // a second reader of the product
    EXPECT_EQ(d.check({d.y, other}), 0u);
  }
  {
    Dense d;  // the product bound to a buffer of the caller's
    Tensor buf = Tensor::zeros(Shape{4, 2}, DType::F64);
    EXPECT_EQ(d.check({d.y}, [&](Session& s) { s.bind_output(d.mm, buf); }), 0u);
    EXPECT_NE(buf.to_vector<double>(), std::vector<double>(8, 0.0)) << "the bound product was written";
  }
}

TEST(Fusion, HooksAndTimelineSeeEveryNodeOfAChain) {
  Dense d;
  Session s(d.g);
  s.run({}, {}, d.g.initializers());
  std::set<int> done;
  Timeline tl;
  RunOptions o;
  o.on_node_done = [&](int id) { done.insert(id); };
  o.timeline = &tl;
  s.run({d.y}, {{d.x, d.in}}, {}, &o);
  EXPECT_EQ(s.chains_fused(), 1u);
  for (Value v : {d.mm, d.z, d.y}) EXPECT_TRUE(done.count(v.node)) << d.g.node(v).name;
  EXPECT_NE(tl.json().find("MatMul+BiasAdd+Relu"), std::string::npos) << tl.json();
}

#if RINGFLOW_CUDA

namespace kc = kernels::cuda;

std::vector<float> random_vec(i64 n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(gen);
  return v;
}

// C = [relu](op(A) op(B) + bias) by GemmEpilogue against the CPU's gemm + bias (+ ReLU), for T
// (TF32 for float when tf32). In float without TF32 the tight geometries of the MLP's first layer
// (64x256x784, every dimension a multiple of 16) must run on cuBLASLt; the rest (odd or padded
// leading dimensions, TF32, double) are cuBLASLt's choice, compared whenever they run.
template <class T> void check_gemm_epilogue(bool tf32, double tol) {
  auto lt = static_cast<cublasLtHandle_t>(cuda::cublaslt_handle(0));
  auto st = static_cast<cudaStream_t>(cuda::compute_stream(0));
  void* ws = cuda::workspace(0, kc::kGemmEpilogueWorkspace);
  struct Case {
    i64 m, n, k;
  };
  int ran_count = 0;
  // The MLP's first layer at batch 64, odd sizes, a 10-wide head; leading dimensions padded or not.
  for (const Case& c : {Case{64, 256, 784}, Case{37, 53, 129}, Case{5, 10, 256}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (bool relu : {false, true})
          for (i64 pad : {i64(0), i64(4)}) {
            const i64 a_rows = ta ? c.k : c.m, a_cols = ta ? c.m : c.k, b_rows = tb ? c.n : c.k,
                      b_cols = tb ? c.k : c.n;
            const i64 lda = a_cols + pad, ldb = b_cols + pad, ldc = c.n + pad;
            auto as_t = [](const std::vector<float>& v) { return std::vector<T>(v.begin(), v.end()); };
            const auto a = as_t(random_vec(a_rows * lda, 1)), b = as_t(random_vec(b_rows * ldb, 2)),
                       bias = as_t(random_vec(c.n, 3));
            std::vector<T> want(size_t(c.m * ldc), T(7));
            kernels::cpu::gemm<T>(ta, tb, c.m, c.n, c.k, T(1), a.data(), lda, b.data(), ldb, T(0), want.data(), ldc);
            for (i64 r = 0; r < c.m; ++r)
              for (i64 j = 0; j < c.n; ++j) {
                T& v = want[size_t(r * ldc + j)];
                v += bias[size_t(j)];
                if (relu) v = v > 0 ? v : 0;
              }
            Tensor ad = Tensor::from_vector<T>(a, Shape{a_rows * lda}).to(Device::cuda(0));
            Tensor bd = Tensor::from_vector<T>(b, Shape{b_rows * ldb}).to(Device::cuda(0));
            Tensor biasd = Tensor::from_vector<T>(bias, Shape{c.n}).to(Device::cuda(0));
            Tensor cd =
                Tensor::from_vector<T>(std::vector<T>(size_t(c.m * ldc), T(7)), Shape{c.m * ldc}).to(Device::cuda(0));
            kc::GemmEpilogue epi;
            auto run = [&] {
              return epi.run<T>(ta, tb, c.m, c.n, c.k, ad.data<T>(), lda, bd.data<T>(), ldb, biasd.data<T>(), relu,
                                cd.data<T>(), ldc, tf32, lt, ws, kc::kGemmEpilogueWorkspace, st);
            };
            const std::string what = std::string(sizeof(T) == 4 ? (tf32 ? "tf32 " : "f32 ") : "f64 ") +
                                     std::to_string(c.m) + "x" + std::to_string(c.n) + "x" + std::to_string(c.k) +
                                     " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) +
                                     " relu=" + std::to_string(relu) + " pad=" + std::to_string(pad);
            const bool ran = run();
            if (sizeof(T) == 4 && !tf32 && pad == 0 && c.m == 64) {
              EXPECT_TRUE(ran) << what << ": cuBLASLt refused the MLP's first layer";
            }
            ran_count += ran;
            if (!ran) {
              EXPECT_EQ(cd.to_vector<T>(), std::vector<T>(size_t(c.m * ldc), T(7))) << what << ": wrote when refusing";
              continue;
            }
            // The padding columns are C's own: BLAS writes the n columns of each row only.
            const std::vector<T> got = cd.to_vector<T>();
            double worst = 0;
            size_t at = 0;
            for (size_t i = 0; i < got.size(); ++i) {
              const double err = std::fabs(double(got[i]) - double(want[i])) / std::max(1.0, std::fabs(double(want[i])));
              if (!(err <= worst)) worst = err, at = i;
            }
            EXPECT_LE(worst, tol) << what << ": worst at " << at << ": gpu " << got[at] << " vs cpu " << want[at];
            run();  // the same geometry again: the kept algorithm, no second heuristic
            EXPECT_EQ(epi.plans_made(), 1) << what;
          }
  std::printf("[ cuBLASLt ] %s%s: %d of 48 geometries ran fused\n", sizeof(T) == 4 ? "f32" : "f64",
              tf32 ? " tf32" : "", ran_count);
}

TEST(FusionCuda, GemmEpilogueMatchesCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
  check_gemm_epilogue<float>(false, 1e-4);
  check_gemm_epilogue<float>(true, 2e-2);  // TF32 keeps ~10 mantissa bits
  check_gemm_epilogue<double>(false, 1e-10);
}

TEST(FusionCuda, GemmEpilogueLeavesWhatItCannotTake) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
  auto lt = static_cast<cublasLtHandle_t>(cuda::cublaslt_handle(0));
  auto st = static_cast<cudaStream_t>(cuda::compute_stream(0));
  void* ws = cuda::workspace(0, kc::kGemmEpilogueWorkspace);
  Tensor ad = Tensor::from_vector<float>(random_vec(64 * 32, 4), Shape{64 * 32}).to(Device::cuda(0));
  Tensor bd = Tensor::from_vector<float>(random_vec(32 * 17, 5), Shape{32 * 17}).to(Device::cuda(0));
  Tensor cd = Tensor::zeros(Shape{64 * 16}, DType::F32, Device::cuda(0));
  kc::GemmEpilogue epi;
  // A bias that is not 16-byte aligned, then a one-wide product: refused, nothing queued.
  EXPECT_FALSE(epi.run<float>(false, false, 64, 16, 32, ad.data<float>(), 32, bd.data<float>(), 17,
                              bd.data<float>() + 1, true, cd.data<float>(), 16, false, lt, ws,
                              kc::kGemmEpilogueWorkspace, st));
  EXPECT_FALSE(epi.run<float>(false, false, 64, 1, 32, ad.data<float>(), 32, bd.data<float>(), 1, bd.data<float>(),
                              true, cd.data<float>(), 1, false, lt, ws, kc::kGemmEpilogueWorkspace, st));
  EXPECT_EQ(cd.to_vector<float>(), std::vector<float>(64 * 16, 0.f));
}

TEST(FusionCuda, TrainingStepsMatchCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
  for (DType dt : {DType::F32, DType::F64}) {
    Net net(dt);
    size_t chains = 0;
    const int64_t launches = kc::gemm_epilogue_launches();
    const auto gpu = net.run(Device::cuda(0), true, &chains);
    // The dense layers ran as cuBLASLt epilogue matmuls: fc1 (8x16x144) at least in f32, in each
    // of the 3 steps; fc2's 5-wide rows (20-byte leading dimension) and f64 are cuBLASLt's choice.
    const int64_t ran = kc::gemm_epilogue_launches() - launches;
    if (dt == DType::F32) {
      EXPECT_GE(ran, 3) << "fc1 x 3 steps";
    }
    std::printf("[ cuBLASLt ] %s training: %lld epilogue matmuls\n", dtype_name(dt), static_cast<long long>(ran));
    const auto gpu_plain = net.run(Device::cuda(0), false);
    const auto cpu = net.run(Device::cpu(), true);
    EXPECT_EQ(chains, 3u);
    const double tol = dt == DType::F32 ? 1e-4 : 1e-10;
    for (size_t i = 0; i < cpu.size(); ++i) {
      const std::vector<double> want = values(cpu[i]);
      for (const auto* run : {&gpu, &gpu_plain}) {
        const std::vector<double> got = values((*run)[i]);
        ASSERT_EQ(got.size(), want.size());
        double worst = 0;
        for (size_t j = 0; j < got.size(); ++j)
          worst = std::max(worst, std::fabs(got[j] - want[j]) / std::max(1.0, std::fabs(want[j])));
        EXPECT_LE(worst, tol) << dtype_name(dt) << (run == &gpu ? " fused" : " unfused") << ", output " << i;
      }
    }
  }
}

#endif  // RINGFLOW_CUDA

}  // namespace
