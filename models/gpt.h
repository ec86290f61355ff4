// The gpt model of docs/GPT.md: a decoder-only, character-level Transformer (pre-LN, learned
// positions, causal attention, tied embedding) with PyTorch's parameter names and layouts.
#pragma once
#include <cstdint>
#include <string>

#include "runtime/graph.h"

namespace rf {

struct GptConfig {
  int64_t vocab = 73, layers = 4, heads = 4, width = 128, context = 128;
  double dropout = 0;  // after the embeddings, on the attention probabilities, before each residual add
                       // (masks seeded by the graph seed and the layer's name: nn::dropout)
};

struct Gpt {
  Value tokens;   // I32 [B, T] placeholder
  Value targets;  // I32 [B, T] placeholder: the next byte of each position
  Value logits;   // [B*T, V], the model's dtype
  Value loss;     // scalar: mean cross-entropy over the B*T positions, in nats
};

// Builds the model into g with Variables of dtype (F32 or F64). Throws rf::Error for a width
// that the heads do not divide, or a non-positive size.
Gpt build_gpt(Graph& g, const GptConfig& c, DType dtype);

// `ringflow sample`: text generated from a checkpoint of the gpt model (f32, its shape flags as
// in training), one character at a time from the last `context` characters.
struct SampleConfig {
  GptConfig model;
  std::string init_from;      // the checkpoint (--save of a gpt run)
  std::string prompt = "\n";  // the text to continue (bytes of the corpus's vocabulary)
  int64_t chars = 300;        // how many to generate
  double temperature = 0.8;   // softmax temperature; 0: always the most likely character
  uint64_t seed = 42;
  std::string data_dir;       // where kjv.txt is (for the vocabulary), as `ringflow train --data-dir`
};
// The prompt followed by the generated characters. Throws rf::Error (a checkpoint that does not
// fit the shape flags, a prompt byte outside the vocabulary).
std::string sample_gpt(const SampleConfig& c);

}  // namespace rf
