// Compression of a trained weight into low rank plus sparse: the SVD plus the
// largest residual entries (the best sparse correction of the truncation,
// checked against a brute-force selection) and robust PCA (recovery of a
// planted rank-5 matrix with 5% gross corruptions), both against pure low
// rank at the same parameter count, and bad input.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "lowrank/factors/compress.hpp"
#include "support/backends.hpp"

namespace lowrank::test::compress_tests {
namespace {

using matd = Eigen::MatrixXd;

template <class Config>
class compress_test : public backend_test<Config> {};
TYPED_TEST_SUITE(compress_test, test_configs, config_names);

/// A rank-5 m x n matrix of unit-order entries plus `outliers` of its entries
/// (distinct, chosen by a fixed rule) set off by +-10.
struct planted {
  matd low, sparse, w;
};
planted make_planted(index_t m, index_t n, double fraction) {
  std::srand(7);
  planted p;
  p.low = matd::Random(m, 5) * matd::Random(5, n);
  p.sparse = matd::Zero(m, n);
  const auto count = index_t(fraction * double(m * n));
  std::vector<index_t> cells(std::size_t(m * n));
  for (index_t i = 0; i < m * n; ++i) cells[std::size_t(i)] = i;
  for (index_t i = 0; i < count; ++i) {  // a partial Fisher-Yates shuffle
    const index_t j = i + std::rand() % (m * n - i);
    std::swap(cells[std::size_t(i)], cells[std::size_t(j)]);
    p.sparse.data()[cells[std::size_t(i)]] = (std::rand() % 2 ? 10.0 : -10.0);
  }
  p.w = p.low + p.sparse;
  return p;
}

/// ||W - best rank-r||_F / ||W||_F (Eckart-Young, from the exact spectrum).
double pure_low_rank_error(const matd& w, index_t r) {
  const Eigen::VectorXd s = Eigen::JacobiSVD<matd>(w).singularValues();
  return std::sqrt(s.tail(s.size() - r).squaredNorm()) / w.norm();
}

template <class T, class Backend>
matd dense(context<Backend>& ctx, const sparse_low_rank_factor<T, Backend>& f, index_t m,
           index_t n) {
  matrix<T, Backend> out(ctx, m, n);
  f.to_dense(ctx, out.view());
  return to_host(ctx, out);
}

/// S alone, dense, on the host.
template <class T, class Backend>
matd dense_of_support(context<Backend>& ctx, const sparse_low_rank_factor<T, Backend>& f, index_t m,
                      index_t n) {
  matd s = matd::Zero(m, n);
  const auto flat = f.support.flat_indices(ctx);
  const Eigen::VectorXd v = to_host(ctx, f.values);
  for (std::size_t k = 0; k < flat.size(); ++k) s(flat[k] / n, flat[k] % n) = v(index_t(k));
  return s;
}

/// L alone, dense, on the host.
template <class T, class Backend>
matd dense_of_low(context<Backend>& ctx, const low_rank<T, Backend>& low) {
  return to_host(ctx, low.u) * to_host(ctx, low.s).asDiagonal() * to_host(ctx, low.v).transpose();
}

TYPED_TEST(compress_test, svd_plus_sparse_beats_pure_low_rank_and_reports_its_error) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  const index_t m = 60, n = 45;
  const planted p = make_planted(m, n, 0.05);
  const host_matrix<T> wh = p.w.cast<T>();
  const auto w = to_backend<B, T>(ctx, wh);
  const index_t nnz = index_t(0.05 * double(m * n));
  for (const index_t q : {index_t(-1), index_t(2)}) {
    const auto f =
        low_rank_plus_sparse(ctx, as_const(w.view()), 5, nnz, {.power_iterations = q, .seed = 3});
    EXPECT_EQ(f.low.rank(), 5);
    EXPECT_EQ(f.support.nnz(), nnz);
    EXPECT_EQ(f.parameters, 5 * (m + n) + nnz);
    const matd approx = dense(ctx, f, m, n);
    const double error = (p.w - approx).norm() / p.w.norm();
    EXPECT_NEAR(f.error, error, 1e-4 * error + 100 * eps<T>);
    // Given L, S holds exactly the nnz largest residual entries.
    const matd residual = p.w - dense_of_low(ctx, f.low);
    std::vector<double> mags(residual.data(), residual.data() + residual.size());
    for (double& x : mags) x = std::abs(x);
    std::nth_element(mags.begin(), mags.end() - nnz, mags.end());
    const double kept_floor = *(mags.end() - nnz);
    const matd sp = dense_of_support(ctx, f, m, n);
    for (index_t k = 0; k < m * n; ++k) {
      if (sp.data()[k] != 0) {
        EXPECT_GE(std::abs(residual.data()[k]), kept_floor * (1 - 1e-5));
      }
    }
    // The same parameter count as pure low rank: rank floor(params / (m + n)).
    const index_t same_budget = f.parameters / (m + n);
    // (The outliers bend the truncation, so the gain is moderate: 0.41 vs 0.76
    // here; robust PCA below separates them.)
    EXPECT_LT(error, 0.75 * pure_low_rank_error(p.w, same_budget)) << q;
  }
}

TYPED_TEST(compress_test, robust_pca_recovers_a_planted_low_rank_plus_sparse_matrix) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  const index_t m = 100, n = 80;
  const planted p = make_planted(m, n, 0.05);
  const host_matrix<T> wh = p.w.cast<T>();
  const auto w = to_backend<B, T>(ctx, wh);
  // Double reaches 1e-6 (the bar) at a tolerance of 1e-9; float
  // stops near its unit roundoff times the iteration's growth.
  const bool is_double = std::is_same_v<T, double>;
  const auto r = robust_pca(ctx, as_const(w.view()),
                            {.tolerance = is_double ? 1e-9 : 1e-5, .max_iterations = 300});
  EXPECT_TRUE(r.converged) << r.iterations << " iterations, residual " << r.residual;
  EXPECT_EQ(r.factor.low.rank(), 5);
  const matd l = dense_of_low(ctx, r.factor.low);
  const double recovery = (l - p.low).norm() / p.low.norm();
  EXPECT_LT(recovery, is_double ? 1e-6 : 1e-3);
  EXPECT_LT(r.factor.error, is_double ? 1e-8 : 1e-4);
  // Its support is the corruptions' (double: exactly).
  if (is_double) {
    EXPECT_EQ(r.factor.support.nnz(), index_t(0.05 * double(m * n)));
  }
  // Beats pure low rank at the same parameter count by orders of magnitude.
  EXPECT_LT(r.factor.error, 1e-3 * pure_low_rank_error(p.w, r.factor.parameters / (m + n)));
}

TYPED_TEST(compress_test, rejects_bad_input) {
  using B = typename TypeParam::backend;
  using T = typename TypeParam::scalar;
  auto ctx = make_context<B>(2);
  host_matrix<T> wh = host_matrix<T>::Random(6, 5);
  const auto w = to_backend<B, T>(ctx, wh);
  EXPECT_THROW((void)low_rank_plus_sparse(ctx, as_const(w.view()), 6, 3), invalid_argument);
  EXPECT_THROW((void)low_rank_plus_sparse(ctx, as_const(w.view()), -1, 3), invalid_argument);
  EXPECT_THROW((void)low_rank_plus_sparse(ctx, as_const(w.view()), 2, 31), invalid_argument);
  EXPECT_THROW((void)robust_pca(ctx, as_const(w.view()), {.lambda = -1}), invalid_argument);
  EXPECT_THROW((void)robust_pca(ctx, as_const(w.view()), {.tolerance = 0}), invalid_argument);
  EXPECT_THROW((void)robust_pca(ctx, as_const(w.view()), {.max_iterations = 0}), invalid_argument);
  wh(2, 2) = std::numeric_limits<T>::infinity();
  const auto bad = to_backend<B, T>(ctx, wh);
  EXPECT_THROW((void)low_rank_plus_sparse(ctx, as_const(bad.view()), 2, 3), numerical_error);
  EXPECT_THROW((void)robust_pca(ctx, as_const(bad.view())), numerical_error);
  // Extremes: rank 0 (all sparse), nnz = m n (exact).
  const auto all = low_rank_plus_sparse(ctx, as_const(w.view()), 0, 30);
  EXPECT_EQ(all.error, 0.0);
}

}  // namespace
}  // namespace lowrank::test::compress_tests
