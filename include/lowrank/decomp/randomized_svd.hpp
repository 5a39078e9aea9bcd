#pragma once
/// @file
/// The randomized SVD, fixed rank and fixed accuracy.
///
/// **Fixed rank** (Halko, Martinsson, Tropp 2011, Algorithms 4.4 + 5.1), with
/// l = k + p (capped at min(m, n)) and q power iterations, on M = A (m >= n)
/// or M = A^T (m < n), so that the sketch has min(m, n) rows:
/// ```
/// Q = orth((M M^T)^q M Omega)          range_finder.hpp; Omega Gaussian, Philox
/// B^T = M^T Q                           (min(m,n) x l)
/// B^T = W S X^T                         thin SVD of the small factor
/// M ~ (Q X_k) S_k W_k^T                 keep k of the l columns
/// ```
/// 2q + 2 products with A or A^T (2 m n l flops each for a dense A) and q + 4
/// Cholesky QR passes on max(m, n) x l or min(m, n) x l blocks (q in the
/// range finder, once per power iteration; two for Q, two in tall_svd, the
/// last of each folded into small matrices; q + 2 where the top l singular
/// values are within a factor 2 of each other, as for a Gaussian matrix: one
/// pass then orthonormalises as well as two, decomp/orthonormalize.hpp); the signs follow
/// scikit-learn's svd_flip (the largest-magnitude entry of each column of U is positive). Memory
/// besides the output: max(m,n) x l + min(m,n) x l + O(l^2) (no temporary exceeds max(m, n) x l);
/// the two blocks come from the context's workspace, which keeps them for the next call.
/// Expected Frobenius error <= (1 + k/(p-1))^{1/2} times the Eckart-Young optimum for q = 0 (HMT
/// Theorem 10.5); power iterations drive the error towards s_{k+1} at the rate (s_{k+1}/s_k)^{2q+1}
/// (HMT Corollary 10.10); with the defaults (p = 10, q = 2) the tests hold it
/// within 2% of optimal.
///
/// **Operators.** A is a dense view or any `linear_operator`
/// (core/linear_operator.hpp): the algorithms touch A only through products
/// with it and its transpose (plus ||A||_F^2 for fixed accuracy), so a sparse
/// matrix or a product known through its action decomposes the same way.
///
/// **Fixed accuracy** (`fixed_accuracy`): randQB_EI (decomp/qb.hpp) grows the
/// factorisation by blocks until ||A - U S V^T||_F <= tol ||A||_F by the error
/// indicator, then takes the SVD of the small factor. The rank returned is the
/// smallest the sketch supports, found exactly inside the last block. The
/// indicator cannot resolve errors below `qb_tolerance_floor<T>()`
/// (4 sqrt(eps_T): 1.4e-3 for float, 6e-8 for double); a smaller tolerance is
/// raised to that floor and the result's `tolerance` says so.
///
/// **Range.** Any finite A works, entries near the ends of T's range
/// included: when the sketch (fixed rank) or A's RMS entry (fixed accuracy)
/// lies outside T's safe range (for q > 0, its square root: 1e-6 to 1e6 in
/// float, as M^T M X is formed), the algorithm runs on c A for a power of two
/// c, exactly, and divides the singular values by c (decomp/detail/common.hpp);
/// a dense A whose first product overflows is scaled from its largest entry.
///
/// Results are reproducible: the same seed gives the same bits on the same
/// backend, whatever the thread count.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/linear_operator.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/decomp/detail/common.hpp"
#include "lowrank/decomp/detail/tall_svd.hpp"
#include "lowrank/decomp/low_rank.hpp"
#include "lowrank/decomp/qb.hpp"
#include "lowrank/decomp/range_finder.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// Options of the fixed-rank randomized SVD.
struct randomized_svd_options {
  index_t oversampling = 10;     ///< p >= 0; l = min(k + p, min(m, n)) columns are sketched
  index_t power_iterations = 2;  ///< q >= 0; 2q + 2 passes over A
  std::uint64_t seed = 0;        ///< Omega is the Gaussian matrix of random_stream{seed, stream}
  std::uint64_t stream = 0;      ///< (a caller drawing many sketches from one seed, e.g. one per
                                 ///< layer and refresh: projection/projector.hpp)
};

/// The fixed-accuracy request: the smallest rank with
/// ||A - U S V^T||_F <= relative_error ||A||_F.
struct fixed_accuracy {
  double relative_error = 0;     ///< in (0, 1); raised to qb_tolerance_floor<T>() if below
  index_t max_rank = 0;          ///< the largest rank to try; 0 means min(m, n)
  index_t block_size = 0;        ///< columns added per step; 0 means min(32, max_rank)
  index_t power_iterations = 1;  ///< per block, >= 0
  std::uint64_t seed = 0;        ///< the blocks are consecutive columns of one Gaussian draw
};

namespace detail {

/// U, V of A from the factors of the tall operator: M ~ left S right^T.
template <class T, class Backend>
low_rank<T, Backend> oriented_result(context<Backend>& ctx, transpose op, matrix<T, Backend>&& left,
                                     vector<T, Backend>&& s, matrix<T, Backend>&& right) {
  low_rank<T, Backend> r;
  if (op == transpose::no) {
    r.u = std::move(left);
    r.v = std::move(right);
  } else {
    r.u = std::move(right);
    r.v = std::move(left);
  }
  r.s = std::move(s);
  flip_signs(ctx, r.u.view(), r.v.view());
  return r;
}

/// The rank-k SVD of M ~ Q B, given Q = Q1 C (Q1 big x l, C l x l on the
/// backend, together orthonormal; C = I when null or empty) and B1^T = M^T Q1
/// (small x l, destroyed): B^T = B1^T C = W S X^T, so M ~ (Q1 C X_k) S_k W_k^T.
template <class T, class Backend>
low_rank<T, Backend> svd_of_qb(context<Backend>& ctx, transpose op,
                               matrix_view<const T, Backend> q1, matrix_view<T, Backend> bt1,
                               index_t k, const matrix<double, Backend>* c = nullptr) {
  auto f = tall_svd(ctx, bt1, k, c);
  matrix<T, Backend> x(ctx, q1.cols(), k);
  if (c != nullptr && c->rows() != 0) {
    ops<Backend>::convert(ctx, as_const(times(ctx, c->view(), as_const(f.v.view())).view()),
                          x.view());
  } else {
    ops<Backend>::convert(ctx, as_const(f.v.view()), x.view());
  }
  matrix<T, Backend> left(ctx, q1.rows(), k);
  ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), q1, as_const(x.view()), T(0),
                     left.view());
  return oriented_result(ctx, op, std::move(left), std::move(f.s), std::move(f.w));
}

}  // namespace detail

/// Rank-k randomized SVD of A (m x n, a dense view or any `linear_operator`):
/// A ~ U diag(s) V^T with U m x k, s k (descending, >= 0), V n x k (see the
/// file comment for algorithm, cost, memory and guarantee).
/// @throws lowrank::invalid_argument if A is empty, k is not in [1, min(m, n)],
/// or oversampling / power_iterations is negative;
/// lowrank::numerical_error if A has a NaN or Inf entry (the message names it
/// for a dense A).
template <linear_operator Op>
requires backend_for<operator_backend_t<Op>, operator_value_t<Op>>
[[nodiscard]] low_rank<operator_value_t<Op>, operator_backend_t<Op>> randomized_svd(
    context<operator_backend_t<Op>>& ctx, const Op& a, index_t k,
    const randomized_svd_options& options = {}) {
  using T = operator_value_t<Op>;
  using Backend = operator_backend_t<Op>;
  const char* fn = "lowrank::randomized_svd";
  detail::require_non_empty(fn, a);
  detail::require_rank(fn, a, k);
  if (options.oversampling < 0) {
    detail::throw_invalid_argument(fn, "options.oversampling", options.oversampling, ">= 0");
  }
  if (options.power_iterations < 0) {
    detail::throw_invalid_argument(fn, "options.power_iterations", options.power_iterations,
                                   ">= 0");
  }
  auto m = detail::oriented<Op>::tall(a);
  // l = min(k + p, n), written so that a huge p cannot overflow.
  const index_t l = k + std::min(options.oversampling, m.cols() - k);
  auto ws = ctx.workspace();  // Q and the sketch (detail::workspace_matrix)
  const auto q = detail::workspace_matrix<T, Backend>(ws, m.rows(), l);
  const auto z = detail::workspace_matrix<T, Backend>(ws, m.cols(), l);
  matrix<double, Backend> c;  // the deferred last pass: Q = Q1 C
  detail::subspace_iteration(ctx, m, random_stream{options.seed, options.stream},
                             options.power_iterations, q, z, fn, &c);
  m.apply_transposed(ctx, as_const(q), z);  // B1^T = M^T Q1
  auto result = detail::svd_of_qb(ctx, m.op, as_const(q), z, k, &c);
  detail::unscale_values(ctx, fn, m.scale, result.s.view());
  return result;
}

/// Fixed-accuracy randomized SVD of A (m x n, a dense view or any
/// `linear_operator`): the smallest rank k (up to `max_rank`) with
/// ||A - U diag(s) V^T||_F <= tol ||A||_F by the randQB_EI indicator (see the
/// file comment). A zero matrix gives rank 0. ||A||_F^2 comes from
/// `operator_squared_norm` (one pass over a dense A).
/// @throws lowrank::invalid_argument if A is empty, relative_error is not in
/// (0, 1), max_rank is not in [0, min(m, n)], block_size < 0 or
/// power_iterations < 0; lowrank::numerical_error if A is not finite.
template <linear_operator Op>
requires backend_for<operator_backend_t<Op>, operator_value_t<Op>>
[[nodiscard]] adaptive_low_rank<operator_value_t<Op>, operator_backend_t<Op>> randomized_svd(
    context<operator_backend_t<Op>>& ctx, const Op& a, const fixed_accuracy& tol) {
  using T = operator_value_t<Op>;
  using Backend = operator_backend_t<Op>;
  const char* fn = "lowrank::randomized_svd";
  detail::require_non_empty(fn, a);
  if (!(tol.relative_error > 0 && tol.relative_error < 1)) {
    detail::throw_invalid_argument(fn, "tol.relative_error", tol.relative_error,
                                   "a value in (0, 1)");
  }
  const index_t limit = std::min<index_t>(a.rows(), a.cols());
  if (tol.max_rank < 0 || tol.max_rank > limit) {
    detail::throw_invalid_argument(
        fn, "tol.max_rank", tol.max_rank,
        "0 (no limit) or 1 <= max_rank <= min(m, n) = " + std::to_string(limit));
  }
  if (tol.block_size < 0) {
    detail::throw_invalid_argument(fn, "tol.block_size", tol.block_size, ">= 0 (0: automatic)");
  }
  if (tol.power_iterations < 0) {
    detail::throw_invalid_argument(fn, "tol.power_iterations", tol.power_iterations, ">= 0");
  }
  const index_t max_rank = tol.max_rank == 0 ? limit : tol.max_rank;
  const index_t block = std::min(tol.block_size == 0 ? index_t{32} : tol.block_size, max_rank);
  const double used_tolerance = std::max(tol.relative_error, qb_tolerance_floor<T>());

  auto m = detail::oriented<Op>::tall(a);
  auto f = detail::randomized_qb(ctx, m, used_tolerance, max_rank, block, tol.power_iterations,
                                 random_stream{tol.seed, 0}, fn);
  adaptive_low_rank<T, Backend> result;
  if (f.rank > 0) {
    static_cast<low_rank<T, Backend>&>(result) = detail::svd_of_qb(
        ctx, m.op, as_const(f.q.view().left_cols(f.rank)), f.bt.view().left_cols(f.rank), f.rank);
    detail::unscale_values(ctx, fn, m.scale, result.s.view());
  } else {
    result.u = matrix<T, Backend>(ctx, a.rows(), 0);
    result.s = vector<T, Backend>(ctx, 0);
    result.v = matrix<T, Backend>(ctx, a.cols(), 0);
  }
  result.relative_error_estimate = f.total > 0 ? std::sqrt(std::max(f.residual, 0.0) / f.total) : 0;
  result.tolerance = used_tolerance;
  result.status = f.status;
  return result;
}

/// Rank-k randomized SVD of an Eigen matrix or expression (float or double),
/// on the CPU: `auto r = lowrank::randomized_svd(A, 64);`. Column-major data is
/// read in place; other expressions are evaluated once.
template <class Derived>
requires scalar<typename Derived::Scalar>
[[nodiscard]] low_rank<typename Derived::Scalar> randomized_svd(
    const Eigen::MatrixBase<Derived>& a, index_t k, const randomized_svd_options& options = {}) {
  const eigen_input<typename Derived::Scalar> input(a.derived());
  detail::host_context<Derived> ctx;
  return randomized_svd(ctx, view(input), k, options);
}

/// Fixed-accuracy randomized SVD of an Eigen matrix or expression, on the CPU:
/// `auto r = lowrank::randomized_svd(A, lowrank::fixed_accuracy{.relative_error = 1e-2});`.
template <class Derived>
requires scalar<typename Derived::Scalar>
[[nodiscard]] adaptive_low_rank<typename Derived::Scalar> randomized_svd(
    const Eigen::MatrixBase<Derived>& a, const fixed_accuracy& tol) {
  const eigen_input<typename Derived::Scalar> input(a.derived());
  detail::host_context<Derived> ctx;
  return randomized_svd(ctx, view(input), tol);
}

}  // namespace lowrank
