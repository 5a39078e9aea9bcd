#pragma once
// Test matrices with known singular values and reference computations in
// double precision (compiled once, in test_matrices.cpp, so that the test
// translation units do not each instantiate Eigen's SVD).

#include <Eigen/Core>
#include <cstdint>
#include <string>

namespace lowrank::test {

/// The spectra the acceptance tests run on.
enum class spectrum_kind {
  fast_decay,       ///< s_i = 0.8^(i-1)
  slow_decay,       ///< s_i = 1 / i
  flat_then_cliff,  ///< s_i = 1 for i <= cliff, then 1e-3
  rank_deficient,   ///< s_i = 1 / i for i <= rank, then exactly 0
};

[[nodiscard]] std::string name(spectrum_kind kind);

/// n singular values of the given kind; `parameter` is the cliff position or
/// the rank (ignored for the decays).
[[nodiscard]] Eigen::VectorXd make_spectrum(spectrum_kind kind, Eigen::Index n,
                                            Eigen::Index parameter);

/// A = U diag(s) V^T (m x n, s of length min(m, n)) with Haar-random
/// orthonormal U and V from a fixed seed (std::mt19937_64, independent of
/// lowrank's generator).
[[nodiscard]] Eigen::MatrixXd make_matrix(const Eigen::VectorXd& s, Eigen::Index m, Eigen::Index n,
                                          std::uint64_t seed);

/// A Haar-random m x n matrix with orthonormal columns.
[[nodiscard]] Eigen::MatrixXd random_orthonormal(Eigen::Index m, Eigen::Index n,
                                                 std::uint64_t seed);

/// All singular values of A (double, one-sided Jacobi), descending.
[[nodiscard]] Eigen::VectorXd singular_values(const Eigen::MatrixXd& a);

/// ||A||_2.
[[nodiscard]] double spectral_norm(const Eigen::MatrixXd& a);

/// The Eckart-Young optimum sqrt(sum_{i>k} s_i^2) of the matrix A.
[[nodiscard]] double optimal_frobenius_error(const Eigen::MatrixXd& a, Eigen::Index k);

/// ||Q^T Q - I||_max.
[[nodiscard]] double orthonormality_error(const Eigen::MatrixXd& q);

}  // namespace lowrank::test
