// Image classification helpers (classify.h) and build_model (models.h).
#include "models/classify.h"

#include <algorithm>

#include "models/models.h"
#include "runtime/error.h"
#include "runtime/ops.h"
#if RINGFLOW_CUDA
#include "models/classify_cuda.h"
#endif

namespace rf {

namespace {
template <class T> int64_t count_rows(const T* l, const int32_t* y, i64 b, i64 k) {
  int64_t correct = 0;
  for (i64 i = 0; i < b; ++i) correct += std::max_element(l + i * k, l + (i + 1) * k) - (l + i * k) == y[i];
  return correct;
}
}  // namespace

int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  RF_CHECK(logits.shape().rank == 2 && labels.dtype() == DType::I32 && labels.numel() == logits.shape()[0],
           "count_correct: logits ", logits.shape().str(), ", labels ", labels.shape().str());
  const i64 b = logits.shape()[0], k = logits.shape()[1];
  if (logits.dtype() == DType::F64) return count_rows(logits.data<double>(), labels.data<int32_t>(), b, k);
  RF_CHECK(logits.dtype() == DType::F32, "count_correct: logits must be F32 or F64");
  return count_rows(logits.data<float>(), labels.data<int32_t>(), b, k);
}

Metric accuracy_metric(Value logits, const std::string& labels_input) {
  Metric::DeviceFn device;
#if RINGFLOW_CUDA
  device = [labels_input](const MetricBatch& b, Tensor& out) {
    classify::accuracy_stats(b.fetched.at(0), b.feed(labels_input), out);
  };
#endif
  return Metric::on_host(
      "accuracy", {logits},
      [labels_input](const MetricBatch& b) {
        return MetricSum{double(count_correct(b.fetched.at(0), b.feed(labels_input))), double(b.rows)};
      },
      device);
}

ModelSpec image_classifier(Graph& g, const ModelConfig& config, const Shape& image,
                           const std::function<Value(Value)>& body) {
  RF_CHECK(image.rank == 3, "image_classifier: the image shape is [C, H, W], got ", image.str());
  const DType dt = config.dtype;
  ModelSpec spec;
  const Value images = g.placeholder("images", DType::F32, Shape{-1, image[0], image[1], image[2]});
  const Value labels = g.placeholder("labels", DType::I32, Shape{-1});
  const Value x = dt == DType::F32 ? images : ops::cast(images, dt);
  const Value h = body(x);
  spec.inputs = {{"images", images}, {"labels", labels}};
  spec.loss = ops::mean(ops::sparse_softmax_cross_entropy(h, labels), {}, false, "loss");
  spec.metrics.push_back(accuracy_metric(dt == DType::F32 ? h : ops::cast(h, DType::F32)));
  return spec;
}

Model build_model(Graph& g, const std::string& kind, DType dtype) {
  ModelConfig config;
  config.dtype = dtype;
  const ModelSpec spec = build_model_spec(g, kind, config);
  Model m;
  m.name = kind;
  m.images = spec.input("images");
  m.labels = spec.input("labels");
  m.loss = spec.loss;
  for (const Metric& metric : spec.metrics)
    if (metric.name == "accuracy") m.logits = metric.fetch.at(0);
  RF_CHECK(m.logits.valid(), "model '", kind, "' is not a classifier (no accuracy metric)");
  return m;
}

}  // namespace rf
