// Per-op execution tables: given a node and its bound input/output tensors (already allocated
// with the shapes the plan inferred), run the op's kernel on one device. Sources (Placeholder,
// Const, Variable), InitVariable and views (Reshape, ReshapeLike) are handled by the Session
// itself; their rows here are never reached.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/graph.h"

namespace rf {

struct ExecContext {
  Device device;
  Stream stream;
  uint64_t run_index = 0;  // how many times this plan has run: the Dropout counter
  // Apply* nodes only, when set (RunOptions::update_grads): the update reads its gradient as
  // the mean of these buffers (each of the gradient's shape and dtype) instead of its input.
  const std::vector<const void*>* grad_sources = nullptr;
};

// in[i] is the tensor bound to node.inputs[i], out[j] to output j. For Apply* ops in[0] (and
// the slot inputs) are the Variables' own storage, updated in place.
void exec_cpu(const Node& node, Tensor* const* in, Tensor* const* out, const ExecContext& ctx);
#if RINGFLOW_CUDA
void exec_cuda(const Node& node, Tensor* const* in, Tensor* const* out, const ExecContext& ctx);
#endif
// Whether exec_cuda has a kernel for op: every op in a CUDA build (the exec_cuda switch has a
// case for each), none without. `--device auto` falls back to the CPU where this is false.
bool cuda_has_kernel(Op op);

}  // namespace rf
