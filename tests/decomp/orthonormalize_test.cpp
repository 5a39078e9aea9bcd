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

// CholQR2 stops after one pass where the backend estimates cond(Y) <= 2 (the
// CPU; CUDA always runs both). With C taken, that one pass is the deferred
// one: Y comes back as given and Y C is orthonormal; at cond 3 and above the
// first pass is applied to Y and the second deferred. Either way Y C is as
// orthonormal as two passes make it, and so is Q from the public function
// (which applies every pass). Y is 2048 x 74, the shape of a randomized SVD's
// final blocks at k = 64.
TYPED_TEST(orthonormalize_test, second_pass_only_where_the_first_may_lose_orthogonality) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  for (const double cond : {1.0, 1.5, 1.9, 3.0, 8.0}) {
    const Eigen::MatrixXd y = conditioned(2048, 74, cond, 7);
    const host_matrix<T> given = y.cast<T>();
    context<B> ctx;
    auto device_y = to_backend<B>(ctx, given);
    matrix<double, B> c;
    const orth_method method =
        detail::orthonormalize<T, B>(ctx, device_y.view(), orth_accuracy::orthonormal, nullptr, &c);
    EXPECT_EQ(method, orth_method::cholesky_qr) << cond;
    ASSERT_EQ(c.rows(), 74) << cond;
    const Eigen::MatrixXd returned = to_host(ctx, device_y);
    const bool one_pass = returned == given.template cast<double>();
    if (cond >= 3) {
      EXPECT_FALSE(one_pass) << cond;
    }
    if (cond <= 1.9 && std::is_same_v<B, cpu>) {
      EXPECT_TRUE(one_pass) << cond;
    }
    const Eigen::MatrixXd q = returned * to_host(ctx, c);
    // The rounding floor of a Gram matrix of 2048 rows in T, which a second
    // pass has too: 4 to 8 eps in the max norm, one pass or two, up to cond
    // 2 (in float; one pass alone reaches 16 eps at cond 8.6, 74 at 30).
    EXPECT_LE(orthonormality_error(q), 12 * eps<T>) << cond;
    EXPECT_LE(span_miss(y, q), 100 * eps<T> * cond) << cond;
    const auto [applied, public_method] = run<B, T>(y, orth_accuracy::orthonormal);
    EXPECT_EQ(public_method, orth_method::cholesky_qr) << cond;
    EXPECT_LE(orthonormality_error(applied), 12 * eps<T>) << cond;
  }
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
