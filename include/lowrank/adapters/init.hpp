#pragma once
/// @file
/// What the adapters share: their options' pieces, the random streams they draw
/// from, the initialisations of a LoRA pair (A, B), and the per-batch
/// workspaces.
///
/// **Random streams.** Every random matrix of an adapter is a Philox matrix
/// (random/philox.hpp) of `adapter_stream(seed, layer, kind, index)`, whose
/// stream number is `layer << 34 | kind << 32 | index`: the initial A
/// (kind 0), the dropout mask of training step t (kind 1, index t mod 2^32),
/// NOLA's A bases (kind 2) and B bases (kind 3). Give each adapted layer of a
/// model its own `layer` (or its own seed): element (i, j) of each matrix
/// depends only on (seed, layer, kind, index, i, j), on every backend.
///
/// **Initialisations** (ALGORITHMS.md section 2, PEFT's `LoraLayer.reset_lora_parameters`):
/// - `peft_default`: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's kaiming_uniform_ with
///   a = sqrt(5)), B = 0;
/// - `gaussian`: A ~ N(0, 1/r^2), B = 0;
/// - `pissa`: with W = U S V^T (exact SVD, or the randomized SVD with
///   `pissa_iterations` power iterations, PEFT's "pissa_niter_K"), S_r /= s,
///   A = diag(sqrt(S_r)) V_r^T, B = U_r diag(sqrt(S_r)), and W becomes
///   W_res = W - s B A (so that W_res + s B A = W);
/// - a given factor: `lora::from_factors` (A, B as given) and
///   `lora::from_low_rank` (U S V^T -> B = U sqrt(S / s), A = sqrt(S / s) V^T, so
///   that s B A = U S V^T; W unchanged).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// How a LoRA pair (A, B) starts.
enum class lora_init {
  peft_default,  ///< A kaiming-uniform (bound 1/sqrt(in)), B = 0: the adapter starts as a no-op
  gaussian,      ///< A ~ N(0, 1/r^2), B = 0
  pissa,         ///< the principal rank-r part of W moves into s B A; W keeps the residual
};

/// The kinds of random matrix an adapter draws (see the file comment).
enum class adapter_stream_kind : std::uint64_t { init = 0, dropout = 1, nola_a = 2, nola_b = 3 };

/// The Philox stream of one random matrix of an adapter: `layer << 34 | kind << 32 | index`.
[[nodiscard]] constexpr random_stream adapter_stream(std::uint64_t seed, std::uint64_t layer,
                                                     adapter_stream_kind kind,
                                                     std::uint64_t index) noexcept {
  return {seed, (layer << 34) | (static_cast<std::uint64_t>(kind) << 32) | (index & 0xffffffffu)};
}

/// A trainable tensor of an adapter and its gradient, for an optimizer: both
/// are views into the adapter (valid while it lives, not moved).
template <class T, class Backend>
struct parameter {
  const char* name;               ///< "lora_A", "lora_B", "bias", "magnitude", ...
  matrix_view<T, Backend> value;  ///< the parameter
  matrix_view<T, Backend> grad;   ///< its accumulated gradient, same shape
};

namespace detail {

/// Throws invalid_argument unless 1 <= rank <= min(out, in).
inline void check_adapter_rank(const char* fn, const char* argument, index_t rank, index_t out,
                               index_t in) {
  if (rank <= 0 || rank > std::min(out, in)) {
    throw_invalid_argument(fn, argument, rank,
                           "1 <= rank <= min(out, in) = " + std::to_string(std::min(out, in)));
  }
}

/// Checks of the options every LoRA-like adapter shares.
inline void check_adapter_options(const char* fn, index_t out, index_t in, index_t rank,
                                  double alpha, double dropout) {
  if (out <= 0 || in <= 0) {
    throw_invalid_argument(fn, "weight",
                           std::to_string(out) + " x " + std::to_string(in) + " matrix",
                           "a non-empty out x in weight");
  }
  check_adapter_rank(fn, "options.rank", rank, out, in);
  if (!std::isfinite(alpha) || alpha <= 0) {
    throw_invalid_argument(fn, "options.alpha", alpha, "a finite alpha > 0");
  }
  if (!(dropout >= 0 && dropout < 1)) {
    throw_invalid_argument(fn, "options.dropout", dropout, "a probability in [0, 1)");
  }
}

/// s = alpha / r, or alpha / sqrt(r) for rsLoRA.
[[nodiscard]] inline double lora_scaling(double alpha, index_t rank, bool rslora) noexcept {
  return rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank);
}

/// Throws numerical_error naming the first non-finite entry of x.
template <class T, class Backend>
void require_finite_values(context<Backend>& ctx, const char* fn, const char* argument,
                           matrix_view<const T, Backend> x) {
  const index_t at = ops<Backend>::find_non_finite(ctx, x);
  if (at >= 0) {
    const index_t rows = std::max<index_t>(x.rows(), 1);
    throw_numerical_error(
        fn, argument,
        "non-finite at (" + std::to_string(at % rows) + ", " + std::to_string(at / rows) + ")",
        "finite values");
  }
}

/// Checks of a frozen base layer: W non-empty and finite, b empty or out
/// entries and finite.
template <class T, class Backend>
void check_frozen_base(context<Backend>& ctx, const char* fn, matrix_view<const T, Backend> weight,
                       vector_view<const T, Backend> bias) {
  if (weight.rows() <= 0 || weight.cols() <= 0) {
    throw_invalid_argument(fn, "weight",
                           std::to_string(weight.rows()) + " x " + std::to_string(weight.cols()),
                           "a non-empty out x in weight");
  }
  if (!bias.empty() && bias.size() != weight.rows()) {
    throw_invalid_argument(fn, "bias.size()", bias.size(),
                           "0 (no bias) or out = " + std::to_string(weight.rows()));
  }
  require_finite_values(ctx, fn, "weight", weight);
  if (!bias.empty()) require_finite_values(ctx, fn, "bias", bias.as_matrix());
}

/// Throws invalid_argument unless x is rows x cols.
template <class View>
void require_shape(const char* fn, const char* argument, const View& x, index_t rows,
                   index_t cols) {
  if (x.rows() != rows || x.cols() != cols) {
    throw_invalid_argument(fn, argument,
                           std::to_string(x.rows()) + " x " + std::to_string(x.cols()),
                           std::to_string(rows) + " x " + std::to_string(cols));
  }
}

/// The shape checks of an adapter's forward: X is N x in, Y is N x out.
template <class T, class Backend>
void check_forward_shapes(const char* fn, matrix_view<const T, Backend> x,
                          matrix_view<T, Backend> y, index_t in, index_t out) {
  if (x.cols() != in)
    throw_invalid_argument(fn, "x.cols()", x.cols(), "in = " + std::to_string(in));
  require_shape(fn, "y", y, x.rows(), out);
}

/// The state and shape checks of an adapter's backward: unmerged, a pending
/// forward of `rows` rows, G (rows x out) and dX (rows x in, or empty).
template <class T, class Backend>
void check_backward_state(const char* fn, bool merged, bool pending, index_t rows,
                          matrix_view<const T, Backend> dy, matrix_view<T, Backend> dx, index_t in,
                          index_t out) {
  if (merged) {
    throw_invalid_argument(fn, "this", "a merged adapter",
                           "an unmerged adapter (call unmerge() first)");
  }
  if (!pending) {
    throw_invalid_argument(fn, "this", "an adapter without a pending forward",
                           "forward() before each backward()");
  }
  require_shape(fn, "dy", dy, rows, out);
  if (!dx.empty()) require_shape(fn, "dx", dx, rows, in);
}

/// A matrix of `cols` columns whose row count grows to the largest batch
/// seen: after the first call with a given N, no allocation.
template <class T, class Backend>
class batch_workspace {
 public:
  [[nodiscard]] matrix_view<T, Backend> rows(context<Backend>& ctx, index_t n, index_t cols) {
    if (n > storage_.rows() || cols != storage_.cols()) {
      storage_ = matrix<T, Backend>(ctx, std::max(n, storage_.rows()), cols);
    }
    return storage_.view().block(0, 0, n, cols);
  }
  void release() { storage_ = matrix<T, Backend>(); }
  [[nodiscard]] std::size_t bytes() const noexcept {
    return static_cast<std::size_t>(storage_.rows() * storage_.cols()) * sizeof(T);
  }

 private:
  matrix<T, Backend> storage_;
};

/// The merged state of an adapter's weight: W' = fl(c (.)_rows (W + s B A)) in
/// extended precision (ops::merge_low_rank) and the record that makes the
/// unmerge exact. The caller keeps the factors (and the row scale c) it
/// merged with and passes the same ones to unmerge().
template <class T, class Backend>
class weight_merge {
 public:
  [[nodiscard]] bool active() const noexcept { return active_; }
  /// How many weight elements the record keeps.
  [[nodiscard]] std::size_t exceptions() const noexcept { return record_.size(); }
  [[nodiscard]] std::size_t bytes() const noexcept {
    return record_.size() * sizeof(merge_exception<T>);
  }

  /// W = fl(c (.)_rows (W + s B A)); with `safe`, first checks every merged
  /// value and throws numerical_error (W untouched) if one is not finite.
  /// @throws lowrank::invalid_argument when already merged.
  void merge(context<Backend>& ctx, const char* fn, double s, matrix_view<const T, Backend> b,
             matrix_view<const T, Backend> a, vector_view<const double, Backend> c,
             matrix_view<T, Backend> w, bool safe) {
    require_inactive(fn);
    if (safe) {
      const index_t bad = ops<Backend>::merge_low_rank(ctx, s, b, a, c, w, true, nullptr);
      if (bad >= 0) {
        const index_t rows = std::max<index_t>(w.rows(), 1);
        throw_numerical_error(fn, "the merged weight",
                              "non-finite at (" + std::to_string(bad % rows) + ", " +
                                  std::to_string(bad / rows) + ")",
                              "finite values (W is unchanged)");
      }
    }
    std::vector<merge_exception<T>> record;
    ops<Backend>::merge_low_rank(ctx, s, b, a, c, w, false, &record);
    record_ = std::move(record);
    active_ = true;
  }

  /// Restores the W of merge() bit for bit, given the same s, B, A and c.
  /// @throws lowrank::invalid_argument when not merged.
  void unmerge(context<Backend>& ctx, const char* fn, double s, matrix_view<const T, Backend> b,
               matrix_view<const T, Backend> a, vector_view<const double, Backend> c,
               matrix_view<T, Backend> w) {
    require_active(fn);
    ops<Backend>::unmerge_low_rank(ctx, s, b, a, c, w, record_);
    record_ = {};
    active_ = false;
  }

  /// @throws lowrank::invalid_argument when merged.
  void require_inactive(const char* fn) const {
    if (active_) throw_invalid_argument(fn, "this", "a merged adapter", "an unmerged adapter");
  }
  /// @throws lowrank::invalid_argument when not merged.
  void require_active(const char* fn) const {
    if (!active_) throw_invalid_argument(fn, "this", "an unmerged adapter", "a merged adapter");
  }

 private:
  bool active_ = false;
  std::vector<merge_exception<T>> record_;
};

/// A = U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform with a = sqrt(5)) or
/// N(0, 1/r^2), drawn from `stream`.
template <class T, class Backend>
void init_a(context<Backend>& ctx, lora_init init, random_stream stream,
            matrix_view<T, Backend> a) {
  if (init == lora_init::gaussian) {
    ops<Backend>::fill_random(ctx, distribution::gaussian, stream, a);
    ops<Backend>::affine(ctx, T(1.0 / double(a.rows())), T(0), a);
  } else {
    const double bound = 1.0 / std::sqrt(double(a.cols()));
    ops<Backend>::fill_random(ctx, distribution::uniform, stream, a);
    ops<Backend>::affine(ctx, T(2 * bound), T(-bound), a);
  }
}

}  // namespace detail
}  // namespace lowrank
