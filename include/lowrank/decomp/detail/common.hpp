#pragma once
/// @file
/// Pieces shared by the decompositions (internal): the tall orientation of an
/// operator, the scaling of data at the ends of the floating-point range,
/// input validation, and the sign convention.
///
/// **Scaling** (LAPACK's practice, as in gesdd): data whose size lies outside
/// T's safe range [sqrt(min_T) / eps_T, eps_T / sqrt(min_T)] (LAPACK's smlnum
/// and bignum: 9e-13 to 1e12 in float, 7e-139 to 1e138 in double) would
/// underflow or overflow where the algorithms square it (Gram matrices,
/// Householder norms, energies). The decompositions then work on c A for a
/// power of two c (exact in binary arithmetic) that brings the size to about
/// 1, and divide the singular values by c at the end; U and V do not change.
/// Data inside the safe range is used as it is, bit for bit.

#include <algorithm>
#include <cmath>
#include <limits>
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

/// A rows x cols block of the context's workspace frame `ws` (valid while
/// the frame is open). The randomized SVDs keep their big temporaries (the
/// sketch and the basis, max(m, n) x l each) there rather than in fresh
/// matrices: the context keeps the memory, so repeated calls on one context
/// do not map and fault in new pages each time (a fresh 600 KB block comes
/// from the OS on every call: 0.8 ms of a 28 ms randomized SVD of a 2048^2
/// float matrix at k = 64 on a 2-core EPYC).
template <class T, class Backend, class Frame>
[[nodiscard]] matrix_view<T, Backend> workspace_matrix(Frame& ws, index_t rows, index_t cols) {
  return {ws.template take<T>(static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols)),
          rows, cols};
}

/// The power of two c that brings a data size (a largest entry, an RMS:
/// finite and > 0) to [1, 2) when it lies outside T's safe range, and 1 inside
/// it (see the file comment). c is a normal number of T, so that multiplying
/// by it and by 1 / c is exact. `power` 4 narrows the safe range to its square
/// root (about 1e-6 to 1e6 in float): for algorithms that square the data
/// twice (the Gram matrix of M^T M X in the subspace iteration).
template <class T>
[[nodiscard]] double range_scale(double size, int power = 2) noexcept {
  double low =
      std::sqrt(double(std::numeric_limits<T>::min())) / double(std::numeric_limits<T>::epsilon());
  if (power == 4) low = std::sqrt(low);
  if (!(size > 0) || !std::isfinite(size) || (size >= low && size <= 1 / low)) return 1;
  const int limit = std::numeric_limits<T>::max_exponent - 2;  // 126 for float, 1022 for double
  return std::ldexp(1.0, std::clamp(-std::ilogb(size), -limit, limit));
}

/// M = scale op(A) for an operator A (that outlives it): the operator the
/// randomized decompositions work on, oriented tall and, for data at the
/// ends of the floating-point range, scaled by a power of two (see the file
/// comment; `scale` is 1 otherwise and the products are A's, bit for bit).
template <linear_operator Op>
struct oriented {
  using value_type = operator_value_t<Op>;
  using backend = operator_backend_t<Op>;
  const Op& a;
  transpose op = transpose::no;
  double scale = 1;

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
    multiply(ctx, op == transpose::yes, x, y, alpha, beta);
  }
  /// Y = alpha M^T X + beta Y.
  void apply_transposed(context<backend>& ctx, matrix_view<const value_type, backend> x,
                        matrix_view<value_type, backend> y, value_type alpha = value_type(1),
                        value_type beta = value_type(0)) const {
    multiply(ctx, op == transpose::no, x, y, alpha, beta);
  }

 private:
  /// Y = alpha op(A) (scale X) + beta Y, op the transpose when `transposed`;
  /// scale X is formed in the context's workspace (exact: a power of two).
  void multiply(context<backend>& ctx, bool transposed, matrix_view<const value_type, backend> x,
                matrix_view<value_type, backend> y, value_type alpha, value_type beta) const {
    auto ws = ctx.workspace();
    if (scale != 1) {
      const matrix_view<value_type, backend> scaled(ws.template take<value_type>(x.size()),
                                                    x.rows(), x.cols());
      ops<backend>::axpby(ctx, value_type(scale), x, value_type(0), scaled);
      x = scaled;
    }
    if (transposed) {
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

/// Divides singular values computed for c A by c = `scale` (exact; nothing
/// when scale is 1).
/// @throws lowrank::numerical_error if a singular value of A exceeds T's range.
template <class T, class Backend>
void unscale_values(context<Backend>& ctx, const char* function, double scale,
                    vector_view<T, Backend> s) {
  if (scale == 1 || s.empty()) return;
  ops<Backend>::affine(ctx, T(1 / scale), T(0), s.as_matrix());
  if (!std::isfinite(ops<Backend>::max_abs(ctx, as_const(s.as_matrix())))) {
    throw_numerical_error(function, "a", "a matrix whose largest singular value overflows",
                          "singular values within the range of the element type");
  }
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

/// The scale c of a dense A whose first product came out non-finite although
/// A is finite (its entries are so large that the product overflowed): from
/// its largest entry, so that c A's products of `inner` terms stay near 1.
/// @throws lowrank::numerical_error (throw_non_finite) when A has a
/// non-finite entry or is an operator (whose entries cannot be read).
template <linear_operator Op>
[[nodiscard]] double overflow_scale(context<operator_backend_t<Op>>& ctx, const char* function,
                                    const Op& a, index_t inner) {
  using T = operator_value_t<Op>;
  using Backend = operator_backend_t<Op>;
  if constexpr (is_matrix_view_v<Op>) {
    const double largest = ops<Backend>::max_abs(ctx, matrix_view<const T, Backend>(a));
    if (std::isfinite(largest) && largest > 0) {
      // 2^-e with 2^e above largest sqrt(inner): c A's products stay near 1.
      const int e = std::ilogb(largest) + (std::ilogb(double(std::max<index_t>(inner, 1))) + 2) / 2;
      const int limit = std::numeric_limits<T>::max_exponent - 2;
      const double c = std::ldexp(1.0, std::clamp(-e, -limit, limit));
      if (c != 1) return c;
    }
  }
  throw_non_finite(ctx, function, a);
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
