// Single-thread timings of the conv kernels for the two conv layers of the Fashion-MNIST CNN at
// batch 64 (forward, grad_input, grad_filter), to compare with PyTorch's per-op times.
#include <cblas.h>
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "kernels/cpu.h"

using namespace rf;
using namespace rf::kernels::cpu;

namespace {

double now_ms(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

struct Timing {
  double wall, cpu;  // medians in ms
};

// Medians of wall time and of process CPU time: the machine is shared, and CPU time leaves out
// the time this process spent descheduled, so it is the steadier measure of the kernel itself.
template <class F>
Timing time_op(F&& f, int reps) {
  for (int i = 0; i < 3; ++i) f();  // warm caches and grow the scratch buffers
  std::vector<double> wall, cpu;
  for (int i = 0; i < reps; ++i) {
    const double w0 = now_ms(CLOCK_MONOTONIC), c0 = now_ms(CLOCK_PROCESS_CPUTIME_ID);
    f();
    cpu.push_back(now_ms(CLOCK_PROCESS_CPUTIME_ID) - c0);
    wall.push_back(now_ms(CLOCK_MONOTONIC) - w0);
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  return {wall[wall.size() / 2], cpu[cpu.size() / 2]};
}

void fill(std::vector<float>& v, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, 1.f);
  for (auto& e : v) e = d(rng);
}

}  // namespace

int main(int argc, char** argv) {
  // Usage: conv_micro [reps=30] [threads=1]. With threads > 1 the CPU-time column sums over
  // threads; read the wall column then.
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 30;
  const int threads = argc > 2 ? std::max(1, std::atoi(argv[2])) : 1;
  openblas_set_num_threads(threads);
  omp_set_num_threads(threads);
  // OpenBLAS's worker threads busy-wait for a while after library start-up; that would be
  // counted in this process's CPU time, so let them go to sleep first.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  struct Layer {
    const char* name;
    ConvGeom g;
  };
  const Layer layers[] = {
      {"conv1 5x5 1->32 28x28", {64, 1, 28, 28, 32, 5, 5, 1, 1, 2, 2, 28, 28}},
      {"conv2 5x5 32->64 14x14", {64, 32, 14, 14, 64, 5, 5, 1, 1, 2, 2, 14, 14}},
  };
  std::mt19937 rng(42);
  std::printf("batch 64, %d thread(s), median of %d; ms wall (ms CPU time) [GFLOPS from CPU time]\n", threads, reps);
  std::printf("%-24s %24s %24s %24s %24s %24s\n", "layer", "forward", "grad_input", "grad_filter",
              "fwd, then bias+relu", "fwd with bias+relu");
  for (const Layer& l : layers) {
    const ConvGeom& g = l.g;
    std::vector<float> x(g.N * g.C * g.H * g.W), w(g.K * g.C * g.R * g.S), y(g.N * g.K * g.P * g.Q);
    std::vector<float> dy(y.size()), dx(x.size()), dw(w.size()), b(size_t(g.K));
    fill(x, rng), fill(w, rng), fill(dy, rng), fill(b, rng);
    const i64 PQ = g.P * g.Q;
    // The last two: a Conv2D -> BiasAdd -> Relu chain as a second pass over y, and as the
    // Session's fused step runs it (conv2d_bias: the epilogue inside the kernel's output writes).
    const Timing t[5] = {
        time_op([&] { conv2d(x.data(), w.data(), y.data(), g); }, reps),
        time_op([&] { conv2d_grad_input(dy.data(), w.data(), dx.data(), g); }, reps),
        time_op([&] { conv2d_grad_filter(x.data(), dy.data(), dw.data(), g); }, reps),
        time_op([&] {
          conv2d(x.data(), w.data(), y.data(), g);
          bias_add_relu(y.data(), b.data(), y.data(), g.N, g.K, PQ);
        }, reps),
        time_op([&] { conv2d_bias(x.data(), w.data(), b.data(), true, y.data(), g); }, reps),
    };
    const double gflop = 2.0 * g.N * g.K * g.P * g.Q * g.C * g.R * g.S / 1e9;
    std::printf("%-24s", l.name);
    for (const Timing& e : t) std::printf("  %7.3f (%7.3f) [%4.0f]", e.wall, e.cpu, gflop / e.cpu * 1e3);
    std::printf("\n");
  }
  return 0;
}
