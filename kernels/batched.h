// BatchMatMul's geometry, shared by the CPU and CUDA kernels (like ConvGeom in common.h):
// C[i] = op(A_i) op(B_i) for every output batch index i, the operands' batch dimensions
// broadcast numpy-style. runtime/geometry.h's batch_layout() fills it from the shapes.
#pragma once
#include "kernels/common.h"

namespace rf::kernels {

// The output's batch dimensions (all but the last two) with each operand's element stride along
// them (0 where the operand is broadcast: a size-1 or missing dimension).
struct BatchGemm {
  int rank = 0;                      // batch rank of the output
  i64 dims[Shape::kMaxRank] = {};    // output batch dimensions
  i64 stride_a[Shape::kMaxRank] = {}, stride_b[Shape::kMaxRank] = {};  // elements; 0: broadcast
  i64 count = 1;                     // number of output matrices
  i64 m = 0, n = 0, k = 0;           // op(A) is [m, k], op(B) [k, n], C [m, n]
  i64 lda = 0, ldb = 0;              // stored row lengths of A and B
  i64 mat_a = 0, mat_b = 0;          // elements per matrix of A, B

  // Offsets of the a and b matrices that output matrix `flat` multiplies.
  void offsets(i64 flat, i64* oa, i64* ob) const {
    i64 a = 0, b = 0;
    for (int d = rank - 1; d >= 0; --d) {
      const i64 i = flat % dims[d];
      flat /= dims[d];
      a += i * stride_a[d];
      b += i * stride_b[d];
    }
    *oa = a;
    *ob = b;
  }
  // The batch dimensions [from, rank) form one regular run: over the flattened index j of those
  // dimensions, operand a's offset is j * run_a (run_a is 0 or mat_a) and b's j * run_b. Returns
  // the smallest such `from` (0: the whole batch is one strided batch).
  int regular_from(i64* run_a, i64* run_b) const {
    int from = rank;
    bool a_full = true, a_bcast = true, b_full = true, b_bcast = true;
    i64 expect_a = mat_a, expect_b = mat_b;  // the stride a full dimension would have
    for (int d = rank - 1; d >= 0; --d) {
      const bool af = stride_a[d] == expect_a || dims[d] == 1, ab = stride_a[d] == 0 || dims[d] == 1;
      const bool bf = stride_b[d] == expect_b || dims[d] == 1, bb = stride_b[d] == 0 || dims[d] == 1;
      if (!((a_full && af) || (a_bcast && ab)) || !((b_full && bf) || (b_bcast && bb))) break;
      a_full = a_full && af, a_bcast = a_bcast && ab, b_full = b_full && bf, b_bcast = b_bcast && bb;
      expect_a *= dims[d];
      expect_b *= dims[d];
      from = d;
    }
    *run_a = a_bcast ? 0 : mat_a;
    *run_b = b_bcast ? 0 : mat_b;
    return from;
  }
};

}  // namespace rf::kernels
