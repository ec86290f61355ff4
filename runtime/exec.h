// Per-op execution tables: given a node and its bound input/output tensors (already allocated
// with the shapes the plan inferred), run the op's kernel on one device. Sources (Placeholder,
// Const, Variable), InitVariable and views (Reshape, ReshapeLike) are handled by the Session
// itself; their rows here are never reached.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
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
// An epilogue chain the Session fused into one step (TensorFlow's remapper builds _FusedMatMul
// and _FusedConv2D the same way): root (MatMul or Conv2D) -> BiasAdd [-> Relu], where nothing
// but the next node of the chain reads the root's or the BiasAdd's output. The step's inputs
// are the root's inputs, then the bias; its output is the chain's last node's. The root writes
// its product straight into that output, which the bias (and ReLU) then update in place; on a
// CUDA device a MatMul root runs as one cuBLASLt matmul with the bias/ReLU epilogue. Bitwise the
// same as the unfused nodes on the CPU. `state` is the executor's per-step cache (the cuBLASLt
// descriptors and algorithm).
struct FusedChain {
  const Node* root = nullptr;
  const Node* bias_add = nullptr;
  const Node* relu = nullptr;  // null: no activation
  std::string label;           // e.g. "MatMul+BiasAdd+Relu", the timeline's op name
  std::shared_ptr<void> state;
};
void exec_fused_cpu(FusedChain& f, Tensor* const* in, Tensor* const* out, const ExecContext& ctx);
#if RINGFLOW_CUDA
void exec_fused_cuda(FusedChain& f, Tensor* const* in, Tensor* const* out, const ExecContext& ctx);
#endif

// Whether exec_cuda has a kernel for op: every op in a CUDA build (the exec_cuda switch has a
// case for each), none without. `--device auto` falls back to the CPU where this is false.
bool cuda_has_kernel(Op op);

}  // namespace rf
