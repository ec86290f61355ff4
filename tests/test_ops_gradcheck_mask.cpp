// Finite-difference and reference tests of the mask ops (Rsqrt, Where, Compare, MaskedSoftmax)
// and of SparseSoftmaxXent's ignore_index and label smoothing (PyTorch's F.cross_entropy
// semantics), with the machinery of tests/gradcheck_util.h: forward against plain double loops,
// gradients against central differences, f64 on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "autodiff/gradients.h"
#include "kernels/elementwise.h"
#include "runtime/error.h"
#include "runtime/graph.h"
#include "runtime/ops.h"
#include "runtime/session.h"
#include "tests/gradcheck_util.h"

namespace {

using namespace rf_gradcheck;
constexpr double kInf = std::numeric_limits<double>::infinity();

// Flat index into an operand of shape s (left-padded to ys's rank) of the output element i.
i64 bcast_index(i64 i, const Shape& s, const Shape& ys) {
  const Shape p = left_pad(s, ys.rank);
  const auto st = strides_of(p);
  const auto idx = unravel(i, ys);
  i64 o = 0;
  for (int d = 0; d < ys.rank; ++d) o += (p[d] == 1 ? 0 : idx[size_t(d)]) * st[size_t(d)];
  return o;
}

std::vector<uint8_t> random_bits(i64 n, unsigned seed) {
  std::mt19937 rng(seed);
  std::bernoulli_distribution b(0.5);
  std::vector<uint8_t> v(static_cast<size_t>(n));
  for (auto& c : v) c = b(rng) ? uint8_t(1 + rng() % 200) : uint8_t(0);  // any nonzero byte is true
  return v;
}

// ---- Rsqrt ----

TEST(OpsGradcheck, MaskRsqrt) {
  const Shape s{3, 4, 5};
  check_op("Rsqrt", {Pos(s)}, [](const Values& x) { return ops::rsqrt(x[0]); }, s,
           [](const std::vector<Vec>& v) { return ref_unary(v[0], [](double x) { return 1 / std::sqrt(x); }); });
  // Through a chain: rsqrt(x^2 + 1) (LayerNorm's 1/sqrt(var + eps) shape).
  check_op("Rsqrt(Square + 1)", {U(s, -2, 2)},
           [](const Values& x) { return ops::rsqrt(ops::add_scalar(ops::square(x[0]), 1.0)); }, s,
           [](const std::vector<Vec>& v) { return ref_unary(v[0], [](double x) { return 1 / std::sqrt(x * x + 1); }); });
}

// ---- Where ----

struct WhereCase {
  Shape cs, xs, ys, out;
};

TEST(OpsGradcheck, MaskWhereBroadcast) {
  const WhereCase cases[] = {
      {{2, 3, 4}, {2, 3, 4}, {2, 3, 4}, {2, 3, 4}},  // same shapes
      {{3, 1}, {2, 3, 4}, {4}, {2, 3, 4}},           // cond and y broadcast
      {{2, 1, 4}, {1, 3, 1}, {}, {2, 3, 4}},         // x broadcast both ways, y a scalar
      {{2, 3, 4}, {4}, {3, 1}, {2, 3, 4}},           // cond full, both values broadcast
      {{}, {3, 5}, {3, 5}, {3, 5}},                  // a scalar condition
  };
  unsigned seed = 1;
  for (const WhereCase& c : cases) {
    const std::vector<uint8_t> cond = random_bits(c.cs.numel(), seed++);
    check_op("Where cond" + c.cs.str() + " x" + c.xs.str() + " y" + c.ys.str(), {U(c.xs), U(c.ys)},
             [=](const Values& x) {
               const Value cv = x[0].graph->constant(rf::Tensor::from_vector<uint8_t>(cond, c.cs));
               return ops::where(cv, x[0], x[1]);
             },
             c.out,
             [=](const std::vector<Vec>& v) {
               Vec y(size_t(c.out.numel()));
               for (i64 i = 0; i < c.out.numel(); ++i)
                 y[size_t(i)] = cond[size_t(bcast_index(i, c.cs, c.out))] ? v[0][size_t(bcast_index(i, c.xs, c.out))]
                                                                           : v[1][size_t(bcast_index(i, c.ys, c.out))];
               return y;
             });
  }
  // masked_fill(x, cond, value) = where(cond, value, x); cond [3, 1] broadcast over x [3, 4].
  const Shape xs{3, 4}, cs{3, 1};
  const std::vector<uint8_t> cond{1, 0, 1};
  check_op("masked_fill", {U(xs)},
           [=](const Values& x) {
             return ops::masked_fill(x[0], x[0].graph->constant(rf::Tensor::from_vector<uint8_t>(cond, cs)), -7.5);
           },
           xs,
           [=](const std::vector<Vec>& v) {
             Vec y = v[0];
             for (size_t i = 0; i < y.size(); ++i)
               if (cond[i / 4]) y[i] = -7.5;
             return y;
           });
}

TEST(OpsGradcheck, MaskWhereRejectsBadInputs) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{3, 4});
  const Value fcond = g.placeholder("fcond", DType::F64, Shape{3, 4});
  const Value cond = g.placeholder("cond", DType::U8, Shape{3, 4});
  const Value ix = g.placeholder("ix", DType::I32, Shape{3, 4});
  const Value x32 = g.placeholder("x32", DType::F32, Shape{3, 4});
  const Value bad = g.placeholder("bad", DType::F64, Shape{5});
  auto expect_error = [](const std::function<void()>& f, const std::string& node, const std::string& word) {
    try {
      f();
      ADD_FAILURE() << "no error for " << node;
    } catch (const rf::Error& e) {
      EXPECT_NE(std::string(e.what()).find(node), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  expect_error([&] { ops::where(fcond, x, x, "w_fcond"); }, "w_fcond", "U8");
  expect_error([&] { ops::where(cond, ix, ix, "w_int"); }, "w_int", "I32");
  expect_error([&] { ops::where(cond, x, x32, "w_mixed"); }, "w_mixed", "dtype mismatch");
  expect_error([&] { ops::where(cond, x, bad, "w_shape"); }, "w_shape", "broadcast");
}

// ---- Compare ----

TEST(OpsGradcheck, MaskCompare) {
  using rf::kernels::CompareOp;
  struct K {
    const char* name;
    Value (*build)(Value, Value, const std::string&);
    CompareOp op;
  };
  const K kinds[] = {{"equal", ops::equal, CompareOp::Eq},        {"not_equal", ops::not_equal, CompareOp::Ne},
                     {"less", ops::less, CompareOp::Lt},          {"less_equal", ops::less_equal, CompareOp::Le},
                     {"greater", ops::greater, CompareOp::Gt},    {"greater_equal", ops::greater_equal, CompareOp::Ge}};
  const Shape as{2, 3, 4}, bs{3, 1}, ys{2, 3, 4};
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> u(-2, 2);  // small integers: many ties
  Vec av(size_t(as.numel())), bv(size_t(bs.numel()));
  for (double& v : av) v = u(rng);
  for (double& v : bv) v = u(rng);
  for (DType t : {DType::F64, DType::F32, DType::I32, DType::I64})
    for (const K& k : kinds) {
      SCOPED_TRACE(std::string(k.name) + " " + rf::dtype_name(t));
      auto make = [&](const Vec& v, const Shape& s) {
        switch (t) {
          case DType::F32: return rf::Tensor::from_vector<float>(std::vector<float>(v.begin(), v.end()), s);
          case DType::I32: return rf::Tensor::from_vector<int32_t>(std::vector<int32_t>(v.begin(), v.end()), s);
          case DType::I64: return rf::Tensor::from_vector<int64_t>(std::vector<int64_t>(v.begin(), v.end()), s);
          default: return rf::Tensor::from_vector<double>(v, s);
        }
      };
      rf::Graph g;
      const Value a = g.placeholder("a", t, as), b = g.placeholder("b", t, bs);
      const Value y = k.build(a, b, "");
      ASSERT_EQ(g.spec(y).dtype, DType::U8);
      ASSERT_EQ(g.spec(y).shape, ys);
      rf::Session s(g);
      const std::vector<uint8_t> got = s.run({y}, {{a, make(av, as)}, {b, make(bv, bs)}})[0].to_vector<uint8_t>();
      for (i64 i = 0; i < ys.numel(); ++i) {
        const double x0 = av[size_t(bcast_index(i, as, ys))], x1 = bv[size_t(bcast_index(i, bs, ys))];
        EXPECT_EQ(got[size_t(i)], rf::kernels::compare_values(k.op, x0, x1) ? 1 : 0) << i << ": " << x0 << " vs " << x1;
      }
    }
  // NaN: every comparison is false except not_equal.
  rf::Graph g;
  const Value a = g.constant(rf::Tensor::from_vector<double>({std::nan(""), 1.0}, Shape{2}));
  const Value b = g.constant(rf::Tensor::from_vector<double>({std::nan(""), std::nan("")}, Shape{2}));
  const Values fetches{ops::equal(a, b), ops::not_equal(a, b), ops::less_equal(a, b)};
  rf::Session s(g);
  const auto& r = s.run(fetches);
  EXPECT_EQ(r[0].to_vector<uint8_t>(), (std::vector<uint8_t>{0, 0}));
  EXPECT_EQ(r[1].to_vector<uint8_t>(), (std::vector<uint8_t>{1, 1}));
  EXPECT_EQ(r[2].to_vector<uint8_t>(), (std::vector<uint8_t>{0, 0}));
}

// ---- MaskedSoftmax ----

// softmax(x + mask) over the last axis, mask broadcast to x's shape; a fully -inf row gives zeros.
Vec ref_masked_softmax(const Vec& x, const Shape& xs, const Vec& m, const Shape& ms) {
  Vec z(x.size());
  for (i64 i = 0; i < xs.numel(); ++i) z[size_t(i)] = x[size_t(i)] + m[size_t(bcast_index(i, ms, xs))];
  const i64 cols = xs.dim(-1);
  Vec y(x.size(), 0.0);
  for (i64 r = 0; r < xs.numel() / cols; ++r) {
    const double* zr = &z[size_t(r * cols)];
    double mx = -kInf;
    for (i64 c = 0; c < cols; ++c) mx = std::max(mx, zr[c]);
    if (mx == -kInf) continue;  // fully masked: zeros
    double s = 0;
    for (i64 c = 0; c < cols; ++c) s += std::exp(zr[c] - mx);
    for (i64 c = 0; c < cols; ++c) y[size_t(r * cols + c)] = std::exp(zr[c] - mx) / s;
  }
  return y;
}

Vec causal(i64 T) {
  Vec m(size_t(T * T));
  for (i64 i = 0; i < T; ++i)
    for (i64 j = 0; j < T; ++j) m[size_t(i * T + j)] = j > i ? -kInf : 0.0;
  return m;
}

TEST(OpsGradcheck, MaskedSoftmax) {
  // Constant masks with -inf entries: the gradient of x only (masked entries: 0 both ways).
  struct C {
    std::string name;
    Shape xs, ms;
    Vec mask;
  };
  Vec pad(2 * 5);  // [2, 1, 1, 5]: lengths 3 and 0 (the second batch row is fully masked)
  for (i64 t = 0; t < 5; ++t) {
    pad[size_t(t)] = t < 3 ? 0.0 : -kInf;
    pad[size_t(5 + t)] = -kInf;
  }
  Vec rowmask{0.0, -kInf, 1.5, -kInf};  // [4, 1]: rows 1 and 3 fully masked, the others shifted
  Vec bias(6);
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = i == 2 ? -kInf : 0.3 * double(i) - 1.0;
  const C consts[] = {
      {"causal [5,5] on [2,2,5,5]", {2, 2, 5, 5}, {5, 5}, causal(5)},
      {"padding [2,1,1,5] on [2,2,3,5]", {2, 2, 3, 5}, {2, 1, 1, 5}, pad},
      {"row mask [4,1] on [4,7]", {4, 7}, {4, 1}, rowmask},
      {"bias [6] with one -inf on [3,6]", {3, 6}, {6}, bias},
  };
  for (const C& c : consts)
    check_op("MaskedSoftmax " + c.name, {U(c.xs, -3, 3)},
             [=](const Values& x) {
               return ops::masked_softmax(x[0], x[0].graph->constant(rf::Tensor::from_vector<double>(c.mask, c.ms)));
             },
             c.xs, [=](const std::vector<Vec>& v) { return ref_masked_softmax(v[0], c.xs, c.mask, c.ms); });
  // A finite mask fed like x: both get gradients (the mask's summed over its broadcast axes).
  for (const auto& [xs, ms] : std::vector<std::pair<Shape, Shape>>{{{3, 6}, {6}}, {{2, 3, 4}, {3, 1}}, {{3, 4}, {3, 4}}})
    check_op("MaskedSoftmax finite mask " + ms.str() + " on " + xs.str(), {U(xs, -3, 3), U(ms, -2, 2)},
             [](const Values& x) { return ops::masked_softmax(x[0], x[1]); }, xs,
             [xs = xs, ms = ms](const std::vector<Vec>& v) { return ref_masked_softmax(v[0], xs, v[1], ms); });
}

// Fully masked rows: zeros forward and backward, no NaN anywhere; and the mask costs no
// gradient nodes when it is a constant.
TEST(OpsGradcheck, MaskedSoftmaxFullyMaskedRowsAreZeroNotNan) {
  const Shape xs{3, 4};
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, xs);
  Vec mv(4, -kInf);
  const Value mask = g.constant(rf::Tensor::from_vector<double>(mv, Shape{1, 4}));
  const Value y = ops::masked_softmax(x, mask);
  const int before = g.size();
  const Value loss = ops::sum(ops::mul(y, y));
  const Values gr = rf::gradients(loss, {x});
  int sums = 0;
  for (int id = before; id < g.size(); ++id) sums += g.node(id).op == rf::Op::SumLike;
  EXPECT_EQ(sums, 0) << "a constant mask must not get a gradient";
  rf::Session s(g);
  std::vector<double> xv(12, 1.0);
  xv[5] = -kInf;  // an -inf in x as well
  const auto& r = s.run({y, gr[0]}, {{x, rf::Tensor::from_vector<double>(xv, xs)}});
  for (double v : r[0].to_vector<double>()) EXPECT_EQ(v, 0.0);
  for (double v : r[1].to_vector<double>()) EXPECT_EQ(v, 0.0);
}

TEST(OpsGradcheck, MaskedSoftmaxRejectsBadMasks) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{2, 3, 4});
  for (const Shape& ms : {Shape{5}, Shape{3, 3}, Shape{2, 2, 3, 4}, Shape{4, 4}}) {
    const Value m = g.placeholder("m" + std::to_string(ms.numel()) + "_" + std::to_string(ms.rank), DType::F64, ms);
    try {
      ops::masked_softmax(x, m, "ms_bad");
      ADD_FAILURE() << "mask " << ms.str() << " accepted for x [2,3,4]";
    } catch (const rf::Error& e) {
      EXPECT_NE(std::string(e.what()).find("ms_bad"), std::string::npos) << e.what();
    }
  }
  // x broadcast to a bigger mask is refused too (the output is x's shape).
  const Value small = g.placeholder("small", DType::F64, Shape{1, 4});
  EXPECT_THROW(ops::masked_softmax(small, g.placeholder("big", DType::F64, Shape{3, 4})), rf::Error);
  const Value m32 = g.placeholder("m32", DType::F32, Shape{4});
  EXPECT_THROW(ops::masked_softmax(x, m32), rf::Error);
}

TEST(MaskBuilders, CausalAndPaddingMasks) {
  for (DType dt : {DType::F32, DType::F64}) {
    rf::Graph g;
    const Value c = ops::causal_mask(g, 4, dt);
    const Value len32 = g.placeholder("len32", DType::I32, Shape{-1});
    const Value len64 = g.placeholder("len64", DType::I64, Shape{3});
    const Value p32 = ops::padding_mask(len32, 5, dt);
    const Value p64 = ops::padding_mask(len64, 5, dt);
    EXPECT_EQ(g.spec(c).shape, (Shape{4, 4}));
    EXPECT_EQ(g.spec(p32).shape, (Shape{-1, 1, 1, 5}));
    EXPECT_EQ(g.spec(p64).shape, (Shape{3, 1, 1, 5}));
    EXPECT_EQ(g.spec(p32).dtype, dt);
    rf::Session s(g);
    const auto& r = s.run({ops::cast(c, DType::F64), ops::cast(p32, DType::F64), ops::cast(p64, DType::F64)},
                          {{len32, rf::Tensor::from_vector<int32_t>({2, 0, 5}, Shape{3})},
                           {len64, rf::Tensor::from_vector<int64_t>({1, 7, 4}, Shape{3})}});
    const Vec cm = r[0].to_vector<double>();
    for (i64 i = 0; i < 4; ++i)
      for (i64 j = 0; j < 4; ++j) EXPECT_EQ(cm[size_t(i * 4 + j)], j > i ? -kInf : 0.0) << i << "," << j;
    EXPECT_EQ(r[1].shape(), (Shape{3, 1, 1, 5}));
    const std::vector<std::vector<i64>> lens{{2, 0, 5}, {1, 7, 4}};
    for (int k = 0; k < 2; ++k) {
      const Vec pm = r[1 + k].to_vector<double>();
      for (i64 b = 0; b < 3; ++b)
        for (i64 t = 0; t < 5; ++t)
          EXPECT_EQ(pm[size_t(b * 5 + t)], t < lens[size_t(k)][size_t(b)] ? 0.0 : -kInf) << k << ": " << b << "," << t;
    }
  }
}

// Causal attention end to end: masked_softmax(scores, causal_mask) equals softmax(scores + mask)
// where every row has an unmasked entry, and the padded (length-0) batch row is zeros.
TEST(MaskBuilders, MaskedSoftmaxMatchesAddThenSoftmax) {
  const Shape xs{2, 3, 4, 4};
  std::mt19937 rng(9);
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, xs);
  const Value cm = ops::causal_mask(g, 4, DType::F64);
  const Value lens = g.placeholder("lens", DType::I32, Shape{2});
  const Value fused = ops::masked_softmax(x, cm);
  const Value plain = ops::softmax(ops::add(x, cm));
  const Value padded = ops::masked_softmax(x, ops::padding_mask(lens, 4, DType::F64));
  rf::Session s(g);
  const auto& r = s.run({fused, plain, padded}, {{x, rf::Tensor::from_vector<double>(generate(U(xs, -3, 3), rng), xs)},
                                                 {lens, rf::Tensor::from_vector<int32_t>({3, 0}, Shape{2})}});
  expect_close(r[0].to_vector<double>(), r[1].to_vector<double>(), 1e-15, "fused vs add + softmax");
  const Vec p = r[2].to_vector<double>();
  for (size_t i = p.size() / 2; i < p.size(); ++i) EXPECT_EQ(p[i], 0.0) << i;  // batch row 1: length 0
  for (size_t i = 0; i < p.size() / 2; ++i)
    if (i % 4 == 3) {
      EXPECT_EQ(p[i], 0.0) << i;  // batch row 0: key 3 >= length 3
    }
}

// ---- SparseSoftmaxXent: ignore_index and label smoothing ----

// PyTorch's F.cross_entropy(x, labels, reduction='none', ignore_index=ii, label_smoothing=eps).
Vec ref_xent(const Vec& x, const Vec& labels, i64 C, double ii, double eps) {
  const i64 N = i64(labels.size());
  const Vec ls = ref_softmax(x, C, true);
  Vec y(size_t(N), 0.0);
  for (i64 r = 0; r < N; ++r) {
    if (labels[size_t(r)] == ii) continue;
    double smooth = 0;
    for (i64 c = 0; c < C; ++c) smooth -= ls[size_t(r * C + c)];
    y[size_t(r)] = (1 - eps) * -ls[size_t(r * C + i64(labels[size_t(r)]))] + eps / double(C) * smooth;
  }
  return y;
}
Vec ref_xent_backprop(const Vec& x, const Vec& labels, i64 C, double ii, double eps) {
  Vec p = ref_softmax(x, C, false);
  for (size_t r = 0; r < labels.size(); ++r)
    for (i64 c = 0; c < C; ++c) {
      double& v = p[r * size_t(C) + size_t(c)];
      if (labels[r] == ii) v = 0;
      else v -= (c == i64(labels[r]) ? 1 - eps : 0) + eps / double(C);
    }
  return p;
}

TEST(OpsGradcheck, SparseSoftmaxXentIgnoreAndSmoothing) {
  const i64 N = 8, C = 5;
  // Labels as a Const with PyTorch's default ignore_index -100 in rows 1, 4, 5.
  const Vec fixed{3, -100, 0, 4, -100, -100, 2, 1};
  for (DType lt : {DType::I32, DType::I64})
    for (double eps : {0.0, 0.1, 0.35}) {
      const std::string tag = std::string(" labels ") + rf::dtype_name(lt) + " eps " + std::to_string(eps);
      const ops::XentOptions o{-100, eps};
      auto labels_const = [=](rf::Graph& g) {
        return lt == DType::I32 ? g.constant(rf::Tensor::from_vector<int32_t>({3, -100, 0, 4, -100, -100, 2, 1}, Shape{N}))
                                : g.constant(rf::Tensor::from_vector<int64_t>({3, -100, 0, 4, -100, -100, 2, 1}, Shape{N}));
      };
      check_op("xent ignore -100 loss" + tag, {U({N, C}, -3, 3)},
               [=](const Values& x) { return ops::sparse_softmax_cross_entropy(x[0], labels_const(*x[0].graph), o); },
               Shape{N}, [=](const std::vector<Vec>& v) { return ref_xent(v[0], fixed, C, -100, eps); });
      check_op("xent ignore -100 backprop" + tag, {U({N, C}, -3, 3)},
               [=](const Values& x) {
                 const Value l = ops::sparse_softmax_cross_entropy(x[0], labels_const(*x[0].graph), o);
                 return Value{l.graph, l.node, 1};
               },
               Shape{N, C}, [=](const std::vector<Vec>& v) { return ref_xent_backprop(v[0], fixed, C, -100, eps); },
               Opts{.grad = false});
      // reduction='mean': sum over the 5 kept rows / 5.
      check_op("xent ignore -100 mean" + tag, {U({N, C}, -3, 3)},
               [=](const Values& x) {
                 return ops::sparse_softmax_cross_entropy_mean(x[0], labels_const(*x[0].graph), o);
               },
               Shape{}, [=](const std::vector<Vec>& v) {
                 double s = 0;
                 for (double l : ref_xent(v[0], fixed, C, -100, eps)) s += l;
                 return Vec{s / 5};
               });
      // A valid class as ignore_index (PyTorch allows it): fed random labels, class 4 ignored.
      const ops::XentOptions o2{4, eps};
      check_op("xent ignore class 4" + tag, {U({N, C}, -3, 3), Labels({N}, int(C), lt)},
               [=](const Values& x) { return ops::sparse_softmax_cross_entropy(x[0], x[1], o2); }, Shape{N},
               [=](const std::vector<Vec>& v) {
                 int ignored = 0;
                 for (double l : v[1]) ignored += l == 4;
                 EXPECT_GT(ignored, 0) << "the test's labels should include the ignored class";
                 return ref_xent(v[0], v[1], C, 4, eps);
               });
      // Smoothing without ignore_index.
      check_op("xent smoothing only" + tag, {U({N, C}, -3, 3), Labels({N}, int(C), lt)},
               [=](const Values& x) {
                 return ops::sparse_softmax_cross_entropy(x[0], x[1], ops::XentOptions{INT64_MIN, eps});
               },
               Shape{N}, [=](const std::vector<Vec>& v) { return ref_xent(v[0], v[1], C, -1e300, eps); });
    }
}

// Every label ignored: loss 0, backprop 0, gradient 0, mean 0, count 0, and no NaN.
TEST(OpsGradcheck, SparseSoftmaxXentAllIgnored) {
  const i64 N = 4, C = 3;
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{N, C});
  const Value labels = g.placeholder("labels", DType::I64, Shape{-1});
  const ops::XentOptions o{-100, 0.2};
  const Value loss = ops::sparse_softmax_cross_entropy(x, labels, o);
  const Value mean = ops::sparse_softmax_cross_entropy_mean(x, labels, o);
  const Value count = ops::count_not_ignored(labels, -100, DType::F64);
  const Values gr = rf::gradients(mean, {x});
  rf::Session s(g);
  std::mt19937 rng(3);
  const rf::Tensor xv = rf::Tensor::from_vector<double>(generate(U({N, C}), rng), Shape{N, C});
  {
    const auto& r = s.run({loss, Value{loss.graph, loss.node, 1}, mean, count, gr[0]},
                          {{x, xv}, {labels, rf::Tensor::from_vector<int64_t>({-100, -100, -100, -100}, Shape{N})}});
    for (int k = 0; k < 5; ++k)
      for (double v : r[size_t(k)].to_vector<double>()) EXPECT_EQ(v, 0.0) << "fetch " << k;
  }
  // Two of four kept: count 2, mean = (l0 + l2) / 2.
  const auto& r = s.run({loss, mean, count}, {{x, xv}, {labels, rf::Tensor::from_vector<int64_t>({1, -100, 2, -100}, Shape{N})}});
  const Vec l = r[0].to_vector<double>();
  EXPECT_EQ(l[1], 0.0);
  EXPECT_EQ(l[3], 0.0);
  EXPECT_GT(l[0], 0.0);
  EXPECT_NEAR(r[1].item(), (l[0] + l[2]) / 2, 1e-15);
  EXPECT_EQ(r[2].item(), 2.0);
}

TEST(OpsGradcheck, SparseSoftmaxXentOptionErrors) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{3, 4});
  const Value labels = g.placeholder("labels", DType::I32, Shape{3});
  for (double eps : {-0.1, 1.0, 1.5})
    EXPECT_THROW(ops::sparse_softmax_cross_entropy(x, labels, ops::XentOptions{-100, eps}, "bad_eps"), rf::Error);
  // Out-of-range labels other than ignore_index still fail on the CPU, naming the node.
  const Value l = ops::sparse_softmax_cross_entropy(x, labels, ops::XentOptions{-1, 0.0}, "xent_node");
  rf::Session s(g);
  std::vector<rf::Session::Feed> feeds{{x, rf::Tensor::from_vector<double>(Vec(12, 0.5), Shape{3, 4})},
                                       {labels, rf::Tensor::from_vector<int32_t>({-1, 3, -1}, Shape{3})}};
  EXPECT_NO_THROW(s.run({l}, feeds));
  feeds[1].second = rf::Tensor::from_vector<int32_t>({-1, 4, -1}, Shape{3});
  try {
    s.run({l}, feeds);
    ADD_FAILURE() << "label 4 of 4 classes accepted";
  } catch (const rf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("xent_node"), std::string::npos) << e.what();
  }
  // count_not_ignored with an ignore_index I32 labels cannot hold, or none: every row.
  rf::Graph g2;
  const Value lab = g2.placeholder("lab", DType::I32, Shape{-1});
  const Value c1 = ops::count_not_ignored(lab, int64_t(1) << 40, DType::F32);
  const Value c2 = ops::count_not_ignored(lab, INT64_MIN, DType::F64);
  const Value c3 = ops::count_not_ignored(lab, 7, DType::F64);
  rf::Session s2(g2);
  const auto& r = s2.run({c1, c2, c3}, {{lab, rf::Tensor::from_vector<int32_t>({7, 1, 7, 2, 0}, Shape{5})}});
  EXPECT_EQ(r[0].item(), 5.0);
  EXPECT_EQ(r[1].item(), 5.0);
  EXPECT_EQ(r[2].item(), 3.0);
}

}  // namespace
