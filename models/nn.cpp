// Layer builders (nn.h).
#include "models/nn.h"

#include <cmath>

#include "runtime/error.h"
#include "runtime/ops.h"

namespace rf::nn {

namespace {

Value param(Graph& g, const std::string& name, const Shape& shape, DType dt, double fan_in) {
  const double bound = 1.0 / std::sqrt(fan_in);
  return g.variable(name, shape, dt, Initializer::uniform(-bound, bound));
}

// Dimension `axis` of x, which must be known when the graph is built.
i64 known_dim(Value x, int axis, const char* layer, const std::string& name, const char* what) {
  const OutSpec& s = x.graph->spec(x);
  RF_CHECK(s.shape.rank > (axis < 0 ? -axis - 1 : axis), layer, " '", name, "': input ", s.shape.str(),
           " has no ", what, " axis");
  const i64 d = s.shape.dim(axis);
  RF_CHECK(d > 0, layer, " '", name, "': the input's ", what, " size is unknown (", s.shape.str(), ")");
  return d;
}

}  // namespace

namespace {
// x W^T (+ b): W drawn from weight_init, b zeros; or, without weight_init, both from PyTorch's
// default U(-1/sqrt(in), 1/sqrt(in)).
Value dense(Value x, i64 out, const std::string& name, const Initializer* weight_init, bool bias) {
  RF_CHECK(x.valid(), "linear '", name, "': no input");
  Graph& g = *x.graph;
  const DType dt = g.spec(x).dtype;
  RF_CHECK(g.spec(x).shape.rank == 2, "linear '", name, "': input must be [N, in], got ", g.spec(x).shape.str());
  RF_CHECK(out > 0, "linear '", name, "': out must be positive, got ", out);
  const i64 in = known_dim(x, 1, "linear", name, "feature");
  // Weight, then bias, then the ops: the node order of the models before the registry.
  const Value w = weight_init ? g.variable(name + ".weight", Shape{out, in}, dt, *weight_init)
                              : param(g, name + ".weight", Shape{out, in}, dt, double(in));
  Value b;
  if (bias)
    b = weight_init ? g.variable(name + ".bias", Shape{out}, dt, Initializer::zeros())
                    : param(g, name + ".bias", Shape{out}, dt, double(in));
  const Value y = ops::matmul(x, w, false, true);
  return bias ? ops::bias_add(y, b) : y;
}
}  // namespace

Value linear(Value x, i64 out, const std::string& name, bool bias) { return dense(x, out, name, nullptr, bias); }


Value conv2d(Value x, i64 cout, int kernel, const std::string& name, int stride, int pad, bool bias) {
  RF_CHECK(x.valid(), "conv2d '", name, "': no input");
  Graph& g = *x.graph;
  const DType dt = g.spec(x).dtype;
  RF_CHECK(g.spec(x).shape.rank == 4, "conv2d '", name, "': input must be [N, C, H, W], got ",
           g.spec(x).shape.str());
  RF_CHECK(cout > 0 && kernel > 0, "conv2d '", name, "': channels and kernel must be positive");
  const i64 cin = known_dim(x, 1, "conv2d", name, "channel");
  const double fan_in = double(cin * kernel * kernel);
  const Value w = param(g, name + ".weight", Shape{cout, cin, kernel, kernel}, dt, fan_in);
  const Value b = bias ? param(g, name + ".bias", Shape{cout}, dt, fan_in) : Value{};
  const Value y = ops::conv2d(x, w, stride, pad);
  return bias ? ops::bias_add(y, b) : y;
}

Value linear(Value x, i64 out, const std::string& name, const Initializer& weight_init) {
  return dense(x, out, name, &weight_init, true);
}


Value embedding(Value ids, i64 vocab, i64 dim, DType dtype, const std::string& name, const Initializer& init) {
  RF_CHECK(ids.valid(), "embedding '", name, "': no input");
  RF_CHECK(vocab > 0 && dim > 0, "embedding '", name, "': vocab and dim must be positive");
  const Value table = ids.graph->variable(name + ".weight", Shape{vocab, dim}, dtype, init);
  return ops::gather(table, ids);
}

Value layer_norm(Value x, const std::string& name, double eps) {
  RF_CHECK(x.valid(), "layer_norm '", name, "': no input");
  Graph& g = *x.graph;
  const i64 d = known_dim(x, -1, "layer_norm", name, "last");
  const DType dt = g.spec(x).dtype;
  return ops::layer_norm(x, g.variable(name + ".weight", Shape{d}, dt, Initializer::constant(1)),
                         g.variable(name + ".bias", Shape{d}, dt, Initializer::zeros()), eps);
}

Value multi_head_attention(Value x, i64 seq_len, i64 heads, Value mask, const std::string& name,
                           const AttentionOptions& o) {
  RF_CHECK(x.valid(), "multi_head_attention '", name, "': no input");
  const i64 d = known_dim(x, -1, "multi_head_attention", name, "feature");
  RF_CHECK(heads > 0 && d % heads == 0, "multi_head_attention '", name, "': ", heads, " heads do not divide width ", d);
  RF_CHECK(seq_len > 0, "multi_head_attention '", name, "': seq_len must be positive");
  const i64 dh = d / heads;
  // [B*T, d] -> [B, H, T, d/H]
  auto split_heads = [&](Value v) {
    return ops::transpose(ops::reshape(v, Shape{-1, seq_len, heads, dh}), {0, 2, 1, 3});
  };
  const Value qkv = linear(x, 3 * d, name + ".c_attn", Initializer::normal(0, o.init_std));
  const std::vector<Value> parts = ops::split(qkv, 1, {d, d, d});
  // q scaled by 1/sqrt(d/H) before q k^T: the same scores as scaling them, on T/(d/H) times fewer elements.
  const Value q = split_heads(ops::mul_scalar(parts[0], 1.0 / std::sqrt(double(dh))));
  const Value k = split_heads(parts[1]), v = split_heads(parts[2]);
  const Value s = ops::batch_matmul(q, k, false, true);
  const Value p = dropout(mask.valid() ? ops::masked_softmax(s, mask) : ops::softmax(s), o.dropout, name + ".attn_drop");
  const Value y = ops::reshape(ops::transpose(ops::batch_matmul(p, v), {0, 2, 1, 3}), Shape{-1, d});
  return linear(y, d, name + ".c_proj", Initializer::normal(0, o.proj_std));
}

Value transformer_block(Value x, i64 seq_len, i64 heads, Value mask, const std::string& name,
                        const AttentionOptions& o) {
  const i64 d = known_dim(x, -1, "transformer_block", name, "feature");
  Value h = ops::add(x, dropout(multi_head_attention(layer_norm(x, name + ".ln_1"), seq_len, heads, mask,
                                                     name + ".attn", o),
                                o.dropout, name + ".attn.resid_drop"));
  const Value f = ops::gelu(linear(layer_norm(h, name + ".ln_2"), 4 * d, name + ".mlp.c_fc",
                                   Initializer::normal(0, o.init_std)));
  return ops::add(h, dropout(linear(f, d, name + ".mlp.c_proj", Initializer::normal(0, o.proj_std)), o.dropout,
                             name + ".mlp.resid_drop"));
}

Value dropout(Value x, double p, const std::string& name) {
  RF_CHECK(p >= 0 && p < 1, "dropout '", name, "': p must be in [0, 1), got ", p);
  if (p == 0) return x;
  // FNV-1a of the name, mixed with the graph seed: the same (seed, name) gives the same masks.
  uint64_t h = 1469598103934665603ull ^ (x.graph->seed() * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return ops::dropout(x, p, h, name);
}

}  // namespace rf::nn
