// Layer builders with PyTorch's names, layouts and default initialisation, so that a model's
// Variables are a PyTorch state_dict after renaming at most: nn::linear is nn.Linear (weight
// [out, in], bias [out]), nn::conv2d is nn.Conv2d (weight [out, in, kh, kw]), both initialised
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch's reset_parameters draws them (its kaiming
// uniform with a = sqrt(5) is that bound for the weight). Each takes its input's dtype and
// sizes from the graph, creates Variables "<name>.weight" and "<name>.bias" and returns the
// layer's output. The Transformer layers (embedding, layer_norm, multi_head_attention,
// transformer_block) follow GPT-2's layout as docs/GPT.md writes it.
#pragma once
#include <string>

#include "runtime/graph.h"

namespace rf::nn {

// y = x W^T + b for x [N, in] (in known when the graph is built): W [out, in], b [out].
Value linear(Value x, i64 out, const std::string& name, bool bias = true);
// The same with W drawn from `weight_init` and b zeros (the Transformers' initialisation).
Value linear(Value x, i64 out, const std::string& name, const Initializer& weight_init);

// nn.Embedding: rows of "<name>.weight" [vocab, dim] (dtype, drawn from init) at ids (I32/I64, any
// shape) -> [ids..., dim]. Its gradient is sparse (Gather's ScatterAdd) unless the table is also
// read densely (a tied output layer).
Value embedding(Value ids, i64 vocab, i64 dim, DType dtype, const std::string& name, const Initializer& init);

// nn.LayerNorm over the last axis (size known): "<name>.weight" ones, "<name>.bias" zeros.
Value layer_norm(Value x, const std::string& name, double eps = 1e-5);

struct AttentionOptions {
  double init_std = 0.02;   // N(0, init_std) for the qkv and MLP input weights
  double proj_std = 0.02;   // N(0, proj_std) for the output projections (GPT-2: 0.02 / sqrt(2 layers))
  double dropout = 0;       // on the attention probabilities and before each residual add
};

// Multi-head self-attention over sequences of seq_len tokens: x [B*T, d] (rows grouped by
// sequence), one fused "<name>.c_attn" Linear d -> 3d (q | k | v), heads of d/heads, softmax of
// q k^T / sqrt(d/heads) + mask (additive, broadcast to [B, heads, T, T]: ops::causal_mask,
// ops::padding_mask; invalid Value: none), then "<name>.c_proj" d -> d. Returns [B*T, d].
Value multi_head_attention(Value x, i64 seq_len, i64 heads, Value mask, const std::string& name,
                           const AttentionOptions& o = {});

// A pre-LN Transformer block on x [B*T, d]: h = x + attn(ln_1(x)); h + mlp(ln_2(h)), the MLP
// "<name>.mlp.c_fc" d -> 4d, exact GELU, "<name>.mlp.c_proj" 4d -> d.
Value transformer_block(Value x, i64 seq_len, i64 heads, Value mask, const std::string& name,
                        const AttentionOptions& o = {});

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
