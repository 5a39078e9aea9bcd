#pragma once
/// @file
/// Concepts constraining lowrank's templates.
///
/// - `scalar<T>`: the element types the algorithms support (float, double).
/// - `backend_for<Backend, T>`: `ops<Backend>` provides, for element type T,
///   the core operations, those every family needs (products, factorisations,
///   random fills, element-wise maps, reductions, transfers). A family that
///   needs more declares its own concept beside its algorithms
///   (adapters/backend.hpp). Each backend `static_assert`s every concept where
///   its ops are assembled; a missing operation is a compile error, never a
///   run-time "not implemented".

#include <concepts>
#include <cstdint>
#include <limits>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// The floating-point types lowrank computes in.
template <class T>
concept scalar = std::same_as<T, float> || std::same_as<T, double>;

/// What `ops<Backend>::cholesky_factor` reports (see `backend_for`).
struct cholesky_status {
  bool ok = false;       ///< R and R^{-1} were computed and are usable in T
  double deviation = 0;  ///< ||G - I||_F, in double
  /// An estimate of kappa_2(R) from below (to within a few percent up to 4;
  /// above, any value over 4), or +infinity where it was not estimated.
  double condition = std::numeric_limits<double>::infinity();
};

/// The operation table of `Backend` covers element type `T`.
///
/// Shapes and semantics (all matrices column-major views of the backend's memory):
/// - `gemm(ctx, ta, tb, alpha, a, b, beta, c)`: C = alpha op(A) op(B) + beta C
///   (beta = 0 ignores C's previous content, NaN included);
/// - `gram(ctx, a, c)`: the lower triangle of C = A^T A (A m x n, C n x n);
/// - `multiply_right(ctx, r, y)`: Y = Y R in place (Y m x n, R n x n);
/// - `householder_orthonormalize(ctx, y, r)`: Householder QR Y = Q R of Y
///   (m x n, m >= n): Y becomes the thin Q, r (n x n) receives R; always
///   succeeds, rank-deficient input included;
/// - `svd(ctx, a, u, s, v)`: thin SVD A = U diag(s) V^T, A m x n, r = min(m, n),
///   U m x r, s r (descending, >= 0), V n x r; throws numerical_error if it
///   does not converge;
/// - `cholesky_factor(ctx, g, shift, r, r_inv[, estimate_condition])`: the
///   factor of one Cholesky QR pass (decomp/orthonormalize.hpp), computed in
///   double from the lower triangle of G (n x n, element type T): R upper
///   triangular with R^T R = G + shift tr(G) I, and R^{-1}, into r and r_inv
///   (n x n, double, zero below the diagonal). Returns a `cholesky_status`:
///   `deviation` = ||G - I||_F always; `condition`, when `estimate_condition`
///   (default false) and ok, an estimate of kappa_2(R) whenever that is at
///   most 4 and any value above 4 otherwise (+infinity when not asked for; a
///   backend may always leave it there, as CUDA does); `ok` false (r, r_inv
///   unspecified) when G is not finite, the factorisation breaks down, R's
///   diagonal is not positive and finite, or an entry of R^{-1} would
///   overflow in T;
/// - `convert(ctx, src, dst)`: dst = src rounded to dst's element type (float
///   or double, either way);
/// - `fill_random(ctx, d, stream, x, row0, col0)`: X = the block at (row0,
///   col0) of the random matrix of `stream` (random/philox.hpp);
/// - `fill`, `copy`, `scale_columns` (X = X diag(d)), `affine(ctx, alpha,
///   beta, x)` (X = alpha X + beta), `axpby(ctx, alpha, x, beta, y)` (Y =
///   alpha X + beta Y; beta = 0 ignores Y), `add_row_vector(ctx, alpha, v, y)`
///   (Y(i, :) += alpha v^T), `divide(ctx, x, d, beta, y)` (y_i = x_i / d_i +
///   beta y_i in double, rounded once to y's type; x, y float, double or T, d
///   double);
/// - reductions, accumulated in double: `squared_norm(ctx, x, scale)`
///   (||scale X||_F^2, scale a power of two, 1 by default),
///   `column_squared_norms` (into a double vector), `max_abs` (the largest
///   |X(i, j)|, NaN when X holds a non-finite entry, 0 when empty),
///   `add_column_sums(ctx, alpha, x, y)` (y_j +=
///   alpha sum_i X(i, j)), `row_dots(ctx, x, y, out)` / `column_dots` (sums
///   of X (.) Y per row / per column into a double vector),
///   `find_non_finite` (the column-major linear index of the first non-finite
///   entry, or -1), `signs_of_largest` (per column, the sign of its
///   largest-magnitude entry, the first one on ties, +1 for a zero column);
/// - index maps: `gather_rows(ctx, x, rows, out)` (Out(k, :) = X(rows[k], :))
///   and `scatter_add_rows(ctx, alpha, src, rows, y)` (Y(rows[k], :) += alpha
///   Src(k, :), the rows[k] distinct), rows a `vector_view<const index_t,
///   Backend>`;
/// - transfers: `download(ctx, src, dst)` / `upload(ctx, src, dst)` between
///   the backend's memory and host views (synchronous), and
///   `upload_indices(ctx, src, dst)` (a host index vector into a
///   `vector<index_t, Backend>`; src may be reused as soon as it returns).
template <class Backend, class T>
concept backend_for = scalar<T> &&
    requires(context<Backend>& ctx, matrix_view<T, Backend> x, matrix_view<const T, Backend> cx,
             vector_view<T, Backend> v, vector_view<const T, Backend> cv, matrix_view<T, cpu> hx,
             matrix_view<const T, cpu> chx, matrix_view<double, Backend> dx,
             matrix_view<const double, Backend> cdx, vector_view<double, Backend> dv,
             vector_view<const double, Backend> cdv, T alpha, index_t i, random_stream s,
             vector_view<const index_t, Backend> rows, vector_view<index_t, Backend> index_out,
             vector_view<const index_t, cpu> host_rows) {
  ops<Backend>::gemm(ctx, transpose::no, transpose::yes, alpha, cx, cx, alpha, x);
  ops<Backend>::gram(ctx, cx, x);
  ops<Backend>::multiply_right(ctx, cx, x);
  ops<Backend>::householder_orthonormalize(ctx, x, x);
  ops<Backend>::svd(ctx, cx, x, v, x);
  { ops<Backend>::cholesky_factor(ctx, cx, 0.0, dx, dx) } -> std::same_as<cholesky_status>;
  ops<Backend>::convert(ctx, cx, dx);
  ops<Backend>::convert(ctx, cdx, x);
  ops<Backend>::fill_random(ctx, distribution::gaussian, s, x, i, i);
  ops<Backend>::fill(ctx, x, alpha);
  ops<Backend>::copy(ctx, cx, x);
  ops<Backend>::scale_columns(ctx, cv, x);
  ops<Backend>::affine(ctx, alpha, alpha, x);
  ops<Backend>::axpby(ctx, alpha, cx, alpha, x);
  ops<Backend>::add_row_vector(ctx, alpha, cv, x);
  ops<Backend>::divide(ctx, cv, cdv, 1.0, v);
  ops<Backend>::divide(ctx, cv, cdv, 1.0, dv);
  ops<Backend>::divide(ctx, cdv, cdv, 1.0, v);
  { ops<Backend>::squared_norm(ctx, cx) } -> std::same_as<double>;
  { ops<Backend>::squared_norm(ctx, cx, 2.0) } -> std::same_as<double>;
  ops<Backend>::column_squared_norms(ctx, cx, dv);
  { ops<Backend>::max_abs(ctx, cx) } -> std::same_as<double>;
  { ops<Backend>::find_non_finite(ctx, cx) } -> std::same_as<index_t>;
  ops<Backend>::add_column_sums(ctx, alpha, cx, v);
  ops<Backend>::row_dots(ctx, cx, cx, dv);
  ops<Backend>::column_dots(ctx, cx, cx, dv);
  ops<Backend>::signs_of_largest(ctx, cx, v);
  ops<Backend>::gather_rows(ctx, cx, rows, x);
  ops<Backend>::scatter_add_rows(ctx, alpha, cx, rows, x);
  ops<Backend>::download(ctx, cx, hx);
  ops<Backend>::upload(ctx, chx, x);
  ops<Backend>::upload_indices(ctx, host_rows, index_out);
  matrix<T, Backend>(ctx, i, i);
  vector<T, Backend>(ctx, i);
  vector<index_t, Backend>(ctx, i);
};

}  // namespace lowrank
