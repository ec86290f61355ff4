// Per-op execution tables: given a node and its bound input/output tensors (already allocated
// with the shapes the plan inferred), run the op's kernel on one device. Sources (Placeholder,
// Const, Variable), InitVariable and views (Reshape, ReshapeLike) are handled by the Session
// itself; their rows here are never reached.
#pragma once
#include <cstdint>

#include "runtime/graph.h"

namespace rf {

struct ExecContext {
  Device device;
  Stream stream;
  uint64_t run_index = 0;  // how many times this plan has run: the Dropout counter
};

// in[i] is the tensor bound to node.inputs[i], out[j] to output j. For Apply* ops in[0] (and
// the slot inputs) are the Variables' own storage, updated in place.
void exec_cpu(const Node& node, Tensor* const* in, Tensor* const* out, const ExecContext& ctx);
#if RINGFLOW_CUDA
void exec_cuda(const Node& node, Tensor* const* in, Tensor* const* out, const ExecContext& ctx);
#endif
// Whether exec_cuda has a kernel for op (false in a build without CUDA): `--device auto` falls
// back to the CPU for a graph with an op the CUDA table does not cover yet.
bool cuda_has_kernel(Op op);

}  // namespace rf
