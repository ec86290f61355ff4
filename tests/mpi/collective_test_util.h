// Inputs and expected results shared by the collective tests (test_collectives.cpp on host
// buffers, test_nccl.cpp on device buffers): dtypes, ops, counts, typed access to a buffer, and
// rank-dependent values whose reductions are exact small integers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "collective/communicator.h"
#include "kernels/half.h"

namespace rf::collective::test_util {

inline const DType kDTypes[] = {DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32, DType::I64};
inline const ReduceOp kOps[] = {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Min, ReduceOp::Max};

inline std::vector<size_t> test_counts(int n) {
  std::vector<size_t> c = {0, 1, 7, 13, 31, 1021, (size_t(1) << 20) + 3};
  if (n > 2) c.push_back(static_cast<size_t>(n - 1));
  return c;
}

// Calls f(T*) with the buffer's storage type (uint16_t for f16/bf16) and a converter pair, so
// that filling and checking megabyte buffers stays a tight loop.
template <class F> void typed(void* b, DType t, F f) {
  auto id = [](auto v) { return static_cast<double>(v); };
  switch (t) {
    case DType::F32: return f(static_cast<float*>(b), id, [](double v) { return static_cast<float>(v); });
    case DType::F64: return f(static_cast<double*>(b), id, [](double v) { return v; });
    case DType::F16:
      return f(static_cast<uint16_t*>(b), [](uint16_t h) { return static_cast<double>(kernels::half_bits_to_float(h)); },
               [](double v) { return kernels::float_to_half_bits(static_cast<float>(v)); });
    case DType::BF16:
      return f(static_cast<uint16_t*>(b), [](uint16_t h) { return static_cast<double>(kernels::bf16_bits_to_float(h)); },
               [](double v) { return kernels::float_to_bf16_bits(static_cast<float>(v)); });
    case DType::I32: return f(static_cast<int32_t*>(b), id, [](double v) { return static_cast<int32_t>(v); });
    case DType::I64: return f(static_cast<int64_t*>(b), id, [](double v) { return static_cast<int64_t>(v); });
    case DType::U8: return f(static_cast<uint8_t*>(b), id, [](double v) { return static_cast<uint8_t>(v); });
  }
}
// b[i] = v(i) for i < n.
template <class V> void fill(void* b, DType t, size_t n, V v) {
  typed(b, t, [&](auto* p, auto, auto to) {
    for (size_t i = 0; i < n; ++i) p[i] = to(v(i));
  });
}
// Rank r's input element i: a(i) + n*r with a(i) in [-5, 5], so that over the n ranks the sum
// is n*a + n*n(n-1)/2, the average a + n(n-1)/2 (exact, also for integers), the min a and the
// max a + n(n-1): all small integers.
inline double value(int r, int n, size_t i) { return static_cast<double>(static_cast<int>((i * 7 + 3) % 11) - 5 + n * r); }
inline double expected(ReduceOp op, int n, size_t i) {
  const double a = value(0, n, i);
  switch (op) {
    case ReduceOp::Sum: return n * a + n * n * (n - 1) / 2.0;
    case ReduceOp::Avg: return a + n * (n - 1) / 2.0;
    case ReduceOp::Min: return a;
    case ReduceOp::Max: return a + n * (n - 1);
  }
  return 0;
}

}  // namespace rf::collective::test_util
