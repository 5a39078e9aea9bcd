#pragma once
/// @file
/// Pieces shared by the decompositions (internal): the tall orientation of a
/// matrix, input validation, and the sign convention.

#include <algorithm>
#include <string>
#include <type_traits>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail {

/// The CPU context, named through a type that depends on `Dependent` so that a
/// family header can define Eigen convenience overloads without including the
/// CPU backend: the backend is needed only where they are instantiated, in a
/// translation unit that included <lowrank/lowrank.hpp>.
template <class Dependent>
using host_context = context<std::conditional_t<sizeof(Dependent) != 0, cpu, void>>;

/// M = op(A) as a linear operator.
template <class T, class Backend>
struct oriented_operator {
  matrix_view<const T, Backend> a;
  transpose op = transpose::no;

  /// M oriented so that it is tall (rows() >= cols()): A itself when m >= n,
  /// A^T otherwise. The randomized SVDs work on this M, so their sketch has
  /// min(m, n) rows and every temporary is at most max(m, n) x l.
  [[nodiscard]] static oriented_operator tall(matrix_view<const T, Backend> a) {
    return {a, a.rows() >= a.cols() ? transpose::no : transpose::yes};
  }

  [[nodiscard]] index_t rows() const noexcept { return op == transpose::no ? a.rows() : a.cols(); }
  [[nodiscard]] index_t cols() const noexcept { return op == transpose::no ? a.cols() : a.rows(); }

  /// Y = alpha M X + beta Y.
  void apply(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y,
             T alpha = T(1), T beta = T(0)) const {
    ops<Backend>::gemm(ctx, op, transpose::no, alpha, a, x, beta, y);
  }
  /// Y = alpha M^T X + beta Y.
  void apply_transposed(context<Backend>& ctx, matrix_view<const T, Backend> x,
                        matrix_view<T, Backend> y, T alpha = T(1), T beta = T(0)) const {
    const transpose flipped = op == transpose::no ? transpose::yes : transpose::no;
    ops<Backend>::gemm(ctx, flipped, transpose::no, alpha, a, x, beta, y);
  }
};

/// Throws lowrank::invalid_argument unless A is non-empty.
template <class T, class Backend>
void require_non_empty(const char* function, matrix_view<const T, Backend> a) {
  if (a.empty()) {
    throw_invalid_argument(function, "a",
                           std::to_string(a.rows()) + " x " + std::to_string(a.cols()),
                           "a non-empty matrix");
  }
}

/// Throws lowrank::invalid_argument unless 1 <= k <= min(m, n).
template <class T, class Backend>
void require_rank(const char* function, matrix_view<const T, Backend> a, index_t k) {
  const index_t limit = std::min(a.rows(), a.cols());
  if (k < 1 || k > limit) {
    throw_invalid_argument(function, "k", k, "1 <= k <= min(m, n) = " + std::to_string(limit));
  }
}

/// Throws lowrank::numerical_error naming the first non-finite entry of A.
/// Called when a product with A came out non-finite: if A is finite after all,
/// the product overflowed, and the message says so.
template <class T, class Backend>
[[noreturn]] void throw_non_finite(context<Backend>& ctx, const char* function,
                                   matrix_view<const T, Backend> a) {
  const index_t at = ops<Backend>::find_non_finite(ctx, a);
  if (at < 0) {
    throw_numerical_error(function, "a", "finite, but a product with it overflowed",
                          "entries small enough for the products to stay finite (scale A)");
  }
  const index_t i = at % a.rows();
  const index_t j = at / a.rows();
  Eigen::Matrix<T, 1, 1> value;
  ops<Backend>::download(ctx, a.block(i, j, 1, 1), view(value));
  throw_numerical_error(function, "a(" + std::to_string(i) + ", " + std::to_string(j) + ")",
                        value(0), "finite entries");
}

/// Throws lowrank::numerical_error if A has a non-finite entry.
template <class T, class Backend>
void require_finite(context<Backend>& ctx, const char* function, matrix_view<const T, Backend> a) {
  if (ops<Backend>::find_non_finite(ctx, a) >= 0) throw_non_finite(ctx, function, a);
}

/// The sign convention of ALGORITHMS.md (scikit-learn's svd_flip): flip the
/// sign of column pairs (u_j, v_j) so that the largest-magnitude entry of u_j
/// is positive.
template <class T, class Backend>
void flip_signs(context<Backend>& ctx, matrix_view<T, Backend> u, matrix_view<T, Backend> v) {
  vector<T, Backend> signs(ctx, u.cols());
  ops<Backend>::signs_of_largest(ctx, as_const(u), signs.view());
  ops<Backend>::scale_columns(ctx, as_const(signs.view()), u);
  ops<Backend>::scale_columns(ctx, as_const(signs.view()), v);
}

}  // namespace lowrank::detail
