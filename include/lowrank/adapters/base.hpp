#pragma once
/// @file
/// What the adapters share (docs/architecture.md, "Adapters"): the trainable
/// `parameter` views an optimizer steps, the random streams an adapter draws
/// from, and (internal) the frozen layer every adapter sits on and the base
/// of the single-adapter layers (lora, dora, nola): their options, bias
/// gradient, training mode and step counter, dropout, the pending forward,
/// the per-batch workspaces and the exact merge.
///
/// **Random streams.** Every random matrix of an adapter is a Philox matrix
/// of `adapter_stream(seed, layer, kind, index)` = `layer_stream(seed, layer,
/// kind, index)` (random/streams.hpp): the initial A (kind 0), the dropout
/// mask of training step t (kind 1, index t mod 2^32), NOLA's A bases (kind
/// 2) and B bases (kind 3), and LoCA's initial locations (kind 12: kinds 4
/// to 7 are the projection family's, 8 to 11 reserved for the factors
/// family; docs/architecture.md). Give each adapted layer of a model its own
/// `layer` (or its own seed): element (i, j) of each matrix depends only on
/// (seed, layer, kind, index, i, j), on every backend.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
#include "lowrank/random/philox.hpp"
#include "lowrank/random/streams.hpp"

namespace lowrank {

/// A trainable tensor of an adapter and its gradient, for an optimizer: both
/// are views into the adapter (valid while it lives, not moved).
template <class T, class Backend>
struct parameter {
  const char* name;               ///< "lora_A", "lora_B", "bias", "lora_magnitude_vector", ...
  matrix_view<T, Backend> value;  ///< the parameter
  matrix_view<T, Backend> grad;   ///< its accumulated gradient, same shape
};

/// The kinds of random matrix an adapter draws (see the file comment).
enum class adapter_stream_kind : stream_kind {
  init = 0,
  dropout = 1,
  nola_a = 2,
  nola_b = 3,
  loca_locations = 12,
};

/// The Philox stream of one random matrix of an adapter:
/// `layer_stream(seed, layer, kind, index)`, i.e. stream number
/// `layer << 34 | kind << 32 | index` and key `seed`.
[[nodiscard]] constexpr random_stream adapter_stream(std::uint64_t seed, std::uint64_t layer,
                                                     adapter_stream_kind kind,
                                                     std::uint64_t index) noexcept {
  return layer_stream(seed, layer, static_cast<stream_kind>(kind), index);
}

namespace detail {

/// The frozen linear layer an adapter sits on: W (out x in) and an optional
/// bias b (out entries), as views that must outlive the adapter. `W` is T
/// (the adapter may merge into W) or const T.
template <class W, class Backend>
class frozen_layer {
 public:
  using T = std::remove_const_t<W>;

  [[nodiscard]] index_t in_features() const noexcept { return weight_.cols(); }
  [[nodiscard]] index_t out_features() const noexcept { return weight_.rows(); }
  [[nodiscard]] matrix_view<W, Backend> weight() const noexcept { return weight_; }
  [[nodiscard]] vector_view<W, Backend> bias() const noexcept { return bias_; }

 protected:
  frozen_layer() = default;
  /// @throws lowrank::invalid_argument for an empty W or a bias that is
  ///   neither empty nor of out entries; lowrank::numerical_error for a
  ///   non-finite entry of W or b.
  frozen_layer(context<Backend>& ctx, const char* fn, matrix_view<W, Backend> weight,
               vector_view<W, Backend> bias)
      : weight_(weight), bias_(bias) {
    require_non_empty(fn, "weight", weight);
    if (!bias.empty() && bias.size() != weight.rows()) {
      throw_invalid_argument(fn, "bias.size()", bias.size(),
                             "0 (no bias) or out = " + std::to_string(weight.rows()));
    }
    require_finite(ctx, fn, "weight", as_const(weight));
    if (!bias.empty()) require_finite(ctx, fn, "bias", as_const(bias.as_matrix()));
  }

  /// Throws invalid_argument unless X is N x in and Y is N x out, apart from X.
  void check_batch(const char* fn, matrix_view<const T, Backend> x,
                   matrix_view<T, Backend> y) const {
    if (x.cols() != in_features()) {
      throw_invalid_argument(fn, "x.cols()", x.cols(), "in = " + std::to_string(in_features()));
    }
    require_shape(fn, "y", y, x.rows(), out_features());
    require_apart(fn, "y", y, "x", x);
  }

  /// Throws invalid_argument unless a forward is pending (for backward).
  static void require_pending(const char* fn, bool pending) {
    if (!pending) {
      throw_invalid_argument(fn, "this", "a layer without a pending forward",
                             "forward() before each backward()");
    }
  }

  /// Throws invalid_argument unless G is rows x out and dX is rows x in or
  /// empty, apart from G.
  void check_gradients(const char* fn, index_t rows, matrix_view<const T, Backend> dy,
                       matrix_view<T, Backend> dx) const {
    require_shape(fn, "dy", dy, rows, out_features());
    if (!dx.empty()) require_shape(fn, "dx", dx, rows, in_features());
    require_apart(fn, "dx", dx, "dy", dy);
  }

  /// Y = X W^T + b.
  void base_forward(context<Backend>& ctx, matrix_view<const T, Backend> x,
                    matrix_view<T, Backend> y) const {
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, as_const(weight_), T(0), y);
    if (!bias_.empty()) ops<Backend>::add_row_vector(ctx, T(1), as_const(bias_), y);
  }

  /// dX = G W.
  void base_input_gradient(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                           matrix_view<T, Backend> dx) const {
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, as_const(weight_), T(0), dx);
  }

  matrix_view<W, Backend> weight_;
  vector_view<W, Backend> bias_;
};

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

/// The options every single-adapter layer shares (lora_options and
/// nola_options hold them under these names).
struct adapter_settings {
  index_t rank;
  double alpha;
  bool rslora;
  double dropout;
  bool train_bias;
  std::uint64_t seed;
  std::uint64_t layer;
};

/// s = alpha / r, or alpha / sqrt(r) for rsLoRA.
[[nodiscard]] inline double lora_scaling(double alpha, index_t rank, bool rslora) noexcept {
  return rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank);
}

/// The base of lora, dora and nola (see the file comment): a frozen layer
/// with a writable W (merges), a rank-r update scaled by s, the bias
/// gradient, the training mode and step counter that index the dropout
/// masks, the pending forward (its adapter input X or drop(X), which
/// backward reuses, and its mask), the workspaces H = X A^T and G B, and the
/// merge record.
template <class T, class Backend>
class adapter_base : public frozen_layer<T, Backend> {
 public:
  [[nodiscard]] index_t rank() const noexcept { return settings_.rank; }
  /// s = alpha / r, or alpha / sqrt(r) with rsLoRA.
  [[nodiscard]] double scaling() const noexcept { return scaling_; }

  /// Training mode (dropout active) or evaluation mode; training by default.
  void train(bool on = true) noexcept { training_ = on; }
  [[nodiscard]] bool training() const noexcept { return training_; }
  /// The number of training forwards so far (the dropout stream's index).
  [[nodiscard]] std::uint64_t step() const noexcept { return step_; }

  /// db (out x 1); empty unless the bias trains.
  [[nodiscard]] matrix_view<T, Backend> grad_bias() noexcept { return grad_bias_.view(); }

  [[nodiscard]] bool merged() const noexcept { return merge_active_; }
  /// How many weight elements the current merge keeps to make unmerge exact.
  [[nodiscard]] std::size_t merge_exceptions() const noexcept { return record_.size(); }

 protected:
  adapter_base() = default;
  /// @throws lowrank::invalid_argument for an empty W, a bias of the wrong
  ///   size, rank not in [1, min(out, in)], alpha <= 0 or not finite,
  ///   dropout not in [0, 1) or layer >= 2^30; lowrank::numerical_error for
  ///   a non-finite entry of W or b.
  adapter_base(context<Backend>& ctx, const char* fn, matrix_view<T, Backend> weight,
               vector_view<T, Backend> bias, const adapter_settings& settings)
      : frozen_layer<T, Backend>(ctx, fn, checked(fn, weight, settings), bias),
        settings_(settings),
        scaling_(lora_scaling(settings.alpha, settings.rank, settings.rslora)) {
    if (settings.train_bias && !bias.empty()) {
      grad_bias_ = matrix<T, Backend>(ctx, weight.rows(), 1);
      ops<Backend>::fill(ctx, grad_bias_.view(), T(0));
    }
  }

  /// W, once the settings are checked against it (before W's own checks).
  /// @throws lowrank::invalid_argument for options every single adapter rejects.
  static matrix_view<T, Backend> checked(const char* fn, matrix_view<T, Backend> weight,
                                         const adapter_settings& s) {
    require_non_empty(fn, "weight", weight);
    require_in_range(fn, "options.rank", s.rank, 1, std::min(weight.rows(), weight.cols()),
                     "min(out, in)");
    if (!std::isfinite(s.alpha) || s.alpha <= 0) {
      throw_invalid_argument(fn, "options.alpha", s.alpha, "a finite alpha > 0");
    }
    // The scaling is applied in T: it must be a finite T.
    if (!std::isfinite(static_cast<T>(lora_scaling(s.alpha, s.rank, s.rslora)))) {
      throw_invalid_argument(fn, "options.alpha", s.alpha,
                             "an alpha whose scaling (alpha / r, rsLoRA alpha / sqrt(r)) is "
                             "finite in the element type");
    }
    if (!(s.dropout >= 0 && s.dropout < 1)) {
      throw_invalid_argument(fn, "options.dropout", s.dropout, "a probability in [0, 1)");
    }
    if (s.layer >= max_stream_layers) {
      throw_invalid_argument(fn, "options.layer", s.layer, "< 2^30");
    }
    return weight;
  }

  [[nodiscard]] random_stream stream(adapter_stream_kind kind, std::uint64_t index) const noexcept {
    return adapter_stream(settings_.seed, settings_.layer, kind, index);
  }

  /// Appends ("bias", b, db) when the bias trains.
  void add_bias_parameter(std::vector<parameter<T, Backend>>& list) {
    if (grad_bias_.size() > 0) list.push_back({"bias", this->bias_.as_matrix(), grad_bias_.view()});
  }
  void zero_bias_grad(context<Backend>& ctx) {
    if (grad_bias_.size() > 0) ops<Backend>::fill(ctx, grad_bias_.view(), T(0));
  }

  // --- The forward -------------------------------------------------------------

  /// Checks X and Y and ends any pending forward. When merged, computes
  /// Y = X W'^T + b and returns false (Y is complete); otherwise returns
  /// true, after Y = X W^T + b when `base_product` (dora forms Y itself).
  [[nodiscard]] bool begin_forward(context<Backend>& ctx, const char* fn,
                                   matrix_view<const T, Backend> x, matrix_view<T, Backend> y,
                                   bool base_product = true) {
    this->check_batch(fn, x, y);
    pending_ = false;
    if (merged() || base_product) this->base_forward(ctx, x, y);
    return !merged();
  }

  /// The adapter's input for this forward: X, or in training mode with
  /// dropout drop(X) (mask of `stream(dropout, step)`, in a workspace); a
  /// training forward advances the step. Remembered for backward.
  [[nodiscard]] matrix_view<const T, Backend> adapter_input(context<Backend>& ctx,
                                                            matrix_view<const T, Backend> x) {
    dropout_on_ = training_ && settings_.dropout > 0;
    input_ = x;
    if (dropout_on_) {
      dropout_stream_ = stream(adapter_stream_kind::dropout, step_);
      auto xd = dropped_.rows(ctx, x.rows(), this->in_features());
      ops<Backend>::dropout(ctx, dropout_stream_, settings_.dropout, T(1), x, T(0), xd);
      input_ = xd;
    }
    if (training_) ++step_;
    rows_ = x.rows();
    return input_;
  }

  /// H = input A^T (N x r, kept for backward), then Y += s H B^T.
  void low_rank_forward(context<Backend>& ctx, matrix_view<const T, Backend> a,
                        matrix_view<const T, Backend> b, matrix_view<T, Backend> y) {
    auto h = h_.rows(ctx, rows_, rank());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), input_, a, T(0), h);
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(scaling_), as_const(h), b, T(1), y);
  }

  /// Marks the forward complete: backward may follow.
  void end_forward() noexcept { pending_ = true; }

  // --- The backward ------------------------------------------------------------

  /// Checks the state and the shapes, then db += 1^T G (when the bias trains).
  /// @throws lowrank::invalid_argument when merged, without a pending
  ///   forward, or for G (not N x out) or dX (neither N x in nor empty).
  void begin_backward(context<Backend>& ctx, const char* fn, matrix_view<const T, Backend> dy,
                      matrix_view<T, Backend> dx) {
    if (merged()) {
      throw_invalid_argument(fn, "this", "a merged adapter",
                             "an unmerged adapter (call unmerge() first)");
    }
    this->require_pending(fn, pending_);
    this->check_gradients(fn, rows_, dy, dx);
    if (grad_bias_.size() > 0) {
      ops<Backend>::add_column_sums(ctx, T(1), dy,
                                    vector_view<T, Backend>(grad_bias_.data(), grad_bias_.rows()));
    }
  }

  /// The forward's H (N x r).
  [[nodiscard]] matrix_view<T, Backend> saved_h(context<Backend>& ctx) {
    return h_.rows(ctx, rows_, rank());
  }
  /// GB = G B (N x r) in its workspace.
  [[nodiscard]] matrix_view<T, Backend> times_b(context<Backend>& ctx,
                                                matrix_view<const T, Backend> dy,
                                                matrix_view<const T, Backend> b) {
    auto gb = gb_.rows(ctx, rows_, rank());
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, b, T(0), gb);
    return gb;
  }

  /// dX = G W + s drop'(GB A) (drop' the forward's mask; nothing when dX is empty).
  void low_rank_input_gradient(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                               matrix_view<const T, Backend> gb, matrix_view<const T, Backend> a,
                               matrix_view<T, Backend> dx) {
    if (dx.empty()) return;
    const auto s = static_cast<T>(scaling_);
    this->base_input_gradient(ctx, dy, dx);
    if (dropout_on_) {
      // drop(X) is no longer needed: its storage takes s G B A, masked into dX.
      auto t = dropped_.rows(ctx, rows_, this->in_features());
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, gb, a, T(0), t);
      add_masked(ctx, as_const(t), dx);
    } else {
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, gb, a, T(1), dx);
    }
  }

  /// dX += drop'(T), the forward's mask and scaling 1 / (1 - p).
  void add_masked(context<Backend>& ctx, matrix_view<const T, Backend> t,
                  matrix_view<T, Backend> dx) const {
    ops<Backend>::dropout(ctx, dropout_stream_, settings_.dropout, T(1), t, T(1), dx);
  }

  /// Ends the backward: the next one needs a new forward.
  void end_backward() noexcept {
    input_ = {};
    pending_ = false;
  }

  // --- The merge ---------------------------------------------------------------

  /// W = fl(c (.)_rows (W + s B A)) in extended precision (ops::merge_low_rank);
  /// with `safe`, first checks every merged value and throws numerical_error
  /// (W untouched) if one is not finite. The caller keeps B, A and c for
  /// unmerge_weight().
  /// @throws lowrank::invalid_argument when already merged.
  void merge_weight(context<Backend>& ctx, const char* fn, bool safe,
                    matrix_view<const T, Backend> b, matrix_view<const T, Backend> a,
                    vector_view<const double, Backend> c) {
    require_unmerged(fn);
    if (safe) {
      const index_t bad =
          ops<Backend>::merge_low_rank(ctx, scaling_, b, a, c, this->weight_, true, nullptr);
      if (bad >= 0) {
        const index_t rows = std::max<index_t>(this->weight_.rows(), 1);
        throw_numerical_error(fn, "the merged weight",
                              "non-finite at (" + std::to_string(bad % rows) + ", " +
                                  std::to_string(bad / rows) + ")",
                              "finite values (W is unchanged)");
      }
    }
    std::vector<merge_exception<T>> record;
    ops<Backend>::merge_low_rank(ctx, scaling_, b, a, c, this->weight_, false, &record);
    record_ = std::move(record);
    merge_active_ = true;
  }

  /// Restores the W of merge_weight() bit for bit, given the same B, A and c.
  /// @throws lowrank::invalid_argument when not merged.
  void unmerge_weight(context<Backend>& ctx, const char* fn, matrix_view<const T, Backend> b,
                      matrix_view<const T, Backend> a, vector_view<const double, Backend> c) {
    require_merged(fn);
    ops<Backend>::unmerge_low_rank(ctx, scaling_, b, a, c, this->weight_, record_);
    record_ = {};
    merge_active_ = false;
  }

  void require_unmerged(const char* fn) const {
    if (merge_active_)
      throw_invalid_argument(fn, "this", "a merged adapter", "an unmerged adapter");
  }
  void require_merged(const char* fn) const {
    if (!merge_active_) {
      throw_invalid_argument(fn, "this", "an unmerged adapter", "a merged adapter");
    }
  }
  /// The bytes the merge record holds (16 per element kept: at most out in
  /// when every element of the update changes W's rounding).
  [[nodiscard]] std::size_t merge_bytes() const noexcept {
    return record_.size() * sizeof(merge_exception<T>);
  }

  /// The settings as given.
  [[nodiscard]] const adapter_settings& settings() const noexcept { return settings_; }
  /// The dropout workspace (N x in), free between a backward and the next forward.
  [[nodiscard]] matrix_view<T, Backend> dropped(context<Backend>& ctx) {
    return dropped_.rows(ctx, rows_, this->in_features());
  }
  [[nodiscard]] bool dropout_on() const noexcept { return dropout_on_; }
  [[nodiscard]] index_t pending_rows() const noexcept { return rows_; }
  [[nodiscard]] matrix_view<const T, Backend> saved_input() const noexcept { return input_; }
  [[nodiscard]] std::size_t batch_bytes() const noexcept {
    return h_.bytes() + gb_.bytes() + dropped_.bytes();
  }
  void release_batch_workspace() noexcept {
    h_.release();
    gb_.release();
    dropped_.release();
    end_backward();
  }

 private:
  adapter_settings settings_{};
  double scaling_ = 1;
  matrix<T, Backend> grad_bias_;
  bool training_ = true;
  std::uint64_t step_ = 0;
  // The pending forward: its rows, its adapter input and its dropout mask.
  bool pending_ = false;
  bool dropout_on_ = false;
  index_t rows_ = 0;
  random_stream dropout_stream_{};
  matrix_view<const T, Backend> input_;
  batch_workspace<T, Backend> h_, gb_, dropped_;
  // The merge record.
  bool merge_active_ = false;
  std::vector<merge_exception<T>> record_;
};

}  // namespace detail
}  // namespace lowrank
