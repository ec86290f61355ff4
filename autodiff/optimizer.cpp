// Optimizer graph construction and learning-rate schedules.
#include "autodiff/optimizer.h"

#include <algorithm>
#include <cmath>

#include "autodiff/gradients.h"

namespace rf {

OptimizerConfig::Kind parse_optimizer(const std::string& s) {
  if (s == "sgd") return OptimizerConfig::Kind::SGD;
  if (s == "momentum" || s == "nesterov") return OptimizerConfig::Kind::Momentum;
  if (s == "adam") return OptimizerConfig::Kind::Adam;
  if (s == "adamw") return OptimizerConfig::Kind::AdamW;
  fail("unknown optimizer '", s, "': expected sgd, momentum, nesterov, adam or adamw");
}

LrSchedule::Kind parse_schedule(const std::string& s) {
  if (s == "constant") return LrSchedule::Kind::Constant;
  if (s == "step") return LrSchedule::Kind::Step;
  if (s == "cosine") return LrSchedule::Kind::Cosine;
  if (s == "invsqrt") return LrSchedule::Kind::InvSqrt;
  fail("unknown lr schedule '", s, "': expected constant, step, cosine or invsqrt");
}

TrainOp minimize(Value loss, const OptimizerConfig& cfg) {
  Graph& g = *loss.graph;
  TrainOp t;
  t.vars = g.variables(/*trainable_only=*/true);
  RF_CHECK(!t.vars.empty(), "minimize(): the graph has no trainable Variables");
  std::vector<Value> xs;
  for (int id : t.vars) xs.push_back(Value{&g, id, 0});
  t.grads = gradients(loss, xs);
  t.hyper = g.placeholder("optimizer/hyper", DType::F64, Shape{2});

  Attrs base;
  base.momentum = cfg.momentum;
  base.nesterov = cfg.nesterov;
  base.beta1 = cfg.beta1;
  base.beta2 = cfg.beta2;
  base.eps = cfg.eps;
  base.weight_decay = cfg.weight_decay;
  base.decoupled = cfg.kind == OptimizerConfig::Kind::AdamW;
  // Update nodes (and their slots) are created last layer first: the executor runs updates in
  // node order, and the last layers' gradients are the first to be all-reduced in a
  // data-parallel step, so their updates can run while the first layers' are still in flight.
  t.updates.resize(t.vars.size());
  for (size_t i = t.vars.size(); i-- > 0;) {
    const Node& v = g.node(t.vars[i]);
    const std::string name = v.name;
    const Shape shape = v.attrs.shape;
    const DType dtype = v.attrs.dtype;
    RF_CHECK(t.grads[i].valid(), "minimize(): the loss does not depend on Variable '", name, "'");
    auto slot = [&](const char* s) {
      return g.variable(name + "/" + s, shape, dtype, Initializer::zeros(), /*trainable=*/false);
    };
    const Value var{&g, t.vars[i], 0};
    // A sparse gradient feeds a sparse update with its (rows, indices): the dense ScatterAdd is
    // then read by nothing in the training step and never runs (see optimizer.h for which).
    Value rows, idx;
    const bool sparse = cfg.weight_decay == 0 && as_sparse(t.grads[i], &rows, &idx);
    switch (cfg.kind) {
      case OptimizerConfig::Kind::SGD:
        t.updates[i] = sparse ? g.add(Op::ApplySGDSparse, {var, rows, idx, t.hyper}, base, name + "/update")
                              : g.add(Op::ApplySGD, {var, t.grads[i], t.hyper}, base, name + "/update");
        break;
      case OptimizerConfig::Kind::Momentum:
        t.updates[i] =
            sparse ? g.add(Op::ApplyMomentumSparse, {var, slot("velocity"), rows, idx, t.hyper}, base, name + "/update")
                   : g.add(Op::ApplyMomentum, {var, slot("velocity"), t.grads[i], t.hyper}, base, name + "/update");
        break;
      case OptimizerConfig::Kind::Adam:
      case OptimizerConfig::Kind::AdamW: {
        const Value m = slot("m"), vv = slot("v");
        t.updates[i] = sparse && cfg.lazy_adam
                           ? g.add(Op::ApplyAdamSparse, {var, m, vv, rows, idx, t.hyper}, base, name + "/update")
                           : g.add(Op::ApplyAdam, {var, m, vv, t.grads[i], t.hyper}, base, name + "/update");
        break;
      }
    }
  }
  return t;
}

double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return base_lr * double(step + 1) / double(warmup_steps);
  const int64_t s = step - warmup_steps;
  switch (kind) {
    case Kind::Constant: return base_lr;
    case Kind::Step: return base_lr * std::pow(gamma, double(s / std::max<int64_t>(step_size, 1)));
    case Kind::Cosine: {
      const int64_t span = std::max<int64_t>(total_steps - warmup_steps, 1);
      const double p = std::min(1.0, double(s) / double(span));
      return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + std::cos(M_PI * p));
    }
    case Kind::InvSqrt: {  // step t = step + 1 >= warmup: base_lr * sqrt(warmup / t), or / sqrt(t) without one
      const double t = double(step + 1);
      return base_lr * std::sqrt(double(std::max<int64_t>(warmup_steps, 1)) / t);
    }
  }
  return base_lr;
}

}  // namespace rf
