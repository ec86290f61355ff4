// CUDA 2-D convolution and its two gradients through cuDNN (NCHW, filters OIHW, cross-correlation
// as conv_cpu.cpp). Descriptors and each pass's algorithm are built once per shape and cached.
#include <array>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda.h"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

// The CPU's checks, plus what cuDNN's int dimensions need.
void check_geom(const ConvGeom& g) {
  check_conv_geom(g);
  for (i64 d : {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.P, g.Q})
    if (d > INT_MAX) throw std::invalid_argument("conv2d: dimension exceeds cuDNN's int range");
}

template <class T> constexpr cudnnDataType_t data_type() {
  return sizeof(T) == 4 ? CUDNN_DATA_FLOAT : CUDNN_DATA_DOUBLE;
}

bool tensor_op(cudnnMathType_t m) { return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION; }

// One geometry's descriptors. Each pass has its own convolution descriptor, carrying the math
// type of the algorithm chosen for that pass.
struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv[3] = {};
  bool chosen[3] = {};
  int algo[3] = {};  // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
  size_t workspace[3] = {};

  ConvPlan(const ConvGeom& g, cudnnDataType_t dt, bool allow_tf32) {
    try {
      CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
      CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
      CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
      CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, dt, int(g.N), int(g.C), int(g.H), int(g.W)));
      CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, dt, int(g.N), int(g.K), int(g.P), int(g.Q)));
      CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, dt, CUDNN_TENSOR_NCHW, int(g.K), int(g.C), int(g.R), int(g.S)));
      // fp32 without TF32 is FMA_MATH: DEFAULT_MATH would let cuDNN use TF32 tensor cores.
      const cudnnMathType_t math = dt == CUDNN_DATA_FLOAT && !allow_tf32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
      for (auto& c : conv) {
        CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c));
        CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c, int(g.pad_h), int(g.pad_w), int(g.stride_h), int(g.stride_w), 1,
                                                    1, CUDNN_CROSS_CORRELATION, dt));
        CUDNN_CHECK(cudnnSetConvolutionMathType(c, math));
      }
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~ConvPlan() { destroy(); }
  ConvPlan(const ConvPlan&) = delete;
  ConvPlan& operator=(const ConvPlan&) = delete;

  void destroy() noexcept {  // statuses ignored: this runs in destructors, possibly at exit
    if (x) (void)cudnnDestroyTensorDescriptor(x);
    if (y) (void)cudnnDestroyTensorDescriptor(y);
    if (w) (void)cudnnDestroyFilterDescriptor(w);
    for (auto c : conv)
      if (c) (void)cudnnDestroyConvolutionDescriptor(c);
  }
};

// The first heuristic choice that succeeded, is deterministic, and uses tensor-op math only when
// allowed; Perf is one of cuDNN's cudnnConvolution*AlgoPerf_t.
template <class Perf>
const Perf& pick(const std::vector<Perf>& perf, int count, bool allow_tensor_op, const char* pass) {
  for (int i = 0; i < count; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC &&
        (allow_tensor_op || !tensor_op(perf[i].mathType)))
      return perf[i];
  throw Error(std::string("cuDNN offers no deterministic ") + pass + " algorithm for this convolution" +
              (allow_tensor_op ? "" : " without tensor-op math"));
}

// Chooses pass's algorithm for plan p (once) and its workspace size.
void choose(ConvPlan& p, ConvPass pass, bool allow_tensor_op, cudnnHandle_t h) {
  const int k = int(pass);
  if (p.chosen[k]) return;
  cudnnConvolutionDescriptor_t c = p.conv[k];
  int max = 0, count = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  switch (pass) {
    case ConvPass::Forward: {
      CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &max));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<size_t>(max));
      CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x, p.w, c, p.y, max, &count, perf.data()));
      const auto& best = pick(perf, count, allow_tensor_op, "forward");
      p.algo[k] = best.algo;
      math = best.mathType;
      break;
    }
    case ConvPass::BackwardData: {
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &max));
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<size_t>(max));
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p.w, p.y, c, p.x, max, &count, perf.data()));
      const auto& best = pick(perf, count, allow_tensor_op, "backward-data");
      p.algo[k] = best.algo;
      math = best.mathType;
      break;
    }
    case ConvPass::BackwardFilter: {
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &max));
      std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<size_t>(max));
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, c, p.w, max, &count, perf.data()));
      const auto& best = pick(perf, count, allow_tensor_op, "backward-filter");
      p.algo[k] = best.algo;
      math = best.mathType;
      break;
    }
  }
  // Where tensor ops are allowed, run with the math type the heuristic ranked the algorithm for;
  // otherwise the descriptor keeps FMA_MATH / DEFAULT_MATH. The workspace is sized after that,
  // with the descriptor as it will run.
  if (allow_tensor_op) CUDNN_CHECK(cudnnSetConvolutionMathType(c, math));
  switch (pass) {
    case ConvPass::Forward:
      CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, p.x, p.w, c, p.y, cudnnConvolutionFwdAlgo_t(p.algo[k]),
                                                          &p.workspace[k]));
      break;
    case ConvPass::BackwardData:
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
          h, p.w, p.y, c, p.x, cudnnConvolutionBwdDataAlgo_t(p.algo[k]), &p.workspace[k]));
      break;
    case ConvPass::BackwardFilter:
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
          h, p.x, p.y, c, p.w, cudnnConvolutionBwdFilterAlgo_t(p.algo[k]), &p.workspace[k]));
      break;
  }
  p.chosen[k] = true;
}

struct Chosen {
  ConvPlan* plan;
  int algo;
  size_t workspace;
};

// The cached plan for (handle, geometry, dtype, TF32), with pass's algorithm chosen. Plans are
// never evicted: a training run sees a handful of shapes.
Chosen plan_for(ConvPass pass, const ConvGeom& g, cudnnDataType_t dt, bool allow_tf32, cudnnHandle_t h) {
  check_geom(g);
  using Key = std::array<i64, 16>;
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<ConvPlan>> cache;
  const Key key{i64(reinterpret_cast<uintptr_t>(h)), g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride_h, g.stride_w,
                g.pad_h, g.pad_w, g.P, g.Q, i64(dt), i64(allow_tf32)};
  std::lock_guard<std::mutex> lock(mu);
  auto& plan = cache[key];
  if (!plan) plan = std::make_unique<ConvPlan>(g, dt, allow_tf32);
  choose(*plan, pass, dt == CUDNN_DATA_FLOAT && allow_tf32, h);
  const int k = int(pass);
  return {plan.get(), plan->algo[k], plan->workspace[k]};
}

void check_workspace(const Chosen& c, size_t bytes) {
  if (bytes < c.workspace)
    throw std::invalid_argument("conv2d: workspace of " + std::to_string(bytes) + " bytes, the algorithm needs " +
                                std::to_string(c.workspace));
}

}  // namespace

template <class T>
size_t conv2d_workspace_bytes(ConvPass pass, const ConvGeom& g, bool allow_tf32, cudnnHandle_t handle) {
  if (g.N == 0) return 0;
  return plan_for(pass, g, data_type<T>(), allow_tf32, handle).workspace;
}

template <class T>
void conv2d(const T* x, const T* w, T* y, const ConvGeom& g, bool allow_tf32, void* workspace, size_t workspace_bytes,
            cudnnHandle_t handle) {
  check_geom(g);
  if (g.N == 0) return;
  const Chosen c = plan_for(ConvPass::Forward, g, data_type<T>(), allow_tf32, handle);
  check_workspace(c, workspace_bytes);
  const T one = 1, zero = 0;
  CUDNN_CHECK(cudnnConvolutionForward(handle, &one, c.plan->x, x, c.plan->w, w, c.plan->conv[int(ConvPass::Forward)],
                                      cudnnConvolutionFwdAlgo_t(c.algo), workspace, workspace_bytes, &zero, c.plan->y,
                                      y));
}

template <class T>
void conv2d_grad_input(const T* dy, const T* w, T* dx, const ConvGeom& g, bool allow_tf32, void* workspace,
                       size_t workspace_bytes, cudnnHandle_t handle) {
  check_geom(g);
  if (g.N == 0) return;
  const Chosen c = plan_for(ConvPass::BackwardData, g, data_type<T>(), allow_tf32, handle);
  check_workspace(c, workspace_bytes);
  const T one = 1, zero = 0;
  CUDNN_CHECK(cudnnConvolutionBackwardData(handle, &one, c.plan->w, w, c.plan->y, dy,
                                           c.plan->conv[int(ConvPass::BackwardData)],
                                           cudnnConvolutionBwdDataAlgo_t(c.algo), workspace, workspace_bytes, &zero,
                                           c.plan->x, dx));
}

template <class T>
void conv2d_grad_filter(const T* x, const T* dy, T* dw, const ConvGeom& g, bool allow_tf32, void* workspace,
                        size_t workspace_bytes, cudnnHandle_t handle) {
  check_geom(g);
  if (g.N == 0) {  // an empty batch contributes nothing: dw = 0, as on the CPU
    cudaStream_t stream = nullptr;
    CUDNN_CHECK(cudnnGetStream(handle, &stream));
    CUDA_CHECK(cudaMemsetAsync(dw, 0, size_t(g.K * g.C * g.R * g.S) * sizeof(T), stream));
    return;
  }
  const Chosen c = plan_for(ConvPass::BackwardFilter, g, data_type<T>(), allow_tf32, handle);
  check_workspace(c, workspace_bytes);
  const T one = 1, zero = 0;
  CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle, &one, c.plan->x, x, c.plan->y, dy,
                                             c.plan->conv[int(ConvPass::BackwardFilter)],
                                             cudnnConvolutionBwdFilterAlgo_t(c.algo), workspace, workspace_bytes,
                                             &zero, c.plan->w, dw));
}

#define RF_INSTANTIATE(T)                                                                                        \
  template size_t conv2d_workspace_bytes<T>(ConvPass, const ConvGeom&, bool, cudnnHandle_t);                     \
  template void conv2d<T>(const T*, const T*, T*, const ConvGeom&, bool, void*, size_t, cudnnHandle_t);          \
  template void conv2d_grad_input<T>(const T*, const T*, T*, const ConvGeom&, bool, void*, size_t, cudnnHandle_t); \
  template void conv2d_grad_filter<T>(const T*, const T*, T*, const ConvGeom&, bool, void*, size_t, cudnnHandle_t);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
#undef RF_INSTANTIATE

}  // namespace rf::kernels::cuda
