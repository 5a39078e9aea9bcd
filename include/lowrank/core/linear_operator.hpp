#pragma once
/// @file
/// `lowrank::linear_operator`: what the randomized decompositions need of
/// the matrix they decompose (docs/architecture.md, "Operators"). Like
/// Spectra's `OpType` and RandLAPACK's linear operators, an operator is
/// anything that multiplies by A (m x n) and by A^T on its backend:
///
/// ```cpp
/// struct my_operator {
///   using value_type = float;             // the scalar
///   using backend = lowrank::cpu;         // where X and Y live
///   lowrank::index_t rows() const;        // m
///   lowrank::index_t cols() const;        // n
///   // Y = alpha A X + beta Y (X n x c, Y m x c; beta = 0 ignores Y)
///   void apply(lowrank::context<backend>&, lowrank::matrix_view<const float, backend> x,
///              lowrank::matrix_view<float, backend> y, float alpha, float beta) const;
///   // Y = alpha A^T X + beta Y (X m x c, Y n x c)
///   void apply_transposed(lowrank::context<backend>&, lowrank::matrix_view<const float, backend>
///   x,
///                         lowrank::matrix_view<float, backend> y, float alpha, float beta) const;
/// };
/// ```
/// A dense `matrix_view` is one (its products are gemms), so every
/// algorithm that takes an operator takes a view too; a sparse matrix, a
/// sparse-plus-low-rank factor or a product known only through its action
/// are others. An operator may also provide `double squared_norm(context&)
/// const` (||A||_F^2), which the fixed-accuracy randomized SVD needs; without
/// it `operator_squared_norm` computes ||A||_F^2 from products with blocks of
/// the identity, as costly as forming A once.

#include <Eigen/Core>
#include <algorithm>
#include <concepts>
#include <type_traits>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

/// A linear operator A (see the file comment).
template <class Op>
concept linear_operator = requires {
  typename Op::value_type;
  typename Op::backend;
}
&&requires(const Op& a, context<typename Op::backend>& ctx,
           matrix_view<const typename Op::value_type, typename Op::backend> x,
           matrix_view<typename Op::value_type, typename Op::backend> y,
           typename Op::value_type alpha) {
  { a.rows() } -> std::convertible_to<index_t>;
  { a.cols() } -> std::convertible_to<index_t>;
  a.apply(ctx, x, y, alpha, alpha);
  a.apply_transposed(ctx, x, y, alpha, alpha);
};

/// The scalar and the backend of an operator.
template <linear_operator Op>
using operator_value_t = typename Op::value_type;
template <linear_operator Op>
using operator_backend_t = typename Op::backend;

/// True for dense matrix views (whose entries an algorithm may read).
template <class Op>
inline constexpr bool is_matrix_view_v = false;
template <class T, class Backend>
inline constexpr bool is_matrix_view_v<matrix_view<T, Backend>> = true;

/// A^T as an operator (n x m). A view (any trivially copyable operator) is
/// held by value, so `transposed_operator(a.view())` is safe; another
/// operator is held by reference and must outlive it (a temporary one is
/// refused at compile time).
template <linear_operator Op>
class transposed_operator {
  static constexpr bool by_value = std::is_trivially_copyable_v<Op>;

 public:
  using value_type = operator_value_t<Op>;
  using backend = operator_backend_t<Op>;

  explicit transposed_operator(const Op& a) noexcept : a_(hold(a)) {}
  transposed_operator(const Op&& a) requires(!by_value) = delete;

  [[nodiscard]] index_t rows() const { return get().cols(); }
  [[nodiscard]] index_t cols() const { return get().rows(); }
  void apply(context<backend>& ctx, matrix_view<const value_type, backend> x,
             matrix_view<value_type, backend> y, value_type alpha = value_type(1),
             value_type beta = value_type(0)) const {
    get().apply_transposed(ctx, x, y, alpha, beta);
  }
  void apply_transposed(context<backend>& ctx, matrix_view<const value_type, backend> x,
                        matrix_view<value_type, backend> y, value_type alpha = value_type(1),
                        value_type beta = value_type(0)) const {
    get().apply(ctx, x, y, alpha, beta);
  }

 private:
  static auto hold(const Op& a) noexcept {
    if constexpr (by_value) {
      return a;
    } else {
      return &a;
    }
  }
  [[nodiscard]] const Op& get() const noexcept {
    if constexpr (by_value) {
      return a_;
    } else {
      return *a_;
    }
  }

  std::conditional_t<by_value, Op, const Op*> a_;
};

/// ||A||_F^2 in double: `a.squared_norm(ctx)` when the operator has it, one
/// pass over the entries for a dense view, and otherwise the sum of
/// ||A E||_F^2 over blocks E of at most 64 columns of the identity of the
/// smaller side (as costly as forming A once; memory: two blocks).
template <linear_operator Op>
[[nodiscard]] double operator_squared_norm(context<operator_backend_t<Op>>& ctx, const Op& a) {
  using T = operator_value_t<Op>;
  using Backend = operator_backend_t<Op>;
  if constexpr (is_matrix_view_v<Op>) {
    return ops<Backend>::squared_norm(ctx, matrix_view<const T, Backend>(a));
  } else if constexpr (requires {
                         { a.squared_norm(ctx) } -> std::convertible_to<double>;
                       }) {
    return double(a.squared_norm(ctx));
  } else {
    const bool by_rows = a.rows() < a.cols();  // A^T E for the smaller side
    const index_t n = by_rows ? a.rows() : a.cols();
    const index_t m = by_rows ? a.cols() : a.rows();
    const index_t b = std::min<index_t>(n, 64);
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> identity(n, b);
    matrix<T, Backend> e(ctx, n, b);
    matrix<T, Backend> product(ctx, m, b);
    double total = 0;
    for (index_t j = 0; j < n; j += b) {
      const index_t c = std::min(b, n - j);
      identity.setZero();
      for (index_t t = 0; t < c; ++t) identity(j + t, t) = T(1);
      const auto block = e.view().left_cols(c);
      ops<Backend>::upload(ctx, matrix_view<const T, cpu>(identity.data(), n, c), block);
      const auto out = product.view().left_cols(c);
      if (by_rows) {
        a.apply_transposed(ctx, as_const(block), out, T(1), T(0));
      } else {
        a.apply(ctx, as_const(block), out, T(1), T(0));
      }
      total += ops<Backend>::squared_norm(ctx, as_const(out));
    }
    return total;
  }
}

}  // namespace lowrank
