#pragma once
// What the adapter tests share: float-exact random matrices, central
// differences and relative errors.

#include <Eigen/Core>
#include <algorithm>
#include <functional>
#include <random>

#include "lowrank/core/matrix_view.hpp"

namespace lowrank::test {

/// Values in [-1, 1] that are exact in float (so that float and double tests
/// see the same numbers), from a fixed seed.
template <class T>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> random_matrix(index_t rows, index_t cols,
                                                               unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1, 1);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> m(rows, cols);
  for (index_t j = 0; j < cols; ++j) {
    for (index_t i = 0; i < rows; ++i) m(i, j) = T(float(dist(gen)));
  }
  return m;
}

/// Central differences of `loss` with respect to every entry of `p`. For a
/// loss polynomial of degree <= 2 in each entry (every adapter's loss
/// <Y, G>), they are exact up to rounding: error ~ eps / h = 1e-10 for h = 1e-6.
inline Eigen::MatrixXd numeric_gradient(Eigen::Ref<Eigen::MatrixXd> p,
                                        const std::function<double()>& loss, double h = 1e-6) {
  Eigen::MatrixXd g(p.rows(), p.cols());
  for (index_t j = 0; j < p.cols(); ++j) {
    for (index_t i = 0; i < p.rows(); ++i) {
      const double keep = p(i, j);
      p(i, j) = keep + h;
      const double up = loss();
      p(i, j) = keep - h;
      const double down = loss();
      p(i, j) = keep;
      g(i, j) = (up - down) / (2 * h);
    }
  }
  return g;
}

/// ||a - b||_F / ||b||_F.
inline double relative_error(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  return (a - b).norm() / std::max(b.norm(), 1e-300);
}

}  // namespace lowrank::test
