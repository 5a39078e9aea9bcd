#pragma once
/// @file
/// The CPU operation table, `lowrank::ops<lowrank::cpu>`: Eigen on maps of the
/// caller's memory (dense products go to the BLAS when `EIGEN_USE_BLAS` is
/// defined), and LAPACK's gesdd / geqrf / orgqr when `LOWRANK_HAS_LAPACK` is 1.
/// The semantics of each operation are those of `lowrank::backend_for`
/// (core/concepts.hpp).
///
/// **Parallelism and reproducibility.** The products, the Gram matrix, the
/// triangular solve and the element-wise loops split their work into pieces
/// decided from the shapes alone (row or column panels of the output, or
/// fixed chunks of the inner dimension whose partial results are added in a
/// fixed order) and run the pieces on the context's threads. Each piece is a
/// single-threaded computation, so the result does not depend on the thread
/// count. If the BLAS is multi-threaded itself (OpenBLAS with more than one
/// thread), the BLAS pieces run in turn, each parallelised by the BLAS (see
/// backend/cpu/context.hpp).

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/lapack.hpp"
#include "lowrank/backend/cpu/thread_pool.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

namespace detail {

template <class T>
using host_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

/// Bitwise equality (so that -0 differs from +0 and a NaN equals itself).
template <class T>
[[nodiscard]] bool same_bits(T a, T b) noexcept {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

/// [begin, begin + size) of part `i` of an even split of n into `parts`.
struct span_of {
  index_t begin;
  index_t size;
};
[[nodiscard]] inline span_of part(index_t n, index_t parts, index_t i) noexcept {
  const index_t begin = i * n / parts;
  return {begin, (i + 1) * n / parts - begin};
}
/// How many parts of at least `grain` elements n splits into, at most `most`.
[[nodiscard]] inline index_t parts_of(index_t n, index_t grain, index_t most) noexcept {
  return std::clamp<index_t>(n / grain, 1, most);
}

/// Runs f(j) for every column j of a rows x cols operand: column panels of at
/// least `grain` elements (at most 64) on the context's threads. Each column is
/// one task's, so the result does not depend on the thread count.
template <class F>
void for_each_column(context<cpu>& ctx, index_t rows, index_t cols, index_t grain, F&& f) {
  const index_t parts = std::min(parts_of(rows * cols, grain, 64), std::max<index_t>(cols, 1));
  ctx.pool().run(parts, [&](index_t t) {
    const auto r = part(cols, parts, t);
    for (index_t j = r.begin; j < r.begin + r.size; ++j) f(j);
  });
}

/// How many pieces a BLAS-3 operation of `flops` splits into, at most `most`,
/// when each piece computes `span` rows (or columns) of the output and all of
/// them share (and each repacks) an operand of `shared` elements. Measured with
/// OpenBLAS on AVX-512: pieces that share a large operand need at least 512
/// rows to keep OpenBLAS's kernels on full panels (16 pieces of a
/// 2048 x 2048 x 74 product cost 20% more than 4); otherwise pieces of about
/// 32 Mflop (a 2048 x 138 x 138 product runs fastest in 2 pieces, 25% slower
/// in 8: each single-threaded call repacks and pays some 20 us).
[[nodiscard]] inline index_t blas_pieces(double flops, index_t span, double shared,
                                         index_t most) noexcept {
  const bool large = shared >= double(1 << 17);
  const index_t by_span = std::max<index_t>(1, span / (large ? 512 : 32));
  const index_t by_work = std::max<index_t>(1, static_cast<index_t>(flops / double(1 << 25)));
  return std::clamp<index_t>(std::min(by_span, by_work), 1, most);
}

/// True when the BLAS parallelises its own calls (OpenBLAS with more than one
/// thread), found at run time so that no BLAS header is needed.
[[nodiscard]] inline bool blas_is_threaded() noexcept {
#if defined(EIGEN_USE_BLAS) && (defined(__unix__) || defined(__APPLE__))
  using getter = int (*)();
  static const auto get = reinterpret_cast<getter>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get != nullptr && get() > 1;
#else
  return false;
#endif
}

/// Runs f(0), ..., f(tasks - 1): on the context's threads, or in turn when
/// each task is a BLAS call that the BLAS parallelises itself.
template <class F>
void run_blas_tasks(context<cpu>& ctx, index_t tasks, F&& f) {
  if (blas_is_threaded()) {
    for (index_t t = 0; t < tasks; ++t) f(t);
  } else {
    ctx.pool().run(tasks, f);
  }
}

/// C = alpha op(A) op(B) + beta C as one call (Eigen, or the BLAS behind it).
template <class T>
void gemm_piece(transpose ta, transpose tb, T alpha, matrix_view<const T, cpu> a,
                matrix_view<const T, cpu> b, T beta, matrix_view<T, cpu> c) {
#if defined(EIGEN_USE_BLAS)
  constexpr index_t int_max = 2147483647;
  const index_t k = ta == transpose::no ? a.cols() : a.rows();
  if (std::max({c.rows(), c.cols(), k, a.ld(), b.ld(), c.ld()}) <= int_max) {
    blas::gemm<T>(ta == transpose::yes, tb == transpose::yes, c.rows(), c.cols(), k, alpha,
                  a.data(), a.ld(), b.data(), b.ld(), beta, c.data(), c.ld());
    return;
  }
#endif
  auto cm = as_eigen(c);
  if (beta == T(0)) {
    cm.setZero();
  } else if (beta != T(1)) {
    cm *= beta;
  }
  const auto am = as_eigen(a);
  const auto bm = as_eigen(b);
  if (ta == transpose::no && tb == transpose::no) {
    cm.noalias() += alpha * am * bm;
  } else if (ta == transpose::yes && tb == transpose::no) {
    cm.noalias() += alpha * am.transpose() * bm;
  } else if (ta == transpose::no) {
    cm.noalias() += alpha * am * bm.transpose();
  } else {
    cm.noalias() += alpha * am.transpose() * bm.transpose();
  }
}

/// Rows [begin, begin + size) of op(X) as a view of X.
template <class T>
matrix_view<const T, cpu> op_rows(matrix_view<const T, cpu> x, transpose t, span_of r) {
  return t == transpose::no ? x.middle_rows(r.begin, r.size) : x.middle_cols(r.begin, r.size);
}
/// Columns [begin, begin + size) of op(X) as a view of X.
template <class T>
matrix_view<const T, cpu> op_cols(matrix_view<const T, cpu> x, transpose t, span_of r) {
  return t == transpose::no ? x.middle_cols(r.begin, r.size) : x.middle_rows(r.begin, r.size);
}

template <class T, distribution D>
void fill_random_cpu(random_stream s, matrix_view<T, cpu> x, index_t row0, index_t col0) {
  constexpr index_t r = rows_per_block<T, D>;
  for (index_t j = 0; j < x.cols(); ++j) {
    T* out = x.data() + j * x.ld();
    const auto col = static_cast<std::uint64_t>(col0 + j);
    index_t i = 0;
    while (i < x.rows()) {
      const index_t global = row0 + i;
      T block[4];
      random_block<T, D>(s, static_cast<std::uint64_t>(global / r), col, block);
      for (index_t lane = global % r; lane < r && i < x.rows(); ++lane, ++i) out[i] = block[lane];
    }
  }
}

/// Float Gaussians: Philox words for 16 blocks (64 values) at a time, then the
/// vectorised Box-Muller batch, whose lanes give the same bits as
/// random_block<float, gaussian> (random/philox.hpp).
template <>
inline void fill_random_cpu<float, distribution::gaussian>(random_stream s,
                                                           matrix_view<float, cpu> x, index_t row0,
                                                           index_t col0) {
  static_assert(gaussian_batch == 32, "16 Philox blocks give 32 pairs");
  std::uint32_t words[4][16];
  std::uint32_t w1[gaussian_batch];
  std::uint32_t w2[gaussian_batch];
  float z0[gaussian_batch];
  float z1[gaussian_batch];
  const index_t end = row0 + x.rows();
  for (index_t j = 0; j < x.cols(); ++j) {
    float* out = x.data() + j * x.ld();  // out[i - row0] is global row i
    const auto col = static_cast<std::uint64_t>(col0 + j);
    for (index_t b0 = row0 / 4; 4 * b0 < end; b0 += 16) {
      random_words_16(s, static_cast<std::uint64_t>(b0), col, words);
      for (int t = 0; t < 16; ++t) {
        w1[2 * t] = words[0][t];
        w2[2 * t] = words[1][t];
        w1[2 * t + 1] = words[2][t];
        w2[2 * t + 1] = words[3][t];
      }
      box_muller_float_batch(w1, w2, z0, z1);
      // Pair p holds rows 4 b0 + 2 p and 4 b0 + 2 p + 1.
      const index_t first = 4 * b0;
      if (first >= row0 && first + 2 * gaussian_batch <= end) {
        float* at = out + (first - row0);
        for (index_t p = 0; p < gaussian_batch; ++p) {
          at[2 * p] = z0[p];
          at[2 * p + 1] = z1[p];
        }
      } else {
        for (index_t p = 0; p < gaussian_batch; ++p) {
          const index_t row = first + 2 * p;
          if (row >= row0 && row < end) out[row - row0] = z0[p];
          if (row + 1 >= row0 && row + 1 < end) out[row + 1 - row0] = z1[p];
        }
      }
    }
  }
}

/// Thin SVD of a tall matrix (m >= n) held in `work`, which it overwrites:
/// Householder QR first when m >= 2n, so that the bidiagonalisation runs on
/// the n x n factor R (LAPACK's gesdd does the same internally). `accurate`
/// selects one-sided Jacobi (after a column-pivoted QR) instead of BDCSVD.
template <class T>
void svd_tall_eigen(host_matrix<T>& work, eigen_map<T> u, eigen_vector_map<T> s, eigen_map<T> v,
                    bool accurate) {
  const index_t m = work.rows();
  const index_t n = work.cols();
  auto take = [&](const auto& svd, auto&& u_part) {
    if (svd.info() != Eigen::Success) {
      throw_numerical_error("lowrank::ops<cpu>::svd", "a", "not decomposable", "finite entries");
    }
    u_part = svd.matrixU();
    s = svd.singularValues();
    v = svd.matrixV();
  };
  if (accurate) {
    take(Eigen::JacobiSVD<host_matrix<T>, Eigen::ColPivHouseholderQRPreconditioner>(
             work, Eigen::ComputeThinU | Eigen::ComputeThinV),
         u);
  } else if (m >= 2 * n) {
    Eigen::HouseholderQR<Eigen::Ref<host_matrix<T>>> qr(work);
    const host_matrix<T> r = work.topRows(n).template triangularView<Eigen::Upper>();
    take(Eigen::BDCSVD<host_matrix<T>>(r, Eigen::ComputeFullU | Eigen::ComputeFullV), u.topRows(n));
    u.bottomRows(m - n).setZero();
    qr.householderQ().applyThisOnTheLeft(u);
  } else {
    take(Eigen::BDCSVD<host_matrix<T>>(work, Eigen::ComputeThinU | Eigen::ComputeThinV), u);
  }
}

/// Whether A = U diag(s) V^T holds to working precision: finite, s
/// non-increasing and >= 0, U and V orthonormal and ||A V - U diag(s)||_F
/// small, each within 64 sqrt(max(m, n)) eps (relative to ||A||_F for the
/// residual). Divide-and-conquer SVDs (LAPACK gesdd, Eigen's BDCSVD) can miss
/// that on clusters of nearly equal singular values (Eigen 3.4's BDCSVD
/// returned values off by 1e-6 relative on a 90 x 200 matrix with 65 equal
/// ones); the check costs about one product with A.
template <class T>
bool svd_is_accurate(eigen_map<const T> a, eigen_map<T> u, eigen_vector_map<T> s, eigen_map<T> v) {
  const double tol = 64.0 * std::sqrt(double(std::max(a.rows(), a.cols()))) *
                     double(std::numeric_limits<T>::epsilon());
  if (!u.allFinite() || !v.allFinite() || !s.allFinite()) return false;
  for (index_t i = 0; i < s.size(); ++i) {
    if (s(i) < 0 || (i > 0 && s(i) > s(i - 1))) return false;
  }
  const auto identity = host_matrix<T>::Identity(s.size(), s.size());
  if ((u.transpose() * u - identity).cwiseAbs().maxCoeff() > tol) return false;
  if ((v.transpose() * v - identity).cwiseAbs().maxCoeff() > tol) return false;
  const host_matrix<T> residual = a * v - u * s.asDiagonal();
  return double(residual.norm()) <= tol * double(a.norm());
}

}  // namespace detail

template <>
struct ops<cpu> {
  using backend = cpu;

  /// A read-only operand whose element type is deduced from the other
  /// arguments, so that writable views convert to it implicitly.
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cpu>;
  template <class T>
  using vector_input = vector_view<const std::type_identity_t<T>, cpu>;

  /// C = alpha op(A) op(B) + beta C: row panels of C, column panels, or fixed
  /// chunks of the inner dimension (partial products added in order).
  template <scalar T>
  static void gemm(context<cpu>& ctx, transpose ta, transpose tb, T alpha, input<T> a, input<T> b,
                   T beta, matrix_view<T, cpu> c) {
    const index_t m = c.rows();
    const index_t n = c.cols();
    const index_t k = ta == transpose::no ? a.cols() : a.rows();
    if (c.empty()) return;
    if (k == 0 || alpha == T(0)) {
      // C = beta C (beta = 0: zero, whatever C held).
      auto cm = as_eigen(c);
      if (beta == T(0)) {
        cm.setZero();
      } else {
        cm *= beta;
      }
      return;
    }
    const double flops = 2.0 * double(m) * double(n) * double(k);
    // Panels of at least 32 rows (sharing op(B)) or columns (sharing op(A));
    // else chunks of the inner dimension, whose partial products cost
    // (parts - 1) m n memory: no more than the inputs.
    const index_t row_parts = detail::blas_pieces(flops, m, double(k) * double(n), 64);
    const index_t col_parts = detail::blas_pieces(flops, n, double(m) * double(k), 64);
    const index_t k_parts = std::min(
        {detail::blas_pieces(flops, k / 8, 0, 16), std::max<index_t>(1, (m + n) * k / (m * n))});
    // Output panels first: chunking the inner dimension adds a reduction.
    if (row_parts >= col_parts && (row_parts >= 2 || k_parts == 1)) {
      detail::run_blas_tasks(ctx, row_parts, [&](index_t t) {
        const auto r = detail::part(m, row_parts, t);
        detail::gemm_piece(ta, tb, alpha, detail::op_rows(a, ta, r), b, beta,
                           c.middle_rows(r.begin, r.size));
      });
    } else if (col_parts >= 2 || k_parts == 1) {
      detail::run_blas_tasks(ctx, col_parts, [&](index_t t) {
        const auto r = detail::part(n, col_parts, t);
        detail::gemm_piece(ta, tb, alpha, a, detail::op_cols(b, tb, r), beta,
                           c.middle_cols(r.begin, r.size));
      });
    } else {
      std::vector<detail::host_matrix<T>> partial(static_cast<std::size_t>(k_parts));
      detail::run_blas_tasks(ctx, k_parts, [&](index_t t) {
        const auto r = detail::part(k, k_parts, t);
        auto& p = partial[static_cast<std::size_t>(t)];
        p.resize(m, n);
        detail::gemm_piece(ta, tb, T(1), detail::op_cols(a, ta, r), detail::op_rows(b, tb, r), T(0),
                           view(p));
      });
      for (index_t t = 1; t < k_parts; ++t) partial[0] += partial[static_cast<std::size_t>(t)];
      auto cm = as_eigen(c);
      if (beta == T(0)) {
        cm = alpha * partial[0];
      } else {
        cm = beta * cm + alpha * partial[0];
      }
    }
  }

  /// The lower triangle of C = A^T A: symmetric rank-k updates (syrk) over
  /// fixed chunks of A's rows, added in order.
  template <scalar T>
  static void gram(context<cpu>& ctx, input<T> a, matrix_view<T, cpu> c) {
    const index_t n = a.cols();
    const index_t parts = std::min(
        detail::blas_pieces(2.0 * double(a.rows()) * double(n) * double(n), a.rows() / 8, 0, 16),
        std::max<index_t>(1, a.rows() / std::max<index_t>(n, 1)));
    std::vector<detail::host_matrix<T>> partial(static_cast<std::size_t>(parts));
    detail::run_blas_tasks(ctx, parts, [&](index_t t) {
      const auto r = detail::part(a.rows(), parts, t);
      auto& p = partial[static_cast<std::size_t>(t)];
      p.setZero(n, n);
      if (r.size > 0) {
        p.template selfadjointView<Eigen::Lower>().rankUpdate(
            as_eigen(a.middle_rows(r.begin, r.size)).transpose());
      }
    });
    for (index_t t = 1; t < parts; ++t) partial[0] += partial[static_cast<std::size_t>(t)];
    as_eigen(c).template triangularView<Eigen::Lower>() = partial[0];
  }

  /// Y = Y R in place, for Y m x n and a square R (n x n): row panels of Y,
  /// each multiplied into the context's scratch and copied back.
  template <scalar T>
  static void multiply_right(context<cpu>& ctx, input<T> r, matrix_view<T, cpu> y) {
    if (y.empty()) return;
    const index_t n = y.cols();
    LOWRANK_ASSERT(r.rows() == n && r.cols() == n);
    const index_t parts =
        detail::blas_pieces(2.0 * double(y.rows()) * double(n) * double(n), y.rows(), 0, 64);
    T* scratch = ctx.scratch<T>(static_cast<std::size_t>(y.rows() * n));
    detail::run_blas_tasks(ctx, parts, [&](index_t t) {
      const auto piece = detail::part(y.rows(), parts, t);
      auto panel = as_eigen(y.middle_rows(piece.begin, piece.size));
      eigen_map<T> product(scratch + piece.begin * n, piece.size, n,
                           Eigen::OuterStride<>(std::max<index_t>(piece.size, 1)));
      product.noalias() = panel * as_eigen(r);
      panel = product;
    });
  }

  /// The factor of one Cholesky QR pass (backend_for): G's lower triangle in
  /// double, Eigen's LLT, R^{-1} by invert_upper.
  template <scalar T>
  static cholesky_status cholesky_factor(context<cpu>& /*ctx*/, matrix_view<const T, cpu> g,
                                         double shift, matrix_view<double, cpu> r,
                                         matrix_view<double, cpu> r_inv) {
    const index_t n = g.rows();
    LOWRANK_ASSERT(g.cols() == n && r.rows() == n && r.cols() == n && r_inv.rows() == n &&
                   r_inv.cols() == n);
    Eigen::MatrixXd a =
        as_eigen(g).template cast<double>().template selfadjointView<Eigen::Lower>();
    cholesky_status status;
    status.deviation = (a - Eigen::MatrixXd::Identity(n, n)).norm();
    if (n == 0) {
      status.ok = true;
      return status;
    }
    const double trace = a.trace();
    if (!std::isfinite(trace) || !std::isfinite(status.deviation)) return status;
    if (shift != 0) a.diagonal().array() += shift * trace;
    Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>, Eigen::Lower> llt(a);
    if (llt.info() != Eigen::Success) return status;
    const auto diagonal = a.diagonal();
    if (!(diagonal.minCoeff() > 0) || !std::isfinite(diagonal.maxCoeff())) return status;
    Eigen::MatrixXd upper = a.template triangularView<Eigen::Lower>().transpose();
    as_eigen(r) = upper;
    invert_upper(upper);
    as_eigen(r_inv) = upper;
    // Y R^{-1} is formed in precision T: an entry of R^{-1} that overflows
    // there would turn Y into Inf.
    status.ok = upper.cwiseAbs().maxCoeff() < double(std::numeric_limits<T>::max());
    return status;
  }

  /// dst = src rounded to dst's element type.
  template <class S, scalar D>
  requires scalar<std::remove_const_t<S>>
  static void convert(context<cpu>& /*ctx*/, matrix_view<S, cpu> src, matrix_view<D, cpu> dst) {
    LOWRANK_ASSERT(src.rows() == dst.rows() && src.cols() == dst.cols());
    as_eigen(dst) = as_eigen(src).template cast<D>();
  }

  /// Householder QR Y = Q R of Y (m x n, m >= n): Y becomes the thin Q and
  /// r (n x n) receives R (zeros below the diagonal). LAPACK geqrf + orgqr
  /// when linked, Eigen's blocked HouseholderQR otherwise.
  template <scalar T>
  static void householder_orthonormalize(context<cpu>& /*ctx*/, matrix_view<T, cpu> y,
                                         matrix_view<T, cpu> r) {
    [[maybe_unused]] const index_t m = y.rows();
    const index_t n = y.cols();
    LOWRANK_ASSERT(m >= n && r.rows() == n && r.cols() == n);
    if (n == 0) return;
#if LOWRANK_HAS_LAPACK
    using namespace detail::lapack;
    const char* fn = "lowrank::ops<cpu>::householder_orthonormalize";
    const int mi = to_int(m, fn, "y.rows()");
    const int ni = to_int(n, fn, "y.cols()");
    const int ld = to_int(y.ld(), fn, "y.ld()");
    std::vector<T> tau(static_cast<std::size_t>(n));
    int info = 0;
    int lwork = -1;
    T query{};
    geqrf(&mi, &ni, y.data(), &ld, tau.data(), &query, &lwork, &info);
    T query2{};
    orgqr(&mi, &ni, &ni, y.data(), &ld, tau.data(), &query2, &lwork, &info);
    lwork = static_cast<int>(std::max({query, query2, T(1)}));
    std::vector<T> work(static_cast<std::size_t>(lwork));
    geqrf(&mi, &ni, y.data(), &ld, tau.data(), work.data(), &lwork, &info);
    if (info != 0) detail::throw_numerical_error(fn, "info", info, "0 from LAPACK geqrf");
    as_eigen(r) = as_eigen(y).topRows(n).template triangularView<Eigen::Upper>();
    orgqr(&mi, &ni, &ni, y.data(), &ld, tau.data(), work.data(), &lwork, &info);
    if (info != 0) detail::throw_numerical_error(fn, "info", info, "0 from LAPACK orgqr");
#else
    auto ym = as_eigen(y);
    detail::host_matrix<T> work = ym;
    Eigen::HouseholderQR<Eigen::Ref<detail::host_matrix<T>>> qr(work);
    as_eigen(r) = work.topRows(n).template triangularView<Eigen::Upper>();
    ym.setIdentity();
    qr.householderQ().applyThisOnTheLeft(ym);
#endif
  }

  /// Thin SVD: A (m x n) = U diag(s) V^T with r = min(m, n) columns.
  /// LAPACK gesdd when linked, otherwise Eigen's BDCSVD (after a Householder
  /// QR when one side is at least twice the other); the result is checked and,
  /// if it fails, recomputed by LAPACK gesvd or Eigen's Jacobi SVD.
  /// @throws lowrank::numerical_error if the SVD does not converge.
  template <scalar T>
  static void svd(context<cpu>& /*ctx*/, input<T> a, matrix_view<T, cpu> u, vector_view<T, cpu> s,
                  matrix_view<T, cpu> v) {
    const index_t m = a.rows();
    const index_t n = a.cols();
    const index_t r = std::min(m, n);
    LOWRANK_ASSERT(u.rows() == m && u.cols() == r && s.size() == r && v.rows() == n &&
                   v.cols() == r);
    if (r == 0) return;
    // The fast divide-and-conquer SVD, checked; the slower, robust one when
    // the check fails (see detail::svd_is_accurate).
    for (const bool robust : {false, true}) {
#if LOWRANK_HAS_LAPACK
      lapack_svd(a, u, s, v, robust);
#else
      if (m >= n) {
        detail::host_matrix<T> work = as_eigen(a);
        detail::svd_tall_eigen<T>(work, as_eigen(u), as_eigen(s), as_eigen(v), robust);
      } else {
        detail::host_matrix<T> work = as_eigen(a).transpose();
        detail::svd_tall_eigen<T>(work, as_eigen(v), as_eigen(s), as_eigen(u), robust);
      }
#endif
      if (robust ||
          detail::svd_is_accurate<T>(as_eigen(a), as_eigen(u), as_eigen(s), as_eigen(v))) {
        return;
      }
    }
  }

  /// X = the block at (row0, col0) of the random matrix of `stream`.
  /// @throws lowrank::invalid_argument if the block is outside the generator's
  /// index range (random/philox.hpp).
  template <scalar T>
  static void fill_random(context<cpu>& ctx, distribution d, random_stream stream,
                          matrix_view<T, cpu> x, index_t row0 = 0, index_t col0 = 0) {
    check_random_range<T>(d, x, row0, col0);
    // Every element is a function of its indices: any split gives the same bits.
    const index_t parts =
        std::min(detail::parts_of(x.size(), 16384, 64), std::max<index_t>(x.cols(), 1));
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = detail::part(x.cols(), parts, t);
      const auto piece = x.middle_cols(r.begin, r.size);
      switch (d) {
        case distribution::gaussian:
          detail::fill_random_cpu<T, distribution::gaussian>(stream, piece, row0, col0 + r.begin);
          break;
        case distribution::uniform:
          detail::fill_random_cpu<T, distribution::uniform>(stream, piece, row0, col0 + r.begin);
          break;
        case distribution::rademacher:
          detail::fill_random_cpu<T, distribution::rademacher>(stream, piece, row0, col0 + r.begin);
          break;
      }
    });
  }

  /// X = value everywhere.
  template <scalar T>
  static void fill(context<cpu>& /*ctx*/, matrix_view<T, cpu> x, T value) {
    as_eigen(x).setConstant(value);
  }

  /// dst = src (same shape).
  template <scalar T>
  static void copy(context<cpu>& /*ctx*/, input<T> src, matrix_view<T, cpu> dst) {
    LOWRANK_ASSERT(src.rows() == dst.rows() && src.cols() == dst.cols());
    as_eigen(dst) = as_eigen(src);
  }

  /// X = X diag(d).
  template <scalar T>
  static void scale_columns(context<cpu>& ctx, vector_input<T> d, matrix_view<T, cpu> x) {
    LOWRANK_ASSERT(d.size() == x.cols());
    detail::for_each_column(ctx, x.rows(), x.cols(), 65536,
                            [&](index_t j) { as_eigen(x.col(j)) *= d[j]; });
  }

  /// ||X||_F^2, accumulated in double (fixed column chunks, added in order).
  template <scalar T>
  static double squared_norm(context<cpu>& ctx, matrix_view<const T, cpu> x) {
    const index_t parts =
        std::min(detail::parts_of(x.size(), 65536, 64), std::max<index_t>(x.cols(), 1));
    std::vector<double> partial(static_cast<std::size_t>(parts), 0.0);
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = detail::part(x.cols(), parts, t);
      double sum = 0;
      for (index_t j = r.begin; j < r.begin + r.size; ++j) sum += column_squared_norm(x, j);
      partial[static_cast<std::size_t>(t)] = sum;
    });
    double total = 0;
    for (const double p : partial) total += p;
    return total;
  }

  /// squared_norm of a writable view.
  template <scalar T>
  static double squared_norm(context<cpu>& ctx, matrix_view<T, cpu> x) {
    return squared_norm(ctx, as_const(x));
  }

  /// out_j = ||X(:, j)||^2, accumulated in double.
  template <scalar T>
  static void column_squared_norms(context<cpu>& /*ctx*/, input<T> x, vector_view<T, cpu> out) {
    LOWRANK_ASSERT(out.size() == x.cols());
    for (index_t j = 0; j < x.cols(); ++j) out[j] = static_cast<T>(column_squared_norm(x, j));
  }

  /// The column-major linear index of the first non-finite entry, or -1.
  template <scalar T>
  static index_t find_non_finite(context<cpu>& ctx, matrix_view<const T, cpu> x) {
    const index_t parts =
        std::min(detail::parts_of(x.size(), 65536, 64), std::max<index_t>(x.cols(), 1));
    std::vector<index_t> first(static_cast<std::size_t>(parts), -1);
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = detail::part(x.cols(), parts, t);
      for (index_t j = r.begin; j < r.begin + r.size; ++j) {
        const T* c = x.data() + j * x.ld();
        // A finite sum of x * 0 proves every entry finite (Inf * 0 and NaN * 0
        // are NaN); only a column that fails it needs the element-wise scan.
        T sum = 0;
        for (index_t i = 0; i < x.rows(); ++i) sum += c[i] * T(0);
        if (std::isfinite(sum)) continue;
        for (index_t i = 0; i < x.rows(); ++i) {
          if (!std::isfinite(c[i])) {
            first[static_cast<std::size_t>(t)] = i + j * x.rows();
            return;
          }
        }
      }
    });
    for (const index_t f : first) {
      if (f >= 0) return f;
    }
    return -1;
  }

  /// find_non_finite of a writable view.
  template <scalar T>
  static index_t find_non_finite(context<cpu>& ctx, matrix_view<T, cpu> x) {
    return find_non_finite(ctx, as_const(x));
  }

  /// out_j = the sign (+1 or -1) of the largest-magnitude entry of column j
  /// (the first one on ties; +1 for a zero column).
  template <scalar T>
  static void signs_of_largest(context<cpu>& ctx, input<T> x, vector_view<T, cpu> out) {
    LOWRANK_ASSERT(out.size() == x.cols());
    detail::for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      const T* c = x.data() + j * x.ld();
      // The largest magnitude (a vectorised reduction), then its first
      // occurrence (NaN never compares equal: such a column keeps +1).
      T largest = 0;
      for (index_t i = 0; i < x.rows(); ++i) largest = std::max(largest, std::abs(c[i]));
      T sign = 1;
      for (index_t i = 0; i < x.rows(); ++i) {
        if (std::abs(c[i]) == largest) {
          sign = c[i] < 0 ? T(-1) : T(1);
          break;
        }
      }
      out[j] = sign;
    });
  }

  /// Host view dst = backend view src (a copy on the CPU).
  template <scalar T>
  static void download(context<cpu>& ctx, input<T> src, matrix_view<T, cpu> dst) {
    copy(ctx, src, dst);
  }

  /// Backend view dst = host view src (a copy on the CPU).
  template <scalar T>
  static void upload(context<cpu>& ctx, input<T> src, matrix_view<T, cpu> dst) {
    copy(ctx, src, dst);
  }

  // --- Operations of the adapters (adapter_backend_for, core/concepts.hpp) ---

  /// X = alpha X + beta, element-wise.
  template <scalar T>
  static void affine(context<cpu>& ctx, T alpha, T beta, matrix_view<T, cpu> x) {
    detail::for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      auto c = as_eigen(x.col(j)).array();
      c = alpha * c + beta;
    });
  }

  /// Y = alpha X + beta Y (beta = 0 ignores Y's previous content).
  template <scalar T>
  static void axpby(context<cpu>& ctx, T alpha, input<T> x, T beta, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols());
    detail::for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      auto yc = as_eigen(y.col(j));
      if (beta == T(0)) {
        yc = alpha * as_eigen(x.col(j));
      } else {
        yc = alpha * as_eigen(x.col(j)) + beta * yc;
      }
    });
  }

  /// Y = alpha (X (.) M) / (1 - p) + beta Y: inverted dropout with keep mask
  /// M(i, j) = [u(i, j) >= p], u the float uniform matrix of `stream`
  /// (random/philox.hpp), so the mask is one function of (stream, i, j)
  /// whatever T, the split or the backend. p in [0, 1).
  template <scalar T>
  static void dropout(context<cpu>& ctx, random_stream stream, double p, T alpha, input<T> x,
                      T beta, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && p >= 0 && p < 1);
    // The mask is the float uniform matrix of `stream`: its index range.
    check_random_range<float>(distribution::uniform,
                              matrix_view<float, cpu>(nullptr, x.rows(), x.cols()), 0, 0,
                              "lowrank::ops<cpu>::dropout");
    const T keep = alpha / static_cast<T>(1.0 - p);
    detail::for_each_column(ctx, x.rows(), x.cols(), 16384, [&](index_t j) {
      const T* in = x.data() + j * x.ld();
      T* out = y.data() + j * y.ld();
      for (index_t i0 = 0; i0 < x.rows(); i0 += 4) {
        const philox_counter w = detail::random_words(stream, static_cast<std::uint64_t>(i0 / 4),
                                                      static_cast<std::uint64_t>(j));
        for (index_t lane = 0; lane < 4 && i0 + lane < x.rows(); ++lane) {
          const index_t i = i0 + lane;
          const T kept = detail::u24(w.v[lane]) >= p ? keep * in[i] : T(0);
          out[i] = beta == T(0) ? kept : kept + beta * out[i];
        }
      }
    });
  }

  /// Y(i, :) += alpha v^T for every row i (a bias added to a batch).
  template <scalar T>
  static void add_row_vector(context<cpu>& ctx, T alpha, vector_input<T> v, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(v.size() == y.cols());
    detail::for_each_column(ctx, y.rows(), y.cols(), 65536,
                            [&](index_t j) { as_eigen(y.col(j)).array() += alpha * v[j]; });
  }

  /// y_j += alpha sum_i X(i, j), each sum accumulated in double.
  template <scalar T>
  static void add_column_sums(context<cpu>& ctx, T alpha, input<T> x, vector_view<T, cpu> y) {
    LOWRANK_ASSERT(y.size() == x.cols());
    detail::for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      const T* c = x.data() + j * x.ld();
      double sum = 0;
      for (index_t i = 0; i < x.rows(); ++i) sum += double(c[i]);
      y[j] = static_cast<T>(double(y[j]) + double(alpha) * sum);
    });
  }

  /// out_i = sum_j X(i, j) Y(i, j), accumulated in double (X, Y of one shape).
  template <scalar T>
  static void row_dots(context<cpu>& ctx, matrix_view<const T, cpu> x, input<T> y,
                       vector_view<double, cpu> out) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && out.size() == x.rows());
    const index_t parts =
        std::min(detail::parts_of(x.size(), 65536, 64), std::max<index_t>(x.rows() / 64, 1));
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = detail::part(x.rows(), parts, t);
      for (index_t i = r.begin; i < r.begin + r.size; ++i) out[i] = 0;
      for (index_t j = 0; j < x.cols(); ++j) {
        const T* a = x.data() + j * x.ld();
        const T* b = y.data() + j * y.ld();
        for (index_t i = r.begin; i < r.begin + r.size; ++i) out[i] += double(a[i]) * double(b[i]);
      }
    });
  }

  /// out_j = sum_i X(i, j) Y(i, j), accumulated in double (X, Y of one shape).
  template <scalar T>
  static void column_dots(context<cpu>& ctx, matrix_view<const T, cpu> x, input<T> y,
                          vector_view<double, cpu> out) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && out.size() == x.cols());
    detail::for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      const T* a = x.data() + j * x.ld();
      const T* b = y.data() + j * y.ld();
      double sum = 0;
      for (index_t i = 0; i < x.rows(); ++i) sum += double(a[i]) * double(b[i]);
      out[j] = sum;
    });
  }

  /// n_i = max(sqrt(max(w_i + 2 s b_i + s^2 c_i, 0)), floor): the row norms
  /// of W + s B A from w_i = ||W_i||^2, b_i = <B_i, (W A^T)_i> and
  /// c_i = <B_i, (B A A^T)_i> (DoRA's factored norm). A NaN stays NaN.
  static void factored_row_norms(context<cpu>& /*ctx*/, double s, double floor,
                                 vector_view<const double, cpu> w, vector_view<const double, cpu> b,
                                 vector_view<const double, cpu> c, vector_view<double, cpu> n) {
    LOWRANK_ASSERT(w.size() == n.size() && b.size() == n.size() && c.size() == n.size());
    const double two_s = 2 * s;
    const double s2 = s * s;
    for (index_t i = 0; i < n.size(); ++i) {
      const double sq = w[i] + two_s * b[i] + s2 * c[i];
      const double norm = std::sqrt(sq < 0 ? 0.0 : sq);
      n[i] = norm < floor ? floor : norm;
    }
  }

  /// y_i = x_i / d_i + beta y_i, computed in double and rounded once to y's
  /// type (beta = 0 ignores y's previous content).
  template <scalar U, scalar V>
  static void divide(context<cpu>& /*ctx*/, vector_view<const U, cpu> x,
                     vector_view<const double, cpu> d, double beta, vector_view<V, cpu> y) {
    LOWRANK_ASSERT(x.size() == y.size() && d.size() == y.size());
    for (index_t i = 0; i < y.size(); ++i) {
      const double q = double(x[i]) / d[i];
      y[i] = static_cast<V>(beta == 0 ? q : q + beta * double(y[i]));
    }
  }

  /// Out(k, :) = X(rows[k], :) for k < rows.size() (out is rows.size() x
  /// x.cols(); every rows[k] in [0, x.rows())): column panels.
  template <scalar T>
  static void gather_rows(context<cpu>& ctx, input<T> x, vector_view<const index_t, cpu> rows,
                          matrix_view<T, cpu> out) {
    LOWRANK_ASSERT(out.rows() == rows.size() && out.cols() == x.cols());
    detail::for_each_column(ctx, out.rows(), out.cols(), 65536, [&](index_t j) {
      const T* in = x.data() + j * x.ld();
      T* o = out.data() + j * out.ld();
      for (index_t k = 0; k < rows.size(); ++k) o[k] = in[rows[k]];
    });
  }

  /// Y(rows[k], :) += alpha Src(k, :) for k < rows.size() (src is rows.size()
  /// x y.cols(); the rows[k] distinct and in [0, y.rows())): column panels.
  template <scalar T>
  static void scatter_add_rows(context<cpu>& ctx, T alpha, input<T> src,
                               vector_view<const index_t, cpu> rows, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(src.rows() == rows.size() && src.cols() == y.cols());
    detail::for_each_column(ctx, src.rows(), src.cols(), 65536, [&](index_t j) {
      const T* s = src.data() + j * src.ld();
      T* o = y.data() + j * y.ld();
      for (index_t k = 0; k < rows.size(); ++k) o[rows[k]] += alpha * s[k];
    });
  }

  /// Backend index vector dst = host index vector src (same size; a copy on the CPU).
  static void upload_indices(context<cpu>& /*ctx*/, vector_view<const index_t, cpu> src,
                             vector_view<index_t, cpu> dst) {
    LOWRANK_ASSERT(src.size() == dst.size());
    std::copy(src.data(), src.data() + src.size(), dst.data());
  }

  /// The merge of a low-rank update into a weight, in extended precision
  /// (double for float, long double for double) and rounded once per element:
  ///   W'(i, j) = fl(c_i (W(i, j) + s (B A)(i, j))),
  /// c = `row_scale` (empty: c = 1). W is out x in, B out x r, A r x in.
  /// Returns the column-major index of the first non-finite W', or -1. With
  /// `check_only`, W is not written. Otherwise W becomes W' (all of it, even
  /// when some W' is non-finite) and, when `record` is not null, it receives
  /// (index, old value) of every element that unmerge_low_rank() with the same
  /// arguments would not restore bit for bit, in index order.
  template <scalar T>
  static index_t merge_low_rank(context<cpu>& ctx, double s, input<T> b, input<T> a,
                                vector_view<const double, cpu> row_scale, matrix_view<T, cpu> w,
                                bool check_only,
                                std::vector<merge_exception<std::type_identity_t<T>>>* record) {
    return merge_pass(ctx, s, b, a, row_scale, w, check_only ? pass::check : pass::merge, record);
  }

  /// The inverse of merge_low_rank(): W(i, j) = fl(W'(i, j) / c_i - s (B A)(i, j))
  /// in extended precision, then the recorded elements restored; with the
  /// record of the merge, W is the pre-merge weight bit for bit.
  template <scalar T>
  static void unmerge_low_rank(
      context<cpu>& ctx, double s, input<T> b, input<T> a, vector_view<const double, cpu> row_scale,
      matrix_view<T, cpu> w, const std::vector<merge_exception<std::type_identity_t<T>>>& record) {
    merge_pass<T>(ctx, s, b, a, row_scale, w, pass::unmerge, nullptr);
    for (const auto& e : record)
      w.data()[e.index % w.rows() + (e.index / w.rows()) * w.ld()] = e.value;
  }

 private:
  /// R = R^{-1} for an upper-triangular R on the host (what lies below the
  /// diagonal is ignored and zeroed): LAPACK trtri when linked, Eigen otherwise.
  /// cholesky_factor's inverse (a helper, not a backend operation).
  static void invert_upper(Eigen::MatrixXd& r) {
    const index_t n = r.rows();
    LOWRANK_ASSERT(r.cols() == n);
    r.template triangularView<Eigen::StrictlyLower>().setZero();
    if (n == 0) return;
#if LOWRANK_HAS_LAPACK
    const int ni = detail::lapack::to_int(n, "lowrank::ops<cpu>::invert_upper", "r.rows()");
    int info = 0;
    dtrtri_("U", "N", &ni, r.data(), &ni, &info, 1, 1);
    if (info != 0) {
      detail::throw_numerical_error("lowrank::ops<cpu>::invert_upper", "info", info,
                                    "0 from LAPACK dtrtri (a non-zero diagonal)");
    }
#else
    Eigen::MatrixXd inverse = Eigen::MatrixXd::Identity(n, n);
    r.template triangularView<Eigen::Upper>().solveInPlace(inverse);
    r = inverse;
#endif
  }

  enum class pass { check, merge, unmerge };

  template <class T>
  using extended = std::conditional_t<std::is_same_v<T, float>, double, long double>;

  /// d = s (B A)(:, j) in extended precision: one fixed loop order, not
  /// inlined, so that merge and unmerge compute the same bits.
  template <class T>
  [[gnu::noinline]] static void low_rank_column(const extended<T>* bx, index_t rows, index_t r,
                                                matrix_view<const T, cpu> a, index_t j,
                                                extended<T> s, extended<T>* d) {
    for (index_t i = 0; i < rows; ++i) d[i] = 0;
    for (index_t k = 0; k < r; ++k) {
      const extended<T> akj = a(k, j);
      const extended<T>* bk = bx + k * rows;
      for (index_t i = 0; i < rows; ++i) d[i] += bk[i] * akj;
    }
    for (index_t i = 0; i < rows; ++i) d[i] *= s;
  }

  /// One element of unmerge: fl(w / c - d), in one function for the same reason.
  template <class T>
  [[gnu::noinline]] static void unmerge_column(const T* w, const extended<T>* c,
                                               const extended<T>* d, index_t rows, T* out) {
    for (index_t i = 0; i < rows; ++i) {
      const extended<T> x = c != nullptr ? extended<T>(w[i]) / c[i] : extended<T>(w[i]);
      out[i] = static_cast<T>(x - d[i]);
    }
  }

  template <class T>
  static index_t merge_pass(context<cpu>& ctx, double s, matrix_view<const T, cpu> b,
                            matrix_view<const T, cpu> a, vector_view<const double, cpu> row_scale,
                            matrix_view<T, cpu> w, pass mode,
                            std::vector<merge_exception<T>>* record) {
    using E = extended<T>;
    const index_t m = w.rows();
    const index_t n = w.cols();
    const index_t r = a.rows();
    LOWRANK_ASSERT(b.rows() == m && b.cols() == r && a.cols() == n);
    LOWRANK_ASSERT(row_scale.empty() || row_scale.size() == m);
    Eigen::Matrix<E, Eigen::Dynamic, Eigen::Dynamic> bx = as_eigen(b).template cast<E>();
    Eigen::Matrix<E, Eigen::Dynamic, 1> c;
    if (!row_scale.empty()) c = as_eigen(row_scale).template cast<E>();
    const E* cp = row_scale.empty() ? nullptr : c.data();
    const index_t parts = std::min(detail::parts_of(m * n * std::max<index_t>(r, 1), 1 << 18, 64),
                                   std::max<index_t>(n, 1));
    std::vector<index_t> first_bad(static_cast<std::size_t>(parts), -1);
    std::vector<std::vector<merge_exception<T>>> found(static_cast<std::size_t>(parts));
    ctx.pool().run(parts, [&](index_t t) {
      const auto range = detail::part(n, parts, t);
      std::vector<E> d(static_cast<std::size_t>(m));
      std::vector<T> merged(static_cast<std::size_t>(m));
      std::vector<T> back(static_cast<std::size_t>(m));
      auto& bad = first_bad[static_cast<std::size_t>(t)];
      for (index_t j = range.begin; j < range.begin + range.size; ++j) {
        T* col = w.data() + j * w.ld();
        low_rank_column<T>(bx.data(), m, r, a, j, E(s), d.data());
        if (mode == pass::unmerge) {
          unmerge_column<T>(col, cp, d.data(), m, col);
          continue;
        }
        for (index_t i = 0; i < m; ++i) {
          const E x = E(col[i]) + d[static_cast<std::size_t>(i)];
          merged[static_cast<std::size_t>(i)] = static_cast<T>(cp != nullptr ? cp[i] * x : x);
          if (bad < 0 && !std::isfinite(merged[static_cast<std::size_t>(i)])) bad = i + j * m;
        }
        if (mode == pass::check) continue;
        if (record != nullptr) {
          unmerge_column<T>(merged.data(), cp, d.data(), m, back.data());
          for (index_t i = 0; i < m; ++i) {
            if (!detail::same_bits(back[static_cast<std::size_t>(i)], col[i])) {
              found[static_cast<std::size_t>(t)].push_back({i + j * m, col[i]});
            }
          }
        }
        std::copy(merged.begin(), merged.end(), col);
      }
    });
    if (record != nullptr) {
      record->clear();
      for (auto& f : found) record->insert(record->end(), f.begin(), f.end());
    }
    for (const index_t bad : first_bad) {
      if (bad >= 0) return bad;
    }
    return -1;
  }

#if LOWRANK_HAS_LAPACK
  /// gesdd (divide and conquer) or, when `robust`, gesvd (QR iteration).
  template <class T>
  static void lapack_svd(matrix_view<const T, cpu> a, matrix_view<T, cpu> u, vector_view<T, cpu> s,
                         matrix_view<T, cpu> v, bool robust) {
    using namespace detail::lapack;
    const char* fn = "lowrank::ops<cpu>::svd";
    const index_t m = a.rows();
    const index_t n = a.cols();
    const index_t r = std::min(m, n);
    detail::host_matrix<T> work = as_eigen(a);
    detail::host_matrix<T> vt(r, n);
    const int mi = to_int(m, fn, "a.rows()");
    const int ni = to_int(n, fn, "a.cols()");
    const int ldu = to_int(u.ld(), fn, "u.ld()");
    const int ldvt = static_cast<int>(std::max<index_t>(r, 1));
    std::vector<int> iwork(static_cast<std::size_t>(8 * r));
    int info = 0;
    int lwork = -1;
    T query{};
    auto call = [&](T* buffer) {
      if (robust) {
        gesvd(&mi, &ni, work.data(), &mi, s.data(), u.data(), &ldu, vt.data(), &ldvt, buffer,
              &lwork, &info);
      } else {
        gesdd("S", &mi, &ni, work.data(), &mi, s.data(), u.data(), &ldu, vt.data(), &ldvt, buffer,
              &lwork, iwork.data(), &info);
      }
    };
    call(&query);
    // LAPACK returns the size as a floating-point number; round it up.
    lwork = static_cast<int>(
        std::ceil(std::max(query, T(1)) * (1 + 4 * std::numeric_limits<T>::epsilon())));
    std::vector<T> buffer(static_cast<std::size_t>(lwork));
    call(buffer.data());
    if (info != 0) {
      detail::throw_numerical_error(fn, "info", info,
                                    robust ? "0 from LAPACK gesvd" : "0 from LAPACK gesdd");
    }
    as_eigen(v) = vt.transpose();
  }
#endif

  template <class T>
  static double column_squared_norm(matrix_view<const T, cpu> x, index_t j) {
    const T* c = x.data() + j * x.ld();
    double sum = 0;
    for (index_t i = 0; i < x.rows(); ++i) sum += double(c[i]) * double(c[i]);
    return sum;
  }

  template <class T>
  static void check_random_range(distribution d, matrix_view<T, cpu> x, index_t row0, index_t col0,
                                 const char* fn = "lowrank::ops<cpu>::fill_random") {
    const index_t r = (d == distribution::rademacher || sizeof(T) == 4) ? 4 : 2;
    constexpr index_t counter_limit = index_t{1} << 32;
    if (row0 < 0 || (row0 + x.rows()) > counter_limit * r) {
      detail::throw_invalid_argument(fn, "row0", row0,
                                     "rows [row0, row0 + rows) within [0, 2^32 * R)");
    }
    if (col0 < 0 || col0 + x.cols() > counter_limit) {
      detail::throw_invalid_argument(fn, "col0", col0,
                                     "columns [col0, col0 + cols) within [0, 2^32)");
    }
  }
};

static_assert(backend_for<cpu, float>);
static_assert(backend_for<cpu, double>);
static_assert(adapter_backend_for<cpu, float>);
static_assert(adapter_backend_for<cpu, double>);

}  // namespace lowrank
