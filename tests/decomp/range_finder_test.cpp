// lowrank::range_finder: an orthonormal Q whose span captures the dominant
// range of A (HMT 2011 Algorithm 4.4).

#include <gtest/gtest.h>

#include <cmath>

#include "lowrank/lowrank.hpp"
#include "support/backends.hpp"
#include "support/test_matrices.hpp"

namespace lowrank::test::range_finder_tests {
namespace {

template <class Config>
class range_finder_test : public backend_test<Config> {};
TYPED_TEST_SUITE(range_finder_test, test_configs, config_names);

// With l = k + 10 columns and q = 2, ||A - Q Q^T A||_F is within 2% of the
// best rank-k error (HMT Theorem 10.7 and Corollary 10.10), and never below the
// best rank-l error (Eckart-Young); on tall and wide matrices.
TYPED_TEST(range_finder_test, captures_the_dominant_range) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  for (const auto& [m, n] : {std::pair<index_t, index_t>{250, 100}, {100, 250}}) {
    const Eigen::MatrixXd ad =
        make_matrix(make_spectrum(spectrum_kind::fast_decay, std::min(m, n), 0), m, n, 7);
    const host_matrix<T> a = ad.cast<T>();
    const auto device_a = to_backend<B>(ctx, a);
    const index_t k = 15;
    const index_t l = k + 10;
    const auto q = range_finder(ctx, device_a.view(), l, {.power_iterations = 2, .seed = 1});
    const Eigen::MatrixXd qh = to_host(ctx, q);
    ASSERT_EQ(qh.rows(), m);
    ASSERT_EQ(qh.cols(), l);
    EXPECT_LE(orthonormality_error(qh), 50 * eps<T>);
    const Eigen::MatrixXd af = a.template cast<double>();
    const double error = (af - qh * (qh.transpose() * af)).norm();
    EXPECT_LE(error, 1.02 * optimal_frobenius_error(af, k) + 50 * eps<T> * af.norm());
    EXPECT_GE(error, optimal_frobenius_error(af, l) * (1 - 1e-3));
  }
}

// The Eigen overload is the context form on the CPU.
TYPED_TEST(range_finder_test, eigen_overload) {
  using T = typename TypeParam::scalar;
  if constexpr (!std::is_same_v<typename TypeParam::backend, cpu>) GTEST_SKIP() << "CPU overloads";
  const host_matrix<T> a = host_matrix<T>::Random(40, 30);
  context<cpu> ctx;
  EXPECT_EQ(range_finder(a, 5, {.seed = 9}), range_finder(ctx, view(a), 5, {.seed = 9}));
}

TYPED_TEST(range_finder_test, invalid_input_throws) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const auto a = to_backend<B>(ctx, host_matrix<T>(host_matrix<T>::Random(30, 20)));
  EXPECT_THROW((void)range_finder(ctx, a.view(), 0), invalid_argument);
  EXPECT_THROW((void)range_finder(ctx, a.view(), 21), invalid_argument);
  EXPECT_THROW((void)range_finder(ctx, a.view(), 3, {.power_iterations = -1}), invalid_argument);
}

}  // namespace
}  // namespace lowrank::test::range_finder_tests
