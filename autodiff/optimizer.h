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
};
// "sgd", "momentum", "nesterov", "adam", "adamw"; throws rf::Error otherwise.
OptimizerConfig::Kind parse_optimizer(const std::string& name);

struct TrainOp {
  std::vector<Value> updates;  // run these as targets; updates[i] updates vars[i]
  std::vector<Value> grads;    // d loss / d var, aligned with vars (a sparse one: as_sparse())
  std::vector<int> vars;       // Variable node ids, in creation order
  Value hyper;                 // F64[2] placeholder {lr, step (1-based)}, fed on the host
};

// Builds gradients of loss for every trainable Variable and their update ops.
TrainOp minimize(Value loss, const OptimizerConfig& cfg);

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
