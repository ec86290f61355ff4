// The built-in image classifiers for 28x28 grey images in 10 classes (Fashion-MNIST), registered
// as "mlp" and "cnn" (models.cpp), and build_model: a classifier's graph as the four values that
// tests and benchmarks drive by hand.
#pragma once
#include <string>

#include "runtime/graph.h"

namespace rf {

struct Model {
  std::string name;
  Value images;  // F32 [N, 1, 28, 28] placeholder (cast to the model's dtype inside)
  Value labels;  // I32 [N] placeholder
  Value logits;  // F32 [N, 10]
  Value loss;    // scalar mean cross-entropy, in the model's dtype
};

// Builds registered classifier `kind` ("mlp": 784-256-256-10, ReLU; "cnn": conv5x5x32 pad2,
// ReLU, maxpool2, conv5x5x64 pad2, ReLU, maxpool2, fc128, ReLU, fc10) into g; dtype (F32 or F64)
// is that of the Variables and the math. Throws rf::Error for an unknown model or one that is
// not a classifier.
Model build_model(Graph& g, const std::string& kind, DType dtype = DType::F32);

}  // namespace rf
