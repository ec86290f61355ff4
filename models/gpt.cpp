#include "models/gpt.h"

#include <algorithm>
#include <array>
#include <random>
#include <cmath>
#include <string>

#include "models/checkpoint.h"
#include "models/nn.h"
#include "models/registry.h"
#include "models/text_data.h"
#include "runtime/session.h"
#include "runtime/ops.h"

namespace rf {

namespace detail {
void link_gpt_model() {}  // registry.cpp's anchor: links this file, and its registration
}  // namespace detail

Gpt build_gpt(Graph& g, const GptConfig& c, DType dt) {
  RF_CHECK(c.vocab > 0 && c.layers > 0 && c.heads > 0 && c.width > 0 && c.context > 0,
           "gpt: every size must be positive (vocab ", c.vocab, ", layers ", c.layers, ", heads ", c.heads, ", width ",
           c.width, ", context ", c.context, ")");
  RF_CHECK(c.width % c.heads == 0, "gpt: --heads ", c.heads, " does not divide --width ", c.width);
  RF_CHECK(c.dropout >= 0 && c.dropout < 1, "gpt: --dropout must be in [0, 1), got ", c.dropout);
  RF_CHECK(dt == DType::F32 || dt == DType::F64, "gpt: F32 or F64, not ", dtype_name(dt));
  const int64_t d = c.width, T = c.context;
  nn::AttentionOptions ao;
  ao.proj_std = 0.02 / std::sqrt(2.0 * double(c.layers));
  ao.dropout = c.dropout;
  Gpt m;
  m.tokens = g.placeholder("tokens", DType::I32, Shape{-1, T});
  m.targets = g.placeholder("targets", DType::I32, Shape{-1, T});
  const Value x = nn::embedding(m.tokens, c.vocab, d, dt, "wte", Initializer::normal(0, 0.02));
  const Value wte = g.node(x).inputs[0];  // the table, tied to the output layer
  const Value wpe = g.variable("wpe.weight", Shape{T, d}, dt, Initializer::normal(0, 0.02));
  // The residual stream as [B*T, d]: every Linear is one rank-2 MatMul + BiasAdd.
  Value h = ops::reshape(nn::dropout(ops::add(x, wpe), c.dropout, "drop"), Shape{-1, d});
  const Value causal = ops::causal_mask(g, T, dt);
  for (int64_t i = 0; i < c.layers; ++i) h = nn::transformer_block(h, T, c.heads, causal, "h." + std::to_string(i), ao);
  m.logits = ops::matmul(nn::layer_norm(h, "ln_f"), wte, false, true, "logits");
  m.loss = ops::mean(ops::sparse_softmax_cross_entropy(m.logits, ops::reshape(m.targets, Shape{-1})), {}, false,
                     "loss");
  return m;
}

namespace {

ModelSpec gpt_spec(Graph& g, const ModelConfig& mc) {
  GptConfig c;
  c.layers = mc.get_int("layers", c.layers, 1);
  c.heads = mc.get_int("heads", c.heads, 1);
  c.width = mc.get_int("width", c.width, 1);
  c.context = mc.get_int("context", c.context, 1);
  c.dropout = mc.get_double("dropout", 0);
  const Gpt m = build_gpt(g, c, mc.dtype);
  ModelSpec s;
  s.inputs = {{"tokens", m.tokens}, {"targets", m.targets}};
  s.loss = m.loss;
  s.metrics.push_back(Metric::mean_of("bits_per_char", m.loss, 1.0 / std::log(2.0)));
  return s;
}

}  // namespace

RF_REGISTER_MODEL("gpt", "character-level decoder-only Transformer on the King James Bible (docs/GPT.md)", gpt_spec,
                  {{"layers", "4", "gpt: Transformer blocks"},
                   {"heads", "4", "gpt: attention heads (divide --width)"},
                   {"width", "128", "gpt: model width d"},
                   {"context", "128", "gpt: characters per window T"},
                   {"dropout", "0", "gpt: dropout rate (embeddings, attention, residual branches)"}},
                  "kjv");

std::string sample_gpt(const SampleConfig& c) {
  RF_CHECK(c.chars >= 0, "--chars must be >= 0, got ", c.chars);
  RF_CHECK(c.temperature >= 0 && std::isfinite(c.temperature), "--temperature must be >= 0, got ", c.temperature);
  RF_CHECK(!c.prompt.empty(), "--prompt must not be empty");
  const std::unique_ptr<DataSource> data =
      make_kjv_source(c.data_dir.empty() ? "data/kjv" : c.data_dir, c.model.context, c.data_dir.empty());
  const std::vector<uint8_t>& vocab = static_cast<const TextWindowSource&>(*data).corpus().vocab;
  RF_CHECK(int64_t(vocab.size()) == c.model.vocab, "the corpus has ", vocab.size(), " symbols, the model ",
           c.model.vocab);
  std::array<int32_t, 256> id{};
  id.fill(-1);
  for (size_t i = 0; i < vocab.size(); ++i) id[vocab[i]] = int32_t(i);
  Graph g(c.seed);
  const Gpt m = build_gpt(g, c.model, DType::F32);
  Session s(g);
  s.run({}, {}, g.initializers());
  std::vector<std::pair<int, Tensor>> weights;
  try {
    weights = read_checkpoint(g, c.init_from);
  } catch (const Error& e) {
    fail("--init-from: ", e.what());
  }
  for (const auto& [vid, host] : weights) {
    s.variable(vid).copy_from(host);
    s.set_initialized(vid);
  }
  std::vector<int32_t> ids;
  for (unsigned char ch : c.prompt) {
    RF_CHECK(id[ch] >= 0, "--prompt: byte ", int(ch), " ('", std::string(1, char(ch)),
             "') is not in the corpus's vocabulary");
    ids.push_back(id[ch]);
  }
  const int64_t T = c.model.context, V = c.model.vocab;
  Tensor tokens(Shape{1, T}, DType::I32);
  std::mt19937_64 rng(c.seed);
  std::string out = c.prompt;
  std::vector<double> p(static_cast<size_t>(V));
  for (int64_t k = 0; k < c.chars; ++k) {
    // The last T characters at positions 0..; later positions (causal: they cannot change the
    // earlier ones) hold copies of the last one.
    const int64_t n = std::min<int64_t>(T, int64_t(ids.size()));
    for (int64_t i = 0; i < T; ++i) tokens.data<int32_t>()[i] = ids[ids.size() - size_t(n) + size_t(std::min(i, n - 1))];
    const Tensor& logits = s.run({m.logits}, {{m.tokens, tokens}})[0];
    const float* row = logits.data<float>() + (n - 1) * V;
    int32_t next = 0;
    if (c.temperature == 0) {
      next = int32_t(std::max_element(row, row + V) - row);
    } else {
      const float mx = *std::max_element(row, row + V);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += p[size_t(v)] = std::exp((double(row[v]) - mx) / c.temperature);
      double u = double(rng() >> 11) * 0x1p-53 * sum;
      for (next = 0; next < V - 1 && (u -= p[size_t(next)]) >= 0; ++next) {
      }
    }
    ids.push_back(next);
    out += char(vocab[size_t(next)]);
  }
  return out;
}

}  // namespace rf
