// The GPU training step: batches gathered on the device from BatchIterator's indices, the fused
// multi-tensor optimizer (bit-identical to the single-tensor kernels), and a step captured as a
// CUDA graph (bit-identical to eager runs). CUDA cases skip without a device; the CPU cases
// (index batches, refusals) run everywhere.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "autodiff/optimizer.h"
#include "models/dataset.h"
#include "models/models.h"
#include "models/trainer.h"
#include "runtime/error.h"
#include "runtime/session.h"

#if RINGFLOW_CUDA
#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cuda.h"
#include "models/classify_cuda.h"
#include "runtime/cuda_backend.h"
#endif

using namespace rf;

namespace {

#define SKIP_WITHOUT_CUDA() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason()

// The batches next_indices() names are the ones next() copies, sharded and shuffled alike.
TEST(BatchIterator, NextIndicesNameNextBatches) {
  const Dataset d = make_synthetic(203, 5);
  const int64_t ss = d.sample_size();
  for (int rank = 0; rank < 2; ++rank) {
    BatchIterator a(d, 16, 9, true, rank, 2), b(d, 16, 9, true, rank, 2);
    std::vector<float> images(size_t(16 * ss));
    std::vector<int32_t> labels(16), idx(16);
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      a.start_epoch(epoch);
      b.start_epoch(epoch);
      int steps = 0;
      while (a.next(images.data(), labels.data())) {
        ASSERT_TRUE(b.next_indices(idx.data()));
        for (int k = 0; k < 16; ++k) {
          EXPECT_EQ(labels[size_t(k)], d.labels[size_t(idx[size_t(k)])]);
          EXPECT_EQ(0, std::memcmp(images.data() + k * ss, d.images.data() + idx[size_t(k)] * ss,
                                   size_t(ss) * sizeof(float)));
        }
        ++steps;
      }
      EXPECT_FALSE(b.next_indices(idx.data()));
      EXPECT_EQ(steps, a.steps_per_epoch());
    }
  }
}

TEST(CudaGraph, RefusedOnTheCpu) {
  Graph g(1);
  const Model m = build_model(g, "mlp");
  const TrainOp t = minimize(m.loss, OptimizerConfig{});
  Session s(g);
  s.run({}, {}, g.initializers());
  Tensor x = Tensor::zeros(Shape{4, 1, 28, 28}, DType::F32), y = Tensor::zeros(Shape{4}, DType::I32);
  Tensor hyper = Tensor::from_vector<double>({0.1, 1.0}, Shape{2});
  RunOptions o;
  o.cuda_graph = true;
  try {
    s.run({m.loss}, {{m.images, x}, {m.labels, y}, {t.hyper, hyper}}, t.updates, &o);
    FAIL() << "a CPU session ran with cuda_graph";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA graphs need a CUDA"), std::string::npos) << e.what();
  }
}

#if RINGFLOW_CUDA

namespace kc = kernels::cuda;

template <class T> std::vector<T> random_vec(i64 n, unsigned seed, double lo, double hi) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<T> v(static_cast<size_t>(n));
  for (T& x : v) x = T(u(gen));
  return v;
}

template <class T> Tensor device_tensor(const std::vector<T>& v) {
  return Tensor::from_vector<T>(v, Shape{i64(v.size())}).to(Device::cuda(0));
}

template <class T> Tensor device_bytes(const std::vector<T>& v) {
  const size_t bytes = v.size() * sizeof(T);
  Tensor t(Shape{i64(bytes)}, DType::U8, Device::cuda(0));
  copy_bytes(t.raw(), Device::cuda(0), v.data(), Device::cpu(), bytes);
  return t;
}

// Every optimizer, over tensors that end inside, at and past a chunk boundary: one fused launch
// must write exactly the bytes the per-tensor kernels write.
template <class T> void fused_matches_single(kc::UpdateKind kind, const kc::UpdateScalars<T>& sc,
                                             const std::string& what) {
  const std::vector<i64> sizes{1, 1000, kc::kMultiTensorChunk, kc::kMultiTensorChunk * 2 + 17, 0, 3};
  auto st = static_cast<cudaStream_t>(cuda::compute_stream(0));
  std::vector<Tensor> w[2], s1[2], s2[2], g;
  std::vector<kc::MultiTensorEntry<T>> entries;
  for (size_t k = 0; k < sizes.size(); ++k) {
    const unsigned seed = unsigned(k) * 4;
    for (int copy = 0; copy < 2; ++copy) {
      w[copy].push_back(device_tensor(random_vec<T>(sizes[k], seed, -1, 1)));
      s1[copy].push_back(device_tensor(random_vec<T>(sizes[k], seed + 1, -0.1, 0.1)));
      s2[copy].push_back(device_tensor(random_vec<T>(sizes[k], seed + 2, 0, 0.01)));
    }
    g.push_back(device_tensor(random_vec<T>(sizes[k], seed + 3, -1, 1)));
    entries.push_back({w[1][k].template data<T>(), s1[1][k].template data<T>(), s2[1][k].template data<T>(),
                       g[k].template data<T>(), sizes[k]});
  }
  // Single-tensor launches (copy 0), the scalars formed inside and passed by value.
  const double lr = 0.01, mu = 0.9, wd = 1e-2;
  for (size_t k = 0; k < sizes.size(); ++k) {
    T* pw = w[0][k].template data<T>();
    T* p1 = s1[0][k].template data<T>();
    T* p2 = s2[0][k].template data<T>();
    const T* pg = g[k].template data<T>();
    switch (kind) {
      case kc::UpdateKind::SGD: kc::sgd_update<T>(pw, pg, sizes[k], lr, wd, st); break;
      case kc::UpdateKind::Momentum: kc::momentum_update<T>(pw, p1, pg, sizes[k], lr, mu, wd, true, st); break;
      case kc::UpdateKind::Adam:
        kc::adam_update<T>(pw, p1, p2, pg, sizes[k], lr, 0.9, 0.999, 1e-8, wd, true, 3, st);
        break;
    }
  }
  // One fused launch (copy 1), scalars from device memory.
  const Tensor table = device_bytes(entries);
  const std::vector<kc::MultiTensorChunk> chunks = kc::multi_tensor_chunks(sizes.data(), int(sizes.size()));
  const Tensor chunk_table = device_bytes(chunks);
  const Tensor scalars = device_bytes(std::vector<kc::UpdateScalars<T>>{sc});
  kc::multi_tensor_update<T>(kind, reinterpret_cast<const kc::MultiTensorEntry<T>*>(table.raw()),
                             reinterpret_cast<const kc::MultiTensorChunk*>(chunk_table.raw()), i64(chunks.size()),
                             reinterpret_cast<const kc::UpdateScalars<T>*>(scalars.raw()), st);
  for (size_t k = 0; k < sizes.size(); ++k) {
    for (auto* pair : {&w, &s1, &s2}) {
      const std::vector<T> a = (*pair)[0][k].template to_vector<T>(), b = (*pair)[1][k].template to_vector<T>();
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(T))) << what << ", tensor " << k;
    }
  }
}

TEST(FusedUpdate, BitIdenticalToSingleTensorKernels) {
  SKIP_WITHOUT_CUDA();
  const double lr = 0.01, mu = 0.9, wd = 1e-2;
  fused_matches_single<float>(kc::UpdateKind::SGD, kc::sgd_scalars<float>(lr, wd), "sgd f32");
  fused_matches_single<double>(kc::UpdateKind::SGD, kc::sgd_scalars<double>(lr, wd), "sgd f64");
  fused_matches_single<float>(kc::UpdateKind::Momentum, kc::momentum_scalars<float>(lr, mu, wd, true), "nag f32");
  fused_matches_single<double>(kc::UpdateKind::Momentum, kc::momentum_scalars<double>(lr, mu, wd, true), "nag f64");
  fused_matches_single<float>(kc::UpdateKind::Adam, kc::adam_scalars<float>(lr, 0.9, 0.999, 1e-8, wd, true, 3),
                              "adamw f32");
  fused_matches_single<double>(kc::UpdateKind::Adam, kc::adam_scalars<double>(lr, 0.9, 0.999, 1e-8, wd, true, 3),
                               "adamw f64");
}

TEST(TrainInput, GatherAndAccuracyOnTheDevice) {
  SKIP_WITHOUT_CUDA();
  const Dataset d = make_synthetic(50, 2);
  const Device dev = Device::cuda(0);
  const std::vector<int32_t> idx{7, 0, 49, 7, 13};
  Tensor images = Tensor::from_vector<float>(d.images, Shape{d.n, 1, 28, 28}).to(dev);
  Tensor labels = Tensor::from_vector<int32_t>(d.labels, Shape{d.n}).to(dev);
  Tensor idx_dev = Tensor::from_vector<int32_t>(idx, Shape{5}).to(dev);
  Tensor out_images(Shape{5, 1, 28, 28}, DType::F32, dev), out_labels(Shape{5}, DType::I32, dev);
  classify::gather_batch(images, labels, idx_dev, out_images, out_labels);
  const std::vector<float> xi = out_images.to_vector<float>();
  const std::vector<int32_t> yi = out_labels.to_vector<int32_t>();
  for (size_t b = 0; b < idx.size(); ++b) {
    EXPECT_EQ(yi[b], d.labels[size_t(idx[b])]);
    EXPECT_EQ(0, std::memcmp(xi.data() + b * 784, d.images.data() + idx[b] * 784, 784 * sizeof(float)));
  }
  // Ties go to the first largest entry (std::max_element), as the host count does.
  const std::vector<float> logits{1, 3, 3, /**/ 5, 1, 5, /**/ 0, 0, 1, /**/ 2, 9, 1, /**/ 4, 4, 4};
  Tensor l = Tensor::from_vector<float>(logits, Shape{5, 3}).to(dev);
  Tensor y = Tensor::from_vector<int32_t>({2, 0, 2, 0, 0}, Shape{5}).to(dev);
  Tensor stats(Shape{2}, DType::F64, dev);
  classify::accuracy_stats(l, y, stats);
  const std::vector<double> s = stats.to_vector<double>();
  EXPECT_EQ(s[0], 3.0);  // rows 1, 2 and 4
  EXPECT_EQ(s[1], 5.0);  // of 5
  Tensor l64 = Tensor::from_vector<double>(std::vector<double>(logits.begin(), logits.end()), Shape{5, 3}).to(dev);
  classify::accuracy_stats(l64, y, stats);  // F64 logits count alike
  EXPECT_EQ(stats.to_vector<double>()[0], 3.0);
}

struct Trainer {
  Graph g{11};
  Model m;
  TrainOp t;
  explicit Trainer(const std::string& model, OptimizerConfig::Kind kind) {
    m = build_model(g, model);
    OptimizerConfig oc;
    oc.kind = kind;
    oc.weight_decay = 1e-3;
    // A large eps keeps Adam's sign-like first steps from amplifying the rounding differences of
    // near-zero gradients between the CPU and the GPU.
    oc.eps = 1e-3;
    t = minimize(m.loss, oc);
  }
};

void fill_batch(std::vector<float>& x, std::vector<int32_t>& y, int step) {
  for (size_t i = 0; i < x.size(); ++i) x[i] = float((i * 37 + size_t(step) * 11) % 255) / 255.0f;
  for (size_t i = 0; i < y.size(); ++i) y[i] = int32_t((i + size_t(step) * 3) % 10);
}

// A plan with several update nodes (fused on the GPU) against the CPU's per-Variable updates.
TEST(FusedUpdate, CudaSessionMatchesCpuAfterSteps) {
  SKIP_WITHOUT_CUDA();
  for (auto kind : {OptimizerConfig::Kind::SGD, OptimizerConfig::Kind::Momentum, OptimizerConfig::Kind::AdamW}) {
    Trainer tr("mlp", kind);
    Session cpu(tr.g), gpu(tr.g, Device::cuda(0));
    for (Session* s : {&cpu, &gpu}) s->run({}, {}, tr.g.initializers());
    std::vector<float> xv(16 * 784);
    std::vector<int32_t> yv(16);
    for (int step = 0; step < 4; ++step) {
      fill_batch(xv, yv, step);
      Tensor x = Tensor::from_vector<float>(xv, Shape{16, 1, 28, 28});
      Tensor y = Tensor::from_vector<int32_t>(yv, Shape{16});
      Tensor hyper = Tensor::from_vector<double>({0.05 / (step + 1), double(step + 1)}, Shape{2});
      for (Session* s : {&cpu, &gpu})
        s->run({tr.m.loss}, {{tr.m.images, x}, {tr.m.labels, y}, {tr.t.hyper, hyper}}, tr.t.updates);
    }
    for (int id : tr.g.variables(false)) {
      const std::vector<float> a = cpu.variable(id).to_vector<float>(), b = gpu.variable(id).to_vector<float>();
      double worst = 0;
      for (size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::abs(double(a[i]) - double(b[i])) / (1e-3 + std::abs(double(a[i]))));
      EXPECT_LT(worst, 1e-3) << tr.g.node(id).name;
    }
  }
}

// N steps replayed from a captured graph give the eager run's Variables, bit for bit, with a
// learning rate that changes every step (it reaches the graph through pinned memory).
TEST(CudaGraph, ReplayMatchesEagerRun) {
  SKIP_WITHOUT_CUDA();
  for (auto kind : {OptimizerConfig::Kind::Momentum, OptimizerConfig::Kind::Adam}) {
    Trainer tr("cnn", kind);
    const Device dev = Device::cuda(0);
    Session eager(tr.g, dev), graphed(tr.g, dev);
    for (Session* s : {&eager, &graphed}) s->run({}, {}, tr.g.initializers());
    Tensor x(Shape{8, 1, 28, 28}, DType::F32, dev), y(Shape{8}, DType::I32, dev);
    Tensor hyper(Shape{2}, DType::F64);
    std::vector<float> xv(8 * 784);
    std::vector<int32_t> yv(8);
    RunOptions plain, captured;
    captured.cuda_graph = true;
    const std::vector<Session::Feed> feeds{{tr.m.images, x}, {tr.m.labels, y}, {tr.t.hyper, hyper}};
    for (int step = 0; step < 7; ++step) {
      fill_batch(xv, yv, step);
      copy_bytes(x.raw(), dev, xv.data(), Device::cpu(), x.nbytes());
      copy_bytes(y.raw(), dev, yv.data(), Device::cpu(), y.nbytes());
      hyper.data<double>()[0] = 0.02 * (1.0 + std::cos(step * 0.4));
      hyper.data<double>()[1] = double(step + 1);
      const double le = eager.run({tr.m.loss}, feeds, tr.t.updates, &plain)[0].item();
      const double lg = graphed.run({tr.m.loss}, feeds, tr.t.updates, &captured)[0].item();
      EXPECT_EQ(le, lg) << "step " << step;
    }
    for (int id : tr.g.variables(false)) {
      const std::vector<float> a = eager.variable(id).to_vector<float>(), b = graphed.variable(id).to_vector<float>();
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << tr.g.node(id).name;
    }
    // The captured step insists on its feed buffers.
    Tensor other(Shape{8, 1, 28, 28}, DType::F32, dev);
    EXPECT_THROW(graphed.run({tr.m.loss}, {{tr.m.images, other}, {tr.m.labels, y}, {tr.t.hyper, hyper}}, tr.t.updates,
                             &captured),
                 Error);
  }
}

// End to end through `ringflow train`: --cuda-graph gives the eager GPU run's numbers exactly, and
// the GPU's batches, gathered on the device from the CPU's indices, are the CPU's batches.
TEST(CudaGraph, TrainerGraphMatchesEagerAndCpu) {
  SKIP_WITHOUT_CUDA();
  TrainConfig c;
  c.model = "cnn";
  c.data = "synthetic";
  c.synthetic_train = 1024;
  c.synthetic_test = 256;
  c.epochs = 2;
  c.max_steps = 40;  // past the first epoch (32 steps): the graph replays across an evaluation
  c.batch = 32;
  c.progress = false;
  c.threads = 2;
  c.device = "cuda";
  c.cuda_graph = "off";
  const auto eager = train(c);
  EXPECT_FALSE(eager["cuda_graph"].get<bool>());
  c.cuda_graph = "on";
  const auto graphed = train(c);
  for (const char* key : {"final_loss", "param_norm", "test_accuracy", "test_loss"})
    EXPECT_EQ(eager[key].get<double>(), graphed[key].get<double>()) << key;
  EXPECT_TRUE(graphed["cuda_graph"].get<bool>());
  // A CNN step is dozens of kernels (forward, backward, the fused update): the count is read
  // from the captured graph.
  EXPECT_GE(graphed.value("cuda_graph_kernels", 0), 20) << graphed.dump();
  EXPECT_FALSE(eager.contains("cuda_graph_kernels"));
  // The default, auto, captures a single replica's step on a GPU, and gives the same numbers.
  c.cuda_graph = "auto";
  const auto automatic = train(c);
  EXPECT_TRUE(automatic["cuda_graph"].get<bool>());
  EXPECT_EQ(automatic["final_loss"].get<double>(), eager["final_loss"].get<double>());
  // ... but not where the host must run inside the step: a --timeline records every op.
  const std::string trace = ::testing::TempDir() + "rf_graph_auto_timeline.json";
  c.timeline_path = trace;
  c.max_steps = 4;
  EXPECT_FALSE(train(c)["cuda_graph"].get<bool>());
  std::remove(trace.c_str());
  c.timeline_path.clear();
  // Three steps: another batch would move the loss by percents, rounding by far less.
  c.cuda_graph = "off";
  c.max_steps = 3;
  const double gpu_loss = train(c)["final_loss"].get<double>();
  c.device = "cpu";
  const double cpu_loss = train(c)["final_loss"].get<double>();
  EXPECT_NEAR(cpu_loss, gpu_loss, 1e-4 * std::abs(cpu_loss));
}

#endif  // RINGFLOW_CUDA

}  // namespace
