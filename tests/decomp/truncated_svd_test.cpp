// lowrank::truncated_svd: the exact SVD truncated to rank k.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "lowrank/lowrank.hpp"
#include "support/backends.hpp"
#include "support/test_matrices.hpp"

namespace lowrank::test::truncated_svd_tests {
namespace {

template <class Config>
class truncated_svd_test : public backend_test<Config> {};
TYPED_TEST_SUITE(truncated_svd_test, test_configs, config_names);

// Singular values to 1e-10 relative (double) / 1e-4 relative to s_1 (float);
// U and V orthonormal to 1e-12 / 1e-5; Eckart-Young optimal error.
TYPED_TEST(truncated_svd_test, exact_singular_values_and_orthonormal_factors) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  constexpr bool is_double = std::is_same_v<T, double>;
  context<B> ctx;
  for (const auto& [m, n] : {std::pair<index_t, index_t>{150, 150}, {200, 90}, {90, 200}}) {
    for (const auto kind : {spectrum_kind::fast_decay, spectrum_kind::slow_decay,
                            spectrum_kind::flat_then_cliff, spectrum_kind::rank_deficient}) {
      SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(n) + " " + name(kind));
      const index_t r = std::min(m, n);
      const Eigen::VectorXd truth = make_spectrum(kind, r, 25);
      const Eigen::MatrixXd ad = make_matrix(truth, m, n, 99);
      const host_matrix<T> a = ad.cast<T>();
      const auto device_a = to_backend<B>(ctx, a);
      const index_t k = 30;
      const auto result = truncated_svd(ctx, device_a.view(), k);
      const Eigen::VectorXd s = to_host(ctx, result.s);
      const Eigen::MatrixXd u = to_host(ctx, result.u);
      const Eigen::MatrixXd v = to_host(ctx, result.v);
      ASSERT_EQ(s.size(), k);
      for (index_t i = 0; i < k; ++i) {
        // Double: backward stable SVD on a matrix built in double, values >= 1e-3
        // relative here, so 1e-10 relative holds. Float: the rounding of A to
        // float perturbs every singular value by up to ~eps_f ||A||, hence a
        // bound relative to s_1.
        const double bound =
            is_double ? 1e-10 * std::max(truth(i), 1e-3 * truth(0)) : 1e-4 * truth(0);
        EXPECT_NEAR(s(i), truth(i), bound) << "i = " << i;
      }
      EXPECT_LE(orthonormality_error(u), is_double ? 1e-12 : 1e-5);
      EXPECT_LE(orthonormality_error(v), is_double ? 1e-12 : 1e-5);
      const double error = (a.template cast<double>() - u * s.asDiagonal() * v.transpose()).norm();
      EXPECT_LE(error, optimal_frobenius_error(a.template cast<double>(), k) * (1 + 1e-3) +
                           100 * eps<T> * ad.norm());
    }
  }
}

// k = min(m, n) returns the whole SVD; the Eigen overload is the context form.
TYPED_TEST(truncated_svd_test, full_rank_and_eigen_overload) {
  using T = typename TypeParam::scalar;
  if constexpr (!std::is_same_v<typename TypeParam::backend, cpu>) GTEST_SKIP() << "CPU overloads";
  const host_matrix<T> a = host_matrix<T>::Random(25, 12);
  const auto r = truncated_svd(a, 12);
  EXPECT_EQ(r.rank(), 12);
  const Eigen::MatrixXd error = a.template cast<double>() - r.reconstruct().template cast<double>();
  EXPECT_LE(error.norm(), 50 * eps<T> * a.template cast<double>().norm());
  context<cpu> ctx;
  EXPECT_EQ(truncated_svd(ctx, view(a), 4).s, truncated_svd(a, 4).s);
}

TYPED_TEST(truncated_svd_test, invalid_input_throws) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  host_matrix<T> a = host_matrix<T>::Random(10, 8);
  EXPECT_THROW((void)truncated_svd(ctx, to_backend<B>(ctx, a).view(), 0), invalid_argument);
  EXPECT_THROW((void)truncated_svd(ctx, to_backend<B>(ctx, a).view(), 9), invalid_argument);
  const matrix<T, B> empty(ctx, 4, 0);
  EXPECT_THROW((void)truncated_svd(ctx, empty.view(), 1), invalid_argument);
  a(2, 6) = std::numeric_limits<T>::quiet_NaN();
  try {
    (void)truncated_svd(ctx, to_backend<B>(ctx, a).view(), 3);
    ADD_FAILURE() << "no exception";
  } catch (const numerical_error& e) {
    EXPECT_NE(std::string(e.what()).find("lowrank::truncated_svd: argument 'a(2, 6)' is nan"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lowrank::test::truncated_svd_tests
