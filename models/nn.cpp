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

Value linear(Value x, i64 out, const std::string& name, bool bias) {
  RF_CHECK(x.valid(), "linear '", name, "': no input");
  Graph& g = *x.graph;
  const DType dt = g.spec(x).dtype;
  RF_CHECK(g.spec(x).shape.rank == 2, "linear '", name, "': input must be [N, in], got ", g.spec(x).shape.str());
  RF_CHECK(out > 0, "linear '", name, "': out must be positive, got ", out);
  const i64 in = known_dim(x, 1, "linear", name, "feature");
  // Weight, then bias, then the ops: the node order of the models before the registry.
  const Value w = param(g, name + ".weight", Shape{out, in}, dt, double(in));
  const Value b = bias ? param(g, name + ".bias", Shape{out}, dt, double(in)) : Value{};
  const Value y = ops::matmul(x, w, false, true);
  return bias ? ops::bias_add(y, b) : y;
}

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

Value dropout(Value x, double p, const std::string& name) {
  RF_CHECK(p >= 0 && p < 1, "dropout '", name, "': p must be in [0, 1), got ", p);
  if (p == 0) return x;
  // FNV-1a of the name, mixed with the graph seed: the same (seed, name) gives the same masks.
  uint64_t h = 1469598103934665603ull ^ (x.graph->seed() * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return ops::dropout(x, p, h, name);
}

}  // namespace rf::nn
