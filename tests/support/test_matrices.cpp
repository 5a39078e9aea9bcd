#include "support/test_matrices.hpp"

#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <cmath>
#include <random>
#include <stdexcept>

namespace lowrank::test {

std::string name(spectrum_kind kind) {
  switch (kind) {
    case spectrum_kind::fast_decay:
      return "fast_decay";
    case spectrum_kind::slow_decay:
      return "slow_decay";
    case spectrum_kind::flat_then_cliff:
      return "flat_then_cliff";
    case spectrum_kind::rank_deficient:
      return "rank_deficient";
  }
  return "?";
}

Eigen::VectorXd make_spectrum(spectrum_kind kind, Eigen::Index n, Eigen::Index parameter) {
  Eigen::VectorXd s(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const double one_based = static_cast<double>(i + 1);
    switch (kind) {
      case spectrum_kind::fast_decay:
        s(i) = std::pow(0.8, static_cast<double>(i));
        break;
      case spectrum_kind::slow_decay:
        s(i) = 1.0 / one_based;
        break;
      case spectrum_kind::flat_then_cliff:
        s(i) = i < parameter ? 1.0 : 1e-3;
        break;
      case spectrum_kind::rank_deficient:
        s(i) = i < parameter ? 1.0 / one_based : 0.0;
        break;
    }
  }
  return s;
}

Eigen::MatrixXd random_orthonormal(Eigen::Index m, Eigen::Index n, std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal;
  Eigen::MatrixXd g(m, n);
  for (Eigen::Index j = 0; j < n; ++j) {
    for (Eigen::Index i = 0; i < m; ++i) g(i, j) = normal(engine);
  }
  // Q of a Gaussian matrix, with R's diagonal made positive, is Haar distributed.
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(m, n);
  const Eigen::MatrixXd& r = qr.matrixQR();
  for (Eigen::Index j = 0; j < n; ++j) {
    if (r(j, j) < 0) q.col(j) = -q.col(j);
  }
  return q;
}

Eigen::MatrixXd make_matrix(const Eigen::VectorXd& s, Eigen::Index m, Eigen::Index n,
                            std::uint64_t seed) {
  const Eigen::Index r = std::min(m, n);
  if (s.size() != r) throw std::logic_error("make_matrix: s must have min(m, n) entries");
  const Eigen::MatrixXd u = random_orthonormal(m, r, seed);
  const Eigen::MatrixXd v = random_orthonormal(n, r, seed + 0x9E3779B97F4A7C15ull);
  return u * s.asDiagonal() * v.transpose();
}

Eigen::VectorXd singular_values(const Eigen::MatrixXd& a) {
  // One-sided Jacobi (after a column-pivoted QR) rather than Eigen 3.4's
  // BDCSVD, whose deflation can return wrong values on clusters of equal
  // singular values (the flat spectra here), depending on rounding.
  Eigen::JacobiSVD<Eigen::MatrixXd, Eigen::ColPivHouseholderQRPreconditioner> svd(a);
  return svd.singularValues();
}

double spectral_norm(const Eigen::MatrixXd& a) {
  if (a.size() == 0) return 0;
  // The largest eigenvalue of the Gram matrix is accurate to eps relative.
  const Eigen::MatrixXd gram = a.cols() <= a.rows() ? Eigen::MatrixXd(a.transpose() * a)
                                                    : Eigen::MatrixXd(a * a.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(gram, Eigen::EigenvaluesOnly);
  return std::sqrt(std::max(eig.eigenvalues().maxCoeff(), 0.0));
}

double optimal_frobenius_error(const Eigen::MatrixXd& a, Eigen::Index k) {
  const Eigen::VectorXd s = singular_values(a);
  return std::sqrt(s.tail(s.size() - k).squaredNorm());
}

double orthonormality_error(const Eigen::MatrixXd& q) {
  return (q.transpose() * q - Eigen::MatrixXd::Identity(q.cols(), q.cols())).cwiseAbs().maxCoeff();
}

}  // namespace lowrank::test
