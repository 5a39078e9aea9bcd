// lowrank::orthonormalize: CholQR / CholQR2 on well-conditioned blocks, and the
// fallbacks (shifted CholeskyQR3, Householder) on ill-conditioned and exactly
// rank-deficient ones. Every result must be orthonormal and span span(Y).

#include <gtest/gtest.h>

#include <cmath>

#include "lowrank/lowrank.hpp"
#include "support/backends.hpp"
#include "support/test_matrices.hpp"

namespace lowrank::test::orthonormalize_tests {
namespace {

template <class Config>
class orthonormalize_test : public backend_test<Config> {};
TYPED_TEST_SUITE(orthonormalize_test, test_configs, config_names);

/// Y with singular values geometrically spaced from 1 to 1 / cond.
Eigen::MatrixXd conditioned(index_t m, index_t l, double cond, std::uint64_t seed) {
  Eigen::VectorXd s(l);
  for (index_t i = 0; i < l; ++i) s(i) = std::pow(cond, -double(i) / double(l - 1));
  return random_orthonormal(m, l, seed) * s.asDiagonal() *
         random_orthonormal(l, l, seed + 1).transpose();
}

/// ||Y - Q Q^T Y|| / ||Y||: how far span(Q) misses span(Y).
double span_miss(const Eigen::MatrixXd& y, const Eigen::MatrixXd& q) {
  return (y - q * (q.transpose() * y)).norm() / y.norm();
}

template <class B, class T>
std::pair<Eigen::MatrixXd, orth_method> run(const Eigen::MatrixXd& y, orth_accuracy accuracy) {
  context<B> ctx;
  auto device_y = to_backend<B>(ctx, host_matrix<T>(y.cast<T>()));
  const orth_method method = orthonormalize(ctx, device_y.view(), accuracy);
  return {to_host(ctx, device_y), method};
}

// Well-conditioned: CholQR2 succeeds, orthonormal to a small multiple of eps.
TYPED_TEST(orthonormalize_test, well_conditioned_uses_cholesky_qr) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  const Eigen::MatrixXd y = conditioned(500, 40, 1e2, 1);
  const auto [q, method] = run<B, T>(y, orth_accuracy::orthonormal);
  EXPECT_EQ(method, orth_method::cholesky_qr);
  EXPECT_LE(orthonormality_error(q), 20 * eps<T>);
  EXPECT_LE(span_miss(y, q), 100 * eps<T>);
}

// One pass (basis): a well-conditioned basis of the same span; its
// orthogonality is about eps cond^2.
TYPED_TEST(orthonormalize_test, basis_is_one_cholesky_qr_pass) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  const double cond = 1e2;
  const Eigen::MatrixXd y = conditioned(500, 40, cond, 2);
  const auto [q, method] = run<B, T>(y, orth_accuracy::basis);
  EXPECT_EQ(method, orth_method::cholesky_qr);
  EXPECT_LE(orthonormality_error(q), 100 * eps<T> * cond * cond);
  EXPECT_LE(span_miss(y, q), 100 * eps<T> * cond);
}

// cond(Y) ~ 1/sqrt(eps) * 30: the first CholQR pass loses orthogonality beyond
// repair; shifted CholeskyQR3 restores it.
TYPED_TEST(orthonormalize_test, ill_conditioned_falls_back_to_shifted_cholesky_qr) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  const double cond = 30 / std::sqrt(eps<T>);
  const Eigen::MatrixXd y = conditioned(400, 30, cond, 3);
  const auto [q, method] = run<B, T>(y, orth_accuracy::orthonormal);
  EXPECT_NE(method, orth_method::cholesky_qr);
  EXPECT_LE(orthonormality_error(q), 50 * eps<T>);
  // Directions of Y below eps ||Y|| are not recoverable in precision T.
  EXPECT_LE(span_miss(y, q), 1000 * eps<T> * cond * eps<T> + 100 * eps<T>);
}

// Exactly rank-deficient Y (duplicate and zero columns): the Cholesky
// factorisation breaks down; the result is still orthonormal and contains span(Y).
TYPED_TEST(orthonormalize_test, rank_deficient_falls_back) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  Eigen::MatrixXd y = conditioned(300, 20, 10, 4);
  y.col(5) = y.col(2);
  y.col(9).setZero();
  y.col(13) = 2 * y.col(0) - y.col(1);
  for (const auto accuracy : {orth_accuracy::basis, orth_accuracy::orthonormal}) {
    const auto [q, method] = run<B, T>(y, accuracy);
    EXPECT_NE(method, orth_method::cholesky_qr);
    if (accuracy == orth_accuracy::orthonormal) {
      EXPECT_LE(orthonormality_error(q), 50 * eps<T>);
    }
    EXPECT_LE(span_miss(y, q), 100 * eps<T>);
  }
}

// A zero block: only Householder can produce an orthonormal Q.
TYPED_TEST(orthonormalize_test, zero_block_uses_householder) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  const Eigen::MatrixXd y = Eigen::MatrixXd::Zero(50, 6);
  const auto [q, method] = run<B, T>(y, orth_accuracy::orthonormal);
  EXPECT_EQ(method, orth_method::householder);
  EXPECT_LE(orthonormality_error(q), 10 * eps<T>);
}

}  // namespace
}  // namespace lowrank::test::orthonormalize_tests
