#pragma once
/// @file
/// Pieces shared by the decompositions (internal): the tall orientation of an
/// operator, input validation, and the sign convention.

#include <algorithm>
#include <string>
#include <type_traits>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/linear_operator.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"

namespace lowrank::detail {

/// The CPU context, named through a type that depends on `Dependent` so that a
/// family header can define Eigen convenience overloads without including the
/// CPU backend: the backend is needed only where they are instantiated, in a
/// translation unit that included <lowrank/lowrank.hpp>.
template <class Dependent>
using host_context = context<std::conditional_t<sizeof(Dependent) != 0, cpu, void>>;

/// M = op(A) for an operator A (that outlives it).
template <linear_operator Op>
struct oriented {
  using value_type = operator_value_t<Op>;
  using backend = operator_backend_t<Op>;
  const Op& a;
  transpose op = transpose::no;

  /// M oriented so that it is tall (rows() >= cols()): A itself when m >= n,
  /// A^T otherwise. The randomized SVDs work on this M, so their sketch has
  /// min(m, n) rows and every temporary is at most max(m, n) x l.
  [[nodiscard]] static oriented tall(const Op& a) {
    return {a, a.rows() >= a.cols() ? transpose::no : transpose::yes};
  }

  [[nodiscard]] index_t rows() const { return op == transpose::no ? a.rows() : a.cols(); }
  [[nodiscard]] index_t cols() const { return op == transpose::no ? a.cols() : a.rows(); }

  /// Y = alpha M X + beta Y.
  void apply(context<backend>& ctx, matrix_view<const value_type, backend> x,
             matrix_view<value_type, backend> y, value_type alpha = value_type(1),
             value_type beta = value_type(0)) const {
    if (op == transpose::no) {
      a.apply(ctx, x, y, alpha, beta);
    } else {
      a.apply_transposed(ctx, x, y, alpha, beta);
    }
  }
  /// Y = alpha M^T X + beta Y.
  void apply_transposed(context<backend>& ctx, matrix_view<const value_type, backend> x,
                        matrix_view<value_type, backend> y, value_type alpha = value_type(1),
                        value_type beta = value_type(0)) const {
    if (op == transpose::no) {
      a.apply_transposed(ctx, x, y, alpha, beta);
    } else {
      a.apply(ctx, x, y, alpha, beta);
    }
  }
};

/// Throws invalid_argument unless the operator A is non-empty.
template <linear_operator Op>
void require_non_empty(const char* function, const Op& a) {
  require_non_empty(function, "a", a);
}

/// Throws invalid_argument unless 1 <= k <= min(m, n) for the operator A.
template <linear_operator Op>
void require_rank(const char* function, const Op& a, index_t k) {
  require_in_range(function, "k", k, 1, std::min<index_t>(a.rows(), a.cols()), "min(m, n)");
}

/// Throws lowrank::numerical_error for an operator A whose product came out
/// non-finite. A dense A is searched for its first non-finite entry, which
/// the message names; if A is finite after all, or is an operator whose
/// entries cannot be read, the product overflowed or A holds a non-finite
/// value, and the message says so.
template <linear_operator Op>
[[noreturn]] void throw_non_finite(context<operator_backend_t<Op>>& ctx, const char* function,
                                   const Op& a) {
  using T = operator_value_t<Op>;
  using Backend = operator_backend_t<Op>;
  if constexpr (is_matrix_view_v<Op>) {
    const matrix_view<const T, Backend> dense = a;
    const index_t at = ops<Backend>::find_non_finite(ctx, dense);
    if (at >= 0) throw_non_finite_entry(ctx, function, "a", dense, at);
    throw_numerical_error(function, "a", "finite, but a product with it overflowed",
                          "entries small enough for the products to stay finite (scale A)");
  } else {
    throw_numerical_error(function, "a", "an operator whose product is not finite",
                          "finite products (a finite operator, scaled so they do not overflow)");
  }
}

/// The sign convention of docs/algorithms.md (scikit-learn's svd_flip): flip
/// the sign of column pairs (u_j, v_j) so that the largest-magnitude entry of
/// u_j is positive.
template <class T, class Backend>
void flip_signs(context<Backend>& ctx, matrix_view<T, Backend> u, matrix_view<T, Backend> v) {
  vector<T, Backend> signs(ctx, u.cols());
  ops<Backend>::signs_of_largest(ctx, as_const(u), signs.view());
  ops<Backend>::scale_columns(ctx, as_const(signs.view()), u);
  ops<Backend>::scale_columns(ctx, as_const(signs.view()), v);
}

}  // namespace lowrank::detail
