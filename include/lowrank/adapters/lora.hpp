#pragma once
/// @file
/// `lowrank::lora<Backend, T>`: a LoRA adapter on a frozen linear layer, with
/// forward, backward, merge and unmerge (ALGORITHMS.md section 2; PEFT's
/// `tuners/lora/layer.py` conventions).
///
/// **Shapes** (PyTorch `nn.Linear`): the frozen weight W is out x in, the
/// optional bias b has out entries, a batch X is N x in (one sample per row),
/// A is r x in, B is out x r. With s = alpha / r (rsLoRA: alpha / sqrt(r)):
///
///     Y = X W^T + b + s (drop(X) A^T) B^T,     dW = s B A.
///
/// **Backward.** With G = dL/dY, H = drop(X) A^T and GB = G B:
/// dB += s G^T H, dA += s GB^T drop(X), db += 1^T G (when the bias trains),
/// dX = G W + s drop'(GB A), where drop' applies the forward's mask. The
/// gradients accumulate (as in PyTorch) until zero_grad().
///
/// **Dropout** (training mode only, PEFT's `lora_dropout`): inverted dropout
/// on the adapter's input, mask M(i, j) = [u(i, j) >= p] from the Philox
/// matrix of `adapter_stream(seed, layer, dropout, step)`; each training
/// forward advances `step`, and backward reuses the forward's mask.
///
/// **State and memory.** The adapter owns A, B, their gradients (and db):
/// 2 r (in + out) (+ 2 out) scalars. It refers to W and b (views: they must
/// outlive it) and, between forward and backward, to the forward's X (which
/// the caller must keep unchanged, as autograd keeps saved tensors). Per-batch
/// workspaces: H and GB (N x r each) and, with dropout, drop(X) (N x in);
/// they grow to the largest N seen, so a training loop allocates nothing
/// after its first step.
///
/// **Costs** per step: forward 2 N in out (the base GEMM) + 2 N r (in + out);
/// backward 2 N in out (dX's base GEMM) + 4 N r (in + out).
///
/// **PiSSA export.** A PiSSA adapter changed W into W_res; pissa_as_lora()
/// gives the plain LoRA factors of rank 2r whose update applies to the
/// original W (PEFT's conversion for sharing a PiSSA adapter). The adapter
/// keeps its initial A and B for it: r (in + out) more scalars.
///
/// **Merge.** merge() adds s B A to W in extended precision (double for
/// float, long double for double), rounding once per element; unmerge()
/// subtracts it again and restores W bit for bit: the merge keeps A and B as
/// they were and the few elements whose rounding the subtraction cannot undo
/// (their index and old value). safe_merge() first checks that every merged
/// value is finite and throws, leaving W untouched, if not. While merged,
/// forward computes X W'^T + b and backward throws.
///
/// **Errors.** lowrank::invalid_argument for shapes, ranks and options (the
/// message names the function, the argument, its value and what was
/// expected), lowrank::numerical_error for non-finite weights or factors.
/// Every throwing call leaves the adapter and the caller's data as they were.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/adapters/init.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/decomp/low_rank.hpp"
#include "lowrank/decomp/randomized_svd.hpp"
#include "lowrank/decomp/truncated_svd.hpp"

namespace lowrank {

/// The options of a LoRA adapter (PEFT's `LoraConfig` names in brackets).
struct lora_options {
  index_t rank = 8;                          ///< r [r], 1 <= r <= min(out, in)
  double alpha = 8;                          ///< [lora_alpha], > 0
  bool rslora = false;                       ///< s = alpha / sqrt(r) [use_rslora]
  double dropout = 0;                        ///< p in [0, 1) [lora_dropout]
  lora_init init = lora_init::peft_default;  ///< [init_lora_weights]
  index_t pissa_iterations = 0;  ///< PiSSA: 0 = exact SVD, K > 0 = randomized, K power iterations
  bool train_bias = false;       ///< the bias trains too [bias = "lora_only"]
  std::uint64_t seed = 0;        ///< the adapter's random streams (init.hpp)
  std::uint64_t layer = 0;       ///< this layer's index in the model, < 2^30
};

template <class Backend, scalar T>
requires adapter_backend_for<Backend, T>
class lora {
 public:
  using scalar_type = T;
  using backend = Backend;

  /// A new adapter on W (out x in) and b (out entries, or empty for none),
  /// initialised as `options.init` says; PiSSA rewrites W into W_res.
  /// @throws lowrank::invalid_argument for an empty W, a bias of the wrong
  ///   size, rank not in [1, min(out, in)], alpha <= 0 or not finite, dropout
  ///   not in [0, 1), pissa_iterations < 0 or layer >= 2^30;
  ///   lowrank::numerical_error if W or b has a non-finite entry (W unchanged).
  lora(context<Backend>& ctx, matrix_view<T, Backend> weight, vector_view<T, Backend> bias,
       const lora_options& options = {})
      : lora(ctx, weight, bias, options, "lowrank::lora::lora") {
    if (options_.init == lora_init::pissa) {
      init_pissa(ctx);
    } else {
      detail::init_a(ctx, options_.init, stream(adapter_stream_kind::init, 0), a_.view());
      ops<Backend>::fill(ctx, b_.view(), T(0));
    }
  }

  /// An adapter with the given factors A (r x in) and B (out x r); W unchanged.
  /// `options.init` is ignored; `options.rank` must equal A's rows.
  /// @throws as the constructor, plus lowrank::invalid_argument for factor
  ///   shapes and lowrank::numerical_error for non-finite factors.
  [[nodiscard]] static lora from_factors(context<Backend>& ctx, matrix_view<T, Backend> weight,
                                         vector_view<T, Backend> bias,
                                         matrix_view<const T, Backend> a,
                                         matrix_view<const T, Backend> b, lora_options options) {
    const char* fn = "lowrank::lora::from_factors";
    options.rank = a.rows();
    lora layer(ctx, weight, bias, options, fn);
    detail::require_shape(fn, "a", a, layer.rank(), layer.in_features());
    detail::require_shape(fn, "b", b, layer.out_features(), layer.rank());
    detail::require_finite_values(ctx, fn, "a", a);
    detail::require_finite_values(ctx, fn, "b", b);
    ops<Backend>::copy(ctx, a, layer.a_.view());
    ops<Backend>::copy(ctx, b, layer.b_.view());
    return layer;
  }

  /// An adapter whose update s B A equals the factorisation U diag(S) V^T
  /// (out x in): B = U diag(sqrt(S / s)), A = diag(sqrt(S / s)) V^T. The rank
  /// is the factor's; W is unchanged.
  /// @throws as from_factors(), and lowrank::invalid_argument for a factor of
  ///   another shape or with a negative singular value.
  [[nodiscard]] static lora from_low_rank(context<Backend>& ctx, matrix_view<T, Backend> weight,
                                          vector_view<T, Backend> bias,
                                          const low_rank<T, Backend>& factor,
                                          lora_options options) {
    const char* fn = "lowrank::lora::from_low_rank";
    options.rank = factor.rank();
    lora layer(ctx, weight, bias, options, fn);
    if (factor.rows() != layer.out_features() || factor.cols() != layer.in_features()) {
      detail::throw_invalid_argument(
          fn, "factor",
          std::to_string(factor.rows()) + " x " + std::to_string(factor.cols()) + " factorisation",
          "out x in = " + std::to_string(layer.out_features()) + " x " +
              std::to_string(layer.in_features()));
    }
    layer.set_from_svd(ctx, factor.u.view(), factor.s.view(), factor.v.view(), fn);
    return layer;
  }

  lora(lora&&) noexcept = default;
  lora& operator=(lora&&) noexcept = default;
  lora(const lora&) = delete;
  lora& operator=(const lora&) = delete;

  // --- Shapes and options ----------------------------------------------------

  [[nodiscard]] index_t in_features() const noexcept { return weight_.cols(); }
  [[nodiscard]] index_t out_features() const noexcept { return weight_.rows(); }
  [[nodiscard]] index_t rank() const noexcept { return options_.rank; }
  /// s = alpha / r, or alpha / sqrt(r) with rsLoRA.
  [[nodiscard]] double scaling() const noexcept { return scaling_; }
  [[nodiscard]] const lora_options& options() const noexcept { return options_; }

  /// Training mode (dropout active) or evaluation mode; training by default.
  void train(bool on = true) noexcept { training_ = on; }
  [[nodiscard]] bool training() const noexcept { return training_; }
  /// The number of training forwards so far (the dropout stream's index).
  [[nodiscard]] std::uint64_t step() const noexcept { return step_; }

  // --- Parameters --------------------------------------------------------------

  [[nodiscard]] matrix_view<T, Backend> weight() const noexcept { return weight_; }
  [[nodiscard]] vector_view<T, Backend> bias() const noexcept { return bias_; }
  /// A (r x in) and B (out x r): write them freely (an optimizer step) unless merged.
  [[nodiscard]] matrix_view<T, Backend> a() noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> b() noexcept { return b_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> a() const noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> b() const noexcept { return b_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_a() noexcept { return grad_a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_b() noexcept { return grad_b_.view(); }
  /// db (out x 1); empty unless the bias trains.
  [[nodiscard]] matrix_view<T, Backend> grad_bias() noexcept { return grad_bias_.view(); }

  /// The trainable parameters with their gradients: lora_A, lora_B (and bias).
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list{{"lora_A", a_.view(), grad_a_.view()},
                                            {"lora_B", b_.view(), grad_b_.view()}};
    if (options_.train_bias && !bias_.empty()) {
      list.push_back({"bias", bias_.as_matrix(), grad_bias_.view()});
    }
    return list;
  }

  /// Sets every gradient to zero.
  void zero_grad(context<Backend>& ctx) {
    ops<Backend>::fill(ctx, grad_a_.view(), T(0));
    ops<Backend>::fill(ctx, grad_b_.view(), T(0));
    if (grad_bias_.size() > 0) ops<Backend>::fill(ctx, grad_bias_.view(), T(0));
  }

  // --- Forward and backward ----------------------------------------------------

  /// Y = X W^T + b + s (drop(X) A^T) B^T (X W'^T + b when merged). X is N x in,
  /// Y is N x out. Keeps a view of X for backward.
  /// @throws lowrank::invalid_argument for wrong shapes.
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::lora::forward";
    check_batch(fn, x, y);
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, weight(), T(0), y);
    if (!bias_.empty())
      ops<Backend>::add_row_vector(ctx, T(1), vector_view<const T, Backend>(bias_), y);
    pending_ = false;
    if (merged()) return;
    const index_t n = x.rows();
    dropout_on_ = training_ && options_.dropout > 0;
    matrix_view<const T, Backend> xa = x;
    if (dropout_on_) {
      dropout_stream_ = stream(adapter_stream_kind::dropout, step_);
      auto xd = dropped_.rows(ctx, n, in_features());
      ops<Backend>::dropout(ctx, dropout_stream_, options_.dropout, T(1), x, T(0), xd);
      xa = xd;
    }
    if (training_) ++step_;
    auto h = h_.rows(ctx, n, rank());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), xa, a(), T(0), h);
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(scaling_), as_const(h), b(), T(1), y);
    saved_x_ = x;
    saved_input_ = xa;
    pending_ = true;
  }

  /// Accumulates dA, dB (and db) from G = dL/dY (N x out) of the last
  /// forward, and writes dX = G W + s drop'(G B A) into `dx` (N x in; pass an
  /// empty view to skip it).
  /// @throws lowrank::invalid_argument without a forward since the last
  ///   backward, for a G of another shape than that forward's Y, a dx of the
  ///   wrong shape, or when merged.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    const char* fn = "lowrank::lora::backward";
    check_backward(fn, dy, dx);
    const index_t n = dy.rows();
    const auto s = static_cast<T>(scaling_);
    if (grad_bias_.size() > 0) {
      ops<Backend>::add_column_sums(ctx, T(1), dy,
                                    vector_view<T, Backend>(grad_bias_.data(), out_features()));
    }
    auto h = h_.rows(ctx, n, rank());
    auto gb = gb_.rows(ctx, n, rank());
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, dy, as_const(h), T(1), grad_b());
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, b(), T(0), gb);
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, as_const(gb), saved_input_, T(1),
                       grad_a());
    if (!dx.empty()) {
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, weight(), T(0), dx);
      if (dropout_on_) {
        // drop(X) is no longer needed: its storage takes s G B A, masked into dX.
        auto t = dropped_.rows(ctx, n, in_features());
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, as_const(gb), a(), T(0), t);
        ops<Backend>::dropout(ctx, dropout_stream_, options_.dropout, T(1), as_const(t), T(1), dx);
      } else {
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, as_const(gb), a(), T(1), dx);
      }
    }
    saved_x_ = {};
    saved_input_ = {};
    pending_ = false;
  }

  // --- PiSSA export --------------------------------------------------------------

  /// A plain LoRA update: factors, rank and alpha (rsLoRA as this adapter's).
  struct plain_lora {
    matrix<T, Backend> a;  ///< rank x in
    matrix<T, Backend> b;  ///< out x rank
    index_t rank;
    double alpha;
  };

  /// A PiSSA adapter as a LoRA update of the original weight (PEFT's conversion
  /// of a PiSSA adapter for sharing): with A0, B0 the factors at init,
  /// A' = [A; A0] (2r x in), B' = [B, -B0] (out x 2r), rank 2r and alpha 2 alpha
  /// (sqrt(2) alpha with rsLoRA), so that s' = s and
  /// W + s' B' A' = W_res + s B A: the original W plus the fine-tuning's change.
  /// @throws lowrank::invalid_argument unless the adapter was initialised by PiSSA.
  [[nodiscard]] plain_lora pissa_as_lora(context<Backend>& ctx) {
    if (initial_a_.size() == 0) {
      detail::throw_invalid_argument("lowrank::lora::pissa_as_lora", "this",
                                     "an adapter not initialised by PiSSA",
                                     "options.init == lora_init::pissa");
    }
    const index_t r = rank();
    plain_lora out{matrix<T, Backend>(ctx, 2 * r, in_features()),
                   matrix<T, Backend>(ctx, out_features(), 2 * r), 2 * r,
                   options_.rslora ? std::sqrt(2.0) * options_.alpha : 2 * options_.alpha};
    ops<Backend>::copy(ctx, a(), out.a.view().middle_rows(0, r));
    ops<Backend>::copy(ctx, as_const(initial_a_.view()), out.a.view().middle_rows(r, r));
    ops<Backend>::copy(ctx, b(), out.b.view().middle_cols(0, r));
    ops<Backend>::axpby(ctx, T(-1), as_const(initial_b_.view()), T(0),
                        out.b.view().middle_cols(r, r));
    return out;
  }

  // --- Merge -------------------------------------------------------------------

  /// W += s B A (extended precision, one rounding); see the file comment.
  /// @throws lowrank::invalid_argument when already merged.
  void merge(context<Backend>& ctx) { merge_impl(ctx, false, "lowrank::lora::merge"); }

  /// merge(), but first checks every merged value: if one is not finite,
  /// throws lowrank::numerical_error and leaves W untouched.
  void safe_merge(context<Backend>& ctx) { merge_impl(ctx, true, "lowrank::lora::safe_merge"); }

  /// Restores W exactly as it was before merge().
  /// @throws lowrank::invalid_argument when not merged.
  void unmerge(context<Backend>& ctx) {
    merge_.unmerge(ctx, "lowrank::lora::unmerge", scaling_, merged_b_.view(), merged_a_.view(), {},
                   weight_);
    merged_a_ = matrix<T, Backend>();
    merged_b_ = matrix<T, Backend>();
  }

  [[nodiscard]] bool merged() const noexcept { return merge_.active(); }
  /// How many weight elements the current merge keeps to make unmerge exact.
  [[nodiscard]] std::size_t merge_exceptions() const noexcept { return merge_.exceptions(); }

 private:
  lora(context<Backend>& ctx, matrix_view<T, Backend> weight, vector_view<T, Backend> bias,
       const lora_options& options, const char* fn)
      : options_(options), weight_(weight), bias_(bias) {
    detail::check_adapter_options(fn, weight.rows(), weight.cols(), options.rank, options.alpha,
                                  options.dropout);
    if (options.pissa_iterations < 0) {
      detail::throw_invalid_argument(fn, "options.pissa_iterations", options.pissa_iterations,
                                     ">= 0");
    }
    if (options.layer >= (std::uint64_t{1} << 30)) {
      detail::throw_invalid_argument(fn, "options.layer", options.layer, "< 2^30");
    }
    detail::check_frozen_base(ctx, fn, as_const(weight), as_const(bias));
    scaling_ = detail::lora_scaling(options.alpha, options.rank, options.rslora);
    a_ = matrix<T, Backend>(ctx, options.rank, weight.cols());
    b_ = matrix<T, Backend>(ctx, weight.rows(), options.rank);
    grad_a_ = matrix<T, Backend>(ctx, options.rank, weight.cols());
    grad_b_ = matrix<T, Backend>(ctx, weight.rows(), options.rank);
    ops<Backend>::fill(ctx, grad_a_.view(), T(0));
    ops<Backend>::fill(ctx, grad_b_.view(), T(0));
    if (options.train_bias && !bias.empty()) {
      grad_bias_ = matrix<T, Backend>(ctx, weight.rows(), 1);
      ops<Backend>::fill(ctx, grad_bias_.view(), T(0));
    }
  }

  [[nodiscard]] random_stream stream(adapter_stream_kind kind, std::uint64_t index) const noexcept {
    return adapter_stream(options_.seed, options_.layer, kind, index);
  }

  void check_batch(const char* fn, matrix_view<const T, Backend> x,
                   matrix_view<T, Backend> y) const {
    detail::check_forward_shapes(fn, x, y, in_features(), out_features());
  }

  void check_backward(const char* fn, matrix_view<const T, Backend> dy,
                      matrix_view<T, Backend> dx) const {
    detail::check_backward_state(fn, merged(), pending_, saved_x_.rows(), dy, dx, in_features(),
                                 out_features());
  }

  /// PiSSA: the rank-r SVD of W, A and B from it, W = W - s B A.
  void init_pissa(context<Backend>& ctx) {
    const auto w = as_const(weight_);
    const low_rank<T, Backend> f =
        options_.pissa_iterations == 0
            ? truncated_svd(ctx, w, rank())
            : randomized_svd(ctx, w, rank(),
                             randomized_svd_options{.oversampling = 10,
                                                    .power_iterations = options_.pissa_iterations,
                                                    .seed = options_.seed});
    set_from_svd(ctx, f.u.view(), f.s.view(), f.v.view(), "lowrank::lora::lora");
    // W_res = W - s B A, in extended precision, rounded once.
    ops<Backend>::merge_low_rank(ctx, -scaling_, b(), a(), vector_view<const double, Backend>(),
                                 weight_, false, nullptr);
    // The initial factors, for pissa_as_lora().
    initial_a_ = matrix<T, Backend>(ctx, rank(), in_features());
    initial_b_ = matrix<T, Backend>(ctx, out_features(), rank());
    ops<Backend>::copy(ctx, a(), initial_a_.view());
    ops<Backend>::copy(ctx, b(), initial_b_.view());
  }

  /// B = U diag(sqrt(S / s)), A = diag(sqrt(S / s)) V^T (host arithmetic on
  /// the r (in + out) factor entries).
  void set_from_svd(context<Backend>& ctx, matrix_view<const T, Backend> u,
                    vector_view<const T, Backend> s, matrix_view<const T, Backend> v,
                    const char* fn) {
    using host = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
    host hu(u.rows(), u.cols());
    host hv(v.rows(), v.cols());
    host hs(s.size(), 1);
    ops<Backend>::download(ctx, u, view(hu));
    ops<Backend>::download(ctx, v, view(hv));
    ops<Backend>::download(ctx, s.as_matrix(), view(hs));
    if (!hu.allFinite() || !hv.allFinite() || !hs.allFinite()) {
      detail::throw_numerical_error(fn, "factor", "non-finite entries", "finite factors");
    }
    if ((hs.array() < 0).any()) {
      detail::throw_invalid_argument(fn, "factor.s", hs.minCoeff(), "singular values >= 0");
    }
    const Eigen::Array<T, Eigen::Dynamic, 1> root = (hs.col(0).array() / T(scaling_)).sqrt();
    const host hb = hu * root.matrix().asDiagonal();
    const host ha = root.matrix().asDiagonal() * hv.transpose();
    ops<Backend>::upload(ctx, view(hb), b_.view());
    ops<Backend>::upload(ctx, view(ha), a_.view());
  }

  void merge_impl(context<Backend>& ctx, bool safe, const char* fn) {
    merge_.require_inactive(fn);
    matrix<T, Backend> keep_a(ctx, rank(), in_features());
    matrix<T, Backend> keep_b(ctx, out_features(), rank());
    ops<Backend>::copy(ctx, a(), keep_a.view());
    ops<Backend>::copy(ctx, b(), keep_b.view());
    merge_.merge(ctx, fn, scaling_, keep_b.view(), keep_a.view(), {}, weight_, safe);
    merged_a_ = std::move(keep_a);
    merged_b_ = std::move(keep_b);
  }

  lora_options options_;
  double scaling_ = 1;
  matrix_view<T, Backend> weight_;
  vector_view<T, Backend> bias_;
  matrix<T, Backend> a_, b_, grad_a_, grad_b_, grad_bias_;
  bool training_ = true;
  std::uint64_t step_ = 0;
  // The pending forward.
  matrix_view<const T, Backend> saved_x_;
  matrix_view<const T, Backend> saved_input_;
  bool pending_ = false;
  bool dropout_on_ = false;
  random_stream dropout_stream_{};
  detail::batch_workspace<T, Backend> h_, gb_, dropped_;
  // PiSSA's initial A and B (empty for the other inits).
  matrix<T, Backend> initial_a_, initial_b_;
  // The merge: A and B as merged, and the record of the exact unmerge.
  detail::weight_merge<T, Backend> merge_;
  matrix<T, Backend> merged_a_, merged_b_;
};

}  // namespace lowrank
