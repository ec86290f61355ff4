// The MLP and CNN classifiers of the README, registered. Variables follow PyTorch's names and
// layouts (nn.h).
#include "models/classify.h"
#include "models/nn.h"
#include "models/registry.h"
#include "runtime/ops.h"

namespace rf {

namespace detail {
void link_classifier_models() {}  // registry.cpp's anchor: links this file, and its registrations
}  // namespace detail

namespace {

ModelSpec build_mlp(Graph& g, const ModelConfig& c) {
  return image_classifier(g, c, Shape{1, 28, 28}, [](Value x) {
    Value h = ops::flatten(x);
    h = ops::relu(nn::linear(h, 256, "fc1"));
    h = ops::relu(nn::linear(h, 256, "fc2"));
    return nn::linear(h, 10, "fc3");
  });
}

ModelSpec build_cnn(Graph& g, const ModelConfig& c) {
  return image_classifier(g, c, Shape{1, 28, 28}, [](Value x) {
    Value h = ops::max_pool2d(ops::relu(nn::conv2d(x, 32, 5, "conv1", 1, 2)), 2);
    h = ops::max_pool2d(ops::relu(nn::conv2d(h, 64, 5, "conv2", 1, 2)), 2);
    h = ops::relu(nn::linear(ops::flatten(h), 128, "fc1"));
    return nn::linear(h, 10, "fc2");
  });
}

}  // namespace

RF_REGISTER_MODEL("mlp", "Fashion-MNIST classifier: 784-256-256-10 fully connected, ReLU", build_mlp);
RF_REGISTER_MODEL("cnn", "Fashion-MNIST classifier: two 5x5 conv + max-pool layers, fc 128, fc 10", build_cnn);

}  // namespace rf
