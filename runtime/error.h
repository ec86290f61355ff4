// Errors: library code throws rf::Error with a message that says what and where; destructors
// only log. One check macro per library, all from one generator, carrying the expression,
// file:line and the library's own error string.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace rf {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... A> [[noreturn]] void fail(const A&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(os.str());
}

}  // namespace rf

// RF_CHECK(cond, parts...): throws rf::Error("parts...") when cond is false.
#define RF_CHECK(cond, ...)            \
  do {                                 \
    if (!(cond)) ::rf::fail(__VA_ARGS__); \
  } while (0)

// Generator for library checks: ok is the library's success value, str(e) its message.
#define RF_LIB_CHECK_GEN(lib, expr, ok, str)                                                   \
  do {                                                                                         \
    auto rf_status_ = (expr);                                                                  \
    if (rf_status_ != (ok))                                                                    \
      ::rf::fail(lib, " error '", str(rf_status_), "' (", static_cast<long long>(rf_status_), \
                 ") in ", #expr, " at ", __FILE__, ":", __LINE__);                             \
  } while (0)

#if RINGFLOW_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
namespace rf {
const char* cublas_status_string(cublasStatus_t s);
}
#define CUDA_CHECK(expr) RF_LIB_CHECK_GEN("CUDA", expr, cudaSuccess, cudaGetErrorString)
#define CUBLAS_CHECK(expr) \
  RF_LIB_CHECK_GEN("cuBLAS", expr, CUBLAS_STATUS_SUCCESS, ::rf::cublas_status_string)
#define CUDNN_CHECK(expr) RF_LIB_CHECK_GEN("cuDNN", expr, CUDNN_STATUS_SUCCESS, cudnnGetErrorString)
// After every kernel launch: launch-configuration errors surface here, at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
#endif
