// Acceptance tests of lowrank::block_krylov_svd (decomp/block_krylov.hpp):
// Eckart-Young optimality on matrices with known spectra, fewer products than
// the randomized SVD for the same accuracy on a power-law spectrum, the
// documented product counts, a Krylov space larger than A's rank,
// reproducibility, the early stop, and the documented errors.

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

namespace lowrank::test::block_krylov_tests {
namespace {

constexpr index_t k = 20;

/// A matrix with the power-law spectrum s_i = i^(-1/2) of trained weights.
template <class T>
host_matrix<T> power_law_matrix(index_t m, index_t n) {
  Eigen::VectorXd s(std::min(m, n));
  for (index_t i = 0; i < s.size(); ++i) s(i) = 1 / std::sqrt(double(i + 1));
  return make_matrix(s, m, n, 77).cast<T>();
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

using lowrank::test::same_bits;  // the host matrix overload, beside this one

template <class T>
bool same_bits(const svd_bits<T>& x, const svd_bits<T>& y) {
  return same_bits(x.u, y.u) && same_bits(x.s, y.s) && same_bits(x.v, y.v);
}

/// ||A - U diag(s) V^T||_F in double.
template <class T, class B>
double frobenius_error(context<B>& ctx, const Eigen::MatrixXd& a, const low_rank<T, B>& r) {
  return (a - to_host(ctx, r.u) * to_host(ctx, r.s).asDiagonal() * to_host(ctx, r.v).transpose())
      .norm();
}

template <class Config>
class block_krylov_test : public backend_test<Config> {};
TYPED_TEST_SUITE(block_krylov_test, test_configs, config_names);

// Frobenius error <= 1.01 x the Eckart-Young optimum on every spectrum and
// shape with the defaults (b = k, d = 3). An absolute slack of 50 eps ||A||_F
// covers rounding where the optimum is near zero (rank-deficient case).
// Rayleigh-Ritz values are lower bounds of A's (s_i <= sigma_i), and the error
// identity err^2 = ||A||_F^2 - sum s_i^2 turns the Frobenius bound into a
// bound on each value: sigma_i^2 - s_i^2 <= err^2 - opt^2 <= (1.01^2 - 1) opt^2.
TYPED_TEST(block_krylov_test, near_eckart_young_optimum) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  for (const auto sh : shapes) {
    for (const auto kind : spectra) {
      SCOPED_TRACE(std::string(sh.name) + " " + name(kind));
      const host_matrix<T> a = case_matrix<T>(kind, sh);
      const Eigen::MatrixXd ad = a.template cast<double>();
      const auto device_a = to_backend<B>(ctx, a);
      const auto r = block_krylov_svd(ctx, device_a.view(), k);
      ASSERT_EQ(r.u.rows(), sh.m);
      ASSERT_EQ(r.u.cols(), k);
      ASSERT_EQ(r.s.size(), k);
      ASSERT_EQ(r.v.rows(), sh.n);
      ASSERT_EQ(r.v.cols(), k);
      EXPECT_EQ(r.block_size, k);
      EXPECT_EQ(r.blocks, 3);
      EXPECT_EQ(r.basis_size, 3 * k);

      const Eigen::VectorXd sv = singular_values(ad);
      const double optimum = std::sqrt(sv.tail(sv.size() - k).squaredNorm());
      const double slack = 50 * eps<T> * ad.norm();
      EXPECT_LE(frobenius_error(ctx, ad, r), 1.01 * optimum + slack) << "optimum " << optimum;
      // CholQR2 and the small SVD keep ||Q^T Q - I|| at a small multiple of
      // eps (the dimension enters through the Gram matrices).
      EXPECT_LE(orthonormality_error(to_host(ctx, r.u)), 200 * eps<T>);
      EXPECT_LE(orthonormality_error(to_host(ctx, r.v)), 200 * eps<T>);
      const Eigen::VectorXd s = to_host(ctx, r.s);
      const double gap = (1.01 * 1.01 - 1) * optimum * optimum + 2 * sv(0) * slack;
      for (index_t i = 0; i < k; ++i) {
        EXPECT_GE(s(i), 0);
        if (i > 0) {
          EXPECT_LE(s(i), s(i - 1));
        }
        EXPECT_LE(s(i), sv(i) + slack) << i;
        EXPECT_GE(s(i) * s(i), sv(i) * sv(i) - gap) << i;
      }
      // Sign convention: the largest-magnitude entry of each column of U is positive.
      const Eigen::MatrixXd u = to_host(ctx, r.u);
      for (index_t j = 0; j < k; ++j) {
        index_t at = 0;
        u.col(j).cwiseAbs().maxCoeff(&at);
        EXPECT_GT(u(at, j), 0);
      }
    }
  }
}

// The claim: on the power-law spectrum s_i = i^(-1/2) block Krylov
// with its defaults reaches 1.01 x the optimum with fewer column-products
// than the randomized SVD (p = 10) with the smallest q that reaches it.
TYPED_TEST(block_krylov_test, fewer_products_than_randomized_svd) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const host_matrix<T> a = power_law_matrix<T>(300, 200);
  const Eigen::MatrixXd ad = a.template cast<double>();
  const auto device_a = to_backend<B>(ctx, a);
  const double optimum = optimal_frobenius_error(ad, k);

  index_t randomized_columns = -1;
  for (index_t q = 0; q <= 6 && randomized_columns < 0; ++q) {
    product_count count;
    const counting_operator<T, B> op(device_a.view(), &count);
    const auto r = randomized_svd(ctx, op, k, {.oversampling = 10, .power_iterations = q});
    if (frobenius_error(ctx, ad, r) <= 1.01 * optimum) randomized_columns = count.columns;
  }
  ASSERT_GT(randomized_columns, 0);

  product_count count;
  const counting_operator<T, B> op(device_a.view(), &count);
  const auto r = block_krylov_svd(ctx, op, k);
  EXPECT_LE(frobenius_error(ctx, ad, r), 1.01 * optimum);
  EXPECT_EQ(count.columns, 6 * k);
  EXPECT_LT(count.columns, randomized_columns);
}

// d products with M and d with M^T (M = A, or A^T when A is wide), each b
// columns wide, in the order M, M^T, M, M^T, ...; an operator gives the dense
// path's bits. When d b exceeds min(m, n) the last block is narrower and the
// basis spans M's range: the truncated SVD itself.
TYPED_TEST(block_krylov_test, product_counts_and_operator_match_the_dense_path) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  struct product_case {
    index_t k, block_size, blocks;  // the request
    index_t used, basis, last;      // the documented consequence
  };
  const product_case cases[] = {
      {8, 0, 0, 3, 24, 8},    // the defaults: b = k, d = 3
      {8, 5, 4, 4, 20, 5},    // b < k
      {8, 12, 2, 2, 24, 12},  // b > k
      {25, 0, 5, 3, 60, 10},  // d b = 125 > 60: d clamped to 3, the last block 10 wide
  };
  for (const auto& [m, n] : {std::pair<index_t, index_t>{90, 60}, {60, 90}}) {
    const Eigen::VectorXd s = make_spectrum(spectrum_kind::slow_decay, std::min(m, n), 0);
    const host_matrix<T> a = make_matrix(s, m, n, 99).template cast<T>();
    const auto device_a = to_backend<B>(ctx, a);
    for (const auto& c : cases) {
      SCOPED_TRACE(std::to_string(m) + " x " + std::to_string(n) + " k " + std::to_string(c.k) +
                   " b " + std::to_string(c.block_size) + " d " + std::to_string(c.blocks));
      const block_krylov_options options{.block_size = c.block_size, .blocks = c.blocks, .seed = 5};
      product_count count;
      const counting_operator<T, B> op(device_a.view(), &count);
      const auto dense = block_krylov_svd(ctx, device_a.view(), c.k, options);
      const auto mine = block_krylov_svd(ctx, op, c.k, options);
      EXPECT_TRUE(same_bits(bits_of(ctx, dense), bits_of(ctx, mine)));
      EXPECT_EQ(mine.blocks, c.used);
      EXPECT_EQ(mine.basis_size, c.basis);
      EXPECT_EQ(mine.products(), 2 * c.used);
      EXPECT_EQ(count.apply, c.used);
      EXPECT_EQ(count.apply_transposed, c.used);
      const index_t b = mine.block_size;
      ASSERT_EQ(count.widths.size(), std::size_t(2 * c.used));
      for (std::size_t t = 0; t < count.widths.size(); ++t) {
        EXPECT_EQ(count.widths[t], t + 2 >= count.widths.size() ? c.last : b) << t;
      }
      if (c.basis == std::min(m, n)) {
        const Eigen::MatrixXd ad = a.template cast<double>();
        EXPECT_LE(frobenius_error(ctx, ad, mine),
                  optimal_frobenius_error(ad, c.k) + 50 * eps<T> * ad.norm());
      }
    }
  }
}

// A Krylov space wider than A's rank (rank 6, basis 40): the later blocks
// have nothing left to find, and the re-orthogonalisation keeps the basis
// orthonormal anyway; a zero matrix exercises the restart from a Gaussian
// block. The result is exact up to rounding.
TYPED_TEST(block_krylov_test, rank_below_the_basis_size) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  for (const auto& [m, n] : {std::pair<index_t, index_t>{150, 100}, {100, 150}}) {
    SCOPED_TRACE(std::to_string(m) + " x " + std::to_string(n));
    const Eigen::VectorXd s = make_spectrum(spectrum_kind::rank_deficient, std::min(m, n), 6);
    const host_matrix<T> a = make_matrix(s, m, n, 5).template cast<T>();
    const Eigen::MatrixXd ad = a.template cast<double>();
    const auto device_a = to_backend<B>(ctx, a);
    const auto r = block_krylov_svd(ctx, device_a.view(), 10, {.blocks = 4});
    EXPECT_EQ(r.basis_size, 40);
    EXPECT_LE(frobenius_error(ctx, ad, r),
              optimal_frobenius_error(ad, 10) + 50 * eps<T> * ad.norm());
    EXPECT_LE(orthonormality_error(to_host(ctx, r.u)), 200 * eps<T>);
    EXPECT_LE(orthonormality_error(to_host(ctx, r.v)), 200 * eps<T>);
    const Eigen::VectorXd values = to_host(ctx, r.s);
    for (index_t i = 6; i < 10; ++i) EXPECT_LE(values(i), 50 * eps<T> * s(0)) << i;

    const host_matrix<T> zero = host_matrix<T>::Zero(m, n);
    const auto device_zero = to_backend<B>(ctx, zero);
    const auto z = block_krylov_svd(ctx, device_zero.view(), 5, {.blocks = 4});
    EXPECT_EQ(to_host(ctx, z.s).norm(), 0);
    EXPECT_LE(orthonormality_error(to_host(ctx, z.u)), 200 * eps<T>);
    EXPECT_LE(orthonormality_error(to_host(ctx, z.v)), 200 * eps<T>);
  }
}

// The Eigen convenience overload is the same computation as the context form.
TYPED_TEST(block_krylov_test, eigen_overload_matches_context_form) {
  using T = typename TypeParam::scalar;
  if constexpr (std::is_same_v<typename TypeParam::backend, cpu>) {
    const host_matrix<T> a = case_matrix<T>(spectrum_kind::slow_decay, shapes[1]);
    context<cpu> ctx;
    const auto r1 = block_krylov_svd(ctx, view(a), 10, {.seed = 3});
    const auto r2 = block_krylov_svd(a, 10, {.seed = 3});
    EXPECT_EQ(r1.u, r2.u);
    EXPECT_EQ(r1.s, r2.s);
    EXPECT_EQ(r1.v, r2.v);
    EXPECT_EQ(r1.blocks, r2.blocks);
  }
}

// The same seed gives the same bits, with 1, 2 or 3 threads (ctest runs this
// with OPENBLAS_NUM_THREADS=1, so the context's threads do the work); another
// seed or stream gives another result.
TYPED_TEST(block_krylov_test, reproducible_bits) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  auto ctx = make_context<B>(2);
  const host_matrix<T> a = power_law_matrix<T>(700, 300);
  const auto device_a = to_backend<B>(ctx, a);
  const block_krylov_options options{.seed = 11};
  const block_krylov_options early{.blocks = 8, .tolerance = 1e-3, .seed = 11};
  const auto first = bits_of(ctx, block_krylov_svd(ctx, device_a.view(), k, options));
  const auto first_early = bits_of(ctx, block_krylov_svd(ctx, device_a.view(), k, early));
  EXPECT_TRUE(same_bits(first, bits_of(ctx, block_krylov_svd(ctx, device_a.view(), k, options))));
  for (const int threads : {1, 3}) {
    auto other_ctx = make_context<B>(threads);
    EXPECT_TRUE(same_bits(
        first, bits_of(other_ctx, block_krylov_svd(other_ctx, device_a.view(), k, options))))
        << threads << " threads";
    EXPECT_TRUE(same_bits(
        first_early, bits_of(other_ctx, block_krylov_svd(other_ctx, device_a.view(), k, early))))
        << threads << " threads, early stop";
  }
  EXPECT_FALSE(
      same_bits(first.u, bits_of(ctx, block_krylov_svd(ctx, device_a.view(), k, {.seed = 12})).u));
  EXPECT_FALSE(same_bits(
      first.u,
      bits_of(ctx, block_krylov_svd(ctx, device_a.view(), k, {.seed = 11, .stream = 1})).u));
}

// The early stop on a fast-decaying spectrum: fewer blocks than allowed, and
// the accuracy the stop implies (the file comment): the last block raised the
// captured energy E by at most tol E, and the error identity
// err^2 = ||A||_F^2 - E gives err^2 <= opt^2 + tol ||A_k||_F^2 when the
// convergence is geometric. Without the tolerance all the blocks are built.
TYPED_TEST(block_krylov_test, tolerance_stops_early) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const host_matrix<T> a = case_matrix<T>(spectrum_kind::fast_decay, {300, 200, "fast"});
  const Eigen::MatrixXd ad = a.template cast<double>();
  const auto device_a = to_backend<B>(ctx, a);
  const Eigen::VectorXd sv = singular_values(ad);
  const double optimum = optimal_frobenius_error(ad, 10);
  const double top = sv.head(10).squaredNorm();
  for (const double tol : {1e-2, 1e-4}) {
    SCOPED_TRACE(tol);
    product_count count;
    const counting_operator<T, B> op(device_a.view(), &count);
    const auto r = block_krylov_svd(ctx, op, 10, {.blocks = 10, .tolerance = tol});
    EXPECT_GE(r.blocks, 2);
    EXPECT_LT(r.blocks, 10);
    EXPECT_EQ(count.apply, r.blocks);
    EXPECT_EQ(count.apply_transposed, r.blocks);
    EXPECT_EQ(r.basis_size, 10 * r.blocks);
    const double error = frobenius_error(ctx, ad, r);
    EXPECT_LE(error * error, optimum * optimum + tol * top);
    EXPECT_LE(orthonormality_error(to_host(ctx, r.u)), 200 * eps<T>);
  }
  const auto full = block_krylov_svd(ctx, device_a.view(), 10, {.blocks = 10});
  EXPECT_EQ(full.blocks, 10);
}

// Data near the ends of T's range: the algorithm runs on 2^-e A and divides
// the values by 2^-e, exactly, so the values are A0's times 2^e (to the
// rounding of A0's decomposition, 100 eps s_1). Inside the safe range too
// (2^30, 2^40 in float; 2^300, 2^500 in double) a Krylov block M M^T Q_j would
// be of size s_1^2 and its Gram matrix of size s_1^4, beyond T's range: each
// block is scaled by a power of two first (otherwise orthonormalize would
// fall back to Householder QR).
TYPED_TEST(block_krylov_test, extreme_scales) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const Eigen::VectorXd truth = make_spectrum(spectrum_kind::fast_decay, 40, 0);
  const host_matrix<T> base = make_matrix(truth, 80, 40, 17).template cast<T>();
  const auto device_base = to_backend<B>(ctx, base);
  const Eigen::VectorXd s0 = to_host(ctx, block_krylov_svd(ctx, device_base.view(), 8).s);
  const std::vector<int> exponents = std::is_same_v<T, float>
                                         ? std::vector<int>{-124, -60, 30, 40, 100, 124}
                                         : std::vector<int>{-1018, -600, 300, 500, 900, 1018};
  for (const int e : exponents) {
    SCOPED_TRACE("2^" + std::to_string(e));
    host_matrix<T> a = base;
    for (index_t t = 0; t < a.size(); ++t) a.data()[t] = std::ldexp(a.data()[t], e);
    const auto device_a = to_backend<B>(ctx, a);
    const auto r = block_krylov_svd(ctx, device_a.view(), 8);
    const Eigen::VectorXd s = to_host(ctx, r.s);
    for (index_t i = 0; i < 8; ++i) {
      EXPECT_NEAR(std::ldexp(s(i), -e), s0(i), 100 * eps<T> * s0(0)) << i;
    }
    EXPECT_LE(orthonormality_error(to_host(ctx, r.u)), 200 * eps<T>);
  }
}

// Every documented precondition throws the documented exception.
TYPED_TEST(block_krylov_test, invalid_input_throws) {
  using T = typename TypeParam::scalar;
  using B = typename TypeParam::backend;
  context<B> ctx;
  const host_matrix<T> a = host_matrix<T>::Random(30, 20);
  const auto device_a = to_backend<B>(ctx, a);
  const auto va = device_a.view();
  EXPECT_THROW((void)block_krylov_svd(ctx, va, 0), invalid_argument);
  EXPECT_THROW((void)block_krylov_svd(ctx, va, -1), invalid_argument);
  EXPECT_THROW((void)block_krylov_svd(ctx, va, 21), invalid_argument);
  EXPECT_THROW((void)block_krylov_svd(ctx, va, 5, {.block_size = -1}), invalid_argument);
  EXPECT_THROW((void)block_krylov_svd(ctx, va, 5, {.blocks = -1}), invalid_argument);
  EXPECT_THROW((void)block_krylov_svd(ctx, va, 5, {.tolerance = -0.1}), invalid_argument);
  EXPECT_THROW((void)block_krylov_svd(ctx, va, 5, {.tolerance = std::nan("")}), invalid_argument);
  EXPECT_THROW(
      (void)block_krylov_svd(ctx, va, 5, {.tolerance = std::numeric_limits<double>::infinity()}),
      invalid_argument);
  // blocks x block_size < k: the basis cannot hold k directions.
  EXPECT_THROW((void)block_krylov_svd(ctx, va, 10, {.block_size = 3, .blocks = 3}),
               invalid_argument);
  // ... but d b above min(m, n), or a huge b or d, is clamped, not refused.
  EXPECT_EQ(block_krylov_svd(ctx, va, 10, {.block_size = 3, .blocks = 4}).basis_size, 12);
  EXPECT_EQ(block_krylov_svd(ctx, va, 5,
                             {.block_size = std::numeric_limits<index_t>::max(),
                              .blocks = std::numeric_limits<index_t>::max()})
                .basis_size,
            20);
  const matrix<T, B> empty(ctx, 0, 5);
  EXPECT_THROW((void)block_krylov_svd(ctx, empty.view(), 1), invalid_argument);

  try {
    (void)block_krylov_svd(ctx, va, 10, {.block_size = 3, .blocks = 3});
    ADD_FAILURE() << "no exception";
  } catch (const invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "lowrank::block_krylov_svd: argument 'options.blocks' is 3; expected blocks x "
                 "block_size >= k = 10 (block_size 3)");
  }

  for (const T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity()}) {
    host_matrix<T> poisoned = a;
    poisoned(7, 3) = bad;
    const auto device_p = to_backend<B>(ctx, poisoned);
    try {
      (void)block_krylov_svd(ctx, device_p.view(), 5);
      ADD_FAILURE() << "no exception";
    } catch (const numerical_error& e) {
      EXPECT_NE(std::string(e.what()).find("argument 'a(7, 3)'"), std::string::npos) << e.what();
    }
    product_count count;
    const counting_operator<T, B> op(device_p.view(), &count);
    EXPECT_THROW((void)block_krylov_svd(ctx, op, 5), numerical_error);
  }
}

}  // namespace
}  // namespace lowrank::test::block_krylov_tests
