// Finite-difference tests (tests/gradcheck_util.h) of BatchMatMul, LayerNorm, Slice, Concat and
// Pad, plus their shape errors and the behaviour the check_op() method cannot see (split's
// builder, Concat's nesting, BatchMatMul's threading, LayerNorm's eps placement).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu.h"
#include "runtime/geometry.h"
#include "tests/gradcheck_util.h"

namespace {

using namespace rf_gradcheck;

// C = op(A) op(B) over broadcast batch dimensions, plain loops.
Vec ref_batch_matmul(const Vec& a, const Shape& as, const Vec& b, const Shape& bs, bool ta, bool tb, const Shape& cs) {
  const int br = cs.rank - 2;
  Shape batch;
  for (int d = 0; d < br; ++d) batch.push_back(cs[d]);
  Shape ab, bb;  // operand batch shapes left-padded to br
  for (int d = 0; d < br; ++d) {
    const int ia = d - (br - (as.rank - 2)), ib = d - (br - (bs.rank - 2));
    ab.push_back(ia >= 0 ? as[ia] : 1);
    bb.push_back(ib >= 0 ? bs[ib] : 1);
  }
  const Shape am{as[as.rank - 2], as[as.rank - 1]}, bm{bs[bs.rank - 2], bs[bs.rank - 1]};
  const i64 ma = am.numel(), mb = bm.numel(), mc = cs[cs.rank - 2] * cs[cs.rank - 1];
  const auto sa = strides_of(ab), sb = strides_of(bb);
  Vec c;
  for (i64 i = 0; i < batch.numel(); ++i) {
    const auto idx = unravel(i, batch);
    i64 oa = 0, ob = 0;
    for (int d = 0; d < br; ++d) {
      oa += (ab[d] == 1 ? 0 : idx[size_t(d)]) * sa[size_t(d)];
      ob += (bb[d] == 1 ? 0 : idx[size_t(d)]) * sb[size_t(d)];
    }
    const Vec ai(a.begin() + oa * ma, a.begin() + (oa + 1) * ma), bi(b.begin() + ob * mb, b.begin() + (ob + 1) * mb);
    const Vec ci = ref_matmul(ai, am, bi, bm, ta, tb);
    EXPECT_EQ(i64(ci.size()), mc);
    c.insert(c.end(), ci.begin(), ci.end());
  }
  return c;
}

void check_bmm(const Shape& as, const Shape& bs, bool ta, bool tb, const Shape& cs) {
  check_op("BatchMatMul " + as.str() + (ta ? "^T" : "") + " x " + bs.str() + (tb ? "^T" : ""), {U(as), U(bs)},
           [=](const Values& x) { return ops::batch_matmul(x[0], x[1], ta, tb); }, cs,
           [=](const std::vector<Vec>& v) { return ref_batch_matmul(v[0], as, v[1], bs, ta, tb, cs); });
}

TEST(OpsGradcheck, BatchMatMulTransposesAndBroadcasting) {
  // All four transpose combinations, a full [2, 3] batch on both sides.
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      check_bmm(ta ? Shape{2, 3, 4, 3} : Shape{2, 3, 3, 4}, tb ? Shape{2, 3, 5, 4} : Shape{2, 3, 4, 5}, ta, tb,
                Shape{2, 3, 3, 5});
  // Attention's shapes: [B, H, T, d] x [B, H, d, T] and back.
  check_bmm({2, 2, 4, 3}, {2, 2, 4, 3}, false, true, {2, 2, 4, 4});
  // B shared by the whole batch (a Linear layer over a sequence), both ways round.
  check_bmm({2, 4, 3}, {3, 5}, false, false, {2, 4, 5});
  check_bmm({2, 4, 3}, {5, 3}, false, true, {2, 4, 5});
  check_bmm({2, 3, 4}, {3, 5}, true, false, {2, 4, 5});  // transposed A: the general rule
  // A shared by the batch.
  check_bmm({4, 3}, {2, 3, 5}, false, false, {2, 4, 5});
  // Mixed broadcasting: neither operand is regular over the whole batch.
  check_bmm({2, 1, 3, 4}, {1, 3, 4, 2}, false, false, {2, 3, 3, 2});
  check_bmm({3, 1, 2, 4}, {2, 4, 3}, false, false, {3, 2, 2, 3});
}

TEST(OpsGradcheckShapes, BatchMatMulRejectsBadShapesNamingTheNode) {
  rf::Graph g;
  const Value a = g.placeholder("a", DType::F64, Shape{2, 3, 4});
  auto throws_naming = [&](Value x, Value y, bool tb, const std::string& what) {
    try {
      ops::batch_matmul(x, y, false, tb, "bad_bmm");
      ADD_FAILURE() << what << ": no error";
    } catch (const rf::Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad_bmm"), std::string::npos) << e.what();
    }
  };
  throws_naming(a, g.placeholder("b1", DType::F64, Shape{2, 5, 6}), false, "inner dimensions");
  throws_naming(a, g.placeholder("b2", DType::F64, Shape{3, 4, 6}), false, "batch 2 vs 3");
  throws_naming(g.placeholder("m", DType::F64, Shape{3, 4}), g.placeholder("n", DType::F64, Shape{4, 5}), false,
                "two matrices");
  throws_naming(a, g.placeholder("b3", DType::F32, Shape{2, 4, 6}), false, "dtype");
  EXPECT_NO_THROW(ops::batch_matmul(a, g.placeholder("b4", DType::F64, Shape{2, 6, 4}), false, true));
}

// Many small products split over threads give exactly the per-matrix gemm results (the batch is
// split, never a product), and the folded [B*T, d] x [d, e] path matches the per-matrix loop.
TEST(OpsGradcheckShapes, BatchMatMulCpuMatchesPerMatrixGemmBitwise) {
  namespace kc = rf::kernels::cpu;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1, 1);
  for (bool shared_b : {false, true}) {
    const i64 batch = 64, m = 128, n = 128, k = 32;
    const Shape as{batch, m, k}, bs = shared_b ? Shape{k, n} : Shape{batch, k, n}, cs{batch, m, n};
    std::vector<float> a(size_t(as.numel())), b(size_t(bs.numel())), c(size_t(cs.numel())), want(c.size());
    for (float& v : a) v = u(rng);
    for (float& v : b) v = u(rng);
    rf::kernels::BatchGemm bg;
    ASSERT_TRUE(rf::geometry::batch_layout(as, bs, cs, false, false, &bg));
    kc::batch_matmul<float>(bg, false, false, a.data(), b.data(), c.data());
    for (i64 i = 0; i < batch; ++i)
      kc::gemm<float>(false, false, m, n, k, 1.f, a.data() + i * m * k, k, b.data() + (shared_b ? 0 : i * k * n), n,
                      0.f, want.data() + i * m * n, n);
    if (shared_b) {  // folded into one product: the same values to rounding, not bit for bit
      for (size_t i = 0; i < c.size(); ++i) ASSERT_NEAR(c[i], want[i], 1e-4) << i;
    } else {
      EXPECT_EQ(c, want);
    }
  }
}

// PyTorch's F.layer_norm: biased variance, eps inside the square root.
Vec ref_layer_norm(const Vec& x, const Vec& g, const Vec& b, i64 cols, double eps) {
  Vec y(x.size());
  for (size_t r = 0; r < x.size() / size_t(cols); ++r) {
    const double* xr = &x[r * size_t(cols)];
    double m = 0, v = 0;
    for (i64 c = 0; c < cols; ++c) m += xr[c];
    m /= double(cols);
    for (i64 c = 0; c < cols; ++c) v += (xr[c] - m) * (xr[c] - m);
    v /= double(cols);
    for (i64 c = 0; c < cols; ++c)
      y[r * size_t(cols) + size_t(c)] = (xr[c] - m) / std::sqrt(v + eps) * g[size_t(c)] + b[size_t(c)];
  }
  return y;
}

TEST(OpsGradcheck, LayerNorm) {
  for (const Shape& s : {Shape{3, 4, 5}, Shape{6, 33}, Shape{7}})
    for (double eps : {1e-5, 0.5}) {
      const i64 d = s.dim(-1);
      check_op("LayerNorm " + s.str() + " eps " + std::to_string(eps), {U(s, -2, 2), U({d}, 0.5, 1.5), U({d})},
               [=](const Values& x) { return ops::layer_norm(x[0], x[1], x[2], eps); }, s,
               [=](const std::vector<Vec>& v) { return ref_layer_norm(v[0], v[1], v[2], d, eps); });
    }
}

// Values by hand: x = [1, 2, 3, 4], eps = 1: mean 2.5, biased variance 1.25, so
// y = (x - 2.5) / sqrt(2.25) (PyTorch's rule; an eps added to the standard deviation instead
// would give (x - 2.5) / (sqrt(1.25) + 1)). mean and rstd come out as the second and third outputs.
TEST(OpsGradcheckShapes, LayerNormMatchesPyTorchByHandAndSavesStatistics) {
  for (DType dt : {DType::F32, DType::F64}) {
    rf::Graph g;
    const Value x = g.placeholder("x", dt, Shape{2, 4});
    const Value gamma = g.placeholder("g", dt, Shape{4}), beta = g.placeholder("b", dt, Shape{4});
    const Value y = ops::layer_norm(x, gamma, beta, 1.0);
    const Value mean{y.graph, y.node, 1}, rstd{y.graph, y.node, 2};
    EXPECT_EQ(g.spec(mean).shape, Shape{2});
    EXPECT_EQ(g.spec(rstd).dtype, dt);
    auto t = [&](const Vec& v, const Shape& s) {
      return dt == DType::F64 ? rf::Tensor::from_vector<double>(v, s)
                              : rf::Tensor::from_vector<float>(std::vector<float>(v.begin(), v.end()), s);
    };
    rf::Session sess(g);
    const auto& res = sess.run({y, mean, rstd}, {{x, t({1, 2, 3, 4, 2, 2, 2, 2}, {2, 4})},
                                                 {gamma, t({1, 1, 1, 1}, {4})},
                                                 {beta, t({0, 0, 0, 10}, {4})}});
    const Vec yv = to_doubles(res[0]), mv = to_doubles(res[1]), rv = to_doubles(res[2]);
    const double tol = dt == DType::F64 ? 1e-15 : 1e-6;
    for (int c = 0; c < 4; ++c) EXPECT_NEAR(yv[size_t(c)], (c + 1 - 2.5) / 1.5 + (c == 3 ? 10 : 0), tol) << c;
    for (int c = 0; c < 4; ++c) EXPECT_NEAR(yv[size_t(4 + c)], c == 3 ? 10 : 0, tol) << c;  // a constant row
    EXPECT_NEAR(mv[0], 2.5, tol);
    EXPECT_NEAR(mv[1], 2.0, tol);
    EXPECT_NEAR(rv[0], 1 / 1.5, tol);
    EXPECT_NEAR(rv[1], 1.0, tol);  // variance 0: 1 / sqrt(eps)
  }
}

TEST(OpsGradcheckShapes, LayerNormRejectsBadShapesNamingTheNode) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{3, 5});
  for (const Shape& gs : {Shape{4}, Shape{1, 5}}) {
    try {
      ops::layer_norm(x, g.placeholder("g" + gs.str(), DType::F64, gs), g.placeholder("b" + gs.str(), DType::F64, {5}),
                      1e-5, "bad_ln" + gs.str());
      ADD_FAILURE() << "gamma " << gs.str() << ": no error";
    } catch (const rf::Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad_ln"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(ops::layer_norm(x, g.placeholder("g", DType::F64, {5}), g.placeholder("b", DType::F64, {6})), rf::Error);
}

// Slices of s along every axis, with negative axis, begin and end and kSliceToEnd.
TEST(OpsGradcheck, SliceAlongEveryAxis) {
  const Shape s{3, 4, 5};
  struct C {
    int axis;
    i64 begin, end;
    Shape out;
  };
  const C cases[] = {{0, 1, 3, {2, 4, 5}},  {1, 1, 3, {3, 2, 5}},  {2, 0, 2, {3, 4, 2}},
                     {-1, -3, -1, {3, 4, 2}}, {-2, 2, rf::Attrs::kSliceToEnd, {3, 2, 5}}, {1, 0, 4, {3, 4, 5}}};
  for (const C& c : cases) {
    check_op("Slice axis " + std::to_string(c.axis) + " [" + std::to_string(c.begin) + ", " + std::to_string(c.end) + ")",
             {U(s)}, [=](const Values& x) { return ops::slice(x[0], c.axis, c.begin, c.end); }, c.out,
             [=](const std::vector<Vec>& v) {
               const int ax = c.axis < 0 ? c.axis + s.rank : c.axis;
               i64 b, e;
               EXPECT_TRUE(rf::geometry::resolve_slice(s[ax], c.begin, c.end, &b, &e));
               Vec y;
               for (i64 i = 0; i < s.numel(); ++i) {
                 const auto idx = unravel(i, s);
                 if (idx[size_t(ax)] >= b && idx[size_t(ax)] < e) y.push_back(v[0][size_t(i)]);
               }
               return y;
             });
  }
}

TEST(OpsGradcheckShapes, SliceRejectsBoundsOutsideTheAxis) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{3, 4});
  for (auto [b, e] : {std::pair<i64, i64>{0, 5}, {3, 2}, {-5, 2}, {5, rf::Attrs::kSliceToEnd}}) {
    try {
      ops::slice(x, 1, b, e, "bad_slice");
      ADD_FAILURE() << "[" << b << ", " << e << "): no error";
    } catch (const rf::Error& e2) {
      EXPECT_NE(std::string(e2.what()).find("bad_slice"), std::string::npos) << e2.what();
    }
  }
  EXPECT_THROW(ops::slice(x, 2, 0, 1), rf::Error);
  EXPECT_THROW(ops::slice(x, -3, 0, 1), rf::Error);
  // An unknown dimension: the length is known when both bounds count from the same side.
  const Value u = g.placeholder("u", DType::F64, Shape{-1, 4});
  EXPECT_EQ(g.spec(ops::slice(u, 0, 1, 3)).shape, (Shape{2, 4}));
  EXPECT_EQ(g.spec(ops::slice(u, 0, -2, rf::Attrs::kSliceToEnd)).shape, (Shape{2, 4}));
  EXPECT_EQ(g.spec(ops::slice(u, 0, 1, -1)).shape, (Shape{-1, 4}));
}

// Concatenation of inputs of different widths along each axis; split is its inverse.
TEST(OpsGradcheck, ConcatAndSplit) {
  for (int axis : {0, 1, 2, -1}) {
    const int ax = axis < 0 ? axis + 3 : axis;
    std::vector<Shape> shapes;
    for (i64 w : {2, 1, 3}) {
      Shape s{2, 3, 2};
      s[ax] = w;
      shapes.push_back(s);
    }
    Shape out{2, 3, 2};
    out[ax] = 6;
    check_op("Concat axis " + std::to_string(axis), {U(shapes[0]), U(shapes[1]), U(shapes[2])},
             [=](const Values& x) { return ops::concat(x, axis); }, out, [=](const std::vector<Vec>& v) {
               Vec y(size_t(out.numel()));
               for (i64 i = 0; i < out.numel(); ++i) {
                 auto idx = unravel(i, out);
                 size_t k = 0;
                 while (idx[size_t(ax)] >= shapes[k][ax]) idx[size_t(ax)] -= shapes[k++][ax];
                 i64 src = 0;
                 const auto st = strides_of(shapes[k]);
                 for (int d = 0; d < 3; ++d) src += idx[size_t(d)] * st[size_t(d)];
                 y[size_t(i)] = v[k][size_t(src)];
               }
               return y;
             });
  }
  // split -> scale each piece differently -> concat: d/dx is the scale of x's piece.
  const Shape s{2, 6, 3};
  check_op("split then concat", {U(s)},
           [](const Values& x) {
             Values parts = ops::split(x[0], 1, {1, 2, 3});
             for (size_t i = 0; i < parts.size(); ++i) parts[i] = ops::mul_scalar(parts[i], double(i + 1));
             return ops::concat(parts, 1);
           },
           s, [=](const std::vector<Vec>& v) {
             Vec y(v[0]);
             for (size_t i = 0; i < y.size(); ++i) {
               const i64 j = unravel(i64(i), s)[1];
               y[i] *= j < 1 ? 1 : j < 3 ? 2 : 3;
             }
             return y;
           });
}

TEST(OpsGradcheckShapes, ConcatOfManyInputsNestsAndSplitChecksSizes) {
  rf::Graph g;
  Values xs;
  Vec want;
  std::vector<rf::Session::Feed> feeds;
  for (int i = 0; i < 40; ++i) {  // beyond Attrs::kMaxConcatInputs: nested Concat nodes
    std::string name = "x";  // not "x" + to_string(i): a GCC 12 -Wrestrict false positive (PR 105329)
    name += std::to_string(i);
    xs.push_back(g.placeholder(name, DType::F64, Shape{2, 1}));
    feeds.push_back({xs.back(), rf::Tensor::from_vector<double>({double(i), double(100 + i)}, Shape{2, 1})});
  }
  const Value c = ops::concat(xs, 1);
  ASSERT_EQ(g.spec(c).shape, (Shape{2, 40}));
  for (int r = 0; r < 2; ++r)
    for (int i = 0; i < 40; ++i) want.push_back(r * 100 + i);
  rf::Session sess(g);
  EXPECT_EQ(sess.run({c}, feeds)[0].to_vector<double>(), want);
  EXPECT_THROW(g.add(rf::Op::Concat, {}), rf::Error);
  EXPECT_THROW(ops::split(xs[0], 0, {1, 2}), rf::Error);
  EXPECT_THROW(ops::concat({xs[0], g.placeholder("w", DType::F64, Shape{3, 1})}, 1), rf::Error);
  const Values parts = ops::split(c, -1, {10, 30}, "qkv");
  EXPECT_EQ(g.node(parts[1]).name, "qkv/1");
  EXPECT_EQ(g.spec(parts[1]).shape, (Shape{2, 30}));
}

TEST(OpsGradcheck, PadAlongEveryAxis) {
  const Shape s{2, 3, 4};
  for (int axis : {0, 1, 2, -2})
    for (auto [before, after] : {std::pair<i64, i64>{1, 2}, {0, 3}, {2, 0}}) {
      const int ax = axis < 0 ? axis + 3 : axis;
      Shape out = s;
      out[ax] += before + after;
      const double value = 0.25;
      check_op("Pad axis " + std::to_string(axis) + " " + std::to_string(before) + "+" + std::to_string(after),
               {U(s)}, [=](const Values& x) { return ops::pad(x[0], axis, before, after, value); }, out,
               [=](const std::vector<Vec>& v) {
                 Vec y(size_t(out.numel()), value);
                 const auto so = strides_of(out);
                 for (i64 i = 0; i < s.numel(); ++i) {
                   auto idx = unravel(i, s);
                   idx[size_t(ax)] += before;
                   i64 o = 0;
                   for (int d = 0; d < 3; ++d) o += idx[size_t(d)] * so[size_t(d)];
                   y[size_t(o)] = v[0][size_t(i)];
                 }
                 return y;
               });
    }
}

// The ops together as a Transformer block uses them: qkv from a Linear over the sequence
// (BatchMatMul with a shared weight), split into q, k, v (Slices), heads (Reshape, Transpose),
// attention (BatchMatMul, Softmax, BatchMatMul), heads joined back, a residual and LayerNorm.
// Forward against plain loops, gradients of x, the weight, gamma and beta by finite differences.
TEST(OpsGradcheck, AttentionBlockComposite) {
  const i64 B = 2, T = 3, D = 4, H = 2, hd = D / H;
  const double scale = 1.0 / std::sqrt(double(hd));
  const Shape xs{B, T, D}, ws{D, 3 * D};
  auto block = [=](const Values& in) {
    const Values qkv = ops::split(ops::batch_matmul(in[0], in[1]), -1, {D, D, D});
    Values heads;
    for (const Value& v : qkv) heads.push_back(ops::transpose(ops::reshape(v, Shape{B, T, H, hd}), {0, 2, 1, 3}));
    const Value p = ops::softmax(ops::mul_scalar(ops::batch_matmul(heads[0], heads[1], false, true), scale));
    const Value o = ops::reshape(ops::transpose(ops::batch_matmul(p, heads[2]), {0, 2, 1, 3}), Shape{B, T, D});
    return ops::layer_norm(ops::add(o, in[0]), in[2], in[3], 1e-5);
  };
  auto ref = [=](const std::vector<Vec>& v) {
    const Vec &x = v[0], &w = v[1];
    Vec qkv(size_t(B * T * 3 * D), 0.0);
    for (i64 r = 0; r < B * T; ++r)
      for (i64 j = 0; j < 3 * D; ++j)
        for (i64 c = 0; c < D; ++c) qkv[size_t(r * 3 * D + j)] += x[size_t(r * D + c)] * w[size_t(c * 3 * D + j)];
    auto at = [&](int which, i64 b, i64 t, i64 h, i64 e) { return qkv[size_t((b * T + t) * 3 * D + which * D + h * hd + e)]; };
    Vec y(size_t(B * T * D));
    for (i64 b = 0; b < B; ++b)
      for (i64 h = 0; h < H; ++h)
        for (i64 t = 0; t < T; ++t) {
          Vec s(static_cast<size_t>(T), 0.0);
          for (i64 u = 0; u < T; ++u) {
            for (i64 e = 0; e < hd; ++e) s[size_t(u)] += at(0, b, t, h, e) * at(1, b, u, h, e);
            s[size_t(u)] *= scale;
          }
          const Vec p = ref_softmax(s, T, false);
          for (i64 e = 0; e < hd; ++e) {
            double o = 0;
            for (i64 u = 0; u < T; ++u) o += p[size_t(u)] * at(2, b, u, h, e);
            y[size_t((b * T + t) * D + h * hd + e)] = o;
          }
        }
    for (size_t i = 0; i < y.size(); ++i) y[i] += x[i];
    return ref_layer_norm(y, v[2], v[3], D, 1e-5);
  };
  check_op("attention block", {U(xs), U(ws), U({D}, 0.5, 1.5), U({D})}, block, xs, ref);
}

// Slice, Concat and Pad run on F32 and F64 only; another dtype is an error naming the node and dtype.
TEST(OpsGradcheckShapes, SlicingOtherDtypesFailNamingNodeAndDtype) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::I32, Shape{2, 3});
  const Value s = ops::slice(x, 1, 0, 2, "int_slice");
  rf::Session sess(g);
  try {
    sess.run({s}, {{x, rf::Tensor::from_vector<int32_t>({1, 2, 3, 4, 5, 6}, Shape{2, 3})}});
    ADD_FAILURE() << "no error";
  } catch (const rf::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("int_slice"), std::string::npos) << m;
    EXPECT_NE(m.find("I32"), std::string::npos) << m;
  }
  EXPECT_THROW(ops::layer_norm(g.placeholder("f", DType::F32, Shape{2, 3}), g.placeholder("g", DType::F64, Shape{3}),
                               g.placeholder("b", DType::F64, Shape{3})),
               rf::Error);
}

}  // namespace
