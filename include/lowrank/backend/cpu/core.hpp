#pragma once
/// @file
/// The core part of the CPU operation table (internal; assembled into
/// `lowrank::ops<lowrank::cpu>` by backend/cpu/ops.hpp): the operations of
/// `backend_for` (core/concepts.hpp) on Eigen maps of the caller's memory
/// (dense products go to the BLAS when `EIGEN_USE_BLAS` is defined), with
/// LAPACK's geqrf / orgqr / trtri when `LOWRANK_HAS_LAPACK` is 1.
///
/// **Parallelism and reproducibility.** The products, the Gram matrix, the
/// triangular solve and the element-wise loops split their work into pieces
/// decided from the shapes alone (backend/cpu/partition.hpp): row or column
/// panels of the output, or fixed chunks of the inner dimension whose partial
/// results are added in a fixed order. Each piece is a single-threaded
/// computation, so the result does not depend on the thread count.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/lapack.hpp"
#include "lowrank/backend/cpu/partition.hpp"
#include "lowrank/backend/cpu/random.hpp"
#include "lowrank/backend/cpu/svd.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank::detail {

/// C = alpha op(A) op(B) + beta C as one call (Eigen, or the BLAS behind it).
template <class T>
void gemm_piece(transpose ta, transpose tb, T alpha, matrix_view<const T, cpu> a,
                matrix_view<const T, cpu> b, T beta, matrix_view<T, cpu> c) {
#if defined(EIGEN_USE_BLAS)
  const index_t k = ta == transpose::no ? a.cols() : a.rows();
  if (std::max({c.rows(), c.cols(), k, a.ld(), b.ld(), c.ld()}) <= blas::int_max) {
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

/// The core operations of the CPU backend (see the file comment).
struct cpu_core_ops {
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
    const index_t row_parts = blas_pieces(flops, m, double(k) * double(n), 64);
    const index_t col_parts = blas_pieces(flops, n, double(m) * double(k), 64);
    const index_t k_parts =
        std::min({blas_pieces(flops, k / 8, 0, 16), std::max<index_t>(1, (m + n) * k / (m * n))});
    // Output panels first: chunking the inner dimension adds a reduction.
    if (row_parts >= col_parts && (row_parts >= 2 || k_parts == 1)) {
      run_blas_tasks(ctx, row_parts, [&](index_t t) {
        const auto r = part(m, row_parts, t);
        gemm_piece(ta, tb, alpha, op_rows(a, ta, r), b, beta, c.middle_rows(r.begin, r.size));
      });
    } else if (col_parts >= 2 || k_parts == 1) {
      run_blas_tasks(ctx, col_parts, [&](index_t t) {
        const auto r = part(n, col_parts, t);
        gemm_piece(ta, tb, alpha, a, op_cols(b, tb, r), beta, c.middle_cols(r.begin, r.size));
      });
    } else {
      std::vector<host_matrix<T>> partial(static_cast<std::size_t>(k_parts));
      run_blas_tasks(ctx, k_parts, [&](index_t t) {
        const auto r = part(k, k_parts, t);
        auto& p = partial[static_cast<std::size_t>(t)];
        p.resize(m, n);
        gemm_piece(ta, tb, T(1), op_cols(a, ta, r), op_rows(b, tb, r), T(0), view(p));
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
  /// fixed chunks of A's rows (at least 1024 each: every chunk adds an n x n
  /// partial, and 2048 x 74 runs fastest in 2), added in order.
  template <scalar T>
  static void gram(context<cpu>& ctx, input<T> a, matrix_view<T, cpu> c) {
    const index_t n = a.cols();
    const index_t parts =
        std::min(blas_pieces(2.0 * double(a.rows()) * double(n) * double(n), a.rows() / 32, 0, 16),
                 std::max<index_t>(1, a.rows() / std::max<index_t>(n, 1)));
    std::vector<host_matrix<T>> partial(static_cast<std::size_t>(parts));
    run_blas_tasks(ctx, parts, [&](index_t t) {
      const auto r = part(a.rows(), parts, t);
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

  /// Y = Y R in place, for Y m x n and a square R (n x n): row panels of Y.
  /// An upper-triangular R (Cholesky QR's R^{-1}) goes to the BLAS's trmm in
  /// place, half the flops of a full product and no copy; any other R (or no
  /// BLAS) is multiplied into the context's workspace and copied back.
  template <scalar T>
  static void multiply_right(context<cpu>& ctx, input<T> r, matrix_view<T, cpu> y) {
    if (y.empty()) return;
    const index_t n = y.cols();
    LOWRANK_ASSERT(r.rows() == n && r.cols() == n);
#if defined(EIGEN_USE_BLAS)
    if (std::max({y.rows(), n, r.ld(), y.ld()}) <= blas::int_max && is_upper_triangular<T>(r)) {
      const index_t parts = blas_pieces(double(y.rows()) * double(n) * double(n), y.rows(), 0, 64);
      run_blas_tasks(ctx, parts, [&](index_t t) {
        const auto piece = part(y.rows(), parts, t);
        auto panel = y.middle_rows(piece.begin, piece.size);
        blas::trmm_right_upper<T>(piece.size, n, r.data(), r.ld(), panel.data(), panel.ld());
      });
      return;
    }
#endif
    const index_t parts =
        blas_pieces(2.0 * double(y.rows()) * double(n) * double(n), y.rows(), 0, 64);
    auto ws = ctx.workspace();
    T* scratch = ws.take<T>(static_cast<std::size_t>(y.rows() * n));
    run_blas_tasks(ctx, parts, [&](index_t t) {
      const auto piece = part(y.rows(), parts, t);
      auto panel = as_eigen(y.middle_rows(piece.begin, piece.size));
      eigen_map<T> product(scratch + piece.begin * n, piece.size, n,
                           Eigen::OuterStride<>(std::max<index_t>(piece.size, 1)));
      product.noalias() = panel * as_eigen(r);
      panel = product;
    });
  }

  /// Whether R (square) is zero below its diagonal.
  template <scalar T>
  static bool is_upper_triangular(input<T> r) {
    for (index_t j = 0; j < r.cols(); ++j) {
      const T* c = r.data() + j * r.ld();
      for (index_t i = j + 1; i < r.rows(); ++i) {
        if (c[i] != T(0)) return false;
      }
    }
    return true;
  }

  /// The factor of one Cholesky QR pass (backend_for): G's lower triangle in
  /// double, Eigen's LLT, R^{-1} by invert_upper; kappa_2(R) by
  /// condition_estimate when asked.
  template <scalar T>
  static cholesky_status cholesky_factor(context<cpu>& /*ctx*/, matrix_view<const T, cpu> g,
                                         double shift, matrix_view<double, cpu> r,
                                         matrix_view<double, cpu> r_inv,
                                         bool estimate_condition = false) {
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
    if (status.ok && estimate_condition) {
      status.condition = condition_estimate(as_eigen(as_const(r)), upper);
    }
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
    using namespace lapack;
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
    if (info != 0) throw_numerical_error(fn, "info", info, "0 from LAPACK geqrf");
    as_eigen(r) = as_eigen(y).topRows(n).template triangularView<Eigen::Upper>();
    orgqr(&mi, &ni, &ni, y.data(), &ld, tau.data(), work.data(), &lwork, &info);
    if (info != 0) throw_numerical_error(fn, "info", info, "0 from LAPACK orgqr");
#else
    auto ym = as_eigen(y);
    host_matrix<T> work = ym;
    Eigen::HouseholderQR<Eigen::Ref<host_matrix<T>>> qr(work);
    as_eigen(r) = work.topRows(n).template triangularView<Eigen::Upper>();
    ym.setIdentity();
    qr.householderQ().applyThisOnTheLeft(ym);
#endif
  }

  /// Thin SVD: A (m x n) = U diag(s) V^T with r = min(m, n) columns
  /// (backend/cpu/svd.hpp: gesdd or BDCSVD, checked, then gesvd or Jacobi).
  /// @throws lowrank::numerical_error if the SVD does not converge.
  template <scalar T>
  static void svd(context<cpu>& /*ctx*/, input<T> a, matrix_view<T, cpu> u, vector_view<T, cpu> s,
                  matrix_view<T, cpu> v) {
    cpu_svd<T>(a, u, s, v);
  }

  /// X = the block at (row0, col0) of the random matrix of `stream`.
  /// @throws lowrank::invalid_argument if the block is outside the generator's
  /// index range (random/philox.hpp).
  template <scalar T>
  static void fill_random(context<cpu>& ctx, distribution d, random_stream stream,
                          matrix_view<T, cpu> x, index_t row0 = 0, index_t col0 = 0) {
    cpu_fill_random(ctx, d, stream, x, row0, col0, "lowrank::ops<cpu>::fill_random");
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
    for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) { as_eigen(x.col(j)) *= d[j]; });
  }

  /// ||scale X||_F^2, accumulated in double (fixed column chunks, added in
  /// order); `scale` (a power of two) keeps the squares of extreme data in
  /// double's range.
  template <scalar T>
  static double squared_norm(context<cpu>& ctx, matrix_view<const T, cpu> x, double scale = 1) {
    return sum_over_columns(ctx, x.rows(), x.cols(), 65536,
                            [&](index_t j) { return column_squared_norm(x, j, scale); });
  }

  /// squared_norm of a writable view.
  template <scalar T>
  static double squared_norm(context<cpu>& ctx, matrix_view<T, cpu> x, double scale = 1) {
    return squared_norm(ctx, as_const(x), scale);
  }

  /// out_j = ||X(:, j)||^2, accumulated in double.
  template <scalar T>
  static void column_squared_norms(context<cpu>& /*ctx*/, matrix_view<const T, cpu> x,
                                   vector_view<double, cpu> out) {
    LOWRANK_ASSERT(out.size() == x.cols());
    for (index_t j = 0; j < x.cols(); ++j) out[j] = column_squared_norm(x, j, 1.0);
  }

  /// The largest |X(i, j)|, in double: NaN when X holds a NaN or an
  /// infinity, 0 when empty.
  template <scalar T>
  static double max_abs(context<cpu>& ctx, matrix_view<const T, cpu> x) {
    if (x.empty()) return 0;
    const index_t parts = column_parts(x.rows(), x.cols(), 65536);
    auto ws = ctx.workspace();  // no allocation once warm
    double* partial = ws.take<double>(static_cast<std::size_t>(parts));
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = part(x.cols(), parts, t);
      double largest = 0;
      for (index_t j = r.begin; j < r.begin + r.size; ++j) {
        const T* c = x.data() + j * x.ld();
        // maxCoeff drops a NaN; the sum of x * 0 is NaN exactly when a column
        // holds a NaN or an infinity. Both through Eigen's packets (neither
        // depends on the order of the reduction).
        const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> column(c, x.rows());
        const bool finite = !std::isnan((column * T(0)).sum());
        largest = keep_nan_max(largest, finite ? double(column.abs().maxCoeff())
                                               : std::numeric_limits<double>::quiet_NaN());
      }
      partial[static_cast<std::size_t>(t)] = largest;
    });
    double largest = 0;
    for (index_t t = 0; t < parts; ++t) largest = keep_nan_max(largest, partial[t]);
    return largest;
  }

  /// max_abs of a writable view.
  template <scalar T>
  static double max_abs(context<cpu>& ctx, matrix_view<T, cpu> x) {
    return max_abs(ctx, as_const(x));
  }

  /// The column-major linear index of the first non-finite entry, or -1.
  template <scalar T>
  static index_t find_non_finite(context<cpu>& ctx, matrix_view<const T, cpu> x) {
    const index_t parts = column_parts(x.rows(), x.cols(), 65536);
    std::vector<index_t> first(static_cast<std::size_t>(parts), -1);
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = part(x.cols(), parts, t);
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
    for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      const T* c = x.data() + j * x.ld();
      // The largest magnitude (through Eigen's packets; a NaN is passed
      // over, as std::max would), then its first occurrence.
      const T largest = x.rows() == 0
                            ? T(0)
                            : Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(c, x.rows())
                                  .abs()
                                  .template maxCoeff<Eigen::PropagateNumbers>();
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

  /// X = alpha X + beta, element-wise.
  template <scalar T>
  static void affine(context<cpu>& ctx, T alpha, T beta, matrix_view<T, cpu> x) {
    for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      auto c = as_eigen(x.col(j)).array();
      c = alpha * c + beta;
    });
  }

  /// Y = alpha X + beta Y (beta = 0 ignores Y's previous content).
  template <scalar T>
  static void axpby(context<cpu>& ctx, T alpha, input<T> x, T beta, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols());
    for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      auto yc = as_eigen(y.col(j));
      if (beta == T(0)) {
        yc = alpha * as_eigen(x.col(j));
      } else {
        yc = alpha * as_eigen(x.col(j)) + beta * yc;
      }
    });
  }

  /// Y(i, :) += alpha v^T for every row i (a bias added to a batch).
  template <scalar T>
  static void add_row_vector(context<cpu>& ctx, T alpha, vector_input<T> v, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(v.size() == y.cols());
    for_each_column(ctx, y.rows(), y.cols(), 65536,
                    [&](index_t j) { as_eigen(y.col(j)).array() += alpha * v[j]; });
  }

  /// y_j += alpha sum_i X(i, j), each sum accumulated in double.
  template <scalar T>
  static void add_column_sums(context<cpu>& ctx, T alpha, input<T> x, vector_view<T, cpu> y) {
    LOWRANK_ASSERT(y.size() == x.cols());
    for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
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
        std::min(parts_of(x.size(), 65536, 64), std::max<index_t>(x.rows() / 64, 1));
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = part(x.rows(), parts, t);
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
    for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      const T* a = x.data() + j * x.ld();
      const T* b = y.data() + j * y.ld();
      double sum = 0;
      for (index_t i = 0; i < x.rows(); ++i) sum += double(a[i]) * double(b[i]);
      out[j] = sum;
    });
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
    for_each_column(ctx, out.rows(), out.cols(), 65536, [&](index_t j) {
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
    for_each_column(ctx, src.rows(), src.cols(), 65536, [&](index_t j) {
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

 private:
  /// cholesky_factor's estimate of kappa_2(R) for upper triangular R and its
  /// inverse (a helper): the ratio of R's largest and smallest diagonal
  /// entries, a lower bound, when it exceeds 4; otherwise ||R||_2 ||R^{-1}||_2
  /// with each norm from 10 power iterations (on R^T R and R^{-1} R^{-T},
  /// from a fixed start): from below, within 3-6% for tall Gaussian blocks,
  /// a geometric spread or one outlying value at kappa 1.5-3.7; 4 n^2 flops
  /// an iteration (about 30 us at n = 74).
  static double condition_estimate(eigen_map<const double> r, const Eigen::MatrixXd& r_inv) {
    const index_t n = r.rows();
    const auto diagonal = r.diagonal().cwiseAbs();
    const double lower = diagonal.maxCoeff() / diagonal.minCoeff();
    if (!(lower <= 4)) return lower;
    Eigen::VectorXd start(n);
    for (index_t i = 0; i < n; ++i) start(i) = 1.0 + 1.0 / double(i + 2);
    const auto norm = [&](const auto& m) {
      Eigen::VectorXd v = start.normalized();
      Eigen::VectorXd w(n);
      double sigma = 0;
      for (int it = 0; it < 10; ++it) {
        w.noalias() = m * v;
        sigma = w.norm();  // ||m v|| <= ||m||_2, increasing towards it
        v.noalias() = m.transpose() * w;
        const double size = v.norm();
        if (!(size > 0) || !std::isfinite(size)) break;
        v /= size;
      }
      return sigma;
    };
    return std::max(lower, norm(r) * norm(r_inv));
  }

  /// R = R^{-1} for an upper-triangular R on the host (what lies below the
  /// diagonal is ignored and zeroed): LAPACK trtri when linked, Eigen otherwise.
  /// cholesky_factor's inverse (a helper, not a backend operation).
  static void invert_upper(Eigen::MatrixXd& r) {
    const index_t n = r.rows();
    LOWRANK_ASSERT(r.cols() == n);
    r.template triangularView<Eigen::StrictlyLower>().setZero();
    if (n == 0) return;
#if LOWRANK_HAS_LAPACK
    const int ni = lapack::to_int(n, "lowrank::ops<cpu>::invert_upper", "r.rows()");
    int info = 0;
    dtrtri_("U", "N", &ni, r.data(), &ni, &info, 1, 1);
    if (info != 0) {
      throw_numerical_error("lowrank::ops<cpu>::invert_upper", "info", info,
                            "0 from LAPACK dtrtri (a non-zero diagonal)");
    }
#else
    Eigen::MatrixXd inverse = Eigen::MatrixXd::Identity(n, n);
    r.template triangularView<Eigen::Upper>().solveInPlace(inverse);
    r = inverse;
#endif
  }

  template <class T>
  static double column_squared_norm(matrix_view<const T, cpu> x, index_t j, double scale) {
    const T* c = x.data() + j * x.ld();
    double sum = 0;
    for (index_t i = 0; i < x.rows(); ++i) {
      const double v = scale * double(c[i]);
      sum += v * v;
    }
    return sum;
  }

  /// max(a, b), NaN once either is NaN.
  [[nodiscard]] static double keep_nan_max(double a, double b) noexcept {
    return (std::isnan(a) || std::isnan(b)) ? std::numeric_limits<double>::quiet_NaN()
                                            : std::max(a, b);
  }
};

}  // namespace lowrank::detail
