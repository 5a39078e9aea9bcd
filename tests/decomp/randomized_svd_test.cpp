// Acceptance tests of lowrank::randomized_svd (docs/algorithms.md, "Decompositions"):
// Eckart-Young optimality on matrices with known spectra, orthonormality,
// reproducibility, the fixed-accuracy mode, and the documented errors.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "lowrank/lowrank.hpp"
#include "support/backends.hpp"
#include "support/decomp_cases.hpp"
#include "support/test_matrices.hpp"

namespace lowrank::test::randomized_svd_tests {
namespace {

constexpr index_t k = 20;

template <class Config>
class randomized_svd_test : public backend_test<Config> {};
TYPED_TEST_SUITE(randomized_svd_test, test_configs, config_names);

// Frobenius error <= 1.02 x the Eckart-Young optimum on every spectrum and
// shape (q = 2, p = 10); spectral error <= 1.2 s_{k+1} on the decaying ones.
// An absolute slack of 50 eps ||A||_F covers rounding where the optimum is
// near zero (rank-deficient case in float).
TYPED_TEST(randomized_svd_test, near_eckart_young_optimum) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  for (const auto sh : shapes) {
    for (const auto kind : spectra) {
      SCOPED_TRACE(std::string(sh.name) + " " + name(kind));
      const host_matrix<T> a = case_matrix<T>(kind, sh);
      const Eigen::MatrixXd ad = a.template cast<double>();
      const auto device_a = to_backend<B>(ctx, a);
      const auto r =
          randomized_svd(ctx, device_a.view(), k, {.oversampling = 10, .power_iterations = 2});
      const Eigen::MatrixXd u = to_host(ctx, r.u);
      const Eigen::VectorXd s = to_host(ctx, r.s);
      const Eigen::MatrixXd v = to_host(ctx, r.v);
      ASSERT_EQ(u.rows(), sh.m);
      ASSERT_EQ(u.cols(), k);
      ASSERT_EQ(s.size(), k);
      ASSERT_EQ(v.rows(), sh.n);
      ASSERT_EQ(v.cols(), k);

      const Eigen::MatrixXd residual = ad - u * s.asDiagonal() * v.transpose();
      const Eigen::VectorXd sv = singular_values(ad);
      const double optimum = std::sqrt(sv.tail(sv.size() - k).squaredNorm());
      const double slack = 50 * eps<T> * ad.norm();
      EXPECT_LE(residual.norm(), 1.02 * optimum + slack) << "optimum " << optimum;
      if (kind == spectrum_kind::fast_decay || kind == spectrum_kind::slow_decay) {
        EXPECT_LE(spectral_norm(residual), 1.2 * sv(k)) << "s_{k+1} " << sv(k);
      }
      // Orthonormal factors: CholQR2 and the small SVD keep ||Q^T Q - I|| at
      // a small multiple of eps (the dimension enters through the Gram matrix).
      EXPECT_LE(orthonormality_error(u), 200 * eps<T>);
      EXPECT_LE(orthonormality_error(v), 200 * eps<T>);
      for (index_t i = 0; i < k; ++i) {
        EXPECT_GE(s(i), 0);
        if (i > 0) {
          EXPECT_LE(s(i), s(i - 1));
        }
      }
      // Sign convention: the largest-magnitude entry of each column of U is positive.
      for (index_t j = 0; j < k; ++j) {
        index_t at = 0;
        u.col(j).cwiseAbs().maxCoeff(&at);
        EXPECT_GT(u(at, j), 0);
      }
    }
  }
}

// The Eigen convenience overload is the same computation as the context form.
TYPED_TEST(randomized_svd_test, eigen_overload_matches_context_form) {
  using T = typename TypeParam::scalar;
  if constexpr (std::is_same_v<typename TypeParam::backend, cpu>) {
    const host_matrix<T> a = case_matrix<T>(spectrum_kind::slow_decay, shapes[1]);
    context<cpu> ctx;
    const auto r1 = randomized_svd(ctx, view(a), 10, {.seed = 3});
    const auto r2 = randomized_svd(a, 10, {.seed = 3});
    EXPECT_EQ(r1.u, r2.u);
    EXPECT_EQ(r1.s, r2.s);
    EXPECT_EQ(r1.v, r2.v);
    // A row-major matrix (an expression the overload evaluates once) gives the
    // same result as its column-major copy.
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> row_major = a;
    const auto r3 = randomized_svd(row_major, 10, {.seed = 3});
    EXPECT_EQ(r1.s, r3.s);
  }
}

// More power iterations never hurt on a slowly decaying spectrum, and q = 0
// already meets the HMT bound (1 + k / (p - 1))^{1/2} times the optimum.
TYPED_TEST(randomized_svd_test, power_iterations_improve_accuracy) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const host_matrix<T> a = case_matrix<T>(spectrum_kind::slow_decay, shapes[0]);
  const Eigen::MatrixXd ad = a.template cast<double>();
  const auto device_a = to_backend<B>(ctx, a);
  const double optimum = optimal_frobenius_error(ad, k);
  double previous = std::numeric_limits<double>::infinity();
  for (index_t q = 0; q <= 3; ++q) {
    const auto r = randomized_svd(ctx, device_a.view(), k, {.power_iterations = q});
    const Eigen::MatrixXd approx =
        to_host(ctx, r.u) * to_host(ctx, r.s).asDiagonal() * to_host(ctx, r.v).transpose();
    const double error = (ad - approx).norm();
    if (q == 0) {
      EXPECT_LE(error, std::sqrt(1.0 + double(k) / 9.0) * optimum);
    }
    EXPECT_LE(error, previous * (1 + 1e-3)) << "q = " << q;
    previous = error;
  }
}

// k = min(m, n) (l is capped at the dimension) reproduces A.
TYPED_TEST(randomized_svd_test, full_rank_reproduces_the_matrix) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const host_matrix<T> a = case_matrix<T>(spectrum_kind::slow_decay, {40, 25, "small"});
  const auto device_a = to_backend<B>(ctx, a);
  const auto r = randomized_svd(ctx, device_a.view(), 25);
  const Eigen::MatrixXd approx =
      to_host(ctx, r.u) * to_host(ctx, r.s).asDiagonal() * to_host(ctx, r.v).transpose();
  EXPECT_LE((a.template cast<double>() - approx).norm(),
            100 * eps<T> * a.template cast<double>().norm());
}

template <class T>
bool same_bits(const host_matrix<T>& x, const host_matrix<T>& y) {
  return x.rows() == y.rows() && x.cols() == y.cols() &&
         std::memcmp(x.data(), y.data(), sizeof(T) * static_cast<std::size_t>(x.size())) == 0;
}

template <class T>
struct svd_bits {
  host_matrix<T> u, s, v;
};

template <class B, class T>
svd_bits<T> bits_of(context<B>& ctx, const low_rank<T, B>& r) {
  svd_bits<T> out{host_matrix<T>(r.u.rows(), r.u.cols()), host_matrix<T>(r.s.size(), 1),
                  host_matrix<T>(r.v.rows(), r.v.cols())};
  ops<B>::download(ctx, r.u.view(), view(out.u));
  ops<B>::download(ctx, r.s.view().as_matrix(), view(out.s));
  ops<B>::download(ctx, r.v.view(), view(out.v));
  return out;
}

// The same seed gives the same bits, with 1, 2 or 3 threads; another seed
// gives another result. (The CPU backend splits its work by shape, never by
// thread count; ctest runs this with OPENBLAS_NUM_THREADS=1 so that the split
// pieces really run on the context's threads.)
TYPED_TEST(randomized_svd_test, reproducible_bits) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const host_matrix<T> a = case_matrix<T>(spectrum_kind::slow_decay, {700, 300, "big"});
  const auto device_a = to_backend<B>(ctx, a);
  const auto first = bits_of(ctx, randomized_svd(ctx, device_a.view(), k, {.seed = 11}));
  const auto again = bits_of(ctx, randomized_svd(ctx, device_a.view(), k, {.seed = 11}));
  EXPECT_TRUE(same_bits(first.u, again.u) && same_bits(first.s, again.s) &&
              same_bits(first.v, again.v));

  for (const int threads : {1, 3}) {
    auto other_ctx = make_context<B>(threads);
    const auto r = bits_of(other_ctx, randomized_svd(other_ctx, device_a.view(), k, {.seed = 11}));
    EXPECT_TRUE(same_bits(first.u, r.u) && same_bits(first.s, r.s) && same_bits(first.v, r.v))
        << threads << " threads";
    // The tolerance mode too.
    const fixed_accuracy tol{.relative_error = 0.05, .seed = 5};
    const auto t1 = randomized_svd(ctx, device_a.view(), tol);
    const auto t2 = randomized_svd(other_ctx, device_a.view(), tol);
    EXPECT_TRUE(same_bits(bits_of(ctx, static_cast<const low_rank<T, B>&>(t1)).u,
                          bits_of(other_ctx, static_cast<const low_rank<T, B>&>(t2)).u));
  }

  const auto other = bits_of(ctx, randomized_svd(ctx, device_a.view(), k, {.seed = 12}));
  EXPECT_FALSE(same_bits(first.u, other.u));
}

// Fixed accuracy: the tolerance is met (true error, not the estimate), the
// estimate is accurate, and the rank is within one block of the optimal rank
// (Eckart-Young: no smaller rank can meet it).
TYPED_TEST(randomized_svd_test, tolerance_mode_meets_tolerance_with_near_optimal_rank) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  for (const auto sh : shapes) {
    for (const auto kind :
         {spectrum_kind::fast_decay, spectrum_kind::slow_decay, spectrum_kind::rank_deficient}) {
      for (const double tol : {0.3, 0.1, 0.01}) {
        for (const index_t block : {8, 16}) {
          SCOPED_TRACE(std::string(sh.name) + " " + name(kind) + " tol " + std::to_string(tol) +
                       " block " + std::to_string(block));
          const host_matrix<T> a = case_matrix<T>(kind, sh);
          const Eigen::MatrixXd ad = a.template cast<double>();
          const auto device_a = to_backend<B>(ctx, a);
          const auto r = randomized_svd(ctx, device_a.view(),
                                        fixed_accuracy{.relative_error = tol, .block_size = block});
          EXPECT_EQ(r.status, qb_status::converged);
          EXPECT_EQ(r.tolerance, tol);
          const Eigen::MatrixXd approx =
              to_host(ctx, r.u) * to_host(ctx, r.s).asDiagonal() * to_host(ctx, r.v).transpose();
          const double error = (ad - approx).norm() / ad.norm();
          EXPECT_LE(error, tol);
          // The indicator is exact up to rounding of ||A||^2 - ||B||^2.
          EXPECT_NEAR(r.relative_error_estimate, error, 1e-3 * tol + 10 * std::sqrt(eps<T>));
          const index_t optimal = rank_for_tolerance(singular_values(ad), tol);
          EXPECT_GE(r.rank(), optimal);
          EXPECT_LE(r.rank(), optimal + block);
          EXPECT_LE(orthonormality_error(to_host(ctx, r.u)), 200 * eps<T>);
          EXPECT_LE(orthonormality_error(to_host(ctx, r.v)), 200 * eps<T>);
        }
      }
    }
  }
}

// max_rank caps the search; a tolerance below the indicator's floor is raised
// to it; a zero matrix needs rank 0.
TYPED_TEST(randomized_svd_test, tolerance_mode_limits) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const host_matrix<T> a = case_matrix<T>(spectrum_kind::slow_decay, shapes[0]);
  const auto device_a = to_backend<B>(ctx, a);
  const auto capped =
      randomized_svd(ctx, device_a.view(), fixed_accuracy{.relative_error = 1e-3, .max_rank = 12});
  EXPECT_EQ(capped.status, qb_status::max_rank_reached);
  EXPECT_EQ(capped.rank(), 12);
  EXPECT_GT(capped.relative_error_estimate, 1e-3);

  const auto floored =
      randomized_svd(ctx, device_a.view(), fixed_accuracy{.relative_error = 1e-12, .max_rank = 40});
  EXPECT_EQ(floored.tolerance, qb_tolerance_floor<T>());

  const host_matrix<T> zero = host_matrix<T>::Zero(30, 20);
  const auto device_zero = to_backend<B>(ctx, zero);
  const auto none = randomized_svd(ctx, device_zero.view(), fixed_accuracy{.relative_error = 0.1});
  EXPECT_EQ(none.rank(), 0);
  EXPECT_EQ(none.u.rows(), 30);
  EXPECT_EQ(none.v.rows(), 20);
  EXPECT_EQ(none.status, qb_status::converged);
}

// Every documented precondition throws the documented exception.
TYPED_TEST(randomized_svd_test, invalid_input_throws) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const host_matrix<T> a = host_matrix<T>::Random(30, 20);
  const auto device_a = to_backend<B>(ctx, a);
  const auto va = device_a.view();
  EXPECT_THROW((void)randomized_svd(ctx, va, 0), invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, va, -1), invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, va, 21), invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, va, 5, {.oversampling = -1}), invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, va, 5, {.power_iterations = -1}), invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, va, fixed_accuracy{.relative_error = 0}),
               invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, va, fixed_accuracy{.relative_error = -0.1}),
               invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, va, fixed_accuracy{.relative_error = 1}),
               invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, va, fixed_accuracy{.relative_error = std::nan("")}),
               invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, va, fixed_accuracy{.relative_error = 0.1, .max_rank = 21}),
               invalid_argument);
  EXPECT_THROW(
      (void)randomized_svd(ctx, va, fixed_accuracy{.relative_error = 0.1, .block_size = -2}),
      invalid_argument);
  // An oversampling near the integer maximum is a valid request (l = min(m, n)),
  // not an overflow of k + p.
  const auto all = randomized_svd(
      ctx, va, 5, {.oversampling = std::numeric_limits<index_t>::max(), .power_iterations = 0});
  EXPECT_EQ(all.rank(), 5);
  const matrix<T, B> empty(ctx, 0, 5);
  EXPECT_THROW((void)randomized_svd(ctx, empty.view(), 1), invalid_argument);
  EXPECT_THROW((void)randomized_svd(ctx, empty.view(), fixed_accuracy{.relative_error = 0.1}),
               invalid_argument);

  try {
    (void)randomized_svd(ctx, va, 21);
    ADD_FAILURE() << "no exception";
  } catch (const invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "lowrank::randomized_svd: argument 'k' is 21; expected 1 <= k <= min(m, n) = 20");
  }

  for (const T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                      -std::numeric_limits<T>::infinity()}) {
    host_matrix<T> poisoned = a;
    poisoned(7, 3) = bad;
    const auto device_p = to_backend<B>(ctx, poisoned);
    EXPECT_THROW((void)randomized_svd(ctx, device_p.view(), 5), numerical_error);
    EXPECT_THROW((void)randomized_svd(ctx, device_p.view(), fixed_accuracy{.relative_error = 0.1}),
                 numerical_error);
    try {
      (void)randomized_svd(ctx, device_p.view(), 5);
    } catch (const numerical_error& e) {
      EXPECT_NE(std::string(e.what()).find("argument 'a(7, 3)'"), std::string::npos) << e.what();
    }
  }
  // Finite entries whose products overflow are scaled (extreme_scales); a
  // singular value beyond T's range is reported as such.
  host_matrix<T> huge = host_matrix<T>::Constant(30, 20, std::numeric_limits<T>::max());
  const auto device_h = to_backend<B>(ctx, huge);
  try {
    (void)randomized_svd(ctx, device_h.view(), 5);
    ADD_FAILURE() << "no exception";
  } catch (const numerical_error& e) {
    EXPECT_NE(std::string(e.what()).find("singular value overflows"), std::string::npos)
        << e.what();
  }
}

// The whole representable range (decomp/detail/common.hpp, "Scaling"):
// A = 2^e A0 for e from near the smallest normal to near the largest whose
// singular values stay representable (and in the band where only the power
// iterations' narrower range scales: +-25, +-40 in float), one side twice the other (the shape
// whose Householder QR path once lost 40% of s_1 in float). The exact SVD
// keeps its accuracy relative to s_1; the randomized SVDs give the singular
// values of A0 times 2^e (scaling by a power of two is exact) and the fixed
// accuracy mode A0's rank, where it once stalled or saw a zero matrix.
TYPED_TEST(randomized_svd_test, extreme_scales) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const Eigen::VectorXd truth = make_spectrum(spectrum_kind::fast_decay, 40, 0);
  const Eigen::MatrixXd a0 = make_matrix(truth, 80, 40, 17);
  const host_matrix<T> base = a0.template cast<T>();
  const auto device_base = to_backend<B>(ctx, base);
  const auto r0 = randomized_svd(ctx, device_base.view(), 8, {.seed = 3});
  const auto f0 = randomized_svd(ctx, device_base.view(),
                                 fixed_accuracy{.relative_error = 0.05, .block_size = 4});
  const Eigen::VectorXd s0 = to_host(ctx, r0.s);
  const std::vector<int> exponents =
      std::is_same_v<T, float>
          ? std::vector<int>{-124, -100, -70, -40, -25, 25, 40, 70, 100, 124}
          : std::vector<int>{-1018, -900, -600, -400, -250, 250, 400, 600, 900, 1018};
  for (const int e : exponents) {
    SCOPED_TRACE("2^" + std::to_string(e));
    host_matrix<T> a = base;
    for (index_t t = 0; t < a.size(); ++t) a.data()[t] = std::ldexp(a.data()[t], e);
    for (const bool wide : {false, true}) {
      const host_matrix<T> oriented = wide ? host_matrix<T>(a.transpose()) : a;
      const auto device_a = to_backend<B>(ctx, oriented);
      const auto exact = truncated_svd(ctx, device_a.view(), 8);
      const Eigen::VectorXd se = to_host(ctx, exact.s);
      for (index_t i = 0; i < 8; ++i) {
        // Relative to s_1 = 2^e: float's rounding of A0, or double's.
        EXPECT_NEAR(std::ldexp(se(i), -e), truth(i), 200 * eps<T>) << i;
      }
      const auto r = randomized_svd(ctx, device_a.view(), 8, {.seed = 3});
      const Eigen::VectorXd s = to_host(ctx, r.s);
      for (index_t i = 0; i < 8; ++i) {
        EXPECT_NEAR(std::ldexp(s(i), -e), s0(i), 100 * eps<T> * s0(0)) << i;
      }
      EXPECT_LE(orthonormality_error(to_host(ctx, r.u)), 200 * eps<T>);
      const auto f = randomized_svd(ctx, device_a.view(),
                                    fixed_accuracy{.relative_error = 0.05, .block_size = 4});
      EXPECT_EQ(f.status, qb_status::converged);
      EXPECT_EQ(f.rank(), f0.rank());
      EXPECT_NEAR(f.relative_error_estimate, f0.relative_error_estimate, 1e-3);
    }
  }
  // A finite A whose singular values exceed T's range: a clear error.
  const host_matrix<T> huge =
      host_matrix<T>::Constant(80, 40, std::numeric_limits<T>::max() / 2);  // s_1 = 28 max
  const auto device_huge = to_backend<B>(ctx, huge);
  EXPECT_THROW((void)truncated_svd(ctx, device_huge.view(), 3), numerical_error);
  EXPECT_THROW((void)randomized_svd(ctx, device_huge.view(), 3), numerical_error);
}

}  // namespace
}  // namespace lowrank::test::randomized_svd_tests
