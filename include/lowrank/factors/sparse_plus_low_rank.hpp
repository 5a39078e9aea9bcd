#pragma once
/// @file
/// `lowrank::sparse_plus_low_rank<T, Backend>`: SLTrain's linear layer, a
/// weight that is a low-rank product plus a fixed-support sparse matrix
/// (Han et al., "SLTrain: a sparse plus low-rank approach for parameter and
/// memory efficient pretraining", 2024; andyjm3/SLTrain
/// `splora/splora_linear.py`, `sparse-lora/sparse_linear.cpp`;
/// docs/algorithms.md, "Factors").
///
/// **Math** (PyTorch `nn.Linear` shapes: X is N x in, Y is N x out, A is r x
/// in, B is out x r, S is out x in with nnz = floor(density out in) entries,
/// s = alpha / r):
///
///     W = s B A + S,      Y = X W^T + b = s (X A^T) B^T + X S^T + b.
///
/// As an adapter on a frozen layer (W0, b0): Y = X (W0 + s B A + S)^T + b0.
///
/// **Backward** (G = dL/dY, H = X A^T, GB = G B): dB += s G^T H, dA += s
/// GB^T X, dvalues += the support's entries of G^T X (an SDDMM: 2 N nnz
/// flops, never the out x in product), db += 1^T G, dX = s GB A + G S (+ G
/// W0). Gradients accumulate until zero_grad().
///
/// **Initialisation** (SLTrain's): A ~ U(+-1/sqrt(in)) (kaiming_uniform with
/// a = sqrt(5)), B = 0, values ~ U(+-1/sqrt(in)), bias ~ U(+-1/sqrt(out)),
/// from the Philox streams `factor_stream(seed, layer, kind)` (kinds 9, 10,
/// 11), the support from kind 8 (factors/sparse.hpp). So W = S at step 0. As
/// an adapter, the values start at 0 too (ours: the update s B A + S starts
/// at zero, as LoRA's does) and the base's bias stays frozen.
///
/// **Routes.** `factored` computes as the formulas above: per step 6 N r (in
/// + out) GEMM flops and 6 N nnz sparse flops (two products with S and the
/// SDDMM), per-step temporaries H and GB (N x r each), the CPU sparse
/// products' scratch from the context (a packed copy of one N x in or N x out
/// operand, nnz sums) and, with `support_storage::seed`, the support (O(nnz)):
/// O(N (in + out) + nnz) in all. `dense` is the reference's
/// algorithm: it forms W (out x in) in the forward, keeps it for the
/// backward (the reference forms it twice), and forms dW = G^T X: 6 N out in
/// + 6 r out in flops and an out x in temporary. `automatic` (the default)
/// picks per batch size by `factor_route_for<Backend>` (see there): with
/// SLTrain's shapes the factored route always wins. bench/factors_bench.cpp
/// measures both and the dense layer.
///
/// **State and memory.** Parameters A, B, values, bias and as many
/// gradients: 2 (r (in + out) + nnz + out) scalars; the support: nnz + out +
/// 1 int32 (`indices`, the default; more on CUDA, factors/sparse.hpp) or none
/// (`seed`: drawn again at every forward, a few ms per million entries). The
/// layer keeps a view of the forward's X for the backward (the caller keeps X
/// unchanged, as autograd keeps saved tensors).
///
/// **Errors.** lowrank::invalid_argument (the message names the function,
/// the argument, its value and what was expected) for shapes, a rank outside
/// [1, min(out, in)], alpha <= 0, a density outside (0, 1), layer >= 2^30, a
/// backward without a forward; lowrank::numerical_error for non-finite
/// weights given to the adapter or to from_tensors. A throwing call leaves
/// the layer and the caller's data as they were.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/adapters/base.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
#include "lowrank/factors/backend.hpp"
#include "lowrank/factors/sparse.hpp"

namespace lowrank {

/// Where a sparse-plus-low-rank layer keeps its support.
enum class support_storage {
  indices,  ///< the CSR arrays (nnz + out + 1 int32)
  seed,     ///< nothing: drawn again from (seed, layer) at every forward
};

/// How a sparse-plus-low-rank layer computes (see the file comment).
enum class factor_route { automatic, factored, dense };

/// The options of a sparse-plus-low-rank layer (SLTrain's names in brackets).
struct sparse_plus_low_rank_options {
  index_t rank = 128;     ///< r [r], 1 <= r <= min(out, in)
  double alpha = 32;      ///< s = alpha / r [lora_alpha], > 0
  double density = 0.03;  ///< delta in (0, 1) [sp_ratio]; nnz = floor(delta out in)
  bool bias = true;       ///< a trainable bias (pre-training only) [bias]
  support_storage storage = support_storage::indices;
  factor_route route = factor_route::automatic;
  std::uint64_t seed = 0;   ///< the layer's random streams (factors/sparse.hpp)
  std::uint64_t layer = 0;  ///< this layer's index in the model, < 2^30
};

/// The route `factor_route::automatic` takes for a batch of N rows: factored
/// iff 6 N r (in + out) + kappa 6 N nnz (+ 4 N in out for an adapter's base)
/// < 6 N in out + 6 r in out (the dense route), kappa =
/// detail::sparse_flop_cost<Backend> (4 on the CPU, measured by
/// bench/factors_bench.cpp: a sparse flop costs 3 to 5 GEMM flops there).
template <class Backend>
[[nodiscard]] inline factor_route factor_route_for(index_t out, index_t in, index_t rank,
                                                   index_t nnz, index_t batch,
                                                   bool adapter) noexcept {
  const double n = double(batch), o = double(out), i = double(in), r = double(rank);
  const double factored = 6 * n * r * (i + o) +
                          detail::sparse_flop_cost<Backend> * 6 * n * double(nnz) +
                          (adapter ? 4 * n * i * o : 0.0);
  const double dense = 6 * n * i * o + 6 * r * i * o;
  return factored < dense ? factor_route::factored : factor_route::dense;
}

template <scalar T, class Backend = cpu>
requires factors_backend_for<Backend, T>
class sparse_plus_low_rank {
 public:
  using scalar_type = T;
  using backend = Backend;

  /// A new layer for pre-training, initialised as SLTrain's (file comment).
  /// @throws lowrank::invalid_argument for out or in < 1, rank not in [1,
  ///   min(out, in)], alpha <= 0 or not finite, density not in (0, 1),
  ///   layer >= 2^30.
  sparse_plus_low_rank(context<Backend>& ctx, index_t out, index_t in,
                       const sparse_plus_low_rank_options& options = {})
      : sparse_plus_low_rank(ctx, out, in, options, "lowrank::sparse_plus_low_rank") {
    init_factors(ctx, true);
    if (options_.bias) {
      bias_ = vector<T, Backend>(ctx, out);
      grad_bias_ = vector<T, Backend>(ctx, out);
      uniform(ctx, factor_stream_kind::bias, T(1 / std::sqrt(double(out))),
              bias_.view().as_matrix());
      ops<Backend>::fill(ctx, grad_bias_.view().as_matrix(), T(0));
    }
  }

  /// An adapter on the frozen W0 (out x in) and b0 (out entries or empty):
  /// Y = X (W0 + s B A + S)^T + b0, with B = 0 and values = 0 at first.
  /// `options.bias` is ignored (b0 stays frozen). W0 and b0 are views that
  /// must outlive the layer.
  /// @throws as the other constructor, lowrank::invalid_argument for an
  ///   empty W0 or a b0 of the wrong size, lowrank::numerical_error for a
  ///   non-finite entry of W0 or b0.
  sparse_plus_low_rank(context<Backend>& ctx, matrix_view<const T, Backend> base_weight,
                       vector_view<const T, Backend> base_bias,
                       sparse_plus_low_rank_options options)
      : sparse_plus_low_rank(ctx, checked_rows(base_weight), base_weight.cols(),
                             (options.bias = false, options), "lowrank::sparse_plus_low_rank") {
    const char* fn = "lowrank::sparse_plus_low_rank";
    if (!base_bias.empty() && base_bias.size() != base_weight.rows()) {
      detail::throw_invalid_argument(fn, "base_bias.size()", base_bias.size(),
                                     "0 (no bias) or out = " + std::to_string(base_weight.rows()));
    }
    detail::require_finite(ctx, fn, "base_weight", base_weight);
    if (!base_bias.empty()) detail::require_finite(ctx, fn, "base_bias", base_bias.as_matrix());
    base_weight_ = base_weight;
    base_bias_ = base_bias;
    init_factors(ctx, false);
  }

  /// A pre-training layer with the given tensors (an SLTrain state dict):
  /// A (r x in), B (out x r), the values in the support's order, the support
  /// (out x in; moved in) and the bias (out entries, or empty for none).
  /// options.rank, density and bias are taken from the tensors; with
  /// `support_storage::seed` the support must be the one (seed, layer) draws.
  /// @throws lowrank::invalid_argument for shapes that disagree, or a support
  ///   that is not the seed's; lowrank::numerical_error for non-finite tensors.
  [[nodiscard]] static sparse_plus_low_rank from_tensors(
      context<Backend>& ctx, matrix_view<const T, Backend> a, matrix_view<const T, Backend> b,
      vector_view<const T, Backend> values, sparse_support<Backend> support,
      vector_view<const T, Backend> bias, sparse_plus_low_rank_options options) {
    const char* fn = "lowrank::sparse_plus_low_rank::from_tensors";
    const index_t out = support.rows();
    const index_t in = support.cols();
    if (out < 1) detail::throw_invalid_argument(fn, "support", "an empty support", "out x in");
    options.rank = a.rows();
    options.bias = !bias.empty();
    sparse_plus_low_rank layer(ctx, out, in, options, fn, support.nnz());
    detail::require_shape(fn, "a", a, layer.rank(), in);
    detail::require_shape(fn, "b", b, out, layer.rank());
    detail::require_shape(fn, "values", values.as_matrix(), support.nnz(), 1);
    if (!bias.empty()) detail::require_shape(fn, "bias", bias.as_matrix(), out, 1);
    detail::require_finite(ctx, fn, "a", a);
    detail::require_finite(ctx, fn, "b", b);
    detail::require_finite(ctx, fn, "values", values.as_matrix());
    if (!bias.empty()) detail::require_finite(ctx, fn, "bias", bias.as_matrix());
    if (options.storage == support_storage::seed) {
      const sparse_support<Backend> drawn = layer.draw_support(ctx);
      if (drawn.row_offsets(ctx) != support.row_offsets(ctx) ||
          drawn.col_indices(ctx) != support.col_indices(ctx)) {
        detail::throw_invalid_argument(fn, "support", "a support other than the seed's",
                                       "the support drawn from (options.seed, options.layer)");
      }
    } else {
      layer.support_ = std::move(support);
    }
    ops<Backend>::copy(ctx, a, layer.a());
    ops<Backend>::copy(ctx, b, layer.b());
    ops<Backend>::copy(ctx, values.as_matrix(), layer.values().as_matrix());
    if (!bias.empty()) {
      layer.bias_ = vector<T, Backend>(ctx, out);
      layer.grad_bias_ = vector<T, Backend>(ctx, out);
      ops<Backend>::copy(ctx, bias.as_matrix(), layer.bias_.view().as_matrix());
      ops<Backend>::fill(ctx, layer.grad_bias_.view().as_matrix(), T(0));
    }
    return layer;
  }

  sparse_plus_low_rank(sparse_plus_low_rank&&) noexcept = default;
  sparse_plus_low_rank& operator=(sparse_plus_low_rank&&) noexcept = default;
  sparse_plus_low_rank(const sparse_plus_low_rank&) = delete;
  sparse_plus_low_rank& operator=(const sparse_plus_low_rank&) = delete;

  // --- Shape, options and parameters -------------------------------------------

  [[nodiscard]] const sparse_plus_low_rank_options& options() const noexcept { return options_; }
  [[nodiscard]] index_t out_features() const noexcept { return out_; }
  [[nodiscard]] index_t in_features() const noexcept { return in_; }
  [[nodiscard]] index_t rank() const noexcept { return options_.rank; }
  [[nodiscard]] index_t nnz() const noexcept { return nnz_; }
  /// s = alpha / r.
  [[nodiscard]] double scaling() const noexcept { return options_.alpha / double(rank()); }
  /// Whether the layer sits on a frozen W0 (the adapter constructor).
  [[nodiscard]] bool is_adapter() const noexcept { return !base_weight_.empty(); }

  [[nodiscard]] matrix_view<T, Backend> a() noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> b() noexcept { return b_.view(); }
  [[nodiscard]] vector_view<T, Backend> values() noexcept { return values_.view(); }
  [[nodiscard]] vector_view<T, Backend> bias() noexcept { return bias_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> a() const noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> b() const noexcept { return b_.view(); }
  [[nodiscard]] vector_view<const T, Backend> values() const noexcept { return values_.view(); }
  [[nodiscard]] vector_view<const T, Backend> bias() const noexcept { return bias_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_a() noexcept { return grad_a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_b() noexcept { return grad_b_.view(); }
  [[nodiscard]] vector_view<T, Backend> grad_values() noexcept { return grad_values_.view(); }
  [[nodiscard]] vector_view<T, Backend> grad_bias() noexcept { return grad_bias_.view(); }

  /// The support (drawn again from the seed with `support_storage::seed`).
  [[nodiscard]] sparse_support<Backend> support_copy(context<Backend>& ctx) const {
    if (options_.storage == support_storage::seed) return draw_support(ctx);
    return sparse_support<Backend>::from_csr(ctx, out_, in_, support_.row_offsets(ctx),
                                             support_.col_indices(ctx));
  }

  /// The trainable parameters with their gradients, by SLTrain's names:
  /// lora_A, lora_B, sparse_value (nnz x 1), and bias when it trains.
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list{
        {"lora_A", a(), grad_a()},
        {"lora_B", b(), grad_b()},
        {"sparse_value", values().as_matrix(), grad_values().as_matrix()}};
    if (bias_.size() > 0) list.push_back({"bias", bias().as_matrix(), grad_bias().as_matrix()});
    return list;
  }

  /// Sets every gradient to zero.
  void zero_grad(context<Backend>& ctx) {
    ops<Backend>::fill(ctx, grad_a(), T(0));
    ops<Backend>::fill(ctx, grad_b(), T(0));
    ops<Backend>::fill(ctx, grad_values().as_matrix(), T(0));
    if (grad_bias_.size() > 0) ops<Backend>::fill(ctx, grad_bias().as_matrix(), T(0));
  }

  /// The number of trainable scalars: r (in + out) + nnz (+ out).
  [[nodiscard]] index_t parameter_count() const noexcept {
    return rank() * (in_ + out_) + nnz_ + bias_.size();
  }
  /// Bytes the layer keeps between steps: parameters, gradients, the support.
  [[nodiscard]] std::size_t persistent_bytes() const noexcept {
    return 2 * sizeof(T) * std::size_t(parameter_count()) + support_.bytes();
  }
  /// Bytes of per-step temporaries held now (they grow to the largest batch).
  [[nodiscard]] std::size_t workspace_bytes() const noexcept {
    return h_.bytes() + gb_.bytes() + dense_.bytes() + pending_support_.bytes();
  }

  // --- Forward and backward ----------------------------------------------------

  /// The route a batch of N rows takes (options.route, or the cost model).
  [[nodiscard]] factor_route route_for(index_t batch) const noexcept {
    if (options_.route != factor_route::automatic) return options_.route;
    return factor_route_for<Backend>(out_, in_, rank(), nnz_, batch, is_adapter());
  }

  /// Y = X (s B A + S)^T + b (+ X W0^T + b0 for an adapter). X is N x in, Y
  /// is N x out. Keeps a view of X for backward.
  /// @throws lowrank::invalid_argument for wrong shapes or a Y that overlaps X.
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::sparse_plus_low_rank::forward";
    if (x.cols() != in_) {
      detail::throw_invalid_argument(fn, "x.cols()", x.cols(), "in = " + std::to_string(in_));
    }
    detail::require_shape(fn, "y", y, x.rows(), out_);
    detail::require_apart(fn, "y", y, "x", x);
    pending_ = false;
    const index_t n = x.rows();
    route_ = route_for(n);
    if (options_.storage == support_storage::seed) pending_support_ = draw_support(ctx);
    const support_view<Backend> s = support_view_now();
    const auto sc = static_cast<T>(scaling());
    if (route_ == factor_route::dense) {
      const auto w = dense_.rows(ctx, out_, in_);
      fill_dense(ctx, w, s);
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, as_const(w), T(0), y);
    } else {
      const auto h = h_.rows(ctx, n, rank());
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, a(), T(0), h);
      if (is_adapter()) {
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, base_weight_, T(0), y);
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, sc, as_const(h), b(), T(1), y);
      } else {
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, sc, as_const(h), b(), T(0), y);
      }
      ops<Backend>::sparse_times(ctx, transpose::no, T(1), s, values(), x, y);
    }
    if (!base_bias_.empty()) ops<Backend>::add_row_vector(ctx, T(1), base_bias_, y);
    if (bias_.size() > 0) ops<Backend>::add_row_vector(ctx, T(1), bias(), y);
    saved_x_ = x;
    pending_ = true;
  }

  /// Accumulates dA, dB, dvalues (and db) from G = dL/dY (N x out) of the
  /// last forward, and writes dX = s G B A + G S (+ G W0) into `dx` (N x in;
  /// pass an empty view to skip it).
  /// @throws lowrank::invalid_argument without a forward since the last
  ///   backward, for a G of another shape than that forward's Y, or a dx of
  ///   the wrong shape or overlapping G.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    const char* fn = "lowrank::sparse_plus_low_rank::backward";
    if (!pending_) {
      detail::throw_invalid_argument(fn, "this", "a layer without a pending forward",
                                     "forward() before each backward()");
    }
    const index_t n = saved_x_.rows();
    detail::require_shape(fn, "dy", dy, n, out_);
    if (!dx.empty()) detail::require_shape(fn, "dx", dx, n, in_);
    detail::require_apart(fn, "dx", dx, "dy", dy);
    const auto x = saved_x_;
    const support_view<Backend> s = support_view_now();
    const auto sc = static_cast<T>(scaling());
    if (route_ == factor_route::dense) {
      const auto w = dense_.rows(ctx, out_, in_);
      if (!dx.empty())
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, as_const(w), T(0), dx);
      // dW = G^T X replaces W.
      ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), dy, x, T(0), w);
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, sc, as_const(w), a(), T(1), grad_b());
      ops<Backend>::gemm(ctx, transpose::yes, transpose::no, sc, b(), as_const(w), T(1), grad_a());
      ops<Backend>::dense_to_sparse(ctx, T(1), s, as_const(w), T(1), grad_values());
    } else {
      const auto h = h_.rows(ctx, n, rank());
      ops<Backend>::gemm(ctx, transpose::yes, transpose::no, sc, dy, as_const(h), T(1), grad_b());
      const auto gb = gb_.rows(ctx, n, rank());
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, b(), T(0), gb);
      ops<Backend>::gemm(ctx, transpose::yes, transpose::no, sc, as_const(gb), x, T(1), grad_a());
      ops<Backend>::sampled_product(ctx, T(1), dy, x, s, T(1), grad_values());
      if (!dx.empty()) {
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, sc, as_const(gb), a(), T(0), dx);
        if (is_adapter()) {
          ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, base_weight_, T(1), dx);
        }
        ops<Backend>::sparse_times(ctx, transpose::yes, T(1), s, values(), dy, dx);
      }
    }
    if (grad_bias_.size() > 0) ops<Backend>::add_column_sums(ctx, T(1), dy, grad_bias());
    pending_ = false;
    pending_support_ = sparse_support<Backend>();
  }

  // --- Merge ---------------------------------------------------------------------

  /// W = s B A + S (+ W0 for an adapter) into `w` (out x in): s B A in
  /// extended precision rounded once, then S added.
  /// @throws lowrank::invalid_argument for a w of another shape.
  void dense_weight(context<Backend>& ctx, matrix_view<T, Backend> w) const {
    const char* fn = "lowrank::sparse_plus_low_rank::dense_weight";
    detail::require_shape(fn, "w", w, out_, in_);
    if (is_adapter()) {
      ops<Backend>::copy(ctx, base_weight_, w);
    } else {
      ops<Backend>::fill(ctx, w, T(0));
    }
    ops<Backend>::merge_low_rank(ctx, scaling(), b(), a(), vector_view<const double, Backend>(), w,
                                 false, nullptr);
    if (options_.storage == support_storage::seed) {
      const sparse_support<Backend> s = draw_support(ctx);
      ops<Backend>::sparse_to_dense(ctx, T(1), s.view(), values(), w);
    } else {
      ops<Backend>::sparse_to_dense(ctx, T(1), support_.view(), values(), w);
    }
  }

 private:
  /// Checks the options, allocates the parameters and (indices) draws the support.
  sparse_plus_low_rank(context<Backend>& ctx, index_t out, index_t in,
                       const sparse_plus_low_rank_options& options, const char* fn,
                       std::optional<index_t> nnz = std::nullopt)
      : options_(options), out_(out), in_(in) {
    if (out < 1) detail::throw_invalid_argument(fn, "out", out, ">= 1");
    if (in < 1) detail::throw_invalid_argument(fn, "in", in, ">= 1");
    if (options.rank < 1 || options.rank > std::min(out, in)) {
      detail::throw_invalid_argument(
          fn, "options.rank", options.rank,
          "in [1, min(out, in)] = [1, " + std::to_string(std::min(out, in)) + "]");
    }
    if (!(options.alpha > 0) || !std::isfinite(options.alpha)) {
      detail::throw_invalid_argument(fn, "options.alpha", options.alpha, "finite and > 0");
    }
    if (options.layer >= max_stream_layers) {
      detail::throw_invalid_argument(fn, "options.layer", options.layer, "< 2^30");
    }
    nnz_ = nnz ? *nnz : support_size(fn, out, in, options.density);
    if (nnz) options_.density = double(*nnz) / (double(out) * double(in));
    if (!nnz && options.storage == support_storage::indices) support_ = draw_support(ctx);
    if (!nnz && options.storage == support_storage::seed) {
      sparse_support<Backend>::check_limits(fn, out, in, nnz_);  // drawn at each forward
    }
    a_ = matrix<T, Backend>(ctx, rank(), in);
    b_ = matrix<T, Backend>(ctx, out, rank());
    values_ = vector<T, Backend>(ctx, nnz_);
    grad_a_ = matrix<T, Backend>(ctx, rank(), in);
    grad_b_ = matrix<T, Backend>(ctx, out, rank());
    grad_values_ = vector<T, Backend>(ctx, nnz_);
    ops<Backend>::fill(ctx, grad_a(), T(0));
    ops<Backend>::fill(ctx, grad_b(), T(0));
    ops<Backend>::fill(ctx, grad_values().as_matrix(), T(0));
  }

  static index_t checked_rows(matrix_view<const T, Backend> w) {
    detail::require_non_empty("lowrank::sparse_plus_low_rank", "base_weight", w);
    return w.rows();
  }

  /// A ~ U(+-1/sqrt(in)), B = 0, values ~ U(+-1/sqrt(in)) (or 0).
  void init_factors(context<Backend>& ctx, bool random_values) {
    const auto bound = T(1 / std::sqrt(double(in_)));
    uniform(ctx, factor_stream_kind::init_a, bound, a());
    ops<Backend>::fill(ctx, b(), T(0));
    if (random_values) {
      uniform(ctx, factor_stream_kind::values, bound, values().as_matrix());
    } else {
      ops<Backend>::fill(ctx, values().as_matrix(), T(0));
    }
  }

  /// X ~ U(-bound, bound): 2 bound u - bound from the layer's stream of `kind`.
  void uniform(context<Backend>& ctx, factor_stream_kind kind, T bound, matrix_view<T, Backend> x) {
    if (x.size() == 0) return;
    ops<Backend>::fill_random(ctx, distribution::uniform,
                              factor_stream(options_.seed, options_.layer, kind), x, 0, 0);
    ops<Backend>::affine(ctx, T(2) * bound, -bound, x);
  }

  [[nodiscard]] sparse_support<Backend> draw_support(context<Backend>& ctx) const {
    return sparse_support<Backend>::random(
        ctx, out_, in_, nnz_,
        factor_stream(options_.seed, options_.layer, factor_stream_kind::support));
  }

  [[nodiscard]] support_view<Backend> support_view_now() const noexcept {
    return options_.storage == support_storage::seed ? pending_support_.view() : support_.view();
  }

  /// W = (W0 +) s B A + S in T (the dense route's weight).
  void fill_dense(context<Backend>& ctx, matrix_view<T, Backend> w, support_view<Backend> s) {
    if (is_adapter()) ops<Backend>::copy(ctx, base_weight_, w);
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, static_cast<T>(scaling()), b(), a(),
                       is_adapter() ? T(1) : T(0), w);
    ops<Backend>::sparse_to_dense(ctx, T(1), s, values(), w);
  }

  sparse_plus_low_rank_options options_;
  index_t out_ = 0;
  index_t in_ = 0;
  index_t nnz_ = 0;
  matrix_view<const T, Backend> base_weight_;
  vector_view<const T, Backend> base_bias_;
  sparse_support<Backend> support_;
  matrix<T, Backend> a_, b_, grad_a_, grad_b_;
  vector<T, Backend> values_, grad_values_, bias_, grad_bias_;
  // The pending forward: its X, its route and (seed storage) its support.
  matrix_view<const T, Backend> saved_x_;
  factor_route route_ = factor_route::factored;
  bool pending_ = false;
  sparse_support<Backend> pending_support_;
  detail::batch_workspace<T, Backend> h_, gb_, dense_;
};

}  // namespace lowrank
