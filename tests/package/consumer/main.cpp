// Uses lowrank as an outside project would: one include, one call, a check.
#include <lowrank/lowrank.hpp>

#include <cstdio>

int main() {
  // A = U diag(s) V^T with s_i = 0.5^i: the rank-5 randomized SVD recovers it
  // to within the tail.
  const Eigen::Index m = 60;
  const Eigen::Index n = 40;
  Eigen::MatrixXd a = Eigen::MatrixXd::Zero(m, n);
  for (Eigen::Index i = 0; i < n; ++i) a(i, i) = std::pow(0.5, double(i));
  const auto r = lowrank::randomized_svd(a, 5);
  const double error = (a - r.reconstruct()).norm();
  const double optimum = std::sqrt((a.diagonal().tail(n - 5)).squaredNorm());
  std::printf("lowrank %d.%d.%d: rank-5 error %.3e (optimum %.3e)\n", lowrank::version_major,
              lowrank::version_minor, lowrank::version_patch, error, optimum);
  return error <= 1.01 * optimum ? 0 : 1;
}
