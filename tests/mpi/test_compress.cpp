// Gradient compressors under mpiexec (world sizes 2 and 3; 1 works too), on the ring (shared
// memory) and mpi backends: 16-bit round trip and allreduce within 16-bit tolerance (also where
// the 16-bit sum would overflow without the pre-division), PowerSGD exact on matrices of rank
// <= r, error feedback conserving the sum of the gradients, top-k choosing exactly the k largest
// magnitudes (ties: lower index). Only EXPECTs (see mpi_main.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "collective/communicator.h"
#include "collective/compress.h"
#include "collective/mpi_env.h"
#include "kernels/cpu.h"
#include "kernels/random.h"
#include "runtime/error.h"
#include "tests/mpi/mpi_main.h"

namespace rf::collective {
namespace {

std::vector<std::unique_ptr<Communicator>>& comms() {
  static std::vector<std::unique_ptr<Communicator>> c;
  return c;
}

// Deterministic pseudo-random values in [-1, 1): the same on every rank for the same arguments,
// so each rank can compute every other rank's gradients.
float value(uint64_t seed, uint64_t i) {
  return float(kernels::rng::uniform(kernels::rng::stream_key(seed, 7), i, -1.0, 1.0));
}
uint64_t grad_seed(int rank, int step, int tensor) { return uint64_t(1000 * rank + 10 * step + tensor + 1); }

// A bucket of gradient tensors (separate allocations are fine: compressors take views).
std::vector<Tensor> make_grads(const std::vector<Shape>& shapes) {
  std::vector<Tensor> g;
  for (const Shape& s : shapes) g.push_back(Tensor::zeros(s, DType::F32));
  return g;
}
void fill(const Tensor& t, uint64_t seed, float scale = 1.0f) {
  float* p = t.data<float>();
  for (i64 i = 0; i < t.numel(); ++i) p[i] = scale * value(seed, uint64_t(i));
}

CompressSpec spec(const std::string& s, size_t min_elements = 0) {
  CompressSpec c = parse_compress(s);
  c.min_elements = min_elements;
  c.seed = 5;
  return c;
}

double max_rel(const std::vector<double>& want, const float* got) {
  double scale = 0, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::fabs(want[i]));
    err = std::max(err, std::fabs(want[i] - double(got[i])));
  }
  return err / std::max(scale, 1e-30);
}

TEST(Compress, ParsesSpecsAndRejectsBadOnes) {
  EXPECT_EQ(parse_compress("none").kind, CompressSpec::Kind::None);
  EXPECT_EQ(parse_compress("bf16").kind, CompressSpec::Kind::BF16);
  EXPECT_EQ(parse_compress("powersgd:4").rank, 4);
  EXPECT_EQ(parse_compress("topk:0.01").ratio, 0.01);
  EXPECT_EQ(parse_compress("topk:0.01").str(), "topk:0.01");
  for (const char* bad : {"", "fp8", "fp16:2", "powersgd", "powersgd:0", "powersgd:2.5", "powersgd:x", "topk:0",
                          "topk:1.5", "topk:", "topk:0.1x"})
    EXPECT_THROW(parse_compress(bad), Error) << bad;
  EXPECT_EQ(ring_allreduce_bytes(1000, 1), 0u);
  EXPECT_EQ(ring_allreduce_bytes(1000, 2), 1000u);
  EXPECT_EQ(ring_allreduce_bytes(900, 3), 1200u);
  EXPECT_EQ(ring_allgather_bytes(100, 3), 200u);
}

TEST(Compress, TopKPicksTheLargestMagnitudesLowerIndexOnTies) {
  const std::vector<float> x = {3, -5, 5, 1, 5, -3, 0, -5};
  EXPECT_EQ(compress::topk_indices(x.data(), x.size(), 2), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(compress::topk_indices(x.data(), x.size(), 4), (std::vector<uint32_t>{1, 2, 4, 7}));
  EXPECT_EQ(compress::topk_indices(x.data(), x.size(), 5), (std::vector<uint32_t>{0, 1, 2, 4, 7}));
  EXPECT_EQ(compress::topk_indices(x.data(), x.size(), 99).size(), x.size());
  // Against a full sort, on values with many ties.
  std::vector<float> y(5000);
  for (size_t i = 0; i < y.size(); ++i) y[i] = std::round(20 * value(3, i)) / 4;
  for (size_t k : {size_t(1), size_t(50), size_t(777), size_t(4999)}) {
    std::vector<uint32_t> order(y.size());
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return std::fabs(y[a]) > std::fabs(y[b]); });
    order.resize(k);
    std::sort(order.begin(), order.end());
    EXPECT_EQ(compress::topk_indices(y.data(), y.size(), k), order) << "k = " << k;
  }
}

TEST(Compress, OrthonormalizeGivesOrthonormalColumns) {
  const size_t n = 200, r = 4;
  std::vector<float> p(n * r);
  for (size_t i = 0; i < p.size(); ++i) p[i] = value(11, i);
  compress::orthonormalize_columns(p.data(), n, r);
  for (size_t a = 0; a < r; ++a)
    for (size_t b = 0; b < r; ++b) {
      double dot = 0;
      for (size_t i = 0; i < n; ++i) dot += double(p[i * r + a]) * p[i * r + b];
      EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-5) << a << "," << b;
    }
}

TEST(Compress, HalfRoundTripAndAllreduceWithin16BitTolerance) {
  for (auto& comm : comms()) {
    const int world = comm->size(), rank = comm->rank();
    for (const char* kind : {"fp16", "bf16"}) {
      const double tol = std::string(kind) == "fp16" ? 1.0 / 1024 : 1.0 / 128;  // a few units of the last place
      // Round trip of the casts alone.
      std::vector<float> x(4096), back(x.size());
      std::vector<uint16_t> h(x.size());
      for (size_t i = 0; i < x.size(); ++i) x[i] = 100.0f * value(21, i);
      if (std::string(kind) == "fp16") {
        kernels::cpu::f32_to_f16(x.data(), h.data(), i64(x.size()));
        kernels::cpu::f16_to_f32(h.data(), back.data(), i64(x.size()));
      } else {
        kernels::cpu::f32_to_bf16(x.data(), h.data(), i64(x.size()));
        kernels::cpu::bf16_to_f32(h.data(), back.data(), i64(x.size()));
      }
      for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(back[i], x[i], std::fabs(x[i]) * tol / 2) << kind << " " << i;

      // The compressed allreduce; scale 60000 would overflow an fp16 sum without the pre-division.
      for (float scale : {1.0f, 60000.0f}) {
        std::vector<Tensor> g = make_grads({Shape{3000}, Shape{7}});  // the 7 stay f32 (min_elements)
        for (size_t t = 0; t < g.size(); ++t) fill(g[t], grad_seed(rank, 0, int(t)), scale);
        auto c = make_bucket_compressor(spec(kind, 64), g);
        const size_t bytes = c->reduce(*comm, 0);
        EXPECT_EQ(bytes, ring_allreduce_bytes(3000 * 2, world) + ring_allreduce_bytes(7 * 4, world));
        for (size_t t = 0; t < g.size(); ++t) {
          std::vector<double> want(size_t(g[t].numel()), 0.0);
          for (int q = 0; q < world; ++q)
            for (size_t i = 0; i < want.size(); ++i) want[i] += scale * value(grad_seed(q, 0, int(t)), i) / world;
          const double err = max_rel(want, g[t].data<float>());
          EXPECT_LE(err, t == 0 ? tol : 1e-6) << comm->name() << " " << kind << " tensor " << t << " scale " << scale;
        }
      }
    }
  }
}

// G_rank = A C_rank with A of rank `true_rank` <= r: the average has rank <= r, and PowerSGD
// reproduces it exactly (to rounding) in one step from any start.
TEST(Compress, PowerSGDIsExactOnMatricesOfRankAtMostR) {
  for (auto& comm : comms()) {
    const int world = comm->size(), rank = comm->rank();
    const size_t n = 60, m = 45, r = 4;
    for (size_t true_rank : {r, r - 1, size_t(1)}) {
      auto low_rank = [&](int q) {
        std::vector<double> a(n * m, 0.0);
        for (size_t i = 0; i < n; ++i)
          for (size_t j = 0; j < m; ++j)
            for (size_t l = 0; l < true_rank; ++l)
              a[i * m + j] += double(value(77, i * r + l)) * value(grad_seed(q, 0, int(l)), j);
        return a;
      };
      std::vector<Tensor> g = make_grads({Shape{i64(n), 5, 9}});  // a conv-like 3-d gradient, n x 45
      const std::vector<double> mine = low_rank(rank);
      for (size_t i = 0; i < mine.size(); ++i) g[0].data<float>()[i] = float(mine[i]);
      std::vector<double> want(n * m, 0.0);
      for (int q = 0; q < world; ++q) {
        const std::vector<double> a = low_rank(q);
        for (size_t i = 0; i < want.size(); ++i) want[i] += a[i] / world;
      }
      auto c = make_bucket_compressor(spec("powersgd:4"), g);
      const size_t bytes = c->reduce(*comm, 0);
      EXPECT_EQ(bytes, ring_allreduce_bytes((n + m) * r * 4, world));
      EXPECT_LE(max_rel(want, g[0].data<float>()), 1e-4) << comm->name() << " true rank " << true_rank;
    }
  }
}

// Over several steps: world * sum_t(output_t) + sum_ranks(residual) = sum_ranks sum_t(gradient_t),
// i.e. what was sent plus what is still owed is everything the ranks produced.
void expect_error_feedback_conserves(Communicator& comm, const std::string& kind, int steps) {
  const int world = comm.size(), rank = comm.rank();
  const std::vector<Shape> shapes = {Shape{40, 30}, Shape{30}, Shape{25, 2, 3, 3}};
  std::vector<Tensor> g = make_grads(shapes);
  auto c = make_bucket_compressor(spec(kind, 100), g);
  std::vector<std::vector<double>> out_sum(g.size()), grad_sum(g.size());
  for (size_t t = 0; t < g.size(); ++t) {
    out_sum[t].assign(size_t(g[t].numel()), 0.0);
    grad_sum[t].assign(size_t(g[t].numel()), 0.0);
  }
  for (int s = 0; s < steps; ++s) {
    for (size_t t = 0; t < g.size(); ++t) {
      fill(g[t], grad_seed(rank, s, int(t)));
      for (int q = 0; q < world; ++q)
        for (size_t i = 0; i < grad_sum[t].size(); ++i) grad_sum[t][i] += value(grad_seed(q, s, int(t)), i);
    }
    c->reduce(comm, s);
    for (size_t t = 0; t < g.size(); ++t)
      for (size_t i = 0; i < out_sum[t].size(); ++i) out_sum[t][i] += double(world) * g[t].data<float>()[i];
  }
  const std::vector<std::vector<float>> res = c->residuals();
  ASSERT_EQ(res.size(), g.size());
  EXPECT_TRUE(res[1].empty()) << "the 30-element bias goes uncompressed";
  for (size_t t = 0; t < g.size(); ++t) {
    std::vector<double> owed(out_sum[t].size(), 0.0);
    if (!res[t].empty()) {
      for (size_t i = 0; i < owed.size(); ++i) owed[i] = res[t][i];
      comm.allreduce(owed.data(), owed.size(), DType::F64, ReduceOp::Sum);
    }
    double err = 0, scale = 0;
    for (size_t i = 0; i < owed.size(); ++i) {
      err = std::max(err, std::fabs(out_sum[t][i] + owed[i] - grad_sum[t][i]));
      scale = std::max(scale, std::fabs(grad_sum[t][i]));
    }
    EXPECT_LE(err, 1e-5 * scale * steps) << comm.name() << " " << kind << " tensor " << t;
  }
}

TEST(Compress, PowerSGDErrorFeedbackConservesTheSum) {
  for (auto& comm : comms()) expect_error_feedback_conserves(*comm, "powersgd:2", 5);
}

TEST(Compress, TopKErrorFeedbackConservesTheSum) {
  for (auto& comm : comms()) expect_error_feedback_conserves(*comm, "topk:0.05", 5);
}

// Step 0 (no residual yet): the output is the rank-ordered sparse sum of every rank's k largest.
TEST(Compress, TopKSendsExactlyTheKLargestOfEachRank) {
  for (auto& comm : comms()) {
    const int world = comm->size(), rank = comm->rank();
    const size_t n = 1000, k = 10;  // topk:0.01
    std::vector<Tensor> g = make_grads({Shape{i64(n)}});
    fill(g[0], grad_seed(rank, 0, 0));
    auto c = make_bucket_compressor(spec("topk:0.01", 100), g);
    EXPECT_EQ(c->reduce(*comm, 0), ring_allgather_bytes(k * 8, world));
    std::vector<float> want(n, 0.0f);
    for (int q = 0; q < world; ++q) {
      std::vector<float> x(n);
      for (size_t i = 0; i < n; ++i) x[i] = value(grad_seed(q, 0, 0), i);
      std::vector<uint32_t> order(n);
      std::iota(order.begin(), order.end(), 0u);
      std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
        return std::fabs(x[a]) > std::fabs(x[b]) || (std::fabs(x[a]) == std::fabs(x[b]) && a < b);
      });
      std::vector<uint32_t> top(order.begin(), order.begin() + k);
      std::sort(top.begin(), top.end());
      for (uint32_t i : top) want[i] += x[i];
    }
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(g[0].data<float>()[i], want[i] * (1.0f / float(world))) << i;
    // What was not sent is owed: exactly the rank's other entries.
    const std::vector<std::vector<float>> res = c->residuals();
    size_t owed = 0;
    for (size_t i = 0; i < n; ++i) owed += res[0][i] != 0;
    EXPECT_EQ(owed, n - k);
  }
}

TEST(Compress, WarmupStepsArePlainAllreduces) {
  for (auto& comm : comms()) {
    const int world = comm->size(), rank = comm->rank();
    std::vector<Tensor> g = make_grads({Shape{64, 64}});
    fill(g[0], grad_seed(rank, 0, 0));
    CompressSpec s = spec("topk:0.01", 100);
    s.warmup_steps = 3;
    auto c = make_bucket_compressor(s, g);
    EXPECT_EQ(c->reduce(*comm, 2), ring_allreduce_bytes(64 * 64 * 4, world));
    std::vector<double> want(64 * 64, 0.0);
    for (int q = 0; q < world; ++q)
      for (size_t i = 0; i < want.size(); ++i) want[i] += value(grad_seed(q, 0, 0), i) / world;
    EXPECT_LE(max_rel(want, g[0].data<float>()), 1e-6);
  }
}

TEST(Compress, RejectsNonF32Gradients) {
  std::vector<Tensor> g{Tensor::zeros(Shape{10}, DType::F64)};
  EXPECT_THROW(make_bucket_compressor(spec("fp16"), g), Error);
  EXPECT_NO_THROW(make_bucket_compressor(spec("none"), g));
}

}  // namespace
}  // namespace rf::collective

int main(int argc, char** argv) {
  using namespace rf::collective;
  return rf::testing::run_mpi_tests(
      argc, argv,
      [] {
        CommOptions o;
        o.timeout_seconds = 60;
        comms().push_back(make_communicator("ring", o));
        comms().push_back(make_communicator("mpi", o));
      },
      [] { comms().clear(); });
}
