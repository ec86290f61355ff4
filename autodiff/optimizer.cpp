// Optimizer graph construction and learning-rate schedules.
#include "autodiff/optimizer.h"

#include <algorithm>
#include <cmath>

#include "autodiff/gradients.h"
#include "runtime/ops.h"

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

GradsAndVars compute_gradients(Value loss, std::vector<int> var_list) {
  RF_CHECK(loss.valid(), "compute_gradients(): invalid loss value");
  Graph& g = *loss.graph;
  if (var_list.empty()) var_list = g.variables(/*trainable_only=*/true);
  RF_CHECK(!var_list.empty(), "compute_gradients(): the graph has no trainable Variables");
  std::vector<Value> xs;
  for (int id : var_list) {
    RF_CHECK(id >= 0 && id < g.size() && g.node(id).op == Op::Variable, "compute_gradients(): node ", id,
             " is not a Variable");
    xs.push_back(Value{&g, id, 0});
  }
  const std::vector<Value> grads = gradients(loss, xs);
  GradsAndVars gv;
  for (size_t i = 0; i < xs.size(); ++i) {
    RF_CHECK(grads[i].valid(), "compute_gradients(): the loss does not depend on Variable '",
             g.node(var_list[i]).name, "'");
    gv.push_back({grads[i], var_list[i]});
  }
  return gv;
}

namespace {
Tensor scalar_of(double v, DType dt) {
  return dt == DType::F32 ? Tensor::scalar<float>(float(v)) : Tensor::scalar<double>(v);
}
}  // namespace

ClippedGrads clip_by_global_norm(const std::vector<Value>& grads, double clip_norm) {
  RF_CHECK(!grads.empty() && grads[0].valid(), "clip_by_global_norm(): no gradients");
  RF_CHECK(clip_norm > 0 && std::isfinite(clip_norm), "clip_by_global_norm(): the norm must be positive, got ",
           clip_norm);
  Graph& g = *grads[0].graph;
  const DType dt = g.spec(grads[0]).dtype;
  Value sum_sq;
  for (const Value& gr : grads) {
    RF_CHECK(gr.valid() && g.spec(gr).dtype == dt, "clip_by_global_norm(): every gradient must be ", dtype_name(dt));
    const Value s = ops::sum(ops::square(gr));
    sum_sq = sum_sq.valid() ? ops::add(sum_sq, s) : s;
  }
  ClippedGrads out;
  out.norm = ops::sqrt(sum_sq, "clip/global_norm");
  // torch.nn.utils.clip_grad_norm_ (1.13): every gradient times min(1, clip / (norm + 1e-6)).
  const Value denom = ops::add_scalar(out.norm, 1e-6);
  const Value ratio = ops::div(g.constant(scalar_of(clip_norm, dt)), denom);
  const Value one = g.constant(scalar_of(1.0, dt));
  out.scale = ops::where(ops::less(ratio, one), ratio, one, "clip/scale");
  for (const Value& gr : grads) out.grads.push_back(ops::mul(gr, out.scale));
  return out;
}

TrainOp apply_gradients(const GradsAndVars& grads_and_vars, const OptimizerConfig& cfg) {
  RF_CHECK(!grads_and_vars.empty() && grads_and_vars[0].first.valid(), "apply_gradients(): no gradients");
  Graph& g = *grads_and_vars[0].first.graph;
  TrainOp t;
  for (const auto& [grad, var] : grads_and_vars) {
    RF_CHECK(grad.valid() && grad.graph == &g, "apply_gradients(): a gradient is not of the graph");
    t.grads.push_back(grad);
    t.vars.push_back(var);
  }
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

TrainOp minimize(Value loss, const OptimizerConfig& cfg) {
  const GradsAndVars gv = compute_gradients(loss);
  if (cfg.clip_norm <= 0) return apply_gradients(gv, cfg);
  std::vector<Value> raw;
  for (const auto& p : gv) raw.push_back(p.first);
  const ClippedGrads clipped = clip_by_global_norm(raw, cfg.clip_norm);
  GradsAndVars cv = gv;
  for (size_t i = 0; i < cv.size(); ++i) cv[i].first = clipped.grads[i];
  TrainOp t = apply_gradients(cv, cfg);
  t.grads = raw;  // what the data-parallel exchange reduces; the clip reads the exchanged values
  t.grad_norm = clipped.norm;
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
