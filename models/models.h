// Model builders for 28x28 grey images in 10 classes (Fashion-MNIST): the MLP and the CNN of
// the README, with PyTorch's layer layout and default initialisation so weights interchange.
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

// kind: "mlp" (784-256-256-10, ReLU) or "cnn" (conv5x5x32 pad2, ReLU, maxpool2, conv5x5x64
// pad2, ReLU, maxpool2, fc128, ReLU, fc10). dtype (F32 or F64) is that of the Variables and
// the math. Throws rf::Error for another kind.
Model build_model(Graph& g, const std::string& kind, DType dtype = DType::F32);

}  // namespace rf
