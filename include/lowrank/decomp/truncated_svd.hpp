#pragma once
/// @file
/// The exact truncated SVD: the k leading singular triplets of A from a full
/// thin SVD (the backend's `svd`: LAPACK gesdd when linked, otherwise Eigen's
/// BDCSVD, after a Householder QR when one side is at least twice the other).
///
/// Shapes: A m x n, 1 <= k <= min(m, n); U m x k, s k (descending, >= 0),
/// V n x k; signs as scikit-learn's svd_flip (largest-magnitude entry of each
/// column of U positive). By Eckart-Young, U diag(s) V^T is the best rank-k
/// approximation in the Frobenius and spectral norms.
/// Any finite A works, entries near the ends of T's range included: A whose
/// largest entry lies outside T's safe range is factorised as c A for a power
/// of two c, exactly, and its singular values divided by c
/// (decomp/detail/common.hpp).
/// Cost: O(m n min(m, n)) flops; memory: a copy of A and the thin factors
/// (m + n) min(m, n). It is the reference the randomized methods are measured
/// against, not a fast path.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/decomp/detail/common.hpp"
#include "lowrank/decomp/low_rank.hpp"

namespace lowrank {

/// The rank-k truncation of the exact SVD of A (see the file comment).
/// @throws lowrank::invalid_argument if A is empty or k is not in [1, min(m, n)];
/// lowrank::numerical_error if A has a NaN or Inf entry (the message names it)
/// or the SVD does not converge.
template <scalar T, class Backend>
requires backend_for<Backend, T>
[[nodiscard]] low_rank<T, Backend> truncated_svd(context<Backend>& ctx,
                                                 matrix_view<const T, Backend> a, index_t k) {
  const char* fn = "lowrank::truncated_svd";
  detail::require_non_empty(fn, a);
  detail::require_rank(fn, a, k);
  // One pass finds both a non-finite entry and the data's size.
  const double largest = ops<Backend>::max_abs(ctx, a);
  if (!std::isfinite(largest)) detail::require_finite(ctx, fn, "a", a);
  const index_t r = std::min(a.rows(), a.cols());
  matrix<T, Backend> u(ctx, a.rows(), r);
  vector<T, Backend> s(ctx, r);
  matrix<T, Backend> v(ctx, a.cols(), r);
  // Data at the ends of the range is factorised as c A (detail/common.hpp).
  const double scale = detail::range_scale<T>(largest);
  if (scale == 1) {
    ops<Backend>::svd(ctx, a, u.view(), s.view(), v.view());
  } else {
    matrix<T, Backend> scaled(ctx, a.rows(), a.cols());
    ops<Backend>::axpby(ctx, T(scale), a, T(0), scaled.view());
    ops<Backend>::svd(ctx, as_const(scaled.view()), u.view(), s.view(), v.view());
    detail::unscale_values(ctx, fn, scale, s.view());
  }
  low_rank<T, Backend> result;
  if (k == r) {
    result = {std::move(u), std::move(s), std::move(v)};
  } else {
    result.u = matrix<T, Backend>(ctx, a.rows(), k);
    result.s = vector<T, Backend>(ctx, k);
    result.v = matrix<T, Backend>(ctx, a.cols(), k);
    ops<Backend>::copy(ctx, as_const(u.view().left_cols(k)), result.u.view());
    ops<Backend>::copy(ctx, as_const(s.view().segment(0, k).as_matrix()),
                       result.s.view().as_matrix());
    ops<Backend>::copy(ctx, as_const(v.view().left_cols(k)), result.v.view());
  }
  detail::flip_signs(ctx, result.u.view(), result.v.view());
  return result;
}

/// `truncated_svd` for a writable view (converted to read-only).
template <scalar T, class Backend>
requires backend_for<Backend, T>
[[nodiscard]] low_rank<T, Backend> truncated_svd(context<Backend>& ctx, matrix_view<T, Backend> a,
                                                 index_t k) {
  return truncated_svd(ctx, as_const(a), k);
}

/// The exact rank-k truncated SVD of an Eigen matrix or expression (float or
/// double), on the CPU: `auto r = lowrank::truncated_svd(A, 64);`.
template <class Derived>
requires scalar<typename Derived::Scalar>
[[nodiscard]] low_rank<typename Derived::Scalar> truncated_svd(const Eigen::MatrixBase<Derived>& a,
                                                               index_t k) {
  const eigen_input<typename Derived::Scalar> input(a.derived());
  detail::host_context<Derived> ctx;
  return truncated_svd(ctx, view(input), k);
}

}  // namespace lowrank
