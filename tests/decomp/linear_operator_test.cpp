// The decompositions on linear operators (core/linear_operator.hpp): an
// operator that only multiplies gives the dense path's results bit for bit
// from the same seed, with the documented number of products; the
// fixed-accuracy mode works from products alone; an operator whose products
// cannot reach its stated norm stalls the search.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>

#include "lowrank/lowrank.hpp"
#include "support/backends.hpp"
#include "support/decomp_cases.hpp"
#include "support/test_matrices.hpp"

namespace lowrank::test::linear_operator_tests {
namespace {

/// counting_operator with a stated ||A||_F^2.
template <class T, class Backend>
class normed_operator : public counting_operator<T, Backend> {
 public:
  normed_operator(matrix_view<const T, Backend> a, product_count* count, double stated)
      : counting_operator<T, Backend>(a, count), squared_norm_(stated) {}
  [[nodiscard]] double squared_norm(context<Backend>& /*ctx*/) const { return squared_norm_; }

 private:
  double squared_norm_;
};

static_assert(linear_operator<counting_operator<float, cpu>>);
static_assert(linear_operator<matrix_view<const double, cpu>>);
static_assert(linear_operator<matrix_view<float, cpu>>);
static_assert(linear_operator<transposed_operator<matrix_view<const float, cpu>>>);
static_assert(!linear_operator<Eigen::MatrixXf>);

template <class Config>
class linear_operator_test : public backend_test<Config> {};
TYPED_TEST_SUITE(linear_operator_test, test_configs, config_names);

template <class T, class Backend>
host_matrix<T> host_of(context<Backend>& ctx, const matrix<T, Backend>& m) {
  host_matrix<T> out(m.rows(), m.cols());
  ops<Backend>::download(ctx, m.view(), view(out));
  return out;
}
template <class T, class Backend>
host_matrix<T> host_of(context<Backend>& ctx, const vector<T, Backend>& v) {
  host_matrix<T> out(v.size(), 1);
  ops<Backend>::download(ctx, v.view().as_matrix(), view(out));
  return out;
}

// Fixed rank: the operator's result is the dense result, bit for bit, after
// q + 1 products with M and q + 1 with M^T (M = A, or A^T when A is wide:
// 2q + 2 passes); the range finder makes q + 1 and q.
TYPED_TEST(linear_operator_test, fixed_rank_and_range_finder_match_the_dense_path) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  for (const auto& [m, n] : {std::pair<index_t, index_t>{90, 60}, {60, 90}}) {
    SCOPED_TRACE(std::to_string(m) + " x " + std::to_string(n));
    const Eigen::VectorXd s = make_spectrum(spectrum_kind::slow_decay, std::min(m, n), 0);
    const host_matrix<T> a = make_matrix(s, m, n, 99).template cast<T>();
    const auto device_a = to_backend<B>(ctx, a);
    for (const index_t q : {0, 1, 3}) {
      product_count count;
      const counting_operator<T, B> op(device_a.view(), &count);
      const randomized_svd_options options{.oversampling = 7, .power_iterations = q, .seed = 5};
      const auto dense = randomized_svd(ctx, device_a.view(), 10, options);
      const auto mine = randomized_svd(ctx, op, 10, options);
      EXPECT_TRUE(same_bits(host_of(ctx, dense.u), host_of(ctx, mine.u)));
      EXPECT_TRUE(same_bits(host_of(ctx, dense.s), host_of(ctx, mine.s)));
      EXPECT_TRUE(same_bits(host_of(ctx, dense.v), host_of(ctx, mine.v)));
      const int m_products = m >= n ? count.apply : count.apply_transposed;
      const int mt_products = m >= n ? count.apply_transposed : count.apply;
      EXPECT_EQ(m_products, q + 1);
      EXPECT_EQ(mt_products, q + 1);

      product_count range_count;
      const counting_operator<T, B> range_op(device_a.view(), &range_count);
      const auto q_dense = range_finder(ctx, device_a.view(), 12, {.power_iterations = q});
      const auto q_op = range_finder(ctx, range_op, 12, {.power_iterations = q});
      EXPECT_TRUE(same_bits(host_of(ctx, q_dense), host_of(ctx, q_op)));
      EXPECT_EQ(range_count.apply, q + 1);
      EXPECT_EQ(range_count.apply_transposed, q);
    }
    // A^T as an operator: the factors of A, exchanged (the same arithmetic;
    // the sign convention now applies to A's V, so a pair may be negated).
    const transposed_operator<matrix_view<const T, B>> at(device_a.view());
    const auto direct = randomized_svd(ctx, device_a.view(), 10, {.seed = 2});
    const auto flipped = randomized_svd(ctx, at, 10, {.seed = 2});
    EXPECT_TRUE(same_bits(host_of(ctx, direct.s), host_of(ctx, flipped.s)));
    const host_matrix<T> du = host_of(ctx, direct.u);
    const host_matrix<T> dv = host_of(ctx, direct.v);
    host_matrix<T> fu = host_of(ctx, flipped.v);
    host_matrix<T> fv = host_of(ctx, flipped.u);
    for (index_t j = 0; j < 10; ++j) {
      if (fu(0, j) != du(0, j)) {
        fu.col(j) = -fu.col(j);
        fv.col(j) = -fv.col(j);
      }
    }
    EXPECT_TRUE(same_bits(du, fu));
    EXPECT_TRUE(same_bits(dv, fv));
  }
}

// Fixed accuracy from products alone: ||A||_F^2 from blocks of the identity
// (equal to the dense sum of squares to rounding), then the same search; the
// tolerance is met, and the rank is the dense path's.
TYPED_TEST(linear_operator_test, fixed_accuracy_from_products_alone) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  for (const auto& [m, n] : {std::pair<index_t, index_t>{150, 100}, {100, 150}}) {
    SCOPED_TRACE(std::to_string(m) + " x " + std::to_string(n));
    const Eigen::VectorXd s = make_spectrum(spectrum_kind::fast_decay, std::min(m, n), 0);
    const host_matrix<T> a = make_matrix(s, m, n, 7).template cast<T>();
    const Eigen::MatrixXd ad = a.template cast<double>();
    const auto device_a = to_backend<B>(ctx, a);
    product_count count;
    const counting_operator<T, B> op(device_a.view(), &count);
    // The sum of squares in double over another order: rounding apart.
    const double dense_norm = ops<B>::template squared_norm<T>(ctx, device_a.view());
    EXPECT_NEAR(operator_squared_norm(ctx, op), dense_norm, 1e-12 * dense_norm);
    EXPECT_GT(count.apply + count.apply_transposed, 0);
    for (const double tol : {0.1, 0.01}) {
      const fixed_accuracy request{.relative_error = tol, .block_size = 8, .seed = 4};
      const auto dense = randomized_svd(ctx, device_a.view(), request);
      const auto mine = randomized_svd(ctx, op, request);
      EXPECT_EQ(mine.status, qb_status::converged);
      EXPECT_EQ(mine.rank(), dense.rank());
      const Eigen::MatrixXd approx = to_host(ctx, mine.u) * to_host(ctx, mine.s).asDiagonal() *
                                     to_host(ctx, mine.v).transpose();
      EXPECT_LE((ad - approx).norm(), tol * ad.norm());
    }
  }
}

// The stalled stop: an operator stating twice its true ||A||_F^2 leaves half
// of the stated energy out of reach of any product, so once the rank-6 range
// is found, a whole block adds nothing and the search stops as stalled
// (before max_rank, with the estimate still above the tolerance).
TYPED_TEST(linear_operator_test, unreachable_energy_stalls_the_fixed_accuracy_search) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const Eigen::VectorXd s = make_spectrum(spectrum_kind::rank_deficient, 60, 6);
  const host_matrix<T> a = make_matrix(s, 80, 60, 3).template cast<T>();
  const auto device_a = to_backend<B>(ctx, a);
  product_count count;
  const double truth = ops<B>::template squared_norm<T>(ctx, device_a.view());
  const normed_operator<T, B> op(device_a.view(), &count, 2 * truth);
  const auto r = randomized_svd(
      ctx, op, fixed_accuracy{.relative_error = 0.1, .max_rank = 40, .block_size = 4});
  EXPECT_EQ(r.status, qb_status::stalled);
  EXPECT_LT(r.rank(), 40);
  EXPECT_GE(r.rank(), 6);
  EXPECT_NEAR(r.relative_error_estimate, std::sqrt(0.5), 1e-3);
}

// A non-finite operator: the error says the products are not finite (its
// entries cannot be read to name one).
TYPED_TEST(linear_operator_test, non_finite_products_throw) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  host_matrix<T> a = host_matrix<T>::Ones(30, 20);
  a(4, 5) = std::numeric_limits<T>::quiet_NaN();
  const auto device_a = to_backend<B>(ctx, a);
  product_count count;
  const counting_operator<T, B> op(device_a.view(), &count);
  try {
    (void)randomized_svd(ctx, op, 3);
    ADD_FAILURE() << "no exception";
  } catch (const numerical_error& e) {
    EXPECT_NE(std::string(e.what()).find("operator"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)randomized_svd(ctx, op, fixed_accuracy{.relative_error = 0.1}),
               numerical_error);
  EXPECT_THROW((void)range_finder(ctx, op, 3), numerical_error);
  EXPECT_THROW((void)randomized_svd(ctx, op, 0), invalid_argument);
}

}  // namespace
}  // namespace lowrank::test::linear_operator_tests
