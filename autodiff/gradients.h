// Reverse-mode autodiff: gradients(loss, xs) adds the backward nodes to the graph and returns
// d loss / d x for each x. Only nodes on a path from some x to the loss are differentiated, so
// e.g. the input gradient of a first layer fed by data is never built.
#pragma once
#include <vector>

#include "runtime/graph.h"

namespace rf {

// loss must be a scalar (shape []) F32/F64 value. Gradients reaching one value from several
// consumers are summed. For an x that the loss does not depend on, the result is an invalid
// Value (valid() == false). An op on the path without a gradient rule throws rf::Error naming
// the node and the op.
std::vector<Value> gradients(Value loss, const std::vector<Value>& xs);

// tf.gradients(ys, xs, grad_ys): d (sum over i of <ys[i], grad_ys[i]>) / d x for each x, i.e. the
// vector-Jacobian products of the ys with grad_ys summed. grad_ys empty: ones shaped like each y
// (for a scalar loss, the gradient). Each grad_ys[i] has ys[i]'s dtype and rank, and its shape
// where both are known. ys are F32/F64 of any shape.
std::vector<Value> gradients(const std::vector<Value>& ys, const std::vector<Value>& xs,
                             const std::vector<Value>& grad_ys = {});

// A sparse gradient (TF's IndexedSlices): Gather's rule returns ScatterAdd(rows[N, D...],
// indices[N], params), a dense [V, D...] value that only runs if something reads it. True when
// grad is such a ScatterAdd output; *rows and *indices (either may be null) then get its inputs,
// which a sparse consumer (ApplySGDSparse, ...) reads instead, so the dense node is pruned from
// its plan. A gradient summed from several consumers (an Add) is dense: false.
bool as_sparse(Value grad, Value* rows, Value* indices);

}  // namespace rf
