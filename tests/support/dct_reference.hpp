#pragma once
// The orthonormal DCT-II matrix C (n x n) as an independent reference for the
// basis family's tests: C[k, j] = s_k cos(pi k (2j + 1) / (2n)), computed in
// long double with the angle reduced exactly in integers (k (2j + 1) mod 4n)
// and rounded once to double.

#include <Eigen/Core>
#include <cmath>

#include "lowrank/core/matrix_view.hpp"

namespace lowrank::test {

inline Eigen::MatrixXd dct_matrix(index_t n) {
  Eigen::MatrixXd c(n, n);
  const long double pi = 3.141592653589793238462643383279502884L;
  for (index_t k = 0; k < n; ++k) {
    const long double s = std::sqrt((k == 0 ? 1.0L : 2.0L) / static_cast<long double>(n));
    for (index_t j = 0; j < n; ++j) {
      const auto m = static_cast<long double>((k * (2 * j + 1)) % (4 * n));
      c(k, j) = static_cast<double>(s * std::cos(pi * m / (2.0L * static_cast<long double>(n))));
    }
  }
  return c;
}

}  // namespace lowrank::test
