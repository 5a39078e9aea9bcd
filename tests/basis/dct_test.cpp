// The orthonormal DCT (basis/dct.hpp) and the basis family's backend
// operations (basis/backend.hpp): against scipy.fft fixtures
// (tools/make_dct_fixtures.py), against an explicit C built in long double,
// both routes against each other, inverses, 2-D, basis vectors, the column
// gathers and the sampled dots, bad input.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <string>
#include <vector>

#include "lowrank/basis/dct.hpp"
#include "lowrank/io/npy.hpp"
#include "support/backends.hpp"
#include "support/dct_reference.hpp"

namespace lowrank::test::dct_tests {
namespace {

template <class Config>
class dct_test : public backend_test<Config> {};
TYPED_TEST_SUITE(dct_test, test_configs, config_names);

Eigen::MatrixXd fixture(const std::string& name) {
  return io::read_npy<double>(std::string(LOWRANK_TEST_BASIS_FIXTURE_DIR) + "/" + name + ".npy");
}

/// The error bound of a transform of vectors of length n with norm `norm` in
/// T: an orthonormal transform moves rounding errors without growing them,
/// the FFT route adds about log2(n) roundings per output, the GEMM route's
/// dot products sqrt(n) (random-walk growth of the n-term sums), and a float
/// input rounded from the double fixture contributes one eps ||x||. Eight
/// times that keeps a margin without hiding an error of one wrong term
/// (which is O(||x|| / sqrt(n)), far larger for every n tested).
template <class T>
double bound(index_t n, double norm) {
  return 8 * eps<T> * (std::sqrt(double(n)) + std::log2(double(n)) + 1) * norm;
}

template <class T, class Backend>
Eigen::MatrixXd run(context<Backend>& ctx, const Eigen::MatrixXd& x, dct_axis axis, dct_route route,
                    bool inverse) {
  const auto xb = to_backend<Backend>(ctx, host_matrix<T>(x.cast<T>()));
  matrix<T, Backend> y(ctx, x.rows(), x.cols());
  if (inverse) {
    idct(ctx, xb.view(), y.view(), axis, route);
  } else {
    dct(ctx, xb.view(), y.view(), axis, route);
  }
  return to_host(ctx, y);
}

double max_row_norm(const Eigen::MatrixXd& x, dct_axis axis) {
  return axis == dct_axis::rows ? x.rowwise().norm().maxCoeff() : x.colwise().norm().maxCoeff();
}

TYPED_TEST(dct_test, matches_scipy_for_every_length_and_axis_on_both_routes) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  for (const index_t n : {1, 2, 3, 7, 64, 100, 127, 1000, 4096}) {
    for (const dct_axis axis : {dct_axis::rows, dct_axis::columns}) {
      const std::string prefix =
          (axis == dct_axis::rows ? "rows_" : "cols_") + std::to_string(n) + "_";
      if (axis == dct_axis::columns && n == 4096) continue;  // not in the fixtures (size)
      const Eigen::MatrixXd x = fixture(prefix + "x");
      const Eigen::MatrixXd fwd = fixture(prefix + "dct");
      const Eigen::MatrixXd inv = fixture(prefix + "idct");
      const double tol = bound<T>(n, max_row_norm(x, axis));
      for (const dct_route route : {dct_route::gemm, dct_route::fft, dct_route::automatic}) {
        SCOPED_TRACE(prefix + " route " + std::to_string(int(route)));
        EXPECT_LE((run<T>(ctx, x, axis, route, false) - fwd).cwiseAbs().maxCoeff(), tol);
        EXPECT_LE((run<T>(ctx, x, axis, route, true) - inv).cwiseAbs().maxCoeff(), tol);
      }
    }
  }
}

TYPED_TEST(dct_test, two_dimensional_transforms_match_scipy) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  for (const auto& [m, n] :
       std::vector<std::pair<index_t, index_t>>{{1, 1}, {3, 7}, {64, 100}, {127, 33}}) {
    const std::string shape = std::to_string(m) + "x" + std::to_string(n);
    SCOPED_TRACE(shape);
    const Eigen::MatrixXd x = fixture("dct2_" + shape + "_x");
    const Eigen::MatrixXd y = fixture("dct2_" + shape + "_y");
    const Eigen::MatrixXd iy = fixture("idct2_" + shape + "_y");
    const auto xb = to_backend<B>(ctx, host_matrix<T>(x.cast<T>()));
    matrix<T, B> out(ctx, m, n);
    // Two transforms in a row: the bound of the longer one, twice.
    const double tol = 2 * bound<T>(std::max(m, n), x.norm());
    for (const dct_route route : {dct_route::gemm, dct_route::fft}) {
      dct2(ctx, xb.view(), out.view(), route);
      EXPECT_LE((to_host(ctx, out) - y).cwiseAbs().maxCoeff(), tol);
      idct2(ctx, xb.view(), out.view(), route);
      EXPECT_LE((to_host(ctx, out) - iy).cwiseAbs().maxCoeff(), tol);
    }
  }
}

TYPED_TEST(dct_test, routes_agree_and_inverse_restores_the_input) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  for (const index_t n : {2, 5, 16, 60, 243, 256, 1024, 2310}) {
    SCOPED_TRACE(n);
    const Eigen::MatrixXd x = Eigen::MatrixXd::Random(11, n);
    const double tol = bound<T>(n, max_row_norm(x, dct_axis::rows));
    const Eigen::MatrixXd a = run<T>(ctx, x, dct_axis::rows, dct_route::gemm, false);
    const Eigen::MatrixXd b = run<T>(ctx, x, dct_axis::rows, dct_route::fft, false);
    EXPECT_LE((a - b).cwiseAbs().maxCoeff(), tol);
    const Eigen::MatrixXd back = run<T>(ctx, b, dct_axis::rows, dct_route::fft, true);
    EXPECT_LE((back - x.cast<T>().template cast<double>()).cwiseAbs().maxCoeff(), 2 * tol);
    // The same vectors as columns give the transposed result.
    const Eigen::MatrixXd c = run<T>(ctx, x.transpose(), dct_axis::columns, dct_route::fft, false);
    EXPECT_LE((c - b.transpose()).cwiseAbs().maxCoeff(), tol);
  }
}

TYPED_TEST(dct_test, gemm_route_is_the_explicit_matrix) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  for (const index_t n : {1, 3, 8, 33, 200}) {
    SCOPED_TRACE(n);
    const Eigen::MatrixXd c = dct_matrix(n);
    const Eigen::MatrixXd x = Eigen::MatrixXd::Random(n, 4);
    const Eigen::MatrixXd xr = x.cast<T>().template cast<double>();
    const double tol = bound<T>(n, max_row_norm(x, dct_axis::columns));
    EXPECT_LE(
        (run<T>(ctx, x, dct_axis::columns, dct_route::gemm, false) - c * xr).cwiseAbs().maxCoeff(),
        tol);
    EXPECT_LE((run<T>(ctx, x, dct_axis::columns, dct_route::fft, true) - c.transpose() * xr)
                  .cwiseAbs()
                  .maxCoeff(),
              tol);
  }
}

TYPED_TEST(dct_test, basis_vectors_are_rows_of_c_and_orthonormal) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  for (const index_t n : {1, 2, 7, 64, 1000}) {
    SCOPED_TRACE(n);
    const Eigen::MatrixXd c = dct_matrix(n);
    std::vector<index_t> idx;
    for (index_t k = n - 1; k >= 0; k -= std::max<index_t>(1, n / 9)) idx.push_back(k);
    idx.push_back(0);  // a repeat is allowed
    const auto q = dct_basis<T>(ctx, n, idx);
    const Eigen::MatrixXd h = to_host(ctx, q);
    for (std::size_t i = 0; i < idx.size(); ++i) {
      // Each entry is the double value rounded once to T: within half an ulp
      // of the exact one, plus the double's own error.
      const Eigen::VectorXd want = c.row(idx[i]).transpose();
      EXPECT_LE((h.col(index_t(i)) - want).cwiseAbs().maxCoeff(), eps<T> * 0.5 + 4e-16);
    }
    // All of C: Q^T Q = I to the rounding of n-term sums of rounded entries.
    std::vector<index_t> all(static_cast<std::size_t>(n));
    for (index_t k = 0; k < n; ++k) all[std::size_t(k)] = k;
    const Eigen::MatrixXd full = to_host(ctx, dct_basis<T>(ctx, n, all));
    const Eigen::MatrixXd gram = full.transpose() * full;
    EXPECT_LE((gram - Eigen::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff(),
              4 * eps<T> * std::sqrt(double(n)) + 1e-14);
  }
}

TYPED_TEST(dct_test, results_do_not_depend_on_the_thread_count) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  if constexpr (std::is_same_v<B, cpu>) {
    auto one = make_context<B>(1);
    auto four = make_context<B>(4);
    const Eigen::MatrixXd x = Eigen::MatrixXd::Random(300, 1000);
    for (const dct_axis axis : {dct_axis::rows, dct_axis::columns}) {
      for (const bool inverse : {false, true}) {
        const Eigen::MatrixXd a = run<T>(one, x, axis, dct_route::fft, inverse);
        const Eigen::MatrixXd b = run<T>(four, x, axis, dct_route::fft, inverse);
        EXPECT_TRUE(a == b);
      }
    }
  } else {
    GTEST_SKIP() << "the thread count is the CPU's";
  }
}

TYPED_TEST(dct_test, column_gathers_scatters_and_sampled_dots) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const Eigen::MatrixXd x = Eigen::MatrixXd::Random(37, 9).cast<T>().template cast<double>();
  const Eigen::MatrixXd z = Eigen::MatrixXd::Random(37, 6).cast<T>().template cast<double>();
  const std::vector<index_t> idx{4, 0, 8, 4, 2};  // a repeated index
  const std::vector<double> scale{0.5, -2, 1.25, 3, -0.75};
  const auto xb = to_backend<B>(ctx, host_matrix<T>(x.cast<T>()));
  const auto zb = to_backend<B>(ctx, host_matrix<T>(z.cast<T>()));
  vector<index_t, B> ib(ctx, 5);
  ops<B>::upload_indices(ctx, vector_view<const index_t, cpu>(idx.data(), 5), ib.view());
  host_matrix<T> hs(5, 1);
  for (index_t i = 0; i < 5; ++i) hs(i) = static_cast<T>(scale[std::size_t(i)]);
  const auto sb = to_backend<B>(ctx, hs);
  const vector_view<const T, B> sv(sb.view().data(), 5);

  // gather: Out(:, i) = s_i X(:, idx_i), exact (one product each).
  matrix<T, B> g(ctx, 37, 5);
  ops<B>::gather_columns(ctx, xb.view(), as_const(ib.view()), sv, g.view());
  const Eigen::MatrixXd gh = to_host(ctx, g);
  for (index_t i = 0; i < 5; ++i) {
    const Eigen::VectorXd want =
        (x.col(idx[std::size_t(i)]).cast<T>() * static_cast<T>(scale[std::size_t(i)]))
            .template cast<double>();
    EXPECT_TRUE(gh.col(i) == want) << i;
  }
  ops<B>::gather_columns(ctx, xb.view(), as_const(ib.view()), vector_view<const T, B>(), g.view());
  EXPECT_TRUE(to_host(ctx, g).col(3) == x.col(4));

  // scatter: Y(:, idx_i) += alpha s_i Src(:, i) in order of i, repeated
  // indices adding up; the same loop in T on the host gives the same bits.
  host_matrix<T> yh = host_matrix<T>(x.cast<T>());
  const T alpha = T(0.375);
  auto yb = to_backend<B>(ctx, yh);
  ops<B>::scatter_add_columns(ctx, alpha, as_const(g.view()), as_const(ib.view()), sv, yb.view());
  const host_matrix<T> gsrc = to_host(ctx, g).template cast<T>();  // the unscaled gather
  for (index_t i = 0; i < 5; ++i) {
    const T a = alpha * static_cast<T>(scale[std::size_t(i)]);
    for (index_t r = 0; r < 37; ++r) yh(r, idx[std::size_t(i)]) += a * gsrc(r, i);
  }
  EXPECT_TRUE(to_host(ctx, yb) == yh.template cast<double>());

  // sampled dots: entries (ia_i, ib_i) of X^T Z, in double.
  const std::vector<index_t> ja{3, 3, 8, 0, 5};
  const std::vector<index_t> jb{0, 5, 2, 2, 5};
  vector<index_t, B> jab(ctx, 5);
  vector<index_t, B> jbb(ctx, 5);
  ops<B>::upload_indices(ctx, vector_view<const index_t, cpu>(ja.data(), 5), jab.view());
  ops<B>::upload_indices(ctx, vector_view<const index_t, cpu>(jb.data(), 5), jbb.view());
  vector<double, B> d(ctx, 5);
  ops<B>::sampled_dots(ctx, xb.view(), zb.view(), as_const(jab.view()), as_const(jbb.view()),
                       d.view());
  const Eigen::VectorXd dh = to_host(ctx, d);
  const Eigen::MatrixXd full = x.transpose() * z;
  for (index_t i = 0; i < 5; ++i) {
    EXPECT_NEAR(dh(i), full(ja[std::size_t(i)], jb[std::size_t(i)]), 1e-13) << i;
  }

  // absolute sums per column and per row, in double.
  vector<double, B> cols(ctx, 9);
  vector<double, B> rows(ctx, 37);
  ops<B>::abs_sums(ctx, xb.view(), false, cols.view());
  ops<B>::abs_sums(ctx, xb.view(), true, rows.view());
  EXPECT_LE((to_host(ctx, cols) - x.cwiseAbs().colwise().sum().transpose()).cwiseAbs().maxCoeff(),
            1e-13);
  EXPECT_LE((to_host(ctx, rows) - x.cwiseAbs().rowwise().sum()).cwiseAbs().maxCoeff(), 1e-13);
}

TYPED_TEST(dct_test, bad_input_is_refused_with_a_clear_message) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(1);
  matrix<T, B> x(ctx, 4, 6);
  ops<B>::fill(ctx, x.view(), T(1));
  matrix<T, B> y(ctx, 4, 5);
  matrix<T, B> empty(ctx, 0, 6);
  EXPECT_THROW(dct(ctx, as_const(x.view()), y.view()), invalid_argument);
  EXPECT_THROW(idct2(ctx, as_const(x.view()), y.view()), invalid_argument);
  EXPECT_THROW(dct(ctx, as_const(empty.view()), empty.view()), invalid_argument);
  EXPECT_THROW(dct(ctx, as_const(x.view()), x.view()), invalid_argument);  // overlapping
  try {
    dct(ctx, as_const(x.view()), y.view(), dct_axis::columns);
    ADD_FAILURE() << "no throw";
  } catch (const invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("lowrank::dct"), std::string::npos) << what;
    EXPECT_NE(what.find("'y'"), std::string::npos) << what;
    EXPECT_NE(what.find("4 x 5"), std::string::npos) << what;
  }
  const std::vector<index_t> bad{0, 6};
  EXPECT_THROW((void)dct_basis<T>(ctx, 6, bad), invalid_argument);
  EXPECT_THROW((void)dct_basis<T>(ctx, 0, std::vector<index_t>{}), invalid_argument);
  try {
    (void)dct_basis<T>(ctx, 6, bad);
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("idx[1]"), std::string::npos) << e.what();
  }
}

TEST(dct_route, the_cost_model_picks_gemm_for_small_or_prime_lengths) {
  EXPECT_EQ(dct_route_for<cpu>(1, 10), dct_route::gemm);
  EXPECT_EQ(dct_route_for<cpu>(64, 10), dct_route::gemm);
  EXPECT_EQ(dct_route_for<cpu>(127, 10), dct_route::gemm);  // prime
  // kappa = 20 puts the switch between 256 and 384 (dct_fft_kappa says why).
  EXPECT_EQ(dct_route_for<cpu>(256, 10), dct_route::gemm);
  EXPECT_EQ(dct_route_for<cpu>(384, 10), dct_route::fft);
  EXPECT_EQ(dct_route_for<cpu>(4099, 10), dct_route::gemm);  // prime
  EXPECT_EQ(dct_route_for<cpu>(4096, 10), dct_route::fft);
  EXPECT_EQ(dct_route_for<cpu>(11008, 10), dct_route::fft);  // 2^8 43
}

TEST(dct_eigen, eigen_overloads_transform_and_invert) {
  const Eigen::MatrixXf x = Eigen::MatrixXf::Random(5, 300);
  const Eigen::MatrixXf y = dct(x);
  const Eigen::MatrixXf back = idct(y);
  EXPECT_LE((back - x).cwiseAbs().maxCoeff(), 1e-5f);
  const Eigen::MatrixXf yc = dct(x.transpose(), dct_axis::columns);
  EXPECT_LE((yc - y.transpose()).cwiseAbs().maxCoeff(), 1e-5f);
}

}  // namespace
}  // namespace lowrank::test::dct_tests
