#pragma once
/// @file
/// What the spectrum of one weight matrix says: norms, stable and effective rank, energy
/// ranks, the parameter break-even rank, WeLore's low-rank class, and intruder dimensions of
/// a fine-tuned matrix against its base (docs/algorithms.md, "Checkpoints").
///
/// For W (m x n) with singular values s_1 >= ... >= s_p >= 0, p = min(m, n):
/// - ||W||_F = sqrt(sum s_i^2); spectral norm s_1;
/// - stable rank ||W||_F^2 / s_1^2 (in [1, p]; 0 for W = 0);
/// - effective rank (Roy and Vetterli 2007) exp(H), H = -sum p_i log p_i, p_i = s_i / sum s_j
///   (in [1, p]; 0 for W = 0);
/// - energy rank at e: the smallest k >= 1 with sum_{i<=k} s_i^2 >= e ||W||_F^2 (0 for W = 0);
/// - break-even rank: the largest k with k (m + n) < m n: a rank-k factorisation
///   U (m x k), V^T (k x n) has fewer parameters than W exactly when k is at most this;
/// - WeLore (VITA-Group/welore `adaptive_rank_pruning`): s^_i = (s_i - s_p) / (s_1 - s_p),
///   k_prune(tau) = #{i : s^_i < tau} (0 when s_1 = s_p), and the matrix is a low-rank
///   component (LRC) iff k_prune / p > min_ratio (WeLore's default 0 when reducing, 0.4999
///   when fine-tuning); its tau for a target rank reduction comes from a table (10%: 0.0225,
///   20%: 0.084, 30%: 0.115, 40%: 0.145, 50%: 0.175, 60%: 0.215, 70%: 0.26; welore_tau());
/// - intruder dimensions (Shuttleworth et al., reeceshuttle/intruder-dimensions, and PEFT's
///   `tuners/lora/intruders.py`): with U0 the left singular vectors of the base and U those
///   of the tuned matrix, c_j = max_i |U^T U0|_{j,i} over all base vectors; the tuned
///   direction j < top_k (by tuned singular value) is an intruder iff c_j < epsilon
///   (defaults top_k = 10, epsilon = 0.5, the authors').
///
/// Costs: spectrum_of() is a values-only SVD (LAPACK gesdd with jobz = 'N' when linked,
/// else Eigen's BDCSVD), O(m n p); the statistics are O(p).

#include <Eigen/Core>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "lowrank/backend/cpu/lapack.hpp"
#include "lowrank/core/config.hpp"
#include "lowrank/core/error.hpp"

namespace lowrank {

/// The statistics of one matrix's spectrum (see the file comment).
struct spectrum_statistics {
  index_t rows = 0;
  index_t cols = 0;
  double frobenius = 0;
  double spectral = 0;
  double stable_rank = 0;
  double effective_rank = 0;
  index_t energy_rank_90 = 0;
  index_t energy_rank_99 = 0;
  index_t energy_rank_999 = 0;
  index_t break_even_rank = 0;
  /// Only the leading values were known (a randomized spectrum): the figures use the given
  /// total energy; effective_rank is NaN, and an energy rank not reached among the known
  /// values is 0.
  bool partial = false;
};

/// The largest k with k (m + n) < m n (0 when none, e.g. a 1 x n matrix).
[[nodiscard]] constexpr index_t break_even_rank(index_t rows, index_t cols) noexcept {
  if (rows <= 0 || cols <= 0) return 0;
  const auto m = static_cast<std::int64_t>(rows);
  const auto n = static_cast<std::int64_t>(cols);
  return static_cast<index_t>((m * n - 1) / (m + n));
}

namespace detail {

inline void require_spectrum(const char* fn, const std::vector<double>& s, index_t rows,
                             index_t cols) {
  if (rows <= 0 || cols <= 0) {
    throw_invalid_argument(fn, "rows, cols", std::to_string(rows) + " x " + std::to_string(cols),
                           "a non-empty matrix's shape");
  }
  const auto p = static_cast<std::size_t>(std::min(rows, cols));
  if (s.size() > p) {
    throw_invalid_argument(fn, "singular_values", std::to_string(s.size()) + " values",
                           "at most min(rows, cols) = " + std::to_string(p));
  }
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!(std::isfinite(s[i]) && s[i] >= 0) || (i > 0 && s[i] > s[i - 1])) {
      throw_invalid_argument(fn, "singular_values",
                             "s[" + std::to_string(i) + "] = " + std::to_string(s[i]),
                             "finite, non-negative values in descending order");
    }
  }
}

}  // namespace detail

/// The smallest k >= 1 with sum_{i<=k} s_i^2 >= e * sum s_i^2 (0 for an all-zero spectrum).
/// `s` descending; e in [0, 1].
[[nodiscard]] inline index_t energy_rank(const std::vector<double>& s, double e) {
  if (!(e >= 0 && e <= 1)) {
    detail::throw_invalid_argument("lowrank::energy_rank", "e", e, "a fraction in [0, 1]");
  }
  double total = 0;
  for (const double x : s) total += x * x;
  if (total == 0) return 0;
  double sum = 0;
  for (std::size_t k = 0; k < s.size(); ++k) {
    sum += s[k] * s[k];
    if (sum >= e * total) return static_cast<index_t>(k + 1);
  }
  return static_cast<index_t>(s.size());
}

/// The statistics of a spectrum `s` (descending) of an m x n matrix: all min(m, n) values,
/// or only the leading ones (from a randomized SVD) with `energy` = ||W||_F^2 computed apart
/// (then `partial` is set; see spectrum_statistics).
/// @throws lowrank::invalid_argument when the shape is empty or `s` is longer than
///   min(m, n), not finite, negative or not descending.
[[nodiscard]] inline spectrum_statistics spectrum_stats(const std::vector<double>& s, index_t rows,
                                                        index_t cols, double energy = 0) {
  detail::require_spectrum("lowrank::spectrum_stats", s, rows, cols);
  if (!(std::isfinite(energy) && energy >= 0)) {
    detail::throw_invalid_argument("lowrank::spectrum_stats", "energy", energy,
                                   "||W||_F^2 >= 0, or 0 for the sum of the values' squares");
  }
  if (static_cast<index_t>(s.size()) < std::min(rows, cols) && energy > 0) {
    spectrum_statistics out = spectrum_stats(s, rows, cols);  // the known part
    const double top = s.empty() ? 0 : s.front();
    out.partial = true;
    out.frobenius = std::sqrt(energy);
    out.stable_rank = top > 0 ? energy / (top * top) : 0;
    out.effective_rank = std::numeric_limits<double>::quiet_NaN();
    const auto reached = [&](double e) -> index_t {
      double sum = 0;
      for (std::size_t k = 0; k < s.size(); ++k) {
        sum += s[k] * s[k];
        if (sum >= e * energy) return static_cast<index_t>(k + 1);
      }
      return 0;
    };
    out.energy_rank_90 = reached(0.9);
    out.energy_rank_99 = reached(0.99);
    out.energy_rank_999 = reached(0.999);
    return out;
  }
  spectrum_statistics out;
  out.rows = rows;
  out.cols = cols;
  out.break_even_rank = break_even_rank(rows, cols);
  // Scaled by s_1 so that squares neither overflow nor underflow.
  const double top = s.empty() ? 0 : s.front();
  if (top == 0) return out;
  double squares = 0;
  double sum = 0;
  for (const double x : s) {
    squares += (x / top) * (x / top);
    sum += x / top;
  }
  out.spectral = top;
  out.frobenius = top * std::sqrt(squares);
  out.stable_rank = squares;
  double entropy = 0;
  for (const double x : s) {
    const double p = (x / top) / sum;
    if (p > 0) entropy -= p * std::log(p);
  }
  out.effective_rank = std::exp(entropy);
  out.energy_rank_90 = energy_rank(s, 0.9);
  out.energy_rank_99 = energy_rank(s, 0.99);
  out.energy_rank_999 = energy_rank(s, 0.999);
  return out;
}

/// WeLore's tau for a target rank reduction in percent (its `welore_rank_reduction.py`
/// table: 10, 20, ..., 70).
/// @throws lowrank::invalid_argument for another percentage.
[[nodiscard]] inline double welore_tau(int reduction_percent) {
  constexpr double table[] = {0.0225, 0.084, 0.115, 0.145, 0.175, 0.215, 0.26};
  if (reduction_percent < 10 || reduction_percent > 70 || reduction_percent % 10 != 0) {
    detail::throw_invalid_argument("lowrank::welore_tau", "reduction_percent", reduction_percent,
                                   "one of WeLore's 10, 20, 30, 40, 50, 60, 70");
  }
  return table[reduction_percent / 10 - 1];
}

/// WeLore's k_prune: #{i : (s_i - s_min) / (s_max - s_min) < tau} over the whole spectrum
/// `s` (descending), 0 when s_max = s_min.
[[nodiscard]] inline index_t welore_prune_count(const std::vector<double>& s, double tau) {
  if (s.empty() || s.front() == s.back()) return 0;
  const double lo = s.back();
  const double range = s.front() - lo;
  index_t count = 0;
  for (const double x : s) count += (x - lo) / range < tau ? 1 : 0;
  return count;
}

/// WeLore's class: a low-rank component iff k_prune / min(m, n) > min_ratio.
[[nodiscard]] inline bool welore_is_low_rank(const std::vector<double>& s, double tau,
                                             double min_ratio = 0) {
  if (s.empty()) return false;
  return static_cast<double>(welore_prune_count(s, tau)) / static_cast<double>(s.size()) >
         min_ratio;
}

/// All min(m, n) singular values of `a`, descending, without the singular vectors (see the
/// file comment for the routine), in double.
/// @throws lowrank::invalid_argument for an empty matrix; lowrank::numerical_error for a
///   non-finite entry or an SVD that does not converge.
template <class T>
requires std::same_as<T, float> || std::same_as<T, double>
[[nodiscard]] std::vector<double> spectrum_of(
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& a) {
  constexpr const char* fn = "lowrank::spectrum_of";
  if (a.size() == 0) {
    detail::throw_invalid_argument(
        fn, "a", std::to_string(a.rows()) + " x " + std::to_string(a.cols()), "a non-empty matrix");
  }
  if (!a.allFinite()) {
    for (Eigen::Index j = 0; j < a.cols(); ++j) {
      for (Eigen::Index i = 0; i < a.rows(); ++i) {
        if (!std::isfinite(a(i, j))) {
          throw numerical_error(std::string(fn) + ": argument 'a' has the entry (" +
                                std::to_string(i) + ", " + std::to_string(j) +
                                ") = " + std::to_string(a(i, j)) + "; expected finite values");
        }
      }
    }
  }
  const auto p = static_cast<std::size_t>(std::min(a.rows(), a.cols()));
  std::vector<double> s(p);
#if LOWRANK_HAS_LAPACK
  // The wide side as columns: gesdd is fastest on tall input.
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> work =
      a.rows() >= a.cols() ? Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>(a)
                           : Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>(a.transpose());
  const int m = detail::lapack::to_int(work.rows(), fn, "a");
  const int n = detail::lapack::to_int(work.cols(), fn, "a");
  std::vector<T> values(p);
  std::vector<int> iwork(8 * p);
  T query{};
  int lwork = -1;
  int info = 0;
  const int one = 1;
  detail::lapack::gesdd("N", &m, &n, work.data(), &m, values.data(), nullptr, &one, nullptr, &one,
                        &query, &lwork, iwork.data(), &info);
  lwork = static_cast<int>(query) + 1;
  std::vector<T> buffer(static_cast<std::size_t>(lwork));
  detail::lapack::gesdd("N", &m, &n, work.data(), &m, values.data(), nullptr, &one, nullptr, &one,
                        buffer.data(), &lwork, iwork.data(), &info);
  if (info != 0) {
    throw numerical_error(std::string(fn) + ": gesdd returned info = " + std::to_string(info) +
                          " (the SVD did not converge)");
  }
  for (std::size_t i = 0; i < p; ++i) s[i] = static_cast<double>(values[i]);
#else
  const Eigen::BDCSVD<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> > svd(a);
  if (svd.info() != Eigen::Success) {
    throw numerical_error(std::string(fn) + ": the SVD did not converge");
  }
  for (std::size_t i = 0; i < p; ++i) {
    s[i] = static_cast<double>(svd.singularValues()(static_cast<Eigen::Index>(i)));
  }
#endif
  // Descending by construction; clamp rounding-level negatives and ties out of order.
  for (std::size_t i = 0; i < p; ++i) {
    s[i] = std::max(s[i], 0.0);
    if (i > 0) s[i] = std::min(s[i], s[i - 1]);
  }
  return s;
}

/// Intruder dimensions of a tuned matrix against its base (see the file comment).
struct intruder_result {
  std::vector<double> max_abs_cos;  ///< c_j for the top_k tuned directions (fewer if p < top_k)
  std::vector<index_t> intruders;   ///< the j with c_j < epsilon, ascending
};

/// c_j = max_i |u_j^T u0_i| over every column u0_i of `base_u` for the first top_k columns
/// u_j of `tuned_u` (left singular vectors, by descending singular value), and the intruders
/// among them (c_j < epsilon).
/// @throws lowrank::invalid_argument when the row counts differ, top_k < 1 or epsilon is
///   not in (0, 1].
template <class T>
[[nodiscard]] intruder_result intruder_dimensions(
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& base_u,
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& tuned_u, index_t top_k = 10,
    double epsilon = 0.5) {
  constexpr const char* fn = "lowrank::intruder_dimensions";
  if (base_u.rows() != tuned_u.rows()) {
    detail::throw_invalid_argument(fn, "tuned_u", std::to_string(tuned_u.rows()) + " rows",
                                   std::to_string(base_u.rows()) + " rows, as base_u");
  }
  if (top_k < 1) detail::throw_invalid_argument(fn, "top_k", top_k, ">= 1");
  if (!(epsilon > 0 && epsilon <= 1)) {
    detail::throw_invalid_argument(fn, "epsilon", epsilon, "a value in (0, 1]");
  }
  const Eigen::Index k = std::min<Eigen::Index>(top_k, tuned_u.cols());
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> cos =
      tuned_u.leftCols(k).transpose() * base_u;
  intruder_result out;
  for (Eigen::Index j = 0; j < k; ++j) {
    const double c =
        base_u.cols() == 0 ? 0.0 : static_cast<double>(cos.row(j).cwiseAbs().maxCoeff());
    out.max_abs_cos.push_back(c);
    if (c < epsilon) out.intruders.push_back(static_cast<index_t>(j));
  }
  return out;
}

/// A LoRA adapter's factors after PEFT's intruder mitigation (reduce_intruder_dimension).
template <class T>
struct intruder_reduction {
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> b;  ///< out x r, the new lora_B
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> a;  ///< r x in, the new lora_A
  intruder_result intruders;                           ///< found on W0 + s B A against W0
};

/// PEFT's `reduce_intruder_dimension` (peft/tuners/lora/intruders.py, 0.21) for one LoRA
/// module with base W0 (out x in), factors B (out x r), A (r x in) and scaling s: the
/// intruders of W = W0 + s B A against W0 (intruder_dimensions of the left singular
/// vectors); W_mit = W + (lambda - 1) sum_{j intruder} s_j u_j v_j^T, so lambda is the share of
/// each intruder direction that is kept (PEFT's default 0.75 removes a quarter, although its
/// docstring calls lambda the portion subtracted); D = (W_mit - W0) / s, and the new factors
/// are D's rank-r truncation, B = U_r S_r^(1/2), A = S_r^(1/2) V_r^T. Without intruders, B and
/// A are returned unchanged. Computed in double (PEFT: float32).
/// @throws lowrank::invalid_argument when the shapes do not fit, s is 0 or not finite, or
///   top_k, epsilon or lambda are out of range (top_k >= 1, epsilon in (0, 1], lambda in
///   [0, 1]); lowrank::numerical_error when a value is not finite.
template <class T>
[[nodiscard]] intruder_reduction<T> reduce_intruder_dimension(
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& w0,
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& b,
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& a, double scaling, index_t top_k = 10,
    double epsilon = 0.5, double lambda = 0.75) {
  constexpr const char* fn = "lowrank::reduce_intruder_dimension";
  if (b.rows() != w0.rows() || a.cols() != w0.cols() || b.cols() != a.rows() || b.cols() < 1) {
    detail::throw_invalid_argument(fn, "b, a",
                                   "B " + std::to_string(b.rows()) + " x " +
                                       std::to_string(b.cols()) + " and A " +
                                       std::to_string(a.rows()) + " x " + std::to_string(a.cols()),
                                   "B out x r and A r x in for W0 " + std::to_string(w0.rows()) +
                                       " x " + std::to_string(w0.cols()));
  }
  if (!(std::isfinite(scaling) && scaling != 0)) {
    detail::throw_invalid_argument(fn, "scaling", scaling, "a finite, non-zero scaling");
  }
  if (!(lambda >= 0 && lambda <= 1)) {
    detail::throw_invalid_argument(fn, "lambda", lambda, "the share kept, in [0, 1]");
  }
  if (!w0.allFinite() || !b.allFinite() || !a.allFinite()) {
    detail::throw_numerical_error(fn, "w0, b, a", "a non-finite value", "finite weights");
  }
  using dmatrix = Eigen::MatrixXd;
  const dmatrix base = w0.template cast<double>();
  const dmatrix delta = scaling * (b.template cast<double>() * a.template cast<double>());
  const dmatrix tuned = base + delta;
  const Eigen::BDCSVD<dmatrix> base_svd(base, Eigen::ComputeThinU);
  const Eigen::BDCSVD<dmatrix> tuned_svd(tuned, Eigen::ComputeThinU | Eigen::ComputeThinV);
  intruder_reduction<T> out;
  out.intruders =
      intruder_dimensions<double>(base_svd.matrixU(), tuned_svd.matrixU(), top_k, epsilon);
  if (out.intruders.intruders.empty()) {
    out.b = b;
    out.a = a;
    return out;
  }
  dmatrix d = delta;
  for (const index_t j : out.intruders.intruders) {
    d += (lambda - 1) * tuned_svd.singularValues()(j) * tuned_svd.matrixU().col(j) *
         tuned_svd.matrixV().col(j).transpose();
  }
  d /= scaling;
  const Eigen::BDCSVD<dmatrix> svd(d, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::Index r = std::min<Eigen::Index>(b.cols(), std::min(d.rows(), d.cols()));
  const Eigen::VectorXd root = svd.singularValues().head(r).cwiseSqrt();
  out.b = (svd.matrixU().leftCols(r) * root.asDiagonal()).template cast<T>();
  out.a = (root.asDiagonal() * svd.matrixV().leftCols(r).transpose()).template cast<T>();
  return out;
}

}  // namespace lowrank
