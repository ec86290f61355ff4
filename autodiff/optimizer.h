// Optimizers as graph ops: minimize() differentiates the loss and adds one fused update node
// (ApplySGD / ApplyMomentum / ApplyAdam, or a sparse one: see lazy_adam) per Variable; slots (velocity, Adam moments) are
// non-trainable Variables named "<var>/<slot>". Learning-rate schedules are host functions whose
// value is fed each step through the `hyper` placeholder {lr, step}.
#pragma once
#include <string>
#include <vector>

#include "runtime/graph.h"

namespace rf {

struct OptimizerConfig {
  enum class Kind { SGD, Momentum, Adam, AdamW };
  Kind kind = Kind::Momentum;
  double momentum = 0.9;
  bool nesterov = false;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0;  // L2 for SGD/momentum/Adam, decoupled for AdamW
  // A Variable whose gradient is sparse (as_sparse: an embedding read only by Gather) gets a
  // sparse update when weight_decay == 0: ApplySGDSparse (bitwise the dense SGD step) and
  // ApplyMomentumSparse (lazy: rows absent from the batch keep their velocity and value). Adam
  // and AdamW stay dense (exactly PyTorch's Adam on the dense gradient) unless lazy_adam is set:
  // then ApplyAdamSparse (TF's LazyAdam). Any weight decay means a dense update.
  bool lazy_adam = false;
  // > 0: minimize() clips the gradients to this global norm (clip_by_global_norm) before the
  // update, after their data-parallel exchange.
  double clip_norm = 0;
};
// "sgd", "momentum", "nesterov", "adam", "adamw"; throws rf::Error otherwise.
OptimizerConfig::Kind parse_optimizer(const std::string& name);

struct TrainOp {
  std::vector<Value> updates;  // run these as targets; updates[i] updates vars[i]
  // d loss / d var, aligned with vars (a sparse one: as_sparse()): what the data-parallel
  // Reducer exchanges. With clipping the updates read the clipped values computed from these.
  std::vector<Value> grads;
  std::vector<int> vars;       // Variable node ids, in creation order
  Value hyper;                 // F64[2] placeholder {lr, step (1-based)}, fed on the host
  Value grad_norm;             // with clip_norm: the global norm before clipping (a scalar)
};

// TF1's optimizer API. compute_gradients: (d loss / d var, var) for every Variable of var_list
// (empty: every trainable one), in creation order; a Variable the loss does not depend on is an
// error naming it. apply_gradients: one update op (and its slots) per pair; the gradient may be
// any value of the Variable's shape (clipped, scaled, a sum). minimize = apply(compute), with
// clip_by_global_norm in between when cfg.clip_norm > 0.
using GradsAndVars = std::vector<std::pair<Value, int>>;
GradsAndVars compute_gradients(Value loss, std::vector<int> var_list = {});
TrainOp apply_gradients(const GradsAndVars& grads_and_vars, const OptimizerConfig& cfg);
TrainOp minimize(Value loss, const OptimizerConfig& cfg);

// Every gradient times min(1, clip_norm / (norm + 1e-6)), norm the global L2 norm of all of them
// (torch.nn.utils.clip_grad_norm_'s rule; tf.clip_by_global_norm has no 1e-6). Built from graph
// ops, so on a data-parallel step its nodes read the gradients after their exchange (they read
// the Reducer's bound buffers: the Session runs them once every bucket is reduced), and the norm
// is that of the averaged gradient, the same on every rank. A sparse gradient is clipped dense.
struct ClippedGrads {
  std::vector<Value> grads;  // aligned with the input
  Value norm, scale;         // scalars of the gradients' dtype
};
ClippedGrads clip_by_global_norm(const std::vector<Value>& grads, double clip_norm);

struct LrSchedule {
  // InvSqrt: the Transformer schedule, base_lr * min(t / warmup, sqrt(warmup / t)) at the
  // 1-based step t (Vaswani et al. with base_lr = d^-0.5 * warmup^-0.5); base_lr / sqrt(t) with no
  // warm-up.
  enum class Kind { Constant, Step, Cosine, InvSqrt };
  Kind kind = Kind::Constant;
  double base_lr = 0.01;
  int64_t warmup_steps = 0;   // linear warm-up from base_lr/warmup to base_lr
  int64_t step_size = 1000;   // Step: multiply by gamma every step_size steps
  double gamma = 0.1;
  int64_t total_steps = 0;    // Cosine: decays to min_lr at total_steps
  double min_lr = 0;
  // Learning rate for the 0-based step.
  double at(int64_t step) const;
};
LrSchedule::Kind parse_schedule(const std::string& name);

}  // namespace rf
