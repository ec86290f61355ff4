// Elementwise reductions the collectives apply to whole buffers or pipeline chunks: each reads
// every input once and writes the result once, in vectorizable tiles.
#pragma once
#include <cstddef>

#include "collective/communicator.h"

namespace rf::collective {

// dst[i] = op(srcs[0][i], ..., srcs[m-1][i]) for i < count, m >= 1; when dst2 is not null it
// gets the same values (one pass feeds both the caller's buffer and a shared-memory slot).
// ReduceOp::Avg combines as Sum; avg_div > 0 divides the result by it (the last reduction of
// an Avg). f16/bf16 are widened to f32, combined and rounded once per call, so a ring that
// reduces hop by hop rounds once per hop (exact while partial sums stay representable).
// Integer sums wrap; integer Avg truncates toward zero. dst may alias one source exactly.
void reduce_into(void* dst, void* dst2, const void* const* srcs, int m, size_t count, DType dtype,
                 ReduceOp op, int avg_div);

// dst = op(a, b), the two-input case.
inline void reduce2(void* dst, const void* a, const void* b, size_t count, DType dtype, ReduceOp op,
                    int avg_div) {
  const void* s[2] = {a, b};
  reduce_into(dst, nullptr, s, 2, count, dtype, op, avg_div);
}

// Throws rf::Error for a dtype the collectives do not reduce (U8).
void check_reducible(DType dtype);

}  // namespace rf::collective
