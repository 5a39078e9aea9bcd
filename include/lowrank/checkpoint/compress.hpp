#pragma once
/// @file
/// Compressing a model's weight matrices to a parameter budget, with or without the
/// activations they see, and compensating a lossy model with a small adapter
/// (docs/algorithms.md, "Checkpoints"; ../shared/research/wave2.md section 8).
///
/// **Factoring.** W (m x n, an nn.Linear weight out x in) at rank k becomes
/// U_k S_k^(1/2) (m x k) times S_k^(1/2) V_k^T (k x n), k (m + n) parameters instead of m n,
/// which is smaller only for k <= break_even_rank(m, n): a matrix is factored only then
/// (WeLore factors matrices that grow; we do not).
///
/// **Activation-aware** (SVD-LLM). For inputs X (N x n), the layer's output error is
/// ||X (W - W')^T||_F = ||(W - W') L||_F where L L^T = X^T X (Cholesky, in double). The best
/// rank-k W' is then the truncation of W L: W L = U S V^T, W' = U_k S_k V_k^T L^-1, computed
/// with a triangular solve (never an inverse). When X^T X is only semidefinite (fewer tokens
/// than features, or rounding), the Cholesky fails and we use SVD-LLM's fallback: add
/// (-lambda_min + 1e-6 mean(diag)) I and factor again (SVD-LLM adds -lambda_min + 1e-6; we
/// scale the 1e-6 by the Gram's mean diagonal, since its authors leave X^T X unnormalised and
/// an absolute 1e-6 then means nothing). A "Gram" with an eigenvalue below
/// -1e-3 lambda_max is not a Gram at all (corrupt data, or not X^T X): an error.
///
/// **Rank allocation** (plan_compression) keeps a fraction F of the selected matrices'
/// parameters, sum_j params_j <= F sum_j m_j n_j, where params_j is k_j (m_j + n_j) when
/// factored and m_j n_j otherwise. With e_j(k) = sum_{i>k} s_i^2 / sum_i s_i^2 the squared
/// relative error of matrix j (of the weight, or of its output in activation-aware mode):
/// - `uniform` (SVD-LLM): k_j = floor(F m_j n_j / (m_j + n_j)) for every matrix;
/// - `energy`: one energy fraction t for all, k_j = the smallest k with 1 - e_j(k) >= t, t
///   the largest that fits the budget;
/// - `welore`: one threshold tau for all on the normalised spectra (WeLore's rule,
///   k_j = min(m, n) - k_prune(tau)), tau the smallest that fits;
/// - `global` (ours): minimises sum_j e_j(k_j), the total squared relative error, under the
///   budget, choosing which singular values to keep across all matrices at once: a greedy
///   knapsack by error removed per parameter, sigma_i^2 / (||W_j||^2 (m_j + n_j)), which
///   solves the continuous relaxation exactly (each e_j is convex in the parameters, as the
///   sigma_i decrease), then fills what budget is left with any value that still fits. Keeping
///   a matrix dense (error 0, m n parameters) is one more item once its factors would reach
///   the break-even rank.
/// Every factored matrix keeps k >= 1; a budget too small for that is an error.
///
/// **EoRA** (NVlabs/EoRA `llama_sequential_eigen`). For an original W and a compressed W_c,
/// the rank-r correction B A of dW = W - W_c in the activation-whitened space:
/// X^T X = Q Lambda Q^T (eigen, double), eigenvalues <= 0 replaced by the smallest positive
/// one, S = Q Lambda^(1/2); dW S = U Sigma V^T; B = U_r Sigma_r^(1/2), A = Sigma_r^(1/2)
/// V_r^T Lambda^(-1/2) Q^T. Without a Gram, the plain truncated SVD of dW.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <queue>
#include <string>
#include <vector>

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/ops.hpp"
#include "lowrank/checkpoint/spectrum.hpp"
#include "lowrank/core/config.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/decomp/randomized_svd.hpp"

namespace lowrank {

/// How plan_compression spreads the budget over the matrices (see the file comment).
enum class rank_allocation { uniform, energy, welore, global };

/// The name of an allocation: "uniform", "energy", "welore" or "global".
[[nodiscard]] inline const char* name(rank_allocation a) noexcept {
  switch (a) {
    case rank_allocation::uniform:
      return "uniform";
    case rank_allocation::energy:
      return "energy";
    case rank_allocation::welore:
      return "welore";
    case rank_allocation::global:
      return "global";
  }
  return "unknown";
}

/// Accumulates X^T X in double from a layer's inputs, batch by batch (rows are tokens), for
/// activation-aware compression and EoRA.
class activation_stats {
 public:
  /// @throws lowrank::invalid_argument when features < 1.
  explicit activation_stats(index_t features) {
    if (features < 1) {
      detail::throw_invalid_argument("lowrank::activation_stats", "features", features, ">= 1");
    }
    gram_ = Eigen::MatrixXd::Zero(features, features);
  }

  /// Adds the rows of x (tokens x features).
  /// @throws lowrank::invalid_argument when x has another number of columns;
  ///   lowrank::numerical_error when it holds a non-finite value (nothing is added).
  template <class Derived>
  void add(const Eigen::MatrixBase<Derived>& x) {
    constexpr const char* fn = "lowrank::activation_stats::add";
    if (x.cols() != gram_.cols()) {
      detail::throw_invalid_argument(fn, "x",
                                     std::to_string(x.rows()) + " x " + std::to_string(x.cols()),
                                     std::to_string(gram_.cols()) + " columns (the features)");
    }
    if (x.rows() == 0) return;
    const Eigen::MatrixXd xd = x.template cast<double>();
    if (!xd.allFinite())
      detail::throw_numerical_error(fn, "x", "a batch with a non-finite value",
                                    "finite activations");
    gram_.selfadjointView<Eigen::Lower>().rankUpdate(xd.transpose());
    count_ += x.rows();
  }

  /// X^T X over every row added (features x features, symmetric).
  [[nodiscard]] Eigen::MatrixXd gram() const {
    Eigen::MatrixXd g = gram_.selfadjointView<Eigen::Lower>();
    return g;
  }

  /// The number of rows (tokens) added.
  [[nodiscard]] std::int64_t count() const noexcept { return count_; }

 private:
  Eigen::MatrixXd gram_;  // lower triangle
  std::int64_t count_ = 0;
};

/// L with L L^T = X^T X + shift I (see the file comment).
struct gram_whitening {
  Eigen::MatrixXd l;  ///< lower triangular, n x n
  double shift = 0;   ///< 0 when X^T X itself was positive definite
};

namespace detail {

/// Checks a Gram matrix: square n x n, finite, symmetric to rounding; returns it symmetrised.
inline Eigen::MatrixXd checked_gram(const char* fn, const Eigen::MatrixXd& gram, index_t n) {
  if (gram.rows() != n || gram.cols() != n) {
    throw_invalid_argument(fn, "gram",
                           std::to_string(gram.rows()) + " x " + std::to_string(gram.cols()),
                           "a " + std::to_string(n) + " x " + std::to_string(n) +
                               " matrix (X^T X over the layer's inputs)");
  }
  if (!gram.allFinite())
    throw_numerical_error(fn, "gram", "a matrix with a non-finite value", "finite values");
  const double scale = gram.cwiseAbs().maxCoeff();
  const double asymmetry = (gram - gram.transpose()).cwiseAbs().maxCoeff();
  if (asymmetry > 1e-5 * scale) {
    throw_invalid_argument(fn, "gram",
                           "a matrix with |G - G^T| up to " + std::to_string(asymmetry) +
                               " against entries up to " + std::to_string(scale),
                           "a symmetric matrix (X^T X)");
  }
  return (gram + gram.transpose()) / 2;
}

}  // namespace detail

/// The Cholesky factor of X^T X, with SVD-LLM's fallback (see the file comment).
/// @throws lowrank::invalid_argument when `gram` is not square, not symmetric to rounding or
///   has an eigenvalue below -1e-3 lambda_max; lowrank::numerical_error when it is not finite
///   or is zero.
/// Any dense Eigen matrix is taken and converted to double. (A template also for compile
/// time: a non-template inline function would make every file that includes lowrank.hpp
/// instantiate Eigen's eigensolver and Cholesky, about 4 s each at -O2.)
template <class Derived>
[[nodiscard]] gram_whitening whiten_gram(const Eigen::MatrixBase<Derived>& gram) {
  constexpr const char* fn = "lowrank::whiten_gram";
  // A double matrix is read in place (cast to its own type is the matrix itself).
  const Eigen::MatrixXd g = detail::checked_gram(fn, gram.template cast<double>(), gram.rows());
  if (g.rows() == 0)
    detail::throw_invalid_argument(fn, "gram", "a 0 x 0 matrix", "a non-empty Gram matrix");
  gram_whitening out;
  Eigen::LLT<Eigen::MatrixXd> llt(g);
  if (llt.info() == Eigen::Success && llt.matrixL().toDenseMatrix().diagonal().minCoeff() > 0) {
    out.l = llt.matrixL();
    return out;
  }
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(g, Eigen::EigenvaluesOnly);
  const double lo = eig.eigenvalues().minCoeff();
  const double hi = eig.eigenvalues().maxCoeff();
  if (!(hi > 0)) {
    detail::throw_numerical_error(fn, "gram", "a matrix without a positive eigenvalue",
                                  "X^T X of non-zero inputs");
  }
  if (lo < -1e-3 * hi) {
    detail::throw_invalid_argument(
        fn, "gram",
        "a matrix with the eigenvalue " + std::to_string(lo) + " against a largest of " +
            std::to_string(hi),
        "a positive semidefinite matrix (X^T X), negative only to rounding");
  }
  out.shift = -std::min(lo, 0.0) + 1e-6 * g.diagonal().mean();
  llt.compute(g + out.shift * Eigen::MatrixXd::Identity(g.rows(), g.cols()));
  if (llt.info() != Eigen::Success) {
    detail::throw_numerical_error(
        fn, "gram", "a matrix whose Cholesky fails even shifted by " + std::to_string(out.shift),
        "a positive semidefinite matrix");
  }
  out.l = llt.matrixL();
  return out;
}

/// One matrix to plan: its name, shape and singular values (descending; all min(m, n) of
/// them, or the leading ones with `energy` set to ||W||_F^2, or to ||W L||_F^2 in
/// activation-aware mode).
struct matrix_spectrum {
  std::string name;
  index_t rows = 0;
  index_t cols = 0;
  std::vector<double> singular_values;
  double energy = 0;  ///< sum of all s_i^2; 0 means: sum of the given values' squares
};

/// One matrix in a plan.
struct plan_entry {
  std::string name;
  index_t rows = 0;
  index_t cols = 0;
  index_t rank = 0;             ///< the kept rank when factored, else min(m, n)
  bool factored = false;        ///< false: kept dense (factoring would not shrink it)
  std::int64_t parameters = 0;  ///< k (m + n) when factored, else m n
  double relative_error = 0;    ///< predicted sqrt(e(k)) from the spectrum (0 when dense)
};

/// A rank allocation for a set of matrices (plan_compression).
struct compress_plan {
  rank_allocation allocation = rank_allocation::uniform;
  double budget = 1;  ///< the fraction F asked for
  std::int64_t original_parameters = 0;
  std::int64_t parameters = 0;      ///< after compression, <= F * original
  double squared_error_sum = 0;     ///< sum_j e_j(k_j)
  double threshold = 0;             ///< energy: t; welore: tau; else 0
  std::vector<plan_entry> entries;  ///< in the order given
};

namespace detail {

inline double spectrum_energy(const matrix_spectrum& m) {
  if (m.energy > 0) return m.energy;
  double e = 0;
  for (const double s : m.singular_values) e += s * s;
  return e;
}

/// Fills entry j of `plan` for rank k (k >= 1; dense when k reaches the break-even rank).
inline void plan_set(compress_plan& plan, const matrix_spectrum& m, std::size_t j, index_t k) {
  plan_entry& e = plan.entries[j];
  const std::int64_t dense = std::int64_t{m.rows} * m.cols;
  const std::int64_t factored = std::int64_t{k} * (m.rows + m.cols);
  e.name = m.name;
  e.rows = m.rows;
  e.cols = m.cols;
  e.factored = factored < dense;
  e.rank = e.factored ? k : std::min(m.rows, m.cols);
  e.parameters = e.factored ? factored : dense;
  double tail = 0;
  if (e.factored) {
    const double total = spectrum_energy(m);
    double kept = 0;
    for (index_t i = 0; i < k && i < static_cast<index_t>(m.singular_values.size()); ++i) {
      kept += m.singular_values[static_cast<std::size_t>(i)] *
              m.singular_values[static_cast<std::size_t>(i)];
    }
    tail = total > 0 ? std::max(0.0, 1 - kept / total) : 0;
  }
  e.relative_error = std::sqrt(tail);
}

inline void plan_total(compress_plan& plan) {
  plan.parameters = 0;
  plan.squared_error_sum = 0;
  for (const plan_entry& e : plan.entries) {
    plan.parameters += e.parameters;
    plan.squared_error_sum += e.relative_error * e.relative_error;
  }
}

}  // namespace detail

/// Allocates ranks to `matrices` so that the total keeps at most a fraction `budget` of
/// their parameters (see the file comment for each allocation).
/// @throws lowrank::invalid_argument when `matrices` is empty, a shape is empty, a spectrum
///   is not finite, non-negative and descending or is empty, `budget` is not in (0, 1], or
///   the budget cannot hold every factored matrix at rank 1 (the message gives the least).
[[nodiscard]] inline compress_plan plan_compression(const std::vector<matrix_spectrum>& matrices,
                                                    double budget, rank_allocation allocation) {
  constexpr const char* fn = "lowrank::plan_compression";
  if (matrices.empty())
    detail::throw_invalid_argument(fn, "matrices", "an empty list", "at least one matrix");
  if (!(budget > 0 && budget <= 1)) {
    detail::throw_invalid_argument(fn, "budget", budget, "a fraction of the parameters in (0, 1]");
  }
  compress_plan plan;
  plan.allocation = allocation;
  plan.budget = budget;
  plan.entries.resize(matrices.size());
  std::int64_t least = 0;
  for (const matrix_spectrum& m : matrices) {
    detail::require_spectrum(fn, m.singular_values, m.rows, m.cols);
    if (m.singular_values.empty()) {
      detail::throw_invalid_argument(fn, "matrices",
                                     "the matrix '" + m.name + "' without singular values",
                                     "at least its leading singular value");
    }
    plan.original_parameters += std::int64_t{m.rows} * m.cols;
    least += std::min<std::int64_t>(std::int64_t{m.rows} + m.cols, std::int64_t{m.rows} * m.cols);
  }
  const auto limit =
      static_cast<std::int64_t>(std::floor(budget * static_cast<double>(plan.original_parameters)));
  if (least > limit) {
    detail::throw_invalid_argument(
        fn, "budget", budget,
        "at least " +
            std::to_string(static_cast<double>(least) /
                           static_cast<double>(plan.original_parameters)) +
            ": every matrix at rank 1 already keeps " + std::to_string(least) + " of " +
            std::to_string(plan.original_parameters) + " parameters");
  }
  const auto known = [](const matrix_spectrum& m) {
    return static_cast<index_t>(m.singular_values.size());
  };
  // Ranks from a common threshold, monotone in the threshold's position among candidates.
  const auto by_threshold = [&](const std::vector<double>& candidates, auto rank_at) {
    // Find the candidate index giving the largest total <= limit (totals grow with index).
    std::size_t lo = 0;
    std::size_t hi = candidates.size();  // answer in [lo, hi)
    const auto total_at = [&](std::size_t c) {
      std::int64_t total = 0;
      for (std::size_t j = 0; j < matrices.size(); ++j) {
        const matrix_spectrum& m = matrices[j];
        const index_t k = std::clamp<index_t>(rank_at(m, candidates[c]), 1, known(m));
        total += std::min<std::int64_t>(std::int64_t{k} * (m.rows + m.cols),
                                        std::int64_t{m.rows} * m.cols);
      }
      return total;
    };
    while (hi - lo > 1) {
      const std::size_t mid = lo + (hi - lo) / 2;
      if (total_at(mid) <= limit)
        lo = mid;
      else
        hi = mid;
    }
    plan.threshold = candidates[lo];
    for (std::size_t j = 0; j < matrices.size(); ++j) {
      detail::plan_set(
          plan, matrices[j], j,
          std::clamp<index_t>(rank_at(matrices[j], candidates[lo]), 1, known(matrices[j])));
    }
  };
  switch (allocation) {
    case rank_allocation::uniform:
      for (std::size_t j = 0; j < matrices.size(); ++j) {
        const matrix_spectrum& m = matrices[j];
        const auto k = static_cast<index_t>(
            std::floor(budget * static_cast<double>(m.rows) * static_cast<double>(m.cols) /
                       static_cast<double>(m.rows + m.cols)));
        detail::plan_set(plan, m, j, std::clamp<index_t>(k, 1, known(m)));
      }
      // Rank 1 where the formula gives 0 may overshoot: take from the largest ranks.
      detail::plan_total(plan);
      while (plan.parameters > limit) {
        std::size_t best = plan.entries.size();
        for (std::size_t j = 0; j < plan.entries.size(); ++j) {
          const plan_entry& e = plan.entries[j];
          if (e.factored && e.rank > 1 &&
              (best == plan.entries.size() || e.rank > plan.entries[best].rank))
            best = j;
        }
        if (best == plan.entries.size()) break;
        detail::plan_set(plan, matrices[best], best, plan.entries[best].rank - 1);
        detail::plan_total(plan);
      }
      break;
    case rank_allocation::energy: {
      // Candidates: every cumulative energy fraction, ascending (larger t, larger ranks).
      std::vector<double> candidates{0.0};
      for (const matrix_spectrum& m : matrices) {
        const double total = detail::spectrum_energy(m);
        double sum = 0;
        for (const double s : m.singular_values) {
          sum += s * s;
          candidates.push_back(total > 0 ? sum / total : 0);
        }
      }
      std::sort(candidates.begin(), candidates.end());
      candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
      by_threshold(candidates, [](const matrix_spectrum& m, double t) {
        const double total = detail::spectrum_energy(m);
        double sum = 0;
        for (std::size_t k = 0; k < m.singular_values.size(); ++k) {
          sum += m.singular_values[k] * m.singular_values[k];
          if (total <= 0 || sum >= t * total) return static_cast<index_t>(k + 1);
        }
        return static_cast<index_t>(m.singular_values.size());
      });
      break;
    }
    case rank_allocation::welore: {
      const auto normalised = [](const matrix_spectrum& m, double s) {
        const double lo = m.singular_values.back();
        const double range = m.singular_values.front() - lo;
        return range > 0 ? (s - lo) / range : 1.0;
      };
      // Thresholds from the largest (tau above 1: rank 1 everywhere) down: the kept
      // ranks, hence the totals, grow along the list.
      std::vector<double> taus{2.0};
      for (const matrix_spectrum& m : matrices) {
        for (const double s : m.singular_values) taus.push_back(normalised(m, s));
      }
      std::sort(taus.begin(), taus.end(), std::greater<>());
      taus.erase(std::unique(taus.begin(), taus.end()), taus.end());
      by_threshold(taus, [&](const matrix_spectrum& m, double tau) {
        index_t keep = 0;
        for (const double s : m.singular_values) keep += normalised(m, s) >= tau ? 1 : 0;
        return keep;
      });
      break;
    }
    case rank_allocation::global: {
      // Every matrix starts at rank 1; items are "add s_{k+1}" or "keep dense".
      std::vector<index_t> rank(matrices.size(), 1);
      std::vector<bool> dense(matrices.size(), false);
      std::int64_t used = 0;
      std::vector<double> total(matrices.size());
      for (std::size_t j = 0; j < matrices.size(); ++j) {
        const matrix_spectrum& m = matrices[j];
        total[j] = detail::spectrum_energy(m);
        const std::int64_t full = std::int64_t{m.rows} * m.cols;
        if (std::int64_t{m.rows} + m.cols >= full) {
          dense[j] = true;  // a vector-like matrix never shrinks
          used += full;
        } else {
          used += m.rows + m.cols;
        }
      }
      struct item {
        double ratio;
        std::size_t j;
        bool operator<(const item& o) const {
          return ratio < o.ratio || (ratio == o.ratio && j > o.j);
        }
      };
      const auto tail = [&](std::size_t j, index_t k) {
        double kept = 0;
        const auto& s = matrices[j].singular_values;
        for (index_t i = 0; i < k && i < static_cast<index_t>(s.size()); ++i)
          kept += s[static_cast<std::size_t>(i)] * s[static_cast<std::size_t>(i)];
        return total[j] > 0 ? std::max(0.0, total[j] - kept) / total[j] : 0.0;
      };
      // The next item of matrix j: its cost and its ratio (error removed per parameter).
      const auto next_item = [&](std::size_t j, std::int64_t& cost) -> std::optional<double> {
        const matrix_spectrum& m = matrices[j];
        if (dense[j]) return std::nullopt;
        const std::int64_t full = std::int64_t{m.rows} * m.cols;
        const std::int64_t step = m.rows + m.cols;
        const index_t k = rank[j];
        if (std::int64_t{k + 1} * step >= full || k >= known(m)) {
          if (k >= known(m) && total[j] <= 0) return std::nullopt;
          cost = full - std::int64_t{k} * step;  // go dense: the rest of the error
          return tail(j, k) / static_cast<double>(std::max<std::int64_t>(cost, 1));
        }
        cost = step;
        const double s = m.singular_values[static_cast<std::size_t>(k)];
        return total[j] > 0 ? s * s / total[j] / static_cast<double>(step) : 0.0;
      };
      std::priority_queue<item> queue;
      for (std::size_t j = 0; j < matrices.size(); ++j) {
        std::int64_t cost = 0;
        if (const auto r = next_item(j, cost)) queue.push({*r, j});
      }
      while (!queue.empty()) {
        const item top = queue.top();
        queue.pop();
        std::int64_t cost = 0;
        const auto r = next_item(top.j, cost);
        if (!r) continue;
        if (used + cost > limit) continue;  // does not fit: this matrix stops here (fill)
        used += cost;
        const matrix_spectrum& m = matrices[top.j];
        if (std::int64_t{rank[top.j] + 1} * (m.rows + m.cols) >= std::int64_t{m.rows} * m.cols ||
            rank[top.j] >= known(m)) {
          dense[top.j] = true;
        } else {
          ++rank[top.j];
        }
        if (const auto again = next_item(top.j, cost)) queue.push({*again, top.j});
      }
      for (std::size_t j = 0; j < matrices.size(); ++j) {
        const matrix_spectrum& m = matrices[j];
        detail::plan_set(plan, m, j, dense[j] ? std::min(m.rows, m.cols) : rank[j]);
        if (dense[j]) {
          // plan_set keeps it dense only from the break-even rank on: force it.
          plan_entry& e = plan.entries[j];
          e.factored = false;
          e.rank = std::min(m.rows, m.cols);
          e.parameters = std::int64_t{m.rows} * m.cols;
          e.relative_error = 0;
        }
      }
      break;
    }
  }
  detail::plan_total(plan);
  return plan;
}

/// A weight factored as u v (u m x k, v k x n), with its measured errors.
template <class T>
struct factored_weight {
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> u;  ///< U_k S_k^(1/2)
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> v;  ///< S_k^(1/2) V_k^T (L^-1)
  double relative_error = 0;                           ///< ||W - u v||_F / ||W||_F, measured
  double output_relative_error = 0;  ///< ||(W - u v) L||_F / ||W L||_F, measured (with a Gram)
};

/// How factor_weight computes its SVD: exact (a full thin SVD, O(m n min(m, n))) or
/// randomized (lowrank::randomized_svd at rank k with these settings, O(m n k (2q + 2)):
/// for large layers kept at a small rank; its error is measured like the exact one's).
struct factor_options {
  bool randomized = false;
  index_t oversampling = 10;
  index_t power_iterations = 2;
  std::uint64_t seed = 0;
};

/// Factors W at rank k: the truncated SVD of W, or of W L given a whitening (see the file
/// comment). Computed in double; the factors are rounded once to T.
/// @throws lowrank::invalid_argument when k is not in [1, min(m, n)] or the whitening's size
///   is not n x n; lowrank::numerical_error when W is not finite.
template <class T>
[[nodiscard]] factored_weight<T> factor_weight(
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& w, index_t k,
    const gram_whitening* whitening = nullptr, const factor_options& options = {}) {
  constexpr const char* fn = "lowrank::factor_weight";
  if (k < 1 || k > std::min(w.rows(), w.cols())) {
    detail::throw_invalid_argument(
        fn, "k", k,
        "a rank in [1, min(m, n)] = [1, " + std::to_string(std::min(w.rows(), w.cols())) + "]");
  }
  if (whitening != nullptr &&
      (whitening->l.rows() != w.cols() || whitening->l.cols() != w.cols())) {
    detail::throw_invalid_argument(
        fn, "whitening",
        std::to_string(whitening->l.rows()) + " x " + std::to_string(whitening->l.cols()),
        std::to_string(w.cols()) + " x " + std::to_string(w.cols()) + " (W's columns)");
  }
  if (!w.allFinite())
    detail::throw_numerical_error(fn, "w", "a matrix with a non-finite value", "finite weights");
  const Eigen::MatrixXd wd = w.template cast<double>();
  const Eigen::MatrixXd target =
      whitening != nullptr ? Eigen::MatrixXd(wd * whitening->l.triangularView<Eigen::Lower>()) : wd;
  Eigen::MatrixXd left;   // m x k, U_k
  Eigen::MatrixXd right;  // n x k, V_k
  Eigen::VectorXd root;   // S_k^(1/2)
  if (options.randomized) {
    randomized_svd_options o;
    o.oversampling = options.oversampling;
    o.power_iterations = options.power_iterations;
    o.seed = options.seed;
    const low_rank<double> r = randomized_svd(target, k, o);
    left = r.u;
    right = r.v;
    root = r.s.cwiseMax(0.0).cwiseSqrt();
  } else {
    const Eigen::BDCSVD<Eigen::MatrixXd> svd(target, Eigen::ComputeThinU | Eigen::ComputeThinV);
    if (svd.info() != Eigen::Success)
      throw numerical_error(std::string(fn) + ": the SVD did not converge");
    left = svd.matrixU().leftCols(k);
    right = svd.matrixV().leftCols(k);
    root = svd.singularValues().head(k).cwiseSqrt();
  }
  Eigen::MatrixXd u = left * root.asDiagonal();
  Eigen::MatrixXd vt;  // k x n
  if (whitening != nullptr) {
    // S^(1/2) V^T L^-1 = (L^-T V S^(1/2))^T: one triangular solve with L^T.
    const Eigen::MatrixXd z = whitening->l.transpose().triangularView<Eigen::Upper>().solve(
        Eigen::MatrixXd(right * root.asDiagonal()));
    vt = z.transpose();
  } else {
    vt = root.asDiagonal() * right.transpose();
  }
  factored_weight<T> out;
  out.u = u.cast<T>();
  out.v = vt.cast<T>();
  const Eigen::MatrixXd residual =
      wd - out.u.template cast<double>() * out.v.template cast<double>();
  const double norm = wd.norm();
  out.relative_error = norm > 0 ? residual.norm() / norm : 0;
  if (whitening != nullptr) {
    const double out_norm = target.norm();
    out.output_relative_error =
        out_norm > 0 ? (residual * whitening->l.triangularView<Eigen::Lower>()).norm() / out_norm
                     : 0;
  } else {
    out.output_relative_error = out.relative_error;
  }
  return out;
}

/// A rank-r correction B A (PEFT's lora_B, out x r, and lora_A, r x in, at scaling 1).
template <class T>
struct low_rank_correction {
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> b;
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> a;
};

/// EoRA's correction of a compressed weight (see the file comment): the rank-r B A that best
/// fits W - W_c in the output norm of inputs with Gram `gram` (or in the Frobenius norm
/// without one).
/// @throws lowrank::invalid_argument when the shapes differ, r is not in [1, min(m, n)] or
///   the Gram is not n x n and symmetric; lowrank::numerical_error when a value is not
///   finite or the Gram has no positive eigenvalue.
template <class T>
[[nodiscard]] low_rank_correction<T> eora_correction(
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& w,
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& compressed, index_t r,
    const Eigen::MatrixXd* gram = nullptr) {
  constexpr const char* fn = "lowrank::eora_correction";
  if (compressed.rows() != w.rows() || compressed.cols() != w.cols()) {
    detail::throw_invalid_argument(
        fn, "compressed",
        std::to_string(compressed.rows()) + " x " + std::to_string(compressed.cols()),
        std::to_string(w.rows()) + " x " + std::to_string(w.cols()) + " (W's shape)");
  }
  if (r < 1 || r > std::min(w.rows(), w.cols())) {
    detail::throw_invalid_argument(
        fn, "r", r, "a rank in [1, " + std::to_string(std::min(w.rows(), w.cols())) + "]");
  }
  if (!w.allFinite() || !compressed.allFinite()) {
    detail::throw_numerical_error(fn, "w", "weights with a non-finite value", "finite weights");
  }
  const Eigen::MatrixXd delta = w.template cast<double>() - compressed.template cast<double>();
  low_rank_correction<T> out;
  if (gram == nullptr) {
    const Eigen::BDCSVD<Eigen::MatrixXd> svd(delta, Eigen::ComputeThinU | Eigen::ComputeThinV);
    const Eigen::VectorXd root = svd.singularValues().head(r).cwiseSqrt();
    out.b = (svd.matrixU().leftCols(r) * root.asDiagonal()).template cast<T>();
    out.a = (root.asDiagonal() * svd.matrixV().leftCols(r).transpose()).template cast<T>();
    return out;
  }
  const Eigen::MatrixXd g = detail::checked_gram(fn, *gram, w.cols());
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(g);
  if (eig.info() != Eigen::Success)
    throw numerical_error(std::string(fn) + ": the eigensolver did not converge");
  Eigen::VectorXd lambda = eig.eigenvalues();
  double smallest = std::numeric_limits<double>::infinity();
  for (Eigen::Index i = 0; i < lambda.size(); ++i) {
    if (lambda(i) > 0) smallest = std::min(smallest, lambda(i));
  }
  if (!std::isfinite(smallest)) {
    detail::throw_numerical_error(fn, "gram", "a matrix without a positive eigenvalue",
                                  "X^T X of non-zero inputs");
  }
  for (Eigen::Index i = 0; i < lambda.size(); ++i) lambda(i) = lambda(i) > 0 ? lambda(i) : smallest;
  const Eigen::VectorXd root = lambda.cwiseSqrt();
  const Eigen::MatrixXd& q = eig.eigenvectors();
  const Eigen::MatrixXd s = q * root.asDiagonal();  // S = Q Lambda^(1/2)
  const Eigen::BDCSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(delta * s),
                                           Eigen::ComputeThinU | Eigen::ComputeThinV);
  if (svd.info() != Eigen::Success)
    throw numerical_error(std::string(fn) + ": the SVD did not converge");
  const Eigen::VectorXd sr = svd.singularValues().head(r).cwiseSqrt();
  out.b = (svd.matrixU().leftCols(r) * sr.asDiagonal()).template cast<T>();
  // A = Sigma^(1/2) V^T Lambda^(-1/2) Q^T.
  const Eigen::MatrixXd a = sr.asDiagonal() * svd.matrixV().leftCols(r).transpose() *
                            root.cwiseInverse().asDiagonal() * q.transpose();
  out.a = a.template cast<T>();
  return out;
}

}  // namespace lowrank
