// Image classification on top of the registry: the accuracy metric (on the host, and on a GPU
// without a synchronisation) and the scaffolding every image classifier shares (its inputs, its
// cross-entropy loss, its logits), so a classifier's builder only writes its layers.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "models/registry.h"

namespace rf {

// Rows of logits [B, C] (F32 or F64, host) whose first largest entry is at the label (I32 [B]).
int64_t count_correct(const Tensor& logits, const Tensor& labels);

// "accuracy": the fraction of rows of `logits` [N, C] whose largest entry is at the label fed
// to input `labels_input`.
Metric accuracy_metric(Value logits, const std::string& labels_input = "labels");

// An image classifier: inputs "images" (F32 [-1, C, H, W], `image` = {C, H, W}; cast to the
// model's dtype before `body`) and "labels" (I32 [-1]); body maps the images to logits
// [N, classes]; the loss is the mean sparse softmax cross-entropy and the metric accuracy.
ModelSpec image_classifier(Graph& g, const ModelConfig& config, const Shape& image,
                           const std::function<Value(Value images)>& body);

}  // namespace rf
