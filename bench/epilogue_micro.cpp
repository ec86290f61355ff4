// cuBLASLt's bias/ReLU epilogue matmul (kernels::cuda::GemmEpilogue, the fused dense step) against
// cuBLAS gemm then ringflow's bias(+ReLU) kernel, on the dense layers of the Fashion-MNIST MLP and
// CNN at batch 64 and 512, f32 with TF32 off: device microseconds per layer, issued eagerly and
// replayed from a CUDA graph, and the kernels each path puts in a graph. Why: on an H200 the fused
// step won eagerly and lost under a CUDA graph (docs/ARCHITECTURE.md, "Epilogue fusion"); this
// tells whether cuBLASLt's kernels are slower or more numerous at these shapes. Each row first
// checks the two paths agree (max relative difference, "wrong" counts elements past 1e-4).
// usage: epilogue_micro [--iters N] [--reps R]   (N calls per timing, median of R timings)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/error.h"
#if RINGFLOW_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda.h"
#include "runtime/cuda_backend.h"
#endif

namespace {

struct Layer {
  const char* name;
  long long n, k;  // out features, in features: C[m, n] = X[m, k] W[n, k]^T + b[n]
  bool relu;
};

#if RINGFLOW_CUDA
using namespace rf;
namespace kc = rf::kernels::cuda;

// A device buffer of n floats, filled from a fixed pattern in [-1, 1).
struct Buf {
  float* p = nullptr;
  explicit Buf(size_t n, unsigned seed = 0) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), n * sizeof(float)));
    std::vector<float> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = float(int((i * 2654435761u + seed * 40503u) % 2001u) - 1000) / 1000.f;
    CUDA_CHECK(cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  }
  ~Buf() { (void)cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Microseconds per call of `call`, issued `iters` times on `st` per timing (eager), or captured
// once as `iters` calls and replayed (graph); *kernels receives the graph's kernel nodes per call.
template <class F>
double time_us(F&& call, cudaStream_t st, int iters, int reps, bool graph, double* kernels) {
  cudaEvent_t t0, t1;
  CUDA_CHECK(cudaEventCreate(&t0));
  CUDA_CHECK(cudaEventCreate(&t1));
  void* exec = nullptr;  // the Session's capture path (runtime/cuda_backend.h), kernels counted
  if (graph) {
    cuda::capture_begin(0, st);
    try {
      for (int i = 0; i < iters; ++i) call();
    } catch (...) {
      cuda::capture_abort(0, st);
      throw;
    }
    size_t k = 0;
    exec = cuda::capture_end(0, st, &k);
    *kernels = double(k) / iters;
    cuda::graph_launch(exec, st);  // warm
  } else {
    for (int i = 0; i < iters; ++i) call();  // warm
  }
  std::vector<double> us;
  for (int r = 0; r < reps; ++r) {
    CUDA_CHECK(cudaEventRecord(t0, st));
    if (graph)
      cuda::graph_launch(exec, st);
    else
      for (int i = 0; i < iters; ++i) call();
    CUDA_CHECK(cudaEventRecord(t1, st));
    CUDA_CHECK(cudaEventSynchronize(t1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
    us.push_back(1000.0 * ms / iters);
  }
  cuda::graph_destroy(exec);
  CUDA_CHECK(cudaEventDestroy(t0));
  CUDA_CHECK(cudaEventDestroy(t1));
  return median(us);
}

int run(int iters, int reps) {
  const Layer layers[] = {{"mlp.fc1", 256, 784, true}, {"mlp.fc2", 256, 256, true}, {"mlp.fc3", 10, 256, false},
                          {"cnn.fc1", 128, 3136, true}, {"cnn.fc2", 10, 128, false}};
  const auto st = static_cast<cudaStream_t>(cuda::compute_stream(0));
  auto blas = static_cast<cublasHandle_t>(cuda::cublas_handle(0));
  auto lt_handle = static_cast<cublasLtHandle_t>(cuda::cublaslt_handle(0));
  void* ws = nullptr;
  CUDA_CHECK(cudaMalloc(&ws, kc::kGemmEpilogueWorkspace));
  std::printf("epilogue_micro: f32, TF32 off, %d calls a timing, median of %d; us per call\n", iters, reps);
  std::printf("%-8s %5s %5s %5s %4s %3s %9s %9s %9s %9s %6s %6s %9s %5s\n", "layer", "m", "n", "k", "relu", "lt",
              "eager_lt", "eager_gb", "graph_lt", "graph_gb", "k_lt", "k_gb", "max_rel", "wrong");
  int bad = 0;
  for (long long m : {64LL, 512LL}) {
    for (const Layer& L : layers) {
      Buf x(size_t(m * L.k), 1), w(size_t(L.n * L.k), 2), b(size_t(L.n), 3), c_lt(size_t(m * L.n)),
          c_gb(size_t(m * L.n));
      kc::GemmEpilogue lt;
      auto call_lt = [&] {
        if (!lt.run<float>(false, true, m, L.n, L.k, x.p, L.k, w.p, L.k, b.p, L.relu, c_lt.p, L.n, false, lt_handle,
                           ws, kc::kGemmEpilogueWorkspace, st))
          fail("cuBLASLt offered no algorithm for ", L.name, " at m=", m);
      };
      auto call_gb = [&] {
        kc::gemm<float>(false, true, m, L.n, L.k, 1.f, x.p, L.k, w.p, L.k, 0.f, c_gb.p, L.n, blas, st);
        if (L.relu)
          kc::bias_add_relu<float>(c_gb.p, b.p, c_gb.p, m, L.n, 1, st);
        else
          kc::bias_add<float>(c_gb.p, b.p, c_gb.p, m, L.n, 1, st);
      };
      // Validate before timing.
      bool taken = lt.run<float>(false, true, m, L.n, L.k, x.p, L.k, w.p, L.k, b.p, L.relu, c_lt.p, L.n, false,
                                 lt_handle, ws, kc::kGemmEpilogueWorkspace, st);
      call_gb();
      CUDA_CHECK(cudaStreamSynchronize(st));
      double worst = 0;
      long long wrong = 0;
      if (taken) {
        std::vector<float> a(size_t(m * L.n)), g(size_t(m * L.n));
        CUDA_CHECK(cudaMemcpy(a.data(), c_lt.p, a.size() * sizeof(float), cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(g.data(), c_gb.p, g.size() * sizeof(float), cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < a.size(); ++i) {
          const double d = std::fabs(double(a[i]) - g[i]) / std::max(1.0, std::fabs(double(g[i])));
          worst = std::max(worst, d);
          wrong += !(d <= 1e-4);
        }
      }
      bad += wrong > 0;
      double k_lt = 0, k_gb = 0, unused = 0;
      const double e_lt = taken ? time_us(call_lt, st, iters, reps, false, &unused) : NAN;
      const double e_gb = time_us(call_gb, st, iters, reps, false, &unused);
      const double g_lt = taken ? time_us(call_lt, st, iters, reps, true, &k_lt) : NAN;
      const double g_gb = time_us(call_gb, st, iters, reps, true, &k_gb);
      std::printf("%-8s %5lld %5lld %5lld %4s %3s %9.2f %9.2f %9.2f %9.2f %6.1f %6.1f %9.2e %5lld\n", L.name, m, L.n,
                  L.k, L.relu ? "yes" : "no", taken ? "yes" : "no", e_lt, e_gb, g_lt, g_gb, k_lt, k_gb, worst, wrong);
      std::printf(
          "{\"bench\":\"epilogue_micro\",\"layer\":\"%s\",\"m\":%lld,\"n\":%lld,\"k\":%lld,\"relu\":%s,"
          "\"cublaslt_taken\":%s,\"eager_lt_us\":%.3f,\"eager_gemm_bias_us\":%.3f,\"graph_lt_us\":%.3f,"
          "\"graph_gemm_bias_us\":%.3f,\"graph_lt_kernels\":%.1f,\"graph_gemm_bias_kernels\":%.1f,\"wrong\":%lld}\n",
          L.name, m, L.n, L.k, L.relu ? "true" : "false", taken ? "true" : "false", taken ? e_lt : -1.0, e_gb,
          taken ? g_lt : -1.0, g_gb, k_lt, k_gb, wrong);
    }
  }
  CUDA_CHECK(cudaFree(ws));
  return bad ? 1 : 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  int iters = 200, reps = 7;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--iters" || a == "--reps") && i + 1 < argc) {
      const int v = std::atoi(argv[++i]);
      if (v < 1 || v > 100000) {
        std::fprintf(stderr, "epilogue_micro: error: %s must be in [1, 100000]\n", a.c_str());
        return 2;
      }
      (a == "--iters" ? iters : reps) = v;
    } else {
      std::fprintf(stderr, "epilogue_micro: error: unknown argument '%s' (usage: epilogue_micro [--iters N] [--reps R])\n",
                   a.c_str());
      return 2;
    }
  }
#if RINGFLOW_CUDA
  if (rf::cuda_device_count() == 0) {
    std::fprintf(stderr, "epilogue_micro: error: no CUDA device (%s)\n", rf::cuda_unavailable_reason().c_str());
    return 1;
  }
  try {
    return run(iters, reps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "epilogue_micro: error: %s\n", e.what());
    return 1;
  }
#else
  (void)iters;
  (void)reps;
  std::fprintf(stderr, "epilogue_micro: error: this build has no CUDA backend (RINGFLOW_CUDA off)\n");
  return 1;
#endif
}
