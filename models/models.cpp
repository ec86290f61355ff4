// The MLP and CNN graphs. Variables follow PyTorch's names and layouts (Linear weight
// [out, in], Conv2d weight [out, in, kh, kw]) and its default init U(-1/sqrt(fan_in), +).
#include "models/models.h"

#include <cmath>

#include "runtime/ops.h"

namespace rf {

namespace {

Value param(Graph& g, const std::string& name, const Shape& shape, DType dt, double fan_in) {
  const double bound = 1.0 / std::sqrt(fan_in);
  return g.variable(name, shape, dt, Initializer::uniform(-bound, bound));
}

Value dense(Graph& g, Value x, const std::string& name, i64 in, i64 out, DType dt) {
  const Value w = param(g, name + ".weight", Shape{out, in}, dt, double(in));
  const Value b = param(g, name + ".bias", Shape{out}, dt, double(in));
  return ops::bias_add(ops::matmul(x, w, false, true), b);
}

Value conv(Graph& g, Value x, const std::string& name, i64 cin, i64 cout, int k, int pad, DType dt) {
  const double fan_in = double(cin * k * k);
  const Value w = param(g, name + ".weight", Shape{cout, cin, k, k}, dt, fan_in);
  const Value b = param(g, name + ".bias", Shape{cout}, dt, fan_in);
  return ops::bias_add(ops::conv2d(x, w, 1, pad), b);
}

}  // namespace

Model build_model(Graph& g, const std::string& kind, DType dt) {
  Model m;
  m.name = kind;
  RF_CHECK(dt == DType::F32 || dt == DType::F64, "models are F32 or F64, not ", dtype_name(dt));
  m.images = g.placeholder("images", DType::F32, Shape{-1, 1, 28, 28});
  m.labels = g.placeholder("labels", DType::I32, Shape{-1});
  const Value x = dt == DType::F32 ? m.images : ops::cast(m.images, dt);
  Value h;
  if (kind == "mlp") {
    h = ops::flatten(x);
    h = ops::relu(dense(g, h, "fc1", 784, 256, dt));
    h = ops::relu(dense(g, h, "fc2", 256, 256, dt));
    h = dense(g, h, "fc3", 256, 10, dt);
  } else if (kind == "cnn") {
    h = ops::max_pool2d(ops::relu(conv(g, x, "conv1", 1, 32, 5, 2, dt)), 2);
    h = ops::max_pool2d(ops::relu(conv(g, h, "conv2", 32, 64, 5, 2, dt)), 2);
    h = ops::relu(dense(g, ops::flatten(h), "fc1", 64 * 7 * 7, 128, dt));
    h = dense(g, h, "fc2", 128, 10, dt);
  } else {
    fail("unknown model '", kind, "': expected mlp or cnn");
  }
  m.loss = ops::mean(ops::sparse_softmax_cross_entropy(h, m.labels), {}, false, "loss");
  m.logits = dt == DType::F32 ? h : ops::cast(h, DType::F32);
  return m;
}

}  // namespace rf
