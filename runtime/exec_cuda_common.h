// Helpers shared by the CUDA execution table (exec_cuda.cu) and the fused optimizer updates
// (updates_cuda.cu): internal to the runtime's CUDA files.
#pragma once
#include <cuda_runtime_api.h>

#include <cmath>
#include <vector>

#include "runtime/error.h"
#include "runtime/exec.h"

namespace rf::cuda_exec {

inline cudaStream_t stream_of(const ExecContext& ctx) { return static_cast<cudaStream_t>(ctx.stream.handle); }

// Calls f(T{}) for the floating dtypes that have CUDA kernels.
template <class F> void dispatch(const Node& node, DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); return;
    case DType::F64: f(double{}); return;
    case DType::F16:
    case DType::BF16:
    case DType::I32:
    case DType::I64:
    case DType::U8: break;
  }
  fail("op ", op_name(node.op), " (node '", node.name, "') has no CUDA kernel for dtype ", dtype_name(t));
}

struct Hyper {
  double lr;
  i64 step;
};

// The optimizer's {lr, step} live on the host (the Session writes them each step), so reading
// them costs no device synchronisation.
inline Hyper read_hyper(const Node& node, const Tensor& h) {
  RF_CHECK(h.dtype() == DType::F64 && h.numel() == 2, "node '", node.name, "' (", op_name(node.op),
           "): hyperparameters must be F64[2] {lr, step}, got ", dtype_name(h.dtype()), h.shape().str());
  double v[2];
  if (h.device().is_cpu()) {
    v[0] = h.data<double>()[0];
    v[1] = h.data<double>()[1];
  } else {  // correct but synchronising; the Session is expected to keep them on the host
    const std::vector<double> hv = h.to_vector<double>();
    v[0] = hv[0];
    v[1] = hv[1];
  }
  return {v[0], i64(std::llround(v[1]))};
}

}  // namespace rf::cuda_exec
