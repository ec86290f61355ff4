// Sparse rows: Gather (embedding lookup) and ScatterAdd (its gradient) against plain references
// and central finite differences (f64, tests/gradcheck_util.h); the sparse updates
// (ApplySGDSparse, ApplyMomentumSparse, ApplyAdamSparse) against the dense updates and against
// plain reference loops over the rows present; and minimize()'s choice of update for an embedding,
// with the dense ScatterAdd never run where a sparse update consumes the gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "autodiff/gradients.h"
#include "autodiff/optimizer.h"
#include "runtime/device.h"
#include "runtime/error.h"
#include "runtime/graph.h"
#include "runtime/ops.h"
#include "runtime/session.h"
#include "tests/gradcheck_util.h"

namespace {

using namespace rf_gradcheck;
using rf::Op;
using rf::Tensor;

// out[n, :] = params[idx[n], :], rows of D = numel / V.
Vec ref_gather(const Vec& params, const Shape& ps, const Vec& idx) {
  const i64 D = ps.numel() / ps[0];
  Vec out;
  for (double k : idx)
    for (i64 d = 0; d < D; ++d) out.push_back(params[size_t(i64(k) * D + d)]);
  return out;
}

// zeros [V, D] with rows[n] added at idx[n], in order.
Vec ref_scatter(const Vec& rows, const Vec& idx, i64 V, i64 D) {
  Vec out(size_t(V * D), 0.0);
  for (size_t n = 0; n < idx.size(); ++n)
    for (i64 d = 0; d < D; ++d) out[size_t(i64(idx[n]) * D + d)] += rows[n * size_t(D) + size_t(d)];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Finite-difference checks
// ---------------------------------------------------------------------------------------------

// Every case draws more indices than there are rows, so some index repeats (pigeonhole) and the
// gradient must accumulate the duplicates.
TEST(OpsGradcheck, GatherI32AndI64Duplicates) {
  struct Case {
    const char* what;
    Shape params, indices;
    DType t;
  };
  const Case cases[] = {
      {"I32 [7] into [5, 3]", Shape{5, 3}, Shape{7}, DType::I32},
      {"I64 [B=3, T=4] into [5, 2, 3]", Shape{5, 2, 3}, Shape{3, 4}, DType::I64},
      {"I32 [B=2, T=6] into [4, 3]", Shape{4, 3}, Shape{2, 6}, DType::I32},
      {"I64 [6] into rank-1 [4]", Shape{4}, Shape{6}, DType::I64},
      {"I32 scalar into [4, 3]", Shape{4, 3}, Shape{}, DType::I32},
  };
  for (const Case& c : cases) {
    Shape out = c.indices;
    for (int i = 1; i < c.params.rank; ++i) out.push_back(c.params[i]);
    const Shape ps = c.params;
    check_op(
        std::string("Gather ") + c.what, {U(c.params), Labels(c.indices, int(c.params[0]), c.t)},
        [](const Values& x) { return ops::gather(x[0], x[1]); }, out,
        [ps](const std::vector<Vec>& v) { return ref_gather(v[0], ps, v[1]); });
  }
}

TEST(OpsGradcheck, ScatterAdd) {
  struct Case {
    const char* what;
    Shape rows;
    i64 V;
    DType t;
  };
  const Case cases[] = {
      {"I64 [6, 4] into [4, 4]", Shape{6, 4}, 4, DType::I64},
      {"I32 [9, 2, 3] into [5, 2, 3]", Shape{9, 2, 3}, 5, DType::I32},
      {"I32 [5] into rank-1 [3]", Shape{5}, 3, DType::I32},
  };
  for (const Case& c : cases) {
    Shape like = c.rows;
    like[0] = c.V;
    const i64 V = c.V, D = c.rows.numel() / c.rows[0];
    check_op(
        std::string("ScatterAdd ") + c.what, {U(c.rows), Labels(Shape{c.rows[0]}, int(c.V), c.t)},
        [like](const Values& x) {
          // like only gives the shape: a constant, so the checker differentiates rows alone.
          return ops::scatter_add(x[0], x[1], x[0].graph->constant(Tensor::zeros(like, DType::F64)));
        },
        like, [V, D](const std::vector<Vec>& v) { return ref_scatter(v[0], v[1], V, D); });
  }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const rf::Error& e) {
    return e.what();
  }
  return "";
}
#define EXPECT_ERROR_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "message: " << (msg)

TEST(SparseOps, BadShapesAndDtypesThrowNamingTheNode) {
  rf::Graph g;
  const Value params = g.placeholder("params", DType::F64, Shape{5, 3});
  const Value fidx = g.placeholder("fidx", DType::F64, Shape{4});
  const Value idx = g.placeholder("idx", DType::I32, Shape{4});
  const Value idx2 = g.placeholder("idx2", DType::I32, Shape{2, 2});
  std::string m = error_of([&] { ops::gather(params, fidx, "lookup"); });
  EXPECT_ERROR_HAS(m, "lookup");
  EXPECT_ERROR_HAS(m, "I32 or I64");
  m = error_of([&] { ops::gather(g.placeholder("scalar", DType::F64, Shape{}), idx, "lookup0"); });
  EXPECT_ERROR_HAS(m, "lookup0");
  const Value rows = g.placeholder("rows", DType::F64, Shape{4, 3});
  m = error_of([&] { ops::scatter_add(g.placeholder("r5", DType::F64, Shape{5, 3}), idx, params, "sa_len"); });
  EXPECT_ERROR_HAS(m, "sa_len");
  EXPECT_ERROR_HAS(m, "differ in length");
  m = error_of([&] { ops::scatter_add(g.placeholder("r4", DType::F64, Shape{4, 2}), idx, params, "sa_cols"); });
  EXPECT_ERROR_HAS(m, "sa_cols");
  m = error_of([&] { ops::scatter_add(rows, idx2, params, "sa_rank"); });
  EXPECT_ERROR_HAS(m, "sa_rank");
  m = error_of([&] { ops::scatter_add(g.placeholder("r32", DType::F32, Shape{4, 3}), idx, params, "sa_dtype"); });
  EXPECT_ERROR_HAS(m, "sa_dtype");
  EXPECT_NO_THROW(ops::scatter_add(rows, idx, params));

  const Value var = g.variable("emb", Shape{5, 3}, DType::F64, rf::Initializer::zeros());
  const Value hyper = g.placeholder("hyper", DType::F64, Shape{2});
  rf::Attrs decay;
  decay.weight_decay = 0.01;
  m = error_of([&] { g.add(Op::ApplySGDSparse, {var, rows, idx, hyper}, decay, "decayed"); });
  EXPECT_ERROR_HAS(m, "decayed");
  EXPECT_ERROR_HAS(m, "weight decay");
  EXPECT_NO_THROW(g.add(Op::ApplySGDSparse, {var, rows, idx, hyper}));
}

TEST(SparseOps, OutOfRangeIndexOnTheCpuNamesNodeAndIndex) {
  rf::Graph g;
  const Value params = g.placeholder("params", DType::F64, Shape{5, 3});
  const Value idx = g.placeholder("idx", DType::I64, Shape{3});
  const Value y = ops::gather(params, idx, "lookup");
  const Value rows = g.placeholder("rows", DType::F64, Shape{3, 3});
  const Value sa = ops::scatter_add(rows, idx, params, "scatter");
  const Value var = g.variable("emb", Shape{5, 3}, DType::F64, rf::Initializer::constant(0.5));
  const Value hyper = g.placeholder("hyper", DType::F64, Shape{2});
  const Value upd = g.add(Op::ApplySGDSparse, {var, rows, idx, hyper}, {}, "emb/update");
  rf::Session s(g);
  s.run({}, {}, g.initializers());
  const Tensor p = Tensor::zeros(Shape{5, 3}, DType::F64), r = Tensor::zeros(Shape{3, 3}, DType::F64);
  const Tensor h = Tensor::from_vector<double>({0.1, 1}, Shape{2});
  for (int64_t bad : {int64_t(5), int64_t(-1)}) {
    const Tensor i = Tensor::from_vector<int64_t>({0, bad, 2}, Shape{3});
    std::string m = error_of([&] { s.run({y}, {{params, p}, {idx, i}}); });
    EXPECT_ERROR_HAS(m, "lookup");
    EXPECT_ERROR_HAS(m, "index " + std::to_string(bad) + " at position 1");
    m = error_of([&] { s.run({sa}, {{params, p}, {rows, r}, {idx, i}}); });
    EXPECT_ERROR_HAS(m, "scatter");
    EXPECT_ERROR_HAS(m, "index " + std::to_string(bad));
    m = error_of([&] { s.run({}, {{rows, r}, {idx, i}, {hyper, h}}, {upd}); });
    EXPECT_ERROR_HAS(m, "emb/update");
    EXPECT_ERROR_HAS(m, "index " + std::to_string(bad));
  }
  for (double v : s.variable("emb").to_vector<double>()) EXPECT_EQ(v, 0.5) << "checked before any write";
}

// ---------------------------------------------------------------------------------------------
// Sparse updates against the dense ones and against reference loops
// ---------------------------------------------------------------------------------------------

// One update node on Variable "emb" [V, D] (slots "emb/s1", "emb/s2" as needed), fed rows [N, D]
// and indices [N]: the sparse op, or the dense op on ScatterAdd(rows, indices, emb).
struct UpdateGraph {
  rf::Graph g{11};
  Value var, rows, idx, hyper, update;
  std::unique_ptr<rf::Session> s;
  DType dt;
  UpdateGraph(Op op, DType dtype, DType index_dtype, i64 V, i64 D, i64 N, const rf::Attrs& a) : dt(dtype) {
    var = g.variable("emb", Shape{V, D}, dt, rf::Initializer::uniform(-1, 1));
    rows = g.placeholder("rows", dt, Shape{N, D});
    idx = g.placeholder("idx", index_dtype, Shape{N});
    hyper = g.placeholder("hyper", DType::F64, Shape{2});
    const bool sparse = op == Op::ApplySGDSparse || op == Op::ApplyMomentumSparse || op == Op::ApplyAdamSparse;
    const int slots = op == Op::ApplyAdam || op == Op::ApplyAdamSparse ? 2
                      : op == Op::ApplyMomentum || op == Op::ApplyMomentumSparse ? 1 : 0;
    Values in{var};
    for (int k = 0; k < slots; ++k)
      in.push_back(g.variable("emb/s" + std::to_string(k + 1), Shape{V, D}, dt, rf::Initializer::zeros(), false));
    if (sparse) {
      in.push_back(rows);
      in.push_back(idx);
    } else {
      in.push_back(ops::scatter_add(rows, idx, var));
    }
    in.push_back(hyper);
    update = g.add(op, in, a, "emb/update");
    s = std::make_unique<rf::Session>(g);
    s->run({}, {}, g.initializers());
  }
  void step(const Vec& r, const std::vector<int64_t>& i, double lr, int t) {
    const Shape rs = g.spec(rows).shape, is = g.spec(idx).shape;
    const Tensor rt = dt == DType::F64 ? Tensor::from_vector<double>(r, rs)
                                       : Tensor::from_vector<float>(std::vector<float>(r.begin(), r.end()), rs);
    const Tensor it = g.spec(idx).dtype == DType::I64
                          ? Tensor::from_vector<int64_t>(i, is)
                          : Tensor::from_vector<int32_t>(std::vector<int32_t>(i.begin(), i.end()), is);
    s->run({}, {{rows, rt}, {idx, it}, {hyper, Tensor::from_vector<double>({lr, double(t)}, Shape{2})}}, {update});
  }
  Tensor& get(const std::string& name) { return s->variable(name); }
};

// Random rows and indices in [0, V) with duplicates; rows V-1 and V-2 are never hit.
struct Batch {
  Vec rows;
  std::vector<int64_t> idx;
};
Batch make_batch(std::mt19937& rng, i64 V, i64 D, i64 N) {
  Batch b;
  std::uniform_real_distribution<double> u(-1, 1);
  std::uniform_int_distribution<int64_t> k(0, V - 3);
  for (i64 n = 0; n < N; ++n) b.idx.push_back(k(rng));
  b.idx[size_t(N - 1)] = b.idx[0];  // at least one duplicate
  for (i64 e = 0; e < N * D; ++e) b.rows.push_back(u(rng));
  return b;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// ApplySGDSparse forms each row's gradient exactly as ScatterAdd does and then runs the dense
// SGD arithmetic on it; rows not hit are untouched, as w - lr * 0 leaves them: the same bits.
TEST(SparseUpdates, SgdEqualsDenseSgd) {
  const i64 V = 10, D = 3, N = 7;
  for (DType dt : {DType::F64, DType::F32})
    for (DType it : {DType::I32, DType::I64}) {
      SCOPED_TRACE(std::string(rf::dtype_name(dt)) + " values, " + rf::dtype_name(it) + " indices");
      UpdateGraph sp(Op::ApplySGDSparse, dt, it, V, D, N, {}), de(Op::ApplySGD, dt, it, V, D, N, {});
      ASSERT_TRUE(same_bits(sp.get("emb"), de.get("emb")));
      std::mt19937 rng(7);
      for (int t = 1; t <= 4; ++t) {
        const Batch b = make_batch(rng, V, D, N);
        sp.step(b.rows, b.idx, 0.1 * t, t);
        de.step(b.rows, b.idx, 0.1 * t, t);
        expect_close(to_doubles(sp.get("emb")), to_doubles(de.get("emb")), 1e-15, "step " + std::to_string(t));
        EXPECT_TRUE(same_bits(sp.get("emb"), de.get("emb"))) << "step " << t << ": not bitwise the dense SGD";
      }
    }
}

// Reference: each index's rows summed from 0 in position order, then the per-row update.
std::map<int64_t, Vec> summed_rows(const Batch& b, i64 D) {
  std::map<int64_t, Vec> g;
  for (size_t n = 0; n < b.idx.size(); ++n) {
    Vec& row = g.try_emplace(b.idx[n], Vec(size_t(D), 0.0)).first->second;
    for (i64 d = 0; d < D; ++d) row[size_t(d)] += b.rows[n * size_t(D) + size_t(d)];
  }
  return g;
}

TEST(SparseUpdates, LazyMomentumMatchesReferenceLoop) {
  const i64 V = 12, D = 4, N = 9;
  const double mu = 0.9;
  for (bool nesterov : {false, true})
    for (DType it : {DType::I32, DType::I64}) {
      SCOPED_TRACE(std::string(nesterov ? "nesterov, " : "momentum, ") + rf::dtype_name(it) + " indices");
      rf::Attrs a;
      a.momentum = mu;
      a.nesterov = nesterov;
      UpdateGraph sp(Op::ApplyMomentumSparse, DType::F64, it, V, D, N, a);
      Vec w = to_doubles(sp.get("emb")), v(w.size(), 0.0);
      std::mt19937 rng(9);
      for (int t = 1; t <= 4; ++t) {
        const Batch b = make_batch(rng, V, D, N);
        const double lr = 0.05 * t;
        sp.step(b.rows, b.idx, lr, t);
        for (const auto& [row, g] : summed_rows(b, D))
          for (i64 d = 0; d < D; ++d) {
            const size_t o = size_t(row * D + d);
            v[o] = mu * v[o] + g[size_t(d)];
            w[o] += -lr * (nesterov ? g[size_t(d)] + mu * v[o] : v[o]);
          }
        expect_close(to_doubles(sp.get("emb")), w, 1e-15, "w after step " + std::to_string(t));
        expect_close(to_doubles(sp.get("emb/s1")), v, 1e-15, "velocity after step " + std::to_string(t));
      }
      // Rows V-1 and V-2 were never hit: exactly their initial values, velocity 0.
      const Vec got = to_doubles(sp.get("emb")), vel = to_doubles(sp.get("emb/s1"));
      UpdateGraph fresh(Op::ApplyMomentumSparse, DType::F64, it, V, D, N, a);
      const Vec init = to_doubles(fresh.get("emb"));
      for (i64 e = (V - 2) * D; e < V * D; ++e) {
        EXPECT_EQ(got[size_t(e)], init[size_t(e)]) << e;
        EXPECT_EQ(vel[size_t(e)], 0.0) << e;
      }
    }
}

// Every row present once per step: lazy momentum is the dense momentum, bit for bit.
TEST(SparseUpdates, MomentumWithEveryRowPresentIsDenseMomentum) {
  const i64 V = 6, D = 5;
  rf::Attrs a;
  a.momentum = 0.9;
  for (DType dt : {DType::F64, DType::F32}) {
    UpdateGraph sp(Op::ApplyMomentumSparse, dt, DType::I32, V, D, V, a),
        de(Op::ApplyMomentum, dt, DType::I32, V, D, V, a);
    std::mt19937 rng(3);
    std::uniform_real_distribution<double> u(-1, 1);
    for (int t = 1; t <= 3; ++t) {
      std::vector<int64_t> perm(static_cast<size_t>(V));
      for (i64 k = 0; k < V; ++k) perm[size_t(k)] = k;
      std::shuffle(perm.begin(), perm.end(), rng);
      Vec r(size_t(V * D));
      for (double& x : r) x = u(rng);
      sp.step(r, perm, 0.1, t);
      de.step(r, perm, 0.1, t);
      EXPECT_TRUE(same_bits(sp.get("emb"), de.get("emb"))) << rf::dtype_name(dt) << " step " << t;
      EXPECT_TRUE(same_bits(sp.get("emb/s1"), de.get("emb/s1"))) << rf::dtype_name(dt) << " step " << t;
    }
  }
}

// TF LazyAdam: m, v and w of the rows present only, lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) from the
// global step t, eps added to sqrt(v).
TEST(SparseUpdates, LazyAdamMatchesTfLazyAdamReference) {
  const i64 V = 11, D = 3, N = 8;
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  for (DType it : {DType::I32, DType::I64}) {
    SCOPED_TRACE(rf::dtype_name(it));
    rf::Attrs a;
    a.beta1 = b1, a.beta2 = b2, a.eps = eps;
    UpdateGraph sp(Op::ApplyAdamSparse, DType::F64, it, V, D, N, a);
    const Vec init = to_doubles(sp.get("emb"));
    Vec w = init, m(w.size(), 0.0), v(w.size(), 0.0);
    std::mt19937 rng(21);
    for (int t = 1; t <= 5; ++t) {
      const Batch b = make_batch(rng, V, D, N);
      const double lr = 0.01;
      sp.step(b.rows, b.idx, lr, t);
      const double lr_t = lr * std::sqrt(1 - std::pow(b2, t)) / (1 - std::pow(b1, t));
      for (const auto& [row, g] : summed_rows(b, D))
        for (i64 d = 0; d < D; ++d) {
          const size_t o = size_t(row * D + d);
          const double gi = g[size_t(d)];
          m[o] = b1 * m[o] + (1 - b1) * gi;
          v[o] = b2 * v[o] + (1 - b2) * gi * gi;
          w[o] -= lr_t * m[o] / (std::sqrt(v[o]) + eps);
        }
      expect_close(to_doubles(sp.get("emb")), w, 1e-13, "w after step " + std::to_string(t));
      expect_close(to_doubles(sp.get("emb/s1")), m, 1e-14, "m after step " + std::to_string(t));
      expect_close(to_doubles(sp.get("emb/s2")), v, 1e-14, "v after step " + std::to_string(t));
    }
    const Vec got = to_doubles(sp.get("emb"));
    for (i64 e = (V - 2) * D; e < V * D; ++e) EXPECT_EQ(got[size_t(e)], init[size_t(e)]) << "untouched row, " << e;
  }
}

// f32 against the f64 reference, loosely: the same algorithm in float.
TEST(SparseUpdates, Float32UpdatesFollowTheReference) {
  const i64 V = 9, D = 6, N = 12;
  rf::Attrs a;
  a.momentum = 0.9;
  UpdateGraph sp(Op::ApplyMomentumSparse, DType::F32, DType::I64, V, D, N, a);
  Vec w = to_doubles(sp.get("emb")), v(w.size(), 0.0);
  std::mt19937 rng(5);
  for (int t = 1; t <= 3; ++t) {
    const Batch b = make_batch(rng, V, D, N);
    sp.step(b.rows, b.idx, 0.1, t);
    for (const auto& [row, g] : summed_rows(b, D))
      for (i64 d = 0; d < D; ++d) {
        const size_t o = size_t(row * D + d);
        v[o] = 0.9 * v[o] + g[size_t(d)];
        w[o] -= 0.1 * v[o];
      }
  }
  expect_close(to_doubles(sp.get("emb")), w, 1e-5, "f32 lazy momentum vs f64 reference");
}

// ---------------------------------------------------------------------------------------------
// minimize() on an embedding model
// ---------------------------------------------------------------------------------------------

// loss = mean(square(reshape(gather(emb, idx), [-1, 4]) @ w)), idx [B, 3] (I32).
struct EmbModel {
  rf::Graph g{5};
  Value idx, emb, w, loss;
  EmbModel(bool tied = false) {
    idx = g.placeholder("idx", DType::I32, Shape{-1, 3});
    emb = g.variable("emb", Shape{20, 4}, DType::F64, rf::Initializer::uniform(-1, 1));
    w = g.variable("w", Shape{4, 2}, DType::F64, rf::Initializer::glorot_uniform());
    const Value h = ops::reshape(ops::gather(emb, idx), Shape{-1, 4});
    Value y = ops::matmul(h, w);
    if (tied) y = ops::add(y, ops::sum(ops::matmul(emb, w)));  // emb read densely too
    loss = ops::mean(ops::square(y));
  }
};

int index_of(const rf::TrainOp& t, int var_node) {
  for (size_t i = 0; i < t.vars.size(); ++i)
    if (t.vars[i] == var_node) return int(i);
  return -1;
}

// Runs a training step, returning the ids of the nodes the plan ran.
std::set<int> train_step(rf::Session& s, const rf::TrainOp& t, Value idx, const std::vector<int32_t>& batch,
                         double lr, int step) {
  std::set<int> ran;
  rf::RunOptions o;
  o.on_node_done = [&](int id) { ran.insert(id); };
  const Tensor it = Tensor::from_vector<int32_t>(batch, Shape{i64(batch.size() / 3), 3});
  s.run({}, {{idx, it}, {t.hyper, Tensor::from_vector<double>({lr, double(step)}, Shape{2})}}, t.updates, &o);
  return ran;
}

const std::vector<std::vector<int32_t>> kBatches = {
    {0, 3, 3, 7, 1, 0},     // duplicates within a batch
    {5, 9, 5, 11, 12, 19},  // rows 0, 1, 3, 7 absent now
    {3, 3, 3, 2, 2, 4},
};

TEST(SparseOptimizer, SgdAndMomentumUseSparseUpdatesAndNeverRunScatterAdd) {
  for (auto kind : {rf::OptimizerConfig::Kind::SGD, rf::OptimizerConfig::Kind::Momentum}) {
    const bool sgd = kind == rf::OptimizerConfig::Kind::SGD;
    SCOPED_TRACE(sgd ? "SGD" : "momentum");
    rf::OptimizerConfig cfg;
    cfg.kind = kind;
    EmbModel sparse_model;
    const rf::TrainOp t = rf::minimize(sparse_model.loss, cfg);
    const int ie = index_of(t, sparse_model.emb.node), iw = index_of(t, sparse_model.w.node);
    ASSERT_GE(ie, 0);
    ASSERT_GE(iw, 0);
    Value rows, idx;
    ASSERT_TRUE(rf::as_sparse(t.grads[size_t(ie)], &rows, &idx));
    EXPECT_FALSE(rf::as_sparse(t.grads[size_t(iw)], nullptr, nullptr));
    const rf::Graph& g = sparse_model.g;
    EXPECT_EQ(g.node(t.updates[size_t(ie)]).op, sgd ? Op::ApplySGDSparse : Op::ApplyMomentumSparse);
    EXPECT_EQ(g.node(t.updates[size_t(iw)]).op, sgd ? Op::ApplySGD : Op::ApplyMomentum);
    EXPECT_EQ(g.node(t.updates[size_t(ie)]).inputs[size_t(sgd ? 1 : 2)], rows);
    const int scatter = t.grads[size_t(ie)].node;
    EXPECT_EQ(g.node(scatter).op, Op::ScatterAdd);

    // The dense reference: the same model, the dense update on the ScatterAdd gradient.
    EmbModel dense_model;
    const Values dg = rf::gradients(dense_model.loss, {dense_model.emb, dense_model.w});
    const Value hyper = dense_model.g.placeholder("hyper", DType::F64, Shape{2});
    rf::Attrs a;
    a.momentum = cfg.momentum;
    Values dense_updates;
    for (int k = 0; k < 2; ++k) {
      const Value var = k == 0 ? dense_model.emb : dense_model.w;
      const std::string name = dense_model.g.node(var).name;
      if (sgd) {
        dense_updates.push_back(dense_model.g.add(Op::ApplySGD, {var, dg[size_t(k)], hyper}, a));
      } else {
        const Value vel = dense_model.g.variable(name + "/velocity", dense_model.g.spec(var).shape, DType::F64,
                                                 rf::Initializer::zeros(), false);
        dense_updates.push_back(dense_model.g.add(Op::ApplyMomentum, {var, vel, dg[size_t(k)], hyper}, a));
      }
    }
    rf::TrainOp dt;
    dt.updates = dense_updates;
    dt.hyper = hyper;

    rf::Session s(sparse_model.g), d(dense_model.g);
    s.run({}, {}, sparse_model.g.initializers());
    d.run({}, {}, dense_model.g.initializers());
    ASSERT_TRUE(same_bits(s.variable("emb"), d.variable("emb")));
    Vec after_first;
    for (size_t step = 0; step < kBatches.size(); ++step) {
      const std::set<int> ran = train_step(s, t, sparse_model.idx, kBatches[step], 0.1, int(step + 1));
      const std::set<int> ran_dense = train_step(d, dt, dense_model.idx, kBatches[step], 0.1, int(step + 1));
      EXPECT_EQ(ran.count(scatter), 0u) << "the dense ScatterAdd ran in the sparse training step";
      EXPECT_EQ(ran.count(t.updates[size_t(ie)].node), 1u);
      EXPECT_EQ(ran.count(rows.node), 1u);
      EXPECT_EQ(ran_dense.count(dg[0].node), 1u) << "the dense reference's ScatterAdd must run";
      if (sgd || step == 0) {
        // SGD is the dense step exactly; so is momentum's first step (every velocity starts at 0).
        EXPECT_TRUE(same_bits(s.variable("emb"), d.variable("emb"))) << "step " << step + 1;
        EXPECT_TRUE(same_bits(s.variable("w"), d.variable("w"))) << "step " << step + 1;
      }
      if (step == 0) after_first = to_doubles(s.variable("emb"));
    }
    if (!sgd) {
      // Rows 1 and 7 were hit only in the first batch: lazy momentum left them there (the dense
      // momentum kept moving them with their velocity).
      const Vec now = to_doubles(s.variable("emb")), dense_now = to_doubles(d.variable("emb"));
      for (i64 row : {1, 7})
        for (i64 c = 0; c < 4; ++c) {
          const size_t o = size_t(row * 4 + c);
          EXPECT_EQ(now[o], after_first[o]) << "row " << row;
          EXPECT_NE(dense_now[o], after_first[o]) << "row " << row;
        }
    }
  }
}

// loss = sum(gather(emb, idx) * R): d loss / d emb is R's rows scattered to idx, known exactly,
// so Adam's steps can be computed by hand (PyTorch's dense Adam; TF's LazyAdam when lazy_adam).
TEST(SparseOptimizer, AdamOnEmbeddingMatchesHandComputedSteps) {
  const i64 V = 8, D = 3, N = 5;
  const double lr = 0.02, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  const std::vector<std::vector<int32_t>> batches = {{0, 2, 2, 5, 1}, {3, 3, 4, 6, 3}, {2, 6, 0, 0, 7}};
  std::mt19937 rng(13);
  std::uniform_real_distribution<double> u(-1, 1);
  Vec R(size_t(N * D));
  for (double& x : R) x = u(rng);
  for (bool lazy : {false, true}) {
    SCOPED_TRACE(lazy ? "lazy_adam" : "dense Adam");
    rf::Graph g(17);
    const Value idx = g.placeholder("idx", DType::I32, Shape{N});
    const Value emb = g.variable("emb", Shape{V, D}, DType::F64, rf::Initializer::uniform(-1, 1));
    const Value loss = ops::sum(ops::mul(ops::gather(emb, idx), g.constant(Tensor::from_vector<double>(R, Shape{N, D}))));
    rf::OptimizerConfig cfg;
    cfg.kind = rf::OptimizerConfig::Kind::Adam;
    cfg.beta1 = b1, cfg.beta2 = b2, cfg.eps = eps;
    cfg.lazy_adam = lazy;
    const rf::TrainOp t = rf::minimize(loss, cfg);
    ASSERT_EQ(t.vars.size(), 1u);
    EXPECT_EQ(g.node(t.updates[0]).op, lazy ? Op::ApplyAdamSparse : Op::ApplyAdam);
    rf::Session s(g);
    s.run({}, {}, g.initializers());
    Vec w = to_doubles(s.variable("emb")), m(w.size(), 0.0), v(w.size(), 0.0);
    Vec before_last;
    for (size_t step = 0; step < batches.size(); ++step) {
      const int tt = int(step + 1);
      before_last = w;
      std::set<int> ran;
      rf::RunOptions o;
      o.on_node_done = [&](int id) { ran.insert(id); };
      s.run({}, {{idx, Tensor::from_vector<int32_t>(batches[step], Shape{N})},
                 {t.hyper, Tensor::from_vector<double>({lr, double(tt)}, Shape{2})}},
            t.updates, &o);
      EXPECT_EQ(ran.count(t.grads[0].node), lazy ? 0u : 1u) << "ScatterAdd ran?";
      // The gradient, by hand.
      Vec grad(w.size(), 0.0);
      std::vector<char> present(size_t(V), 0);
      for (i64 n = 0; n < N; ++n) {
        present[size_t(batches[step][size_t(n)])] = 1;
        for (i64 d = 0; d < D; ++d) grad[size_t(batches[step][size_t(n)] * D + d)] += R[size_t(n * D + d)];
      }
      const double bc1 = 1 - std::pow(b1, tt), bc2 = 1 - std::pow(b2, tt);
      for (i64 e = 0; e < V * D; ++e) {
        const size_t o2 = size_t(e);
        if (lazy && !present[size_t(e / D)]) continue;
        m[o2] = b1 * m[o2] + (1 - b1) * grad[o2];
        v[o2] = b2 * v[o2] + (1 - b2) * grad[o2] * grad[o2];
        if (lazy) w[o2] -= lr * std::sqrt(bc2) / bc1 * m[o2] / (std::sqrt(v[o2]) + eps);
        else w[o2] -= lr / bc1 * m[o2] / (std::sqrt(v[o2] / bc2) + eps);  // torch.optim.Adam
      }
      expect_close(to_doubles(s.variable("emb")), w, 1e-13, "emb after step " + std::to_string(tt));
      expect_close(to_doubles(s.variable("emb/m")), m, 1e-14, "m after step " + std::to_string(tt));
      expect_close(to_doubles(s.variable("emb/v")), v, 1e-14, "v after step " + std::to_string(tt));
    }
    // Row 1 was hit at step 1 only: dense Adam kept moving it (its m is not 0), LazyAdam did not.
    const Vec now = to_doubles(s.variable("emb"));
    for (i64 d = 0; d < D; ++d) {
      if (lazy) EXPECT_EQ(now[size_t(D + d)], before_last[size_t(D + d)]);
      else EXPECT_NE(now[size_t(D + d)], before_last[size_t(D + d)]);
    }
  }
}

TEST(SparseOptimizer, WeightDecayAndDenseReadsKeepDenseUpdates) {
  using K = rf::OptimizerConfig::Kind;
  struct Case {
    K kind;
    double wd;
    bool lazy;
    Op want;
  };
  for (const Case& c : {Case{K::SGD, 0.01, false, Op::ApplySGD}, Case{K::Momentum, 0.01, false, Op::ApplyMomentum},
                        Case{K::Adam, 0.0, false, Op::ApplyAdam}, Case{K::AdamW, 0.01, true, Op::ApplyAdam},
                        Case{K::Adam, 0.0, true, Op::ApplyAdamSparse}, Case{K::AdamW, 0.0, true, Op::ApplyAdamSparse}}) {
    EmbModel m;
    rf::OptimizerConfig cfg;
    cfg.kind = c.kind;
    cfg.weight_decay = c.wd;
    cfg.lazy_adam = c.lazy;
    const rf::TrainOp t = rf::minimize(m.loss, cfg);
    EXPECT_EQ(m.g.node(t.updates[size_t(index_of(t, m.emb.node))]).op, c.want)
        << "kind " << int(c.kind) << " wd " << c.wd << " lazy " << c.lazy;
  }
  // An embedding also read densely (tied weights): its gradient is a sum, dense.
  EmbModel tied(/*tied=*/true);
  rf::OptimizerConfig cfg;
  cfg.kind = K::SGD;
  const rf::TrainOp t = rf::minimize(tied.loss, cfg);
  const int ie = index_of(t, tied.emb.node);
  EXPECT_FALSE(rf::as_sparse(t.grads[size_t(ie)], nullptr, nullptr));
  EXPECT_EQ(tied.g.node(t.updates[size_t(ie)]).op, Op::ApplySGD);
  rf::Session s(tied.g);
  s.run({}, {}, tied.g.initializers());
  EXPECT_NO_THROW(train_step(s, t, tied.idx, kBatches[0], 0.1, 1));
}

// A cached sparse training step allocates nothing from the CPU allocator (the sort's scratch is
// per-thread and only grows).
TEST(SparseOptimizer, CachedSparseStepAllocatesNothing) {
  for (auto kind : {rf::OptimizerConfig::Kind::SGD, rf::OptimizerConfig::Kind::Momentum,
                    rf::OptimizerConfig::Kind::Adam}) {
    EmbModel m;
    rf::OptimizerConfig cfg;
    cfg.kind = kind;
    cfg.lazy_adam = true;
    const rf::TrainOp t = rf::minimize(m.loss, cfg);
    rf::Session s(m.g);
    s.run({}, {}, m.g.initializers());
    std::vector<Tensor> idx;  // the feeds, made before counting
    for (const auto& b : kBatches) idx.push_back(Tensor::from_vector<int32_t>(b, Shape{2, 3}));
    Tensor hyper = Tensor::from_vector<double>({0.1, 1}, Shape{2});
    auto step = [&](int i) {
      hyper.data<double>()[1] = i + 1;
      s.run({}, {{m.idx, idx[size_t(i % 3)]}, {t.hyper, hyper}}, t.updates);
    };
    step(0);
    step(1);
    rf::Allocator& alloc = rf::allocator_for(rf::Device::cpu());
    const size_t before = alloc.system_allocations(), compiled = s.plans_compiled();
    for (int i = 2; i < 12; ++i) step(i);
    EXPECT_EQ(alloc.system_allocations(), before) << "optimizer kind " << int(kind);
    EXPECT_EQ(s.plans_compiled(), compiled);
  }
}

}  // namespace
