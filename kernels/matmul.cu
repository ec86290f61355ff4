// Dense matrix multiply for the CUDA backend: a row-major wrapper over cuBLAS's column-major
// gemm, mirroring kernels/matmul_cpu.cpp (same argument checks, same semantics).
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "kernels/cuda.h"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

// cuBLAS takes int dimensions; a silently truncated size would read out of bounds.
int to_blas_int(i64 v, const char* what) {
  if (v < 0 || v > INT32_MAX) throw std::invalid_argument(std::string("gemm: ") + what + " out of range");
  return static_cast<int>(v);
}

struct BlasArgs {
  int m, n, k, lda, ldb, ldc;
};

BlasArgs check(bool ta, bool tb, i64 m, i64 n, i64 k, i64 lda, i64 ldb, i64 ldc) {
  // Row-major leading dimensions must cover a stored row (cuBLAS would only say "invalid value");
  // a row of length 0 (k == 0: C = beta C) may have ld 0, handed to cuBLAS as 1, as it wants.
  if (lda < (ta ? m : k)) throw std::invalid_argument("gemm: lda too small");
  if (ldb < (tb ? k : n)) throw std::invalid_argument("gemm: ldb too small");
  if (ldc < n) throw std::invalid_argument("gemm: ldc too small");
  return {to_blas_int(m, "m"), to_blas_int(n, "n"), to_blas_int(k, "k"), to_blas_int(std::max<i64>(1, lda), "lda"),
          to_blas_int(std::max<i64>(1, ldb), "ldb"), to_blas_int(std::max<i64>(1, ldc), "ldc")};
}

// The handle is shared by everything on the device; it normally already sits on `stream`.
void bind(cublasHandle_t handle, cudaStream_t stream) {
  cudaStream_t current = nullptr;
  CUBLAS_CHECK(cublasGetStream(handle, &current));
  if (current != stream) CUBLAS_CHECK(cublasSetStream(handle, stream));
}

// A row-major X[r,c] with leading dimension ld is the column-major X^T[c,r] with the same ld.
// So row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands (and
// m with n) and keep each operand's transpose flag.
cublasOperation_t op_of(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

// Defined once as a template and explicitly instantiated (callers see only the declaration in
// kernels/cuda.h, which an explicit specialisation would not be allowed to hide from them).
template <class T>
void gemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda, const T* b, i64 ldb,
          T beta, T* c, i64 ldc, cublasHandle_t handle, cudaStream_t stream) {
  const BlasArgs r = check(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  if (m == 0 || n == 0) return;
  if (k == 0 && beta == T(0)) {  // a sum over nothing: zeros (beta != 0 takes cuBLAS's own k == 0 case: C = beta C)
    CUDA_CHECK(cudaMemset2DAsync(c, size_t(ldc) * sizeof(T), 0, size_t(n) * sizeof(T), size_t(m), stream));
    return;
  }
  bind(handle, stream);
  if constexpr (std::is_same_v<T, float>) {
    CUBLAS_CHECK(cublasSgemm(handle, op_of(trans_b), op_of(trans_a), r.n, r.m, r.k, &alpha, b, r.ldb, a, r.lda,
                             &beta, c, r.ldc));
  } else {
    static_assert(std::is_same_v<T, double>, "gemm: float or double");
    CUBLAS_CHECK(cublasDgemm(handle, op_of(trans_b), op_of(trans_a), r.n, r.m, r.k, &alpha, b, r.ldb, a, r.lda,
                             &beta, c, r.ldc));
  }
}

// ---- cuBLASLt with the bias (+ ReLU) epilogue ----

namespace {

// The largest power of two (up to 256, cuBLASLt's default assumption) dividing the address.
uint32_t alignment_of(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

}  // namespace

struct GemmEpilogue::State {
  std::array<int64_t, 15> key{};
  bool planned = false;  // key's descriptors and algorithm are complete (supported or not)
  bool supported = false;
  int plans_made = 0;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};

  void release() noexcept {
    if (op) (void)cublasLtMatmulDescDestroy(op);
    if (la) (void)cublasLtMatrixLayoutDestroy(la);
    if (lb) (void)cublasLtMatrixLayoutDestroy(lb);
    if (lc) (void)cublasLtMatrixLayoutDestroy(lc);
    op = nullptr;
    la = lb = lc = nullptr;
    planned = supported = false;
  }
  ~State() { release(); }
};

namespace {
std::atomic<int64_t> g_epilogue_launches{0};
}  // namespace

GemmEpilogue::GemmEpilogue() : s_(std::make_unique<State>()) {}
GemmEpilogue::~GemmEpilogue() = default;
int GemmEpilogue::plans_made() const { return s_->plans_made; }
int64_t gemm_epilogue_launches() { return g_epilogue_launches.load(std::memory_order_relaxed); }

template <class T>
bool GemmEpilogue::run(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, const T* a, i64 lda, const T* b, i64 ldb,
                       const T* bias, bool relu, T* c, i64 ldc, bool allow_tf32, cublasLtHandle_t handle,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "GemmEpilogue: float or double");
  constexpr bool f64 = std::is_same_v<T, double>;
  const BlasArgs r = check(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  // Degenerate products go to gemm (its own k == 0 case); like PyTorch's addmm, which keeps
  // cuBLASLt to operands longer than one in every dimension (the heuristic refuses some vector
  // shapes with INVALID_VALUE), so do we.
  if (m <= 1 || n <= 1 || k <= 1) return false;
  if (workspace_bytes < kGemmEpilogueWorkspace) throw std::invalid_argument("GemmEpilogue: workspace too small");
  const uint32_t align_a = alignment_of(a), align_b = alignment_of(b), align_c = alignment_of(c),
                 align_bias = alignment_of(bias);
  // cuBLASLt has no alignment preference for the bias; its heuristic reads the pointer (set
  // below before it runs) and the key keeps the bias's alignment too.
  if (align_bias < 16) return false;
  State& s = *s_;
  const std::array<int64_t, 15> key{trans_a, trans_b, m, n, k, lda, ldb, ldc, f64, relu, !f64 && allow_tf32,
                                    align_a, align_b, align_c, align_bias};
  if (!s.planned || key != s.key) {
    s.release();
    s.key = key;
    ++s.plans_made;
    cublasLtMatmulPreference_t pref = nullptr;
    try {
      const cudaDataType_t dt = f64 ? CUDA_R_64F : CUDA_R_32F;
      const cublasComputeType_t ct =
          f64 ? CUBLAS_COMPUTE_64F : allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      // Column-major, as in gemm: C^T[n,m] = op(B)^T op(A)^T, so cuBLASLt's A is our B (its rows
      // are C^T's rows, n: the bias runs along them) and its B is our A.
      CUBLAS_CHECK(cublasLtMatmulDescCreate(&s.op, ct, dt));
      const cublasOperation_t op_a = op_of(trans_b), op_b = op_of(trans_a);
      const cublasLtEpilogue_t epi = relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &dt, sizeof(dt)));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&s.la, dt, trans_b ? r.k : r.n, trans_b ? r.n : r.k, r.ldb));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&s.lb, dt, trans_a ? r.m : r.k, trans_a ? r.k : r.m, r.lda));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&s.lc, dt, r.n, r.m, r.ldc));
      CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      const uint64_t ws = kGemmEpilogueWorkspace;
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                        sizeof(ws)));
      // cuBLASLt's A is our B and vice versa; C and D are the same buffer.
      const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_b},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_a},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}};
      for (const auto& [attr, v] : aligns)
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof(v)));
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      // Any refusal (NOT_SUPPORTED, INVALID_VALUE for a configuration it has no kernel for) or no
      // result: the caller's unfused path.
      const cublasStatus_t st =
          cublasLtMatmulAlgoGetHeuristic(handle, s.op, s.la, s.lb, s.lc, s.lc, pref, 1, &result, &found);
      s.supported = st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
      if (s.supported) s.algo = result.algo;
    } catch (...) {
      if (pref) (void)cublasLtMatmulPreferenceDestroy(pref);
      s.release();
      throw;
    }
    (void)cublasLtMatmulPreferenceDestroy(pref);
    s.planned = true;
  }
  if (!s.supported) return false;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  const T one = 1, zero = 0;
  const cublasStatus_t st = cublasLtMatmul(handle, s.op, &one, b, s.la, a, s.lb, &zero, c, s.lc, c, s.lc, &s.algo,
                                           workspace, workspace_bytes, stream);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {  // refused before queueing anything: unfused from now on
    s.supported = false;
    return false;
  }
  CUBLAS_CHECK(st);
  g_epilogue_launches.fetch_add(1, std::memory_order_relaxed);
  return true;
}

template bool GemmEpilogue::run<float>(bool, bool, i64, i64, i64, const float*, i64, const float*, i64,
                                       const float*, bool, float*, i64, bool, cublasLtHandle_t, void*, size_t,
                                       cudaStream_t);
template bool GemmEpilogue::run<double>(bool, bool, i64, i64, i64, const double*, i64, const double*, i64,
                                        const double*, bool, double*, i64, bool, cublasLtHandle_t, void*, size_t,
                                        cudaStream_t);

template void gemm<float>(bool, bool, i64, i64, i64, float, const float*, i64, const float*, i64, float, float*,
                          i64, cublasHandle_t, cudaStream_t);
template void gemm<double>(bool, bool, i64, i64, i64, double, const double*, i64, const double*, i64, double,
                           double*, i64, cublasHandle_t, cudaStream_t);

}  // namespace rf::kernels::cuda
