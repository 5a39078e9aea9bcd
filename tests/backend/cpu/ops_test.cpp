// Every operation of ops<Backend> against a plain Eigen computation in double,
// for float and double, on views with ld > rows whose padding holds NaN (so a
// read outside the view shows in the result and a write outside it shows in
// the padding).
//
// Tolerances are rounding-error bounds of the operation in T (Higham,
// "Accuracy and Stability of Numerical Algorithms", 2nd ed.: gamma_n = n u,
// u = eps / 2), evaluated elementwise on the exact inputs; each says where it
// comes from. Wrong results (a transpose, a sign, a missed beta) are O(1).

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/backends.hpp"
#include "support/test_matrices.hpp"

namespace ops_tests {
namespace {

using lowrank::distribution;
using lowrank::index_t;
using lowrank::matrix_view;
using lowrank::transpose;
using lowrank::vector_view;
using lowrank::test::eps;
using lowrank::test::host_matrix;

/// A Gaussian m x n matrix from std::mt19937_64 (independent of lowrank's
/// generator).
Eigen::MatrixXd gaussian(index_t m, index_t n, std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal;
  Eigen::MatrixXd g(m, n);
  for (index_t j = 0; j < n; ++j) {
    for (index_t i = 0; i < m; ++i) g(i, j) = normal(engine);
  }
  return g;
}

/// `x` rounded to T and back: the exact input the operation sees.
template <class T>
Eigen::MatrixXd rounded(const Eigen::MatrixXd& x) {
  return x.cast<T>().template cast<double>();
}

template <class T>
T quiet_nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

/// A rows x cols matrix in the backend's memory at (1, 2) of a (rows + 3) x
/// (cols + 4) buffer whose other entries are `pad`: a view with ld > rows.
template <class T, class Backend>
class padded {
 public:
  padded(lowrank::context<Backend>& ctx, const Eigen::MatrixXd& content, T pad)
      : ctx_(&ctx),
        buffer_(ctx, content.rows() + 3, content.cols() + 4),
        rows_(content.rows()),
        cols_(content.cols()) {
    lowrank::ops<Backend>::fill(ctx, buffer_.view(), pad);
    const host_matrix<T> h = content.cast<T>();
    lowrank::ops<Backend>::upload(ctx, lowrank::view(h), view());
  }
  padded(lowrank::context<Backend>& ctx, index_t rows, index_t cols, T pad)
      : padded(ctx, Eigen::MatrixXd::Constant(rows, cols, double(pad)), pad) {}

  [[nodiscard]] matrix_view<T, Backend> view() { return buffer_.view().block(1, 2, rows_, cols_); }
  [[nodiscard]] matrix_view<const T, Backend> cview() const {
    return buffer_.view().block(1, 2, rows_, cols_);
  }
  /// The viewed entries, in double on the host.
  [[nodiscard]] Eigen::MatrixXd host() const {
    return lowrank::test::to_host(*ctx_, buffer_).block(1, 2, rows_, cols_);
  }
  /// Whether every entry outside the view still holds `pad` (NaN counts as
  /// equal to NaN).
  [[nodiscard]] bool padding_is(T pad) const {
    Eigen::MatrixXd all = lowrank::test::to_host(*ctx_, buffer_);
    all.block(1, 2, rows_, cols_).setConstant(double(pad));
    const double p = double(pad);
    return std::isnan(p) ? all.array().isNaN().all() : (all.array() == p).all();
  }

 private:
  lowrank::context<Backend>* ctx_;
  lowrank::matrix<T, Backend> buffer_;
  index_t rows_;
  index_t cols_;
};

template <class Config>
class Ops : public ::testing::Test {
 public:
  using backend_type = typename Config::backend;
  using scalar_type = typename Config::scalar;
  using ops_type = lowrank::ops<backend_type>;

  lowrank::context<backend_type> ctx;

  padded<scalar_type, backend_type> pad(const Eigen::MatrixXd& content) {
    return padded<scalar_type, backend_type>(ctx, content, quiet_nan<scalar_type>());
  }
  padded<scalar_type, backend_type> pad(index_t rows, index_t cols) {
    return padded<scalar_type, backend_type>(ctx, rows, cols, quiet_nan<scalar_type>());
  }
};

TYPED_TEST_SUITE(Ops, lowrank::test::cpu_configs, lowrank::test::config_names);

// ------------------------------------------------------------------- gemm

// C = alpha op(A) op(B) + beta C in T errs elementwise by at most
// gamma_{k+2} (|alpha| |op(A)| |op(B)| + |beta| |C|) (Higham 3.5, any
// summation order, so BLAS blocking included); the double reference errs by
// the same bound in double. 2 (k + 2) eps is twice the sum of both.
template <class T>
void expect_gemm_close(const Eigen::MatrixXd& c, const Eigen::MatrixXd& reference,
                       const Eigen::MatrixXd& magnitude, index_t k, const char* what) {
  const Eigen::ArrayXXd bound = 2.0 * double(k + 2) * eps<T> * magnitude.array();
  const Eigen::ArrayXXd error = (c - reference).array().abs();
  EXPECT_TRUE(c.allFinite()) << what;
  EXPECT_TRUE((error <= bound).all())
      << what << ": max error " << error.maxCoeff() << ", max bound " << bound.maxCoeff();
}

TYPED_TEST(Ops, GemmAllTransposesAlphaBeta) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const index_t m = 13;
  const index_t n = 9;
  const index_t k = 17;
  const T alpha = T(0.75);
  for (const transpose ta : {transpose::no, transpose::yes}) {
    for (const transpose tb : {transpose::no, transpose::yes}) {
      for (const double beta : {0.0, 1.0, -1.25}) {
        const bool at = ta == transpose::yes;
        const bool bt = tb == transpose::yes;
        const Eigen::MatrixXd a = rounded<T>(gaussian(at ? k : m, at ? m : k, 1));
        const Eigen::MatrixXd b = rounded<T>(gaussian(bt ? n : k, bt ? k : n, 2));
        const Eigen::MatrixXd c0 = rounded<T>(gaussian(m, n, 3));
        auto pa = this->pad(a);
        auto pb = this->pad(b);
        // beta = 0 must ignore C entirely, NaN included.
        auto pc = beta == 0.0 ? this->pad(m, n) : this->pad(c0);
        ops::gemm(this->ctx, ta, tb, alpha, pa.cview(), pb.cview(), T(beta), pc.view());

        const Eigen::MatrixXd opa = at ? Eigen::MatrixXd(a.transpose()) : a;
        const Eigen::MatrixXd opb = bt ? Eigen::MatrixXd(b.transpose()) : b;
        const double al = double(alpha);
        const Eigen::MatrixXd reference = al * opa * opb + beta * c0;
        const Eigen::MatrixXd magnitude =
            std::abs(al) * opa.cwiseAbs() * opb.cwiseAbs() + std::abs(beta) * c0.cwiseAbs();
        const std::string what = std::string("ta ") + (at ? "T" : "N") + " tb " + (bt ? "T" : "N") +
                                 " beta " + std::to_string(beta);
        expect_gemm_close<T>(pc.host(), reference, magnitude, k, what.c_str());
        EXPECT_TRUE(pc.padding_is(quiet_nan<T>())) << what;
      }
    }
  }
}

TYPED_TEST(Ops, GemmEmptyInnerDimensionScalesC) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const Eigen::MatrixXd c0 = rounded<T>(gaussian(4, 3, 4));
  const Eigen::MatrixXd none(4, 0);
  const Eigen::MatrixXd none_t(0, 3);
  auto pa = this->pad(none);
  auto pb = this->pad(none_t);
  // k = 0: C = beta C exactly (beta = 2 is exact), and 0 for beta = 0.
  auto pc = this->pad(c0);
  ops::gemm(this->ctx, transpose::no, transpose::no, T(1), pa.cview(), pb.cview(), T(2), pc.view());
  EXPECT_EQ(pc.host(), Eigen::MatrixXd(2.0 * c0));
  auto pz = this->pad(4, 3);  // NaN
  ops::gemm(this->ctx, transpose::no, transpose::no, T(1), pa.cview(), pb.cview(), T(0), pz.view());
  EXPECT_EQ(pz.host(), Eigen::MatrixXd::Zero(4, 3));
}

TYPED_TEST(Ops, GemmAlphaZeroBetaZeroGivesZeroOverNaN) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  auto pa = this->pad(rounded<T>(gaussian(5, 6, 5)));
  auto pb = this->pad(rounded<T>(gaussian(6, 2, 6)));
  auto pc = this->pad(5, 2);  // NaN everywhere
  ops::gemm(this->ctx, transpose::no, transpose::no, T(0), pa.cview(), pb.cview(), T(0), pc.view());
  EXPECT_EQ(pc.host(), Eigen::MatrixXd::Zero(5, 2));
}

// ------------------------------------------- work splits and thread counts
//
// The CPU backend splits large operations into pieces decided from the shapes
// alone (row or column panels of the output, chunks of the inner dimension
// added in order) and runs them on the context's threads. The shapes below
// take each split; the result must meet the same bounds and must not depend on
// the thread count, bit for bit.

template <class T>
bool same_bits(const host_matrix<T>& a, const host_matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) == 0;
}

TYPED_TEST(Ops, GemmSplitShapesAndThreadCounts) {
  using T = typename TestFixture::scalar_type;
  using cpu_ops = lowrank::ops<lowrank::cpu>;
  lowrank::context<lowrank::cpu> one(1);
  lowrank::context<lowrank::cpu> three(3);
  struct shape {
    index_t m;
    index_t n;
    index_t k;
  };
  // Row panels, column panels, inner-dimension chunks, row panels of a square.
  for (const shape sh :
       {shape{600, 7, 20}, shape{9, 700, 15}, shape{8, 8, 3000}, shape{300, 260, 40}}) {
    for (const transpose ta : {transpose::no, transpose::yes}) {
      for (const transpose tb : {transpose::no, transpose::yes}) {
        const bool at = ta == transpose::yes;
        const bool bt = tb == transpose::yes;
        const Eigen::MatrixXd a = rounded<T>(gaussian(at ? sh.k : sh.m, at ? sh.m : sh.k, 23));
        const Eigen::MatrixXd b = rounded<T>(gaussian(bt ? sh.n : sh.k, bt ? sh.k : sh.n, 24));
        const Eigen::MatrixXd c0 = rounded<T>(gaussian(sh.m, sh.n, 25));
        const host_matrix<T> ah = a.cast<T>();
        const host_matrix<T> bh = b.cast<T>();
        host_matrix<T> c1 = c0.cast<T>();
        host_matrix<T> c3 = c0.cast<T>();
        const T alpha = T(1.5);
        const T beta = T(-0.5);
        cpu_ops::gemm(one, ta, tb, alpha, lowrank::view(ah), lowrank::view(bh), beta,
                      lowrank::view(c1));
        cpu_ops::gemm(three, ta, tb, alpha, lowrank::view(ah), lowrank::view(bh), beta,
                      lowrank::view(c3));
        const std::string what = std::to_string(sh.m) + " x " + std::to_string(sh.n) + " x " +
                                 std::to_string(sh.k) + (at ? " T" : " N") + (bt ? "T" : "N");
        EXPECT_TRUE(same_bits(c1, c3)) << what;
        const Eigen::MatrixXd opa = at ? Eigen::MatrixXd(a.transpose()) : a;
        const Eigen::MatrixXd opb = bt ? Eigen::MatrixXd(b.transpose()) : b;
        const Eigen::MatrixXd reference = 1.5 * opa * opb - 0.5 * c0;
        const Eigen::MatrixXd magnitude =
            1.5 * opa.cwiseAbs() * opb.cwiseAbs() + 0.5 * c0.cwiseAbs();
        expect_gemm_close<T>(c1.template cast<double>(), reference, magnitude, sh.k, what.c_str());
      }
    }
  }
}

TYPED_TEST(Ops, GramProductsAndReductionsSplitAndThreadCounts) {
  using T = typename TestFixture::scalar_type;
  using cpu_ops = lowrank::ops<lowrank::cpu>;
  lowrank::context<lowrank::cpu> one(1);
  lowrank::context<lowrank::cpu> three(3);

  // gram over chunks of 3000 rows.
  const index_t m = 3000;
  const index_t n = 8;
  const Eigen::MatrixXd a = rounded<T>(gaussian(m, n, 26));
  const host_matrix<T> ah = a.cast<T>();
  host_matrix<T> g1 = host_matrix<T>::Zero(n, n);
  host_matrix<T> g3 = host_matrix<T>::Zero(n, n);
  cpu_ops::gram(one, lowrank::view(ah), lowrank::view(g1));
  cpu_ops::gram(three, lowrank::view(ah), lowrank::view(g3));
  const Eigen::MatrixXd g1d = g1.template cast<double>();
  const Eigen::MatrixXd reference = a.transpose() * a;
  // As in GramLowerTriangle: 2 m eps |A|^T |A|.
  const Eigen::MatrixXd bound =
      2.0 * double(m) * eps<T> * (a.cwiseAbs().transpose() * a.cwiseAbs());
  for (index_t j = 0; j < n; ++j) {
    for (index_t i = j; i < n; ++i) {
      EXPECT_LE(std::abs(g1d(i, j) - reference(i, j)), bound(i, j)) << i << ", " << j;
      EXPECT_EQ(g1(i, j), g3(i, j)) << i << ", " << j;
    }
  }

  // Y R over row panels of a 20000-row Y (64 Mflop, 32 in the trmm path: four
  // pieces each), for a general R and an upper-triangular one (Cholesky QR's
  // R^{-1}: the in-place trmm path).
  const index_t p = 40;
  const Eigen::MatrixXd full = rounded<T>(gaussian(p, p, 27));
  const Eigen::MatrixXd upper = full.triangularView<Eigen::Upper>();
  const Eigen::MatrixXd y = rounded<T>(gaussian(20000, p, 28));
  for (const Eigen::MatrixXd& r : {full, upper}) {
    const host_matrix<T> rh = r.cast<T>();
    host_matrix<T> x1 = y.cast<T>();
    host_matrix<T> x3 = y.cast<T>();
    cpu_ops::multiply_right(one, lowrank::view(rh), lowrank::view(x1));
    cpu_ops::multiply_right(three, lowrank::view(rh), lowrank::view(x3));
    EXPECT_TRUE(same_bits(x1, x3));
    // As in MultiplyRight: 2 (p + 2) eps |Y| |R|.
    const Eigen::ArrayXXd residual = (x1.template cast<double>() - y * r).array().abs();
    const Eigen::ArrayXXd rbound =
        2.0 * double(p + 2) * eps<T> * (y.cwiseAbs() * r.cwiseAbs()).array();
    EXPECT_TRUE((residual <= rbound).all()) << "max residual " << residual.maxCoeff();
  }

  // squared_norm over column chunks: bitwise the same whatever the threads.
  const host_matrix<T> big = rounded<T>(gaussian(500, 400, 29)).template cast<T>();
  const double s1 = cpu_ops::squared_norm(one, lowrank::view(big));
  const double s3 = cpu_ops::squared_norm(three, lowrank::view(big));
  EXPECT_EQ(s1, s3);
  const double sref = big.template cast<double>().squaredNorm();
  EXPECT_NEAR(s1, sref, 2.0 * double(big.size()) * eps<double> * sref);

  // find_non_finite over column chunks: the first one overall, not the first
  // chunk to finish.
  host_matrix<T> poisoned = big;
  poisoned(7, 390) = std::numeric_limits<T>::quiet_NaN();
  poisoned(300, 80) = std::numeric_limits<T>::infinity();
  poisoned(499, 81) = std::numeric_limits<T>::quiet_NaN();
  EXPECT_EQ(cpu_ops::find_non_finite(one, lowrank::view(std::as_const(poisoned))), 300 + 80 * 500);
  EXPECT_EQ(cpu_ops::find_non_finite(three, lowrank::view(std::as_const(poisoned))),
            300 + 80 * 500);
  EXPECT_EQ(cpu_ops::find_non_finite(three, lowrank::view(big)), -1);
}

// ------------------------------------------------------------------- gram

TYPED_TEST(Ops, GramLowerTriangle) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  for (const index_t m : {index_t{30}, index_t{5}}) {  // tall and short A
    const index_t n = 8;
    const Eigen::MatrixXd a = rounded<T>(gaussian(m, n, 7));
    auto pa = this->pad(a);
    auto pc = this->pad(n, n);  // C starts as NaN: gram assigns, never accumulates
    ops::gram(this->ctx, pa.cview(), pc.view());
    const Eigen::MatrixXd c = pc.host();
    const Eigen::MatrixXd reference = a.transpose() * a;
    // Inner products of length m: gamma_m |A|^T |A| in T, as much again for
    // the double reference; 2 m eps bounds twice the sum.
    const Eigen::MatrixXd bound =
        2.0 * double(m) * eps<T> * (a.cwiseAbs().transpose() * a.cwiseAbs());
    for (index_t j = 0; j < n; ++j) {
      for (index_t i = j; i < n; ++i) {
        EXPECT_LE(std::abs(c(i, j) - reference(i, j)), bound(i, j))
            << "m " << m << " (" << i << ", " << j << ") = " << c(i, j);
      }
    }
    EXPECT_TRUE(pc.padding_is(quiet_nan<T>()));
  }
}

TYPED_TEST(Ops, GramOfEmptyAIsZero) {
  using ops = typename TestFixture::ops_type;
  auto pa = this->pad(Eigen::MatrixXd(0, 3));
  auto pc = this->pad(3, 3);
  ops::gram(this->ctx, pa.cview(), pc.view());
  const Eigen::MatrixXd c = pc.host();
  for (index_t j = 0; j < 3; ++j) {
    for (index_t i = j; i < 3; ++i) EXPECT_EQ(c(i, j), 0.0) << i << ", " << j;
  }
}

// -------------------------------------------------------- cholesky_factor

// R from the lower triangle of G (the upper one holds NaN and is never read),
// in double: Cholesky is backward stable, R^T R = G + shift tr(G) I + E with
// |E| <= gamma_{n+1} |R^T| |R| (Higham Theorem 10.3); 4 (n + 1) eps_double
// bounds that and the reference's rounding. R R^{-1} = I to cond(R) n eps
// (Higham 14.2); cond(R) = cond(Y) < 10 for this Gaussian Y, so 100 n eps.
TYPED_TEST(Ops, CholeskyFactorOfAGramMatrix) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  using backend = typename TestFixture::backend_type;
  const index_t n = 9;
  const Eigen::MatrixXd y = rounded<T>(gaussian(40, n, 21));
  const Eigen::MatrixXd g = rounded<T>(y.transpose() * y);
  Eigen::MatrixXd lower = g;
  lower.template triangularView<Eigen::StrictlyUpper>().setConstant(quiet_nan<double>());
  const Eigen::MatrixXd identity = Eigen::MatrixXd::Identity(n, n);
  for (const double shift : {0.0, 1e-3}) {
    auto pg = this->pad(lower);
    padded<double, backend> pr(this->ctx, n, n, quiet_nan<double>());
    padded<double, backend> pri(this->ctx, n, n, quiet_nan<double>());
    const lowrank::cholesky_status status =
        ops::cholesky_factor(this->ctx, pg.cview(), shift, pr.view(), pri.view());
    ASSERT_TRUE(status.ok) << "shift " << shift;
    EXPECT_NEAR(status.deviation, (g - identity).norm(), 1e-13 * (g - identity).norm());
    const Eigen::MatrixXd r = pr.host();
    const Eigen::MatrixXd r_inv = pri.host();
    EXPECT_TRUE(r.template triangularView<Eigen::StrictlyLower>().toDenseMatrix().isZero(0));
    EXPECT_TRUE(r_inv.template triangularView<Eigen::StrictlyLower>().toDenseMatrix().isZero(0));
    EXPECT_GT(r.diagonal().minCoeff(), 0);
    const Eigen::MatrixXd target = g + shift * g.trace() * identity;
    const Eigen::MatrixXd bound =
        4.0 * double(n + 1) * eps<double> * (r.cwiseAbs().transpose() * r.cwiseAbs());
    EXPECT_TRUE(((r.transpose() * r - target).cwiseAbs().array() <= bound.array()).all())
        << "shift " << shift;
    EXPECT_LE((r * r_inv - identity).cwiseAbs().maxCoeff(), 100.0 * double(n) * eps<double>);
    EXPECT_TRUE(pr.padding_is(quiet_nan<double>()));
    EXPECT_TRUE(pri.padding_is(quiet_nan<double>()));
  }
}

// The condition estimate (asked for): kappa_2(R) = kappa_2(Y) from below,
// within 10%, for Y = U diag(s) V^T with s spread geometrically (kappa 1 to
// 3.5) or with one outlying value; a value above 4 wherever kappa is (here
// kappa = 50); +infinity when not asked for.
TYPED_TEST(Ops, CholeskyFactorEstimatesTheCondition) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  using backend = typename TestFixture::backend_type;
  const index_t m = 600;
  const index_t n = 40;
  for (const double kappa : {1.0, 1.3, 2.0, 3.5, 50.0}) {
    for (const bool outlier : {false, true}) {
      Eigen::VectorXd s = Eigen::VectorXd::Ones(n);
      for (index_t i = 0; i < n; ++i) {
        s(i) = outlier ? (i == n / 2 ? 1 / kappa : 1.0) : std::pow(kappa, -double(i) / (n - 1));
      }
      const Eigen::MatrixXd y = lowrank::test::random_orthonormal(m, n, 31) * s.asDiagonal() *
                                lowrank::test::random_orthonormal(n, n, 32).transpose();
      const Eigen::MatrixXd g = rounded<T>(y.transpose() * y);
      auto pg = this->pad(g);
      padded<double, backend> pr(this->ctx, n, n, 0.0);
      padded<double, backend> pri(this->ctx, n, n, 0.0);
      const auto asked =
          ops::cholesky_factor(this->ctx, pg.cview(), 0.0, pr.view(), pri.view(), true);
      ASSERT_TRUE(asked.ok);
      // G rounded to T moves kappa by about eps_T kappa^2 relative.
      const double slack = 1 + 10 * eps<T> * kappa * kappa;
      if (kappa <= 4) {
        EXPECT_LE(asked.condition, kappa * slack) << kappa << " outlier " << outlier;
        EXPECT_GE(asked.condition, 0.9 * kappa / slack) << kappa << " outlier " << outlier;
      } else {
        EXPECT_GT(asked.condition, 4.0) << kappa << " outlier " << outlier;
      }
      const auto plain = ops::cholesky_factor(this->ctx, pg.cview(), 0.0, pr.view(), pri.view());
      EXPECT_EQ(plain.condition, std::numeric_limits<double>::infinity());
    }
  }
}

// An indefinite, a singular and a non-finite G: ok is false, the deviation
// is still reported (except where it is not finite).
TYPED_TEST(Ops, CholeskyFactorReportsBreakdown) {
  using ops = typename TestFixture::ops_type;
  using backend = typename TestFixture::backend_type;
  const index_t n = 3;
  padded<double, backend> pr(this->ctx, n, n, 0.0);
  padded<double, backend> pri(this->ctx, n, n, 0.0);
  const Eigen::MatrixXd indefinite = Eigen::Vector3d(1, -1, 1).asDiagonal();
  auto pi = this->pad(indefinite);
  const auto a = ops::cholesky_factor(this->ctx, pi.cview(), 0.0, pr.view(), pri.view());
  EXPECT_FALSE(a.ok);
  EXPECT_DOUBLE_EQ(a.deviation, 2.0);
  const Eigen::MatrixXd singular = Eigen::Vector3d(1, 0, 1).asDiagonal();
  auto ps = this->pad(singular);
  EXPECT_FALSE(ops::cholesky_factor(this->ctx, ps.cview(), 0.0, pr.view(), pri.view()).ok);
  // The shift makes the singular matrix definite.
  EXPECT_TRUE(ops::cholesky_factor(this->ctx, ps.cview(), 1e-6, pr.view(), pri.view()).ok);
  Eigen::MatrixXd nan = Eigen::MatrixXd::Identity(n, n);
  nan(2, 0) = quiet_nan<double>();
  auto pn = this->pad(nan);
  EXPECT_FALSE(ops::cholesky_factor(this->ctx, pn.cview(), 0.0, pr.view(), pri.view()).ok);
  auto pe = this->pad(Eigen::MatrixXd(0, 0));
  padded<double, backend> empty(this->ctx, 0, 0, 0.0);
  EXPECT_TRUE(ops::cholesky_factor(this->ctx, pe.cview(), 0.0, empty.view(), empty.view()).ok);
}

// convert rounds once (to nearest) from double to T, and widens exactly.
TYPED_TEST(Ops, ConvertBetweenPrecisions) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  using backend = typename TestFixture::backend_type;
  const Eigen::MatrixXd x = gaussian(7, 5, 22);
  padded<double, backend> px(this->ctx, x, quiet_nan<double>());
  auto pt = this->pad(7, 5);
  ops::convert(this->ctx, px.cview(), pt.view());
  EXPECT_EQ(pt.host(), rounded<T>(x));
  EXPECT_TRUE(pt.padding_is(quiet_nan<T>()));
  padded<double, backend> back(this->ctx, 7, 5, quiet_nan<double>());
  ops::convert(this->ctx, pt.cview(), back.view());
  EXPECT_EQ(back.host(), rounded<T>(x));
  EXPECT_TRUE(back.padding_is(quiet_nan<double>()));
}

// ---------------------------------------------------------- multiply_right

TYPED_TEST(Ops, MultiplyRight) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const index_t n = 9;
  const index_t p = 14;
  const Eigen::MatrixXd full = rounded<T>(gaussian(n, n, 8));
  // A general R, and an upper-triangular one (the CPU backend applies that
  // with trmm in place, reading nothing below the diagonal or in the padding).
  const Eigen::MatrixXd upper = full.triangularView<Eigen::Upper>();
  for (const Eigen::MatrixXd& r : {full, upper}) {
    const Eigen::MatrixXd y = rounded<T>(gaussian(p, n, 9));
    auto pr = this->pad(r);
    auto py = this->pad(y);
    ops::multiply_right(this->ctx, pr.cview(), py.view());
    const Eigen::MatrixXd x = py.host();
    // A product's componentwise bound (Higham 3.5): |Y R - fl(Y R)| <= gamma_n
    // |Y| |R|; 2 (n + 2) eps covers it and the double reference.
    const Eigen::ArrayXXd residual = (x - y * r).array().abs();
    const Eigen::ArrayXXd bound =
        2.0 * double(n + 2) * eps<T> * (y.cwiseAbs() * r.cwiseAbs()).array();
    EXPECT_TRUE((residual <= bound).all())
        << "max residual " << residual.maxCoeff() << ", max bound " << bound.maxCoeff();
    EXPECT_TRUE(py.padding_is(quiet_nan<T>()));
    EXPECT_TRUE(pr.padding_is(quiet_nan<T>()));
  }
}

// ----------------------------------------------- householder_orthonormalize

/// Checks that q (m x n) is the thin Q of a Householder QR of y: orthonormal
/// columns, and Q^T Y upper triangular with Y = Q (Q^T Y). Householder QR
/// gives Y + dY = Q R with ||dy_j|| <= gamma~_{mn} ||y_j|| and
/// ||Q^T Q - I|| <= gamma~_{mn} (Higham 19.4, 19.13), whatever the rank or
/// conditioning of Y: m n eps is that bound with the constant 2.
template <class T>
void expect_householder_q(const Eigen::MatrixXd& q, const Eigen::MatrixXd& y, const char* what,
                          const Eigen::MatrixXd& r_out) {
  const index_t m = y.rows();
  const index_t n = y.cols();
  const double tol = double(m * n) * eps<T>;
  ASSERT_TRUE(q.allFinite()) << what;
  EXPECT_LE(lowrank::test::orthonormality_error(q), tol) << what;
  const Eigen::MatrixXd r = q.transpose() * y;
  for (index_t j = 0; j < n; ++j) {
    const double yj = y.col(j).norm();
    EXPECT_LE((y.col(j) - q * r.col(j)).norm(), tol * yj) << what << ": column " << j;
    // The returned R is the factor: Y = Q R, zeros below the diagonal.
    EXPECT_LE((y.col(j) - q * r_out.col(j)).norm(), tol * yj) << what << ": R column " << j;
    for (index_t i = j + 1; i < n; ++i) EXPECT_EQ(r_out(i, j), 0.0) << what;
    for (index_t i = j + 1; i < n; ++i) {
      EXPECT_LE(std::abs(r(i, j)), tol * yj) << what << ": (Q^T Y)(" << i << ", " << j << ")";
    }
  }
}

TYPED_TEST(Ops, HouseholderOrthonormalizeFullRank) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const std::pair<index_t, index_t> shapes[] = {{40, 12}, {12, 12}, {7, 1}};
  for (const auto& [m, n] : shapes) {
    const Eigen::MatrixXd y = rounded<T>(gaussian(m, n, 10));
    auto py = this->pad(y);
    auto pr = this->pad(n, n);
    ops::householder_orthonormalize(this->ctx, py.view(), pr.view());
    const std::string what = std::to_string(m) + " x " + std::to_string(n);
    expect_householder_q<T>(py.host(), y, what.c_str(), pr.host());
    EXPECT_TRUE(pr.padding_is(quiet_nan<T>())) << what;
    EXPECT_TRUE(py.padding_is(quiet_nan<T>())) << what;
  }
}

TYPED_TEST(Ops, HouseholderOrthonormalizeIllConditioned) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  // cond(Y) = 1e6: Cholesky-based QR would lose all orthogonality in float
  // (cond^2 u >> 1); Householder's Q stays orthonormal to O(u).
  const index_t m = 50;
  const index_t n = 10;
  Eigen::VectorXd s(n);
  for (index_t i = 0; i < n; ++i) s(i) = std::pow(10.0, -6.0 * double(i) / double(n - 1));
  const Eigen::MatrixXd y = rounded<T>(lowrank::test::make_matrix(s, m, n, 11));
  auto py = this->pad(y);
  auto pr = this->pad(n, n);
  ops::householder_orthonormalize(this->ctx, py.view(), pr.view());
  expect_householder_q<T>(py.host(), y, "cond 1e6", pr.host());
}

TYPED_TEST(Ops, HouseholderOrthonormalizeRankDeficient) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const index_t m = 30;
  Eigen::MatrixXd y = rounded<T>(gaussian(m, 6, 12));
  y.col(1) = y.col(0);        // duplicate
  y.col(3).setZero();         // zero column
  y.col(5) = 2.0 * y.col(2);  // parallel (exact: a power of two)
  auto py = this->pad(y);
  auto pr = this->pad(6, 6);
  ops::householder_orthonormalize(this->ctx, py.view(), pr.view());
  // All 6 columns orthonormal although rank(Y) = 3, and the span contains Y's.
  expect_householder_q<T>(py.host(), y, "rank 3 of 6", pr.host());

  // The all-zero matrix still gives orthonormal columns.
  auto pz = this->pad(Eigen::MatrixXd::Zero(m, 4));
  auto prz = this->pad(4, 4);
  ops::householder_orthonormalize(this->ctx, pz.view(), prz.view());
  const Eigen::MatrixXd qz = pz.host();
  ASSERT_TRUE(qz.allFinite());
  EXPECT_LE(lowrank::test::orthonormality_error(qz), double(m * 4) * eps<T>);
}

TYPED_TEST(Ops, HouseholderOrthonormalizeNoColumns) {
  using ops = typename TestFixture::ops_type;
  auto py = this->pad(5, 0);
  auto pr = this->pad(0, 0);
  EXPECT_NO_THROW(ops::householder_orthonormalize(this->ctx, py.view(), pr.view()));
}

// -------------------------------------------------------------------- svd

template <class T, class Fixture>
void check_svd(Fixture& f, const Eigen::MatrixXd& a, const char* what) {
  using backend = typename Fixture::backend_type;
  const index_t m = a.rows();
  const index_t n = a.cols();
  const index_t r = std::min(m, n);
  auto pa = f.pad(a);
  auto pu = f.pad(m, r);
  auto pv = f.pad(n, r);
  lowrank::vector<T, backend> s(f.ctx, r);
  lowrank::ops<backend>::svd(f.ctx, pa.cview(), pu.view(), s.view(), pv.view());
  const Eigen::MatrixXd u = pu.host();
  const Eigen::MatrixXd v = pv.host();
  const Eigen::VectorXd sv = lowrank::test::to_host(f.ctx, s);
  ASSERT_TRUE(u.allFinite() && v.allFinite() && sv.allFinite()) << what;

  // A backward-stable SVD: U S V^T = A + dA, ||dA|| <= p(m, n) u ||A||, with
  // U and V orthonormal to p(m, n) u (Higham 20, Demmel-Kahan); with p = 4
  // max(m, n), 2 max(m, n) eps.
  const double tol = 2.0 * double(std::max(m, n)) * eps<T>;
  const double norm_a = a.norm();
  EXPECT_LE((a - u * sv.asDiagonal() * v.transpose()).norm(), tol * norm_a) << what;
  EXPECT_LE(lowrank::test::orthonormality_error(u), tol) << what;
  EXPECT_LE(lowrank::test::orthonormality_error(v), tol) << what;
  // Descending, non-negative, and (Weyl) within ||dA||_2 of the exact values
  // of the T-rounded A.
  const Eigen::VectorXd exact = lowrank::test::singular_values(a);
  for (index_t i = 0; i < r; ++i) {
    EXPECT_GE(sv(i), 0.0) << what << ": s(" << i << ")";
    if (i + 1 < r) {
      EXPECT_GE(sv(i), sv(i + 1)) << what << ": s(" << i << ")";
    }
    EXPECT_LE(std::abs(sv(i) - exact(i)), tol * norm_a) << what << ": s(" << i << ")";
  }
  EXPECT_TRUE(pa.padding_is(quiet_nan<T>())) << what;
  EXPECT_TRUE(pu.padding_is(quiet_nan<T>())) << what;
  EXPECT_TRUE(pv.padding_is(quiet_nan<T>())) << what;
}

TYPED_TEST(Ops, SvdShapes) {
  using T = typename TestFixture::scalar_type;
  struct shape {
    index_t m;
    index_t n;
    const char* what;
  };
  // m >= 2n and n <= m < 2n take different paths (QR first, or not).
  for (const shape sh :
       {shape{40, 10, "tall"}, shape{15, 10, "slightly tall"}, shape{12, 12, "square"},
        shape{10, 35, "wide"}, shape{10, 14, "slightly wide"}, shape{6, 1, "one column"},
        shape{1, 6, "one row"}}) {
    const index_t r = std::min(sh.m, sh.n);
    const Eigen::MatrixXd a = rounded<T>(lowrank::test::make_matrix(
        lowrank::test::make_spectrum(lowrank::test::spectrum_kind::slow_decay, r, 0), sh.m, sh.n,
        13));
    check_svd<T>(*this, a, sh.what);
  }
}

TYPED_TEST(Ops, SvdGraded) {
  using T = typename TestFixture::scalar_type;
  // Singular values from 1 down to 1e-6 (the l x l factors of a randomized
  // SVD on a fast-decaying spectrum), square, tall and wide.
  Eigen::VectorXd graded(60);
  for (index_t i = 0; i < 60; ++i) graded(i) = std::pow(10.0, -6.0 * double(i) / 59.0);
  check_svd<T>(*this, rounded<T>(lowrank::test::make_matrix(graded, 60, 60, 16)), "graded 1e-6");
  check_svd<T>(*this, rounded<T>(lowrank::test::make_matrix(graded, 90, 60, 17)), "graded tall");
  check_svd<T>(*this, rounded<T>(lowrank::test::make_matrix(graded, 60, 90, 18)), "graded wide");
}

TYPED_TEST(Ops, SvdRankDeficient) {
  using T = typename TestFixture::scalar_type;
  // Rank 4 of min(30, 20) = 20, and a matrix with duplicate and zero columns.
  const Eigen::MatrixXd a = rounded<T>(lowrank::test::make_matrix(
      lowrank::test::make_spectrum(lowrank::test::spectrum_kind::rank_deficient, 20, 4), 30, 20,
      14));
  check_svd<T>(*this, a, "rank 4");
  Eigen::MatrixXd b = rounded<T>(gaussian(12, 7, 15));
  b.col(2) = b.col(0);
  b.col(4).setZero();
  check_svd<T>(*this, b, "duplicate and zero columns");
  check_svd<T>(*this, Eigen::MatrixXd::Zero(8, 5), "zero matrix");
}

// ----------------------------------------------------- element-wise ops

TYPED_TEST(Ops, FillWritesOnlyTheView) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  auto px = this->pad(6, 5);
  ops::fill(this->ctx, px.view(), T(0.375));
  EXPECT_EQ(px.host(), Eigen::MatrixXd::Constant(6, 5, 0.375));
  EXPECT_TRUE(px.padding_is(quiet_nan<T>()));
}

TYPED_TEST(Ops, CopyBetweenDifferentLeadingDimensions) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const Eigen::MatrixXd x = rounded<T>(gaussian(7, 4, 16));
  auto src = this->pad(x);
  // dst has a different ld: a 7 x 4 block of a 12 x 6 buffer.
  lowrank::matrix<T, typename TestFixture::backend_type> big(this->ctx, 12, 6);
  ops::fill(this->ctx, big.view(), T(-9));
  ops::copy(this->ctx, src.cview(), big.view().block(3, 1, 7, 4));
  Eigen::MatrixXd all = lowrank::test::to_host(this->ctx, big);
  EXPECT_EQ(Eigen::MatrixXd(all.block(3, 1, 7, 4)), x);
  all.block(3, 1, 7, 4).setConstant(-9);
  EXPECT_TRUE((all.array() == -9.0).all());
  EXPECT_TRUE(src.padding_is(quiet_nan<T>()));
}

TYPED_TEST(Ops, ScaleColumnsIsExact) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const Eigen::MatrixXd x = rounded<T>(gaussian(6, 5, 17));
  const Eigen::VectorXd dv = rounded<T>(gaussian(5, 1, 18));
  auto px = this->pad(x);
  const host_matrix<T> dh = dv.cast<T>();
  lowrank::vector<T, typename TestFixture::backend_type> d(this->ctx, 5);
  ops::upload(this->ctx, lowrank::view(dh), d.view().as_matrix());
  ops::scale_columns(this->ctx, lowrank::as_const(d.view()), px.view());
  // One multiplication per entry, correctly rounded: exactly T(x) * T(d).
  const host_matrix<T> expected = x.cast<T>() * dv.cast<T>().asDiagonal();
  EXPECT_EQ(px.host(), Eigen::MatrixXd(expected.template cast<double>()));
  EXPECT_TRUE(px.padding_is(quiet_nan<T>()));
}

TYPED_TEST(Ops, SquaredNormAccumulatesInDouble) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  // 1e6 ones: exactly 1e6.
  {
    lowrank::matrix<T, typename TestFixture::backend_type> ones(this->ctx, 1000, 1000);
    ops::fill(this->ctx, ones.view(), T(1));
    EXPECT_EQ(ops::squared_norm(this->ctx, lowrank::as_const(ones.view())), 1e6);
  }
  // (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24 needs 25 significant bits: exact in
  // double, not in float. 4096 of them sum to 4098 + 2^-12 exactly in double.
  {
    const double x = 1.0 + std::ldexp(1.0, -12);
    auto px = this->pad(Eigen::MatrixXd::Constant(64, 64, x));
    EXPECT_EQ(ops::squared_norm(this->ctx, px.cview()), 4098.0 + std::ldexp(1.0, -12));
  }
  // 4096^2 = 2^24 followed by 1000 ones: a float accumulator stays at 2^24.
  {
    Eigen::MatrixXd x = Eigen::MatrixXd::Ones(1001, 1);
    x(0, 0) = 4096;
    auto px = this->pad(x);
    EXPECT_EQ(ops::squared_norm(this->ctx, px.cview()), 16777216.0 + 1000.0);
  }
  // A random matrix: the double accumulation of T^2 terms (exact products)
  // errs by at most gamma_{mn} in double.
  {
    const Eigen::MatrixXd x = rounded<T>(gaussian(23, 11, 19));
    auto px = this->pad(x);
    const double reference = x.squaredNorm();
    EXPECT_NEAR(ops::squared_norm(this->ctx, px.cview()), reference,
                2.0 * 23 * 11 * eps<double> * reference);
  }
  // Empty: 0.
  auto pe = this->pad(0, 3);
  EXPECT_EQ(ops::squared_norm(this->ctx, pe.cview()), 0.0);
}

TYPED_TEST(Ops, ColumnSquaredNorms) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  using backend = typename TestFixture::backend_type;
  const index_t rows = 1001;
  Eigen::MatrixXd x = rounded<T>(gaussian(rows, 4, 20));
  // Column 3: 2^24 then 1000 ones, exact only when accumulated in double.
  x.col(3).setOnes();
  x(0, 3) = 4096;
  auto px = this->pad(x);
  lowrank::vector<double, backend> out(this->ctx, 4);
  ops::column_squared_norms(this->ctx, px.cview(), out.view());
  const Eigen::VectorXd got = lowrank::test::to_host(this->ctx, out);
  for (index_t j = 0; j < 3; ++j) {
    // A double sum (kept in double: energies never round to T), erring by gamma_rows.
    const double reference = x.col(j).squaredNorm();
    EXPECT_NEAR(got(j), reference, double(rows) * eps<double> * reference) << j;
  }
  EXPECT_EQ(got(3), 16777216.0 + 1000.0);
}

// max_abs: the largest magnitude exactly (a negative entry included), NaN
// for a NaN or an infinity, 0 for an empty view; squared_norm with a scale:
// ||c X||_F^2 for a power of two c, so data near the ends of the range has a
// finite energy.
TYPED_TEST(Ops, MaxAbsAndScaledSquaredNorm) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  Eigen::MatrixXd x = rounded<T>(gaussian(300, 7, 21));
  x(123, 5) = -9.5;
  auto px = this->pad(x);
  EXPECT_EQ(ops::max_abs(this->ctx, px.cview()), 9.5);
  x(4, 2) = std::numeric_limits<double>::quiet_NaN();
  auto pn = this->pad(x);
  EXPECT_TRUE(std::isnan(ops::max_abs(this->ctx, pn.cview())));
  x(4, 2) = -std::numeric_limits<double>::infinity();
  auto pi = this->pad(x);
  EXPECT_TRUE(std::isnan(ops::max_abs(this->ctx, pi.cview())));
  auto pe = this->pad(0, 3);
  EXPECT_EQ(ops::max_abs(this->ctx, pe.cview()), 0.0);

  // 2^e y with e near T's largest exponent: y's energy from the scaled sum.
  const Eigen::MatrixXd y = rounded<T>(gaussian(200, 6, 22));
  const int e = std::numeric_limits<T>::max_exponent - 4;
  const Eigen::MatrixXd big = y * std::ldexp(1.0, e);
  auto py = this->pad(y);
  auto pb = this->pad(big);
  EXPECT_EQ(ops::squared_norm(this->ctx, pb.cview(), std::ldexp(1.0, -e)),
            ops::squared_norm(this->ctx, py.cview()));
}

TYPED_TEST(Ops, FindNonFinite) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const index_t rows = 5;
  const index_t cols = 4;
  const T big = std::numeric_limits<T>::max();
  Eigen::MatrixXd x = rounded<T>(gaussian(rows, cols, 21));
  x(0, 0) = double(big);
  x(1, 0) = -double(big);
  x(2, 0) = double(std::numeric_limits<T>::denorm_min());
  {
    // Finite (extreme values included), with NaN in the padding around it.
    auto px = this->pad(x);
    EXPECT_EQ(ops::find_non_finite(this->ctx, px.cview()), -1);
  }
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct poison {
    index_t i;
    index_t j;
    double value;
  };
  for (const poison p : {poison{3, 2, nan}, poison{4, 0, inf}, poison{0, 3, -inf}}) {
    Eigen::MatrixXd y = x;
    y(p.i, p.j) = p.value;
    auto py = this->pad(y);
    // The linear index counts rows, not ld.
    EXPECT_EQ(ops::find_non_finite(this->ctx, py.cview()), p.i + p.j * rows) << p.value;
  }
  // Several: the first in column-major order.
  Eigen::MatrixXd y = x;
  y(4, 3) = nan;
  y(2, 1) = inf;
  y(0, 2) = nan;
  y(3, 1) = -inf;
  auto py = this->pad(y);
  EXPECT_EQ(ops::find_non_finite(this->ctx, py.cview()), 2 + 1 * rows);
  auto pe = this->pad(0, 0);
  EXPECT_EQ(ops::find_non_finite(this->ctx, pe.cview()), -1);
}

TYPED_TEST(Ops, SignsOfLargest) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  using backend = typename TestFixture::backend_type;
  Eigen::MatrixXd x(3, 7);
  x.col(0) << 1, -3, 2;                    // negative largest: -1
  x.col(1) << 3, -3, 0;                    // tie, first positive: +1
  x.col(2) << -3, 3, 1;                    // tie, first negative: -1
  x.col(3) << 0, 0, 0;                     // zero column: +1
  x.col(4) << 0.5, 0.25, 0.125;            // +1
  x.col(5) << -0.0, 0.0, -0.0;             // signed zeros are a zero column: +1
  x.col(6) << quiet_nan<double>(), -3, 2;  // a NaN is passed over: -1
  // The padding around the view holds -1e30 (must not be seen).
  padded<T, backend> px(this->ctx, x, T(-1e30));
  lowrank::vector<T, backend> out(this->ctx, 7);
  ops::signs_of_largest(this->ctx, px.cview(), out.view());
  Eigen::VectorXd expected(7);
  expected << -1, 1, -1, 1, 1, 1, -1;
  EXPECT_EQ(lowrank::test::to_host(this->ctx, out), expected);
}

TYPED_TEST(Ops, UploadDownloadRoundTrip) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const Eigen::MatrixXd x = rounded<T>(gaussian(6, 3, 22));
  // Host source with ld 9 > 6.
  host_matrix<T> host_buffer = host_matrix<T>::Constant(9, 5, T(-5));
  host_buffer.block(2, 1, 6, 3) = x.cast<T>();
  const auto src = lowrank::view(std::as_const(host_buffer)).block(2, 1, 6, 3);
  auto dev = this->pad(6, 3);
  ops::upload(this->ctx, src, dev.view());
  EXPECT_EQ(dev.host(), x);
  EXPECT_TRUE(dev.padding_is(quiet_nan<T>()));
  // Back into a host view with yet another ld.
  host_matrix<T> back = host_matrix<T>::Constant(8, 4, T(7));
  ops::download(this->ctx, dev.cview(), lowrank::view(back).block(1, 1, 6, 3));
  EXPECT_EQ(Eigen::MatrixXd(back.template cast<double>().block(1, 1, 6, 3)), x);
  back.block(1, 1, 6, 3).setConstant(T(7));
  EXPECT_TRUE((back.array() == T(7)).all());
}

TYPED_TEST(Ops, FillRandomMatchesRandomElement) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  const lowrank::random_stream s{31, 4};
  auto px = this->pad(9, 3);
  ops::fill_random(this->ctx, distribution::gaussian, s, px.view(), 6, 2);
  const Eigen::MatrixXd x = px.host();
  for (index_t j = 0; j < 3; ++j) {
    for (index_t i = 0; i < 9; ++i) {
      EXPECT_EQ(x(i, j), double(lowrank::random_element<T, distribution::gaussian>(
                             s, std::uint64_t(6 + i), std::uint64_t(2 + j))));
    }
  }
  EXPECT_TRUE(px.padding_is(quiet_nan<T>()));
}

// ----------------------------------------------------- DoRA's per-row arithmetic

// The factored row norms of W + s B A against the rows of the dense sum: the
// dots are double sums of at most in + r = 14 exact-input products (each off
// by at most 14 eps of its magnitude, Higham 3.5), as is the dense row, and
// the square root halves that; 32 eps leaves room for the mild cancellation
// in w + 2 s b + s^2 c of these draws (measured: 0.7 eps at most).
TYPED_TEST(Ops, FactoredRowNormsMatchTheDenseRows) {
  using ops = typename TestFixture::ops_type;
  const index_t out = 7, in = 11, r = 3;
  const double s = 0.75, floor = 1e-12;
  Eigen::MatrixXd w = gaussian(out, in, 31);
  Eigen::MatrixXd b = gaussian(out, r, 32);
  const Eigen::MatrixXd a = gaussian(r, in, 33);
  w.row(2).setZero();
  b.row(2).setZero();  // a zero row of W + s B A: the floor
  const Eigen::MatrixXd wa = w * a.transpose();
  const Eigen::MatrixXd bm = b * (a * a.transpose());
  Eigen::VectorXd wsq = w.rowwise().squaredNorm();
  Eigen::VectorXd wb = (b.array() * wa.array()).rowwise().sum();
  Eigen::VectorXd bb = (b.array() * bm.array()).rowwise().sum();
  const Eigen::VectorXd dense = (w + s * b * a).rowwise().norm();
  const auto in_view = [](const Eigen::VectorXd& v) {
    return vector_view<const double, lowrank::cpu>(v.data(), index_t(v.size()));
  };
  Eigen::VectorXd n(out);
  ops::factored_row_norms(this->ctx, s, floor, in_view(wsq), in_view(wb), in_view(bb),
                          vector_view<double, lowrank::cpu>(n.data(), out));
  for (index_t i = 0; i < out; ++i) {
    if (i == 2) {
      EXPECT_EQ(n(i), floor);
    } else {
      EXPECT_NEAR(n(i), dense(i), 32 * eps<double> * dense(i)) << i;
    }
  }
  // A square that rounding made negative gives the floor; a NaN stays NaN.
  wsq(0) = 1, wb(0) = -1, bb(0) = 0;
  wsq(1) = std::numeric_limits<double>::quiet_NaN();
  ops::factored_row_norms(this->ctx, s, floor, in_view(wsq), in_view(wb), in_view(bb),
                          vector_view<double, lowrank::cpu>(n.data(), out));
  EXPECT_EQ(n(0), floor);
  EXPECT_TRUE(std::isnan(n(1)));
}

// y = x / d + beta y is formed in double and rounded once to y's type.
TYPED_TEST(Ops, DivideRoundsOnce) {
  using T = typename TestFixture::scalar_type;
  using ops = typename TestFixture::ops_type;
  using cpu = lowrank::cpu;
  const index_t n = 5;
  const host_matrix<T> x = rounded<T>(gaussian(n, 1, 34)).template cast<T>();
  const Eigen::VectorXd d = gaussian(n, 1, 35).cwiseAbs().array() + 0.5;
  const vector_view<const T, cpu> xv(x.data(), n);
  const vector_view<const double, cpu> dv(d.data(), n);
  // beta = 0 ignores y (NaN here).
  host_matrix<T> y = host_matrix<T>::Constant(n, 1, quiet_nan<T>());
  ops::divide(this->ctx, xv, dv, 0.0, vector_view<T, cpu>(y.data(), n));
  for (index_t i = 0; i < n; ++i) EXPECT_EQ(y(i), static_cast<T>(double(x(i)) / d(i))) << i;
  // beta = 1 into T, and into double: one rounding of the double expression.
  const host_matrix<T> y0 = rounded<T>(gaussian(n, 1, 36)).template cast<T>();
  y = y0;
  ops::divide(this->ctx, xv, dv, 1.0, vector_view<T, cpu>(y.data(), n));
  Eigen::VectorXd yd = gaussian(n, 1, 37);
  const Eigen::VectorXd yd0 = yd;
  ops::divide(this->ctx, xv, dv, -0.5, vector_view<double, cpu>(yd.data(), n));
  for (index_t i = 0; i < n; ++i) {
    const double q = double(x(i)) / d(i);
    EXPECT_EQ(y(i), static_cast<T>(q + double(y0(i)))) << i;
    EXPECT_EQ(yd(i), q - 0.5 * yd0(i)) << i;
  }
  // 2 / 3 + 1 rounded once; in float, rounding the quotient first would give
  // 1.6666667 instead of 1.6666666.
  const host_matrix<T> two = host_matrix<T>::Constant(1, 1, T(2));
  const Eigen::VectorXd three = Eigen::VectorXd::Constant(1, 3.0);
  host_matrix<T> one = host_matrix<T>::Constant(1, 1, T(1));
  ops::divide(this->ctx, vector_view<const T, cpu>(two.data(), 1),
              vector_view<const double, cpu>(three.data(), 1), 1.0,
              vector_view<T, cpu>(one.data(), 1));
  EXPECT_EQ(one(0), static_cast<T>(2.0 / 3.0 + 1.0));
  if constexpr (std::is_same_v<T, float>) {
    EXPECT_NE(one(0), static_cast<float>(2.0 / 3.0) + 1.0f);
  }
}

}  // namespace
}  // namespace ops_tests
