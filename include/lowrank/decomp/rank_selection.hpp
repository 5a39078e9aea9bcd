#pragma once
/// @file
/// Choosing a rank from singular values.
///
/// - `rank_for_energy(s, f)`: the smallest k with sum_{i<=k} s_i^2 >= f sum_i s_i^2.
/// - `rank_for_tolerance(s, tol, total)`: the smallest k with
///   sqrt(total - sum_{i<=k} s_i^2) <= tol sqrt(total), i.e. the smallest rank
///   whose Eckart-Young error is within `tol` of ||A||_F relative. `total` is
///   ||A||_F^2; it defaults to sum s_i^2 (s is then the whole spectrum) and must
///   be given when s is a truncated spectrum (from a randomized SVD, say).
///
/// Both accept any Eigen vector expression of non-increasing, non-negative,
/// finite values and run in O(k).

#include <Eigen/Core>
#include <cmath>
#include <string>

#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

namespace detail {

template <class Derived>
void check_spectrum(const char* function, const Eigen::MatrixBase<Derived>& s) {
  for (index_t i = 0; i < s.size(); ++i) {
    const double value = static_cast<double>(s(i));
    if (!std::isfinite(value) || value < 0 || (i > 0 && value > static_cast<double>(s(i - 1)))) {
      throw_invalid_argument(function, "s(" + std::to_string(i) + ")", value,
                             "finite, non-negative, non-increasing singular values");
    }
  }
}

}  // namespace detail

/// The smallest k with sum_{i<=k} s_i^2 >= fraction * sum_i s_i^2 (0 if s is zero).
/// @throws lowrank::invalid_argument if fraction is not in (0, 1] or s is not a
/// non-increasing list of finite non-negative values.
template <class Derived>
[[nodiscard]] index_t rank_for_energy(const Eigen::MatrixBase<Derived>& s, double fraction) {
  const char* fn = "lowrank::rank_for_energy";
  if (!(fraction > 0 && fraction <= 1)) {
    detail::throw_invalid_argument(fn, "fraction", fraction, "a value in (0, 1]");
  }
  detail::check_spectrum(fn, s);
  double total = 0;
  for (index_t i = 0; i < s.size(); ++i)
    total += static_cast<double>(s(i)) * static_cast<double>(s(i));
  if (total == 0) return 0;
  double kept = 0;
  for (index_t i = 0; i < s.size(); ++i) {
    kept += static_cast<double>(s(i)) * static_cast<double>(s(i));
    if (kept >= fraction * total) return i + 1;
  }
  return s.size();
}

/// The smallest k with sqrt(total - sum_{i<=k} s_i^2) <= relative_error * sqrt(total),
/// where total = ||A||_F^2 (default: sum s_i^2). When even k = s.size() leaves
/// too much of a larger `total` unexplained, it returns s.size(): the spectrum
/// given is too short to meet the tolerance.
/// @throws lowrank::invalid_argument if relative_error is not in [0, 1), total
/// is smaller than sum s_i^2 (beyond rounding), or s is not a non-increasing
/// list of finite non-negative values.
template <class Derived>
[[nodiscard]] index_t rank_for_tolerance(const Eigen::MatrixBase<Derived>& s, double relative_error,
                                         double total_squared_norm = -1) {
  const char* fn = "lowrank::rank_for_tolerance";
  if (!(relative_error >= 0 && relative_error < 1)) {
    detail::throw_invalid_argument(fn, "relative_error", relative_error, "a value in [0, 1)");
  }
  detail::check_spectrum(fn, s);
  double sum = 0;
  for (index_t i = 0; i < s.size(); ++i)
    sum += static_cast<double>(s(i)) * static_cast<double>(s(i));
  const double total = total_squared_norm < 0 ? sum : total_squared_norm;
  if (!std::isfinite(total) || total < sum * (1 - 1e-6)) {
    detail::throw_invalid_argument(fn, "total_squared_norm", total_squared_norm,
                                   "||A||_F^2 >= sum s_i^2 = " + std::to_string(sum));
  }
  const double allowed = relative_error * relative_error * total;
  double kept = 0;
  for (index_t k = 0; k <= s.size(); ++k) {
    if (total - kept <= allowed) return k;
    if (k < s.size()) kept += static_cast<double>(s(k)) * static_cast<double>(s(k));
  }
  return s.size();
}

}  // namespace lowrank
