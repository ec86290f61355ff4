// Single-thread f32 gemm on the dense layers' products of the Fashion-MNIST MLP, at the batch of
// one replica (64) and of a two-rank shard (32): OpenBLAS's cblas_sgemm against ringflow's gemm
// (oneDNN's sgemm when built with RINGFLOW_DNNL). Medians of --iters calls, microseconds and
// GFLOP/s, and the ratio. Then, per rank of two (global batch 64), the weight-gradient product plus
// the momentum update of fc1 and fc2 done as now (each rank: its shard's gradient, K = 32, all
// rows, then an update averaging two gradients) against a sufficient-factor split (each rank: half
// of the rows from both shards' factors, K = 64, then an update of those rows): the compute side of
// the proposal in docs/ARCHITECTURE.md ("Next: sufficient factors"); the cross-core bytes are not
// in it. usage: gemm_micro [--iters N]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "kernels/cpu.h"
#include "runtime/device.h"

using namespace rf;

namespace {

template <class F> double median_us(int iters, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto s = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - s).count());
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 300;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--iters N]\n", argv[0]);
      return 2;
    }
  }
  if (iters < 1) {
    std::fprintf(stderr, "gemm_micro: --iters must be positive\n");
    return 2;
  }
  set_num_threads(1);
  struct Case {
    const char* what;
    bool ta, tb;
    int m, n, k;
  };
  std::printf("%-22s %5s %5s %5s %10s %8s %10s %8s %7s\n", "product", "m", "n", "k", "openblas_us", "GF/s",
              "ringflow_us", "GF/s", "ratio");
  for (int b : {64, 32}) {
    const Case cases[] = {{"fc1 forward", false, true, b, 256, 784},  {"fc1 weight grad", true, false, 256, 784, b},
                          {"fc2 forward", false, true, b, 256, 256},  {"fc2 input grad", false, false, b, 256, 256},
                          {"fc2 weight grad", true, false, 256, 256, b}};
    for (const Case& c : cases) {
      const int lda = c.ta ? c.m : c.k, ldb = c.tb ? c.k : c.n;
      std::vector<float> a(size_t(c.m) * c.k), bm(size_t(c.k) * c.n), y(size_t(c.m) * c.n);
      for (size_t i = 0; i < a.size(); ++i) a[i] = float(i % 17) * 0.01f;
      for (size_t i = 0; i < bm.size(); ++i) bm[i] = float(i % 13) * 0.02f;
      const double blas = median_us(iters, [&] {
        cblas_sgemm(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, c.m, c.n, c.k,
                    1.0f, a.data(), lda, bm.data(), ldb, 0.0f, y.data(), c.n);
      });
      const double ours = median_us(iters, [&] {
        kernels::cpu::gemm<float>(c.ta, c.tb, c.m, c.n, c.k, 1.0f, a.data(), lda, bm.data(), ldb, 0.0f, y.data(), c.n);
      });
      const double gf = 2.0 * c.m * c.n * c.k / 1e3;
      std::printf("%-16s b=%-3d %5d %5d %5d %10.1f %8.1f %10.1f %8.1f %6.2fx\n", c.what, b, c.m, c.n, c.k, blas,
                  gf / blas, ours, gf / ours, blas / ours);
    }
  }

  // Sufficient factors: dW = dY^T X with dY [B, out], X [B, in], W [out, in].
  std::printf("\nper rank of 2, global batch 64: weight gradient + momentum update (us, medians)\n");
  std::printf("%-8s %12s %12s %8s\n", "layer", "now", "factors", "saved");
  double total_now = 0, total_sfb = 0;
  for (const auto& [name, out, in] : {std::tuple{"fc1", 256, 784}, std::tuple{"fc2", 256, 256}}) {
    const int B = 64, half = out / 2;
    const size_t nw = size_t(out) * in;
    std::vector<float> dy(size_t(B) * out), x(size_t(B) * in), g(nw), peer(nw), w(nw, 0.1f), v(nw, 0.f);
    for (size_t i = 0; i < dy.size(); ++i) dy[i] = float(i % 11) * 0.001f;
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 7) * 0.01f;
    std::fill(peer.begin(), peer.end(), 0.001f);
    const float* srcs[2] = {g.data(), peer.data()};
    const double now = median_us(iters, [&] {
      kernels::cpu::gemm<float>(true, false, out, in, B / 2, 1.0f, dy.data(), out, x.data(), in, 0.0f, g.data(), in);
      kernels::cpu::momentum_update<float>(w.data(), v.data(), kernels::cpu::GradIn<float>(srcs, 2), i64(nw), 0.05,
                                           0.9, 0.0, false);
    });
    const double sfb = median_us(iters, [&] {
      kernels::cpu::gemm<float>(true, false, half, in, B, 0.5f, dy.data(), out, x.data(), in, 0.0f, g.data(), in);
      kernels::cpu::momentum_update<float>(w.data(), v.data(), g.data(), i64(half) * in, 0.05, 0.9, 0.0, false);
    });
    total_now += now;
    total_sfb += sfb;
    std::printf("%-8s %12.1f %12.1f %8.1f\n", name, now, sfb, now - sfb);
  }
  std::printf("%-8s %12.1f %12.1f %8.1f\n", "total", total_now, total_sfb, total_now - total_sfb);
  return 0;
}
