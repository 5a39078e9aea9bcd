#pragma once
/// @file
/// The checks of caller input that every family shares (internal), with one
/// message style (core/error.hpp): "function: argument 'name' is value;
/// expected what", so that a message always names the function, the
/// argument, the value and what was expected.
///
/// - `require_shape(fn, "b", b, rows, cols)`: "argument 'b' is 3 x 4;
///   expected 5 x 4";
/// - `require_non_empty(fn, "a", a)`: "argument 'a' is 0 x 4; expected a
///   non-empty matrix";
/// - `require_in_range(fn, "k", k, 1, limit, "min(m, n)")`: "argument 'k' is
///   0; expected 1 <= k <= min(m, n) = 40";
/// - `require_apart(fn, "y", y, "x", x)`: "argument 'y' is a view overlapping
///   x; expected memory apart from x" (an output that aliases an input);
/// - `require_finite(ctx, fn, "a", a)` (numerical_error): "argument
///   'a(2, 6)' is nan; expected finite entries", the first non-finite entry
///   in column-major order.

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail {

/// "rows x cols" of a view or matrix.
template <class View>
[[nodiscard]] std::string shape_of(const View& x) {
  return std::to_string(x.rows()) + " x " + std::to_string(x.cols());
}

/// Throws invalid_argument unless x is rows x cols.
template <class View>
void require_shape(const char* fn, std::string_view argument, const View& x, index_t rows,
                   index_t cols) {
  if (x.rows() != rows || x.cols() != cols) {
    throw_invalid_argument(fn, argument, shape_of(x),
                           std::to_string(rows) + " x " + std::to_string(cols));
  }
}

/// Throws invalid_argument if x has no entries.
template <class View>
void require_non_empty(const char* fn, std::string_view argument, const View& x) {
  if (x.rows() == 0 || x.cols() == 0) {
    throw_invalid_argument(fn, argument, shape_of(x), "a non-empty matrix");
  }
}

/// Throws invalid_argument unless lo <= value <= hi; `hi_name` says what hi
/// is ("min(m, n)"), or is empty when hi is a plain number.
inline void require_in_range(const char* fn, std::string_view argument, index_t value, index_t lo,
                             index_t hi, std::string_view hi_name = {}) {
  if (value < lo || value > hi) {
    std::string expected = std::to_string(lo) + " <= " + std::string(argument) + " <= ";
    if (!hi_name.empty()) expected += std::string(hi_name) + " = ";
    throw_invalid_argument(fn, argument, value, expected + std::to_string(hi));
  }
}

/// Throws invalid_argument if the memory x spans overlaps y's (an output
/// view that aliases an input would be read after it is written).
template <class X, class Y>
void require_apart(const char* fn, std::string_view argument, const X& x, std::string_view other,
                   const Y& y) {
  if (x.empty() || y.empty()) return;
  const auto span = [](const auto& v) {
    const auto first = reinterpret_cast<std::uintptr_t>(v.data());
    const auto count = std::size_t((v.cols() - 1) * v.ld() + v.rows());
    return std::pair{first, first + count * sizeof(*v.data())};
  };
  const auto [x0, x1] = span(x);
  const auto [y0, y1] = span(y);
  if (x0 < y1 && y0 < x1) {
    throw_invalid_argument(fn, argument, "a view overlapping " + std::string(other),
                           "memory apart from " + std::string(other));
  }
}

/// Throws numerical_error naming entry `at` (column-major) of x, which is not
/// finite.
template <class T, class Backend>
[[noreturn]] void throw_non_finite_entry(context<Backend>& ctx, const char* fn,
                                         std::string_view argument, matrix_view<const T, Backend> x,
                                         index_t at) {
  const index_t i = at % x.rows();
  const index_t j = at / x.rows();
  Eigen::Matrix<T, 1, 1> value;
  ops<Backend>::download(ctx, x.block(i, j, 1, 1), view(value));
  throw_numerical_error(
      fn, std::string(argument) + "(" + std::to_string(i) + ", " + std::to_string(j) + ")",
      value(0), "finite entries");
}

/// Throws numerical_error naming the first non-finite entry of x.
template <class T, class Backend>
void require_finite(context<Backend>& ctx, const char* fn, std::string_view argument,
                    matrix_view<const T, Backend> x) {
  const index_t at = ops<Backend>::find_non_finite(ctx, x);
  if (at >= 0) throw_non_finite_entry(ctx, fn, argument, x, at);
}

}  // namespace lowrank::detail
