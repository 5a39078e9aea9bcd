// lowrank::low_rank: the U diag(s) V^T value type.

#include <gtest/gtest.h>

#include "lowrank/lowrank.hpp"
#include "support/backends.hpp"

namespace lowrank::test::low_rank_tests {
namespace {

template <class Config>
class low_rank_test : public backend_test<Config> {};
TYPED_TEST_SUITE(low_rank_test, test_configs, config_names);

TYPED_TEST(low_rank_test, reconstruct_apply_and_parameter_count) {
  using T = typename TypeParam::scalar;
  low_rank<T> f;
  f.u = host_matrix<T>::Random(7, 3);
  f.s = Eigen::Matrix<T, Eigen::Dynamic, 1>::LinSpaced(3, 3, 1);
  f.v = host_matrix<T>::Random(5, 3);
  EXPECT_EQ(f.rows(), 7);
  EXPECT_EQ(f.cols(), 5);
  EXPECT_EQ(f.rank(), 3);
  EXPECT_EQ(f.parameter_count(), 3 * (7 + 5 + 1));

  const host_matrix<T> dense = f.reconstruct();
  const host_matrix<T> expected = f.u * f.s.asDiagonal() * f.v.transpose();
  EXPECT_TRUE(dense.isApprox(expected, 10 * eps<T>));

  const host_matrix<T> x = host_matrix<T>::Random(5, 4);
  EXPECT_TRUE(f.apply(x).isApprox(dense * x, 20 * eps<T>));
  const Eigen::Matrix<T, Eigen::Dynamic, 1> xv = x.col(0);
  const Eigen::Matrix<T, Eigen::Dynamic, 1> y = f.apply(xv);
  EXPECT_TRUE(y.isApprox(dense * xv, 20 * eps<T>));

  EXPECT_THROW((void)f.apply(host_matrix<T>::Random(4, 2)), invalid_argument);
}

// The members are Eigen objects: results of the SVDs move into plain Eigen
// matrices without a copy.
TYPED_TEST(low_rank_test, members_move_into_eigen) {
  using T = typename TypeParam::scalar;
  auto r = truncated_svd(host_matrix<T>(host_matrix<T>::Random(12, 9)), 4);
  const T* data = r.u.data();
  host_matrix<T> u = std::move(r.u);
  EXPECT_EQ(u.data(), data);
  EXPECT_EQ(u.rows(), 12);
}

}  // namespace
}  // namespace lowrank::test::low_rank_tests
