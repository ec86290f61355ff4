// Comparing device results with host references in the CUDA tests.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace rf::testing {

// Worst |got - want| / max(1, |want|) <= tol: relative error, but values near zero compare
// absolutely (the GPU's float math functions are within a few ulp, which is large relative to a
// tiny result). NaN in `got` fails.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(want[i])) / std::max(1.0, std::fabs(double(want[i])));
    if (!(err <= worst)) {  // also catches NaN
      worst = err;
      at = i;
    }
  }
  EXPECT_LE(worst, tol) << what << ": worst at " << at << ": gpu " << got[at] << " vs host " << want[at];
}

}  // namespace rf::testing
