// Helpers shared by the CPU kernel tests: thread-count scope, random vectors, typed tolerances.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/common.h"
#include "kernels/parallel.h"

namespace rf::kernel_tests {

// Runs a block with a given kernel thread budget (kernels/parallel.h) and restores the previous one.
struct Threads {
  int saved = kernels::cpu::max_threads();
  explicit Threads(int n) { kernels::cpu::set_max_threads(n); }
  ~Threads() { kernels::cpu::set_max_threads(saved); }
};

// Values in +-[0.25, 2]: away from 0 so division, log and the relu kink are well conditioned.
template <class T>
std::vector<T> rand_vec(i64 n, std::mt19937& g, double lo = 0.25, double hi = 2.0, bool allow_negative = true) {
  std::uniform_real_distribution<double> mag(lo, hi);
  std::bernoulli_distribution neg(0.5);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<T>((allow_negative && neg(g) ? -1 : 1) * mag(g));
  return v;
}

template <class T>
std::vector<T> uniform_vec(i64 n, std::mt19937& g, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<T>(d(g));
  return v;
}

template <class T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double rel = 2e-5, abs = 2e-6;
};
template <>
struct Tol<double> {
  static constexpr double rel = 1e-12, abs = 1e-13;
};

template <class T>
::testing::AssertionResult near(double got, double want, double scale = 1.0) {
  const double tol = scale * (Tol<T>::abs + Tol<T>::rel * std::fabs(want));
  if (std::fabs(got - want) <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << ", want " << want << " (tol " << tol << ")";
}

}  // namespace rf::kernel_tests
