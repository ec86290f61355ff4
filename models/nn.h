// Layer builders with PyTorch's names, layouts and default initialisation, so that a model's
// Variables are a PyTorch state_dict after renaming at most: nn::linear is nn.Linear (weight
// [out, in], bias [out]), nn::conv2d is nn.Conv2d (weight [out, in, kh, kw]), both initialised
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch's reset_parameters draws them (its kaiming
// uniform with a = sqrt(5) is that bound for the weight). Each takes its input's dtype and
// sizes from the graph, creates Variables "<name>.weight" and "<name>.bias" and returns the
// layer's output. Colleagues add embedding, layer_norm and attention here.
#pragma once
#include <string>

#include "runtime/graph.h"

namespace rf::nn {

// y = x W^T + b for x [N, in] (in known when the graph is built): W [out, in], b [out].
Value linear(Value x, i64 out, const std::string& name, bool bias = true);

// Convolution of x [N, cin, H, W] (cin known) with W [cout, cin, k, k], stride, zero padding
// `pad`, then + b [cout] per channel.
Value conv2d(Value x, i64 cout, int kernel, const std::string& name, int stride = 1, int pad = 0, bool bias = true);

// Zeroes each element with probability p and scales the rest by 1/(1-p) (nn.Dropout in training
// mode); p = 0 adds nothing. The mask's seed is derived from the graph seed and `name`, so it
// does not depend on the order layers are built in. The graph has no train/eval switch yet:
// the layer also drops in evaluation runs. A step with Dropout is not captured as a CUDA graph
// (its counter would be frozen): --cuda-graph auto runs it eagerly, on refuses it.
Value dropout(Value x, double p, const std::string& name);

}  // namespace rf::nn
