#pragma once
/// @file
/// `lowrank::lora<T, Backend>`: a LoRA adapter on a frozen linear layer, with
/// forward, backward, merge and unmerge (docs/algorithms.md, "Adapters";
/// PEFT's `tuners/lora/layer.py` conventions).
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
/// they were and the elements whose rounding the subtraction cannot undo
/// (their index and old value, 16 bytes each: usually few, but up to every
/// element of W when the update dwarfs W; merge_exceptions() counts them).
/// safe_merge() first checks that every merged value is finite and throws,
/// leaving W untouched, if not. While merged, forward computes X W'^T + b and
/// backward throws.
///
/// **Errors.** lowrank::invalid_argument for shapes, ranks and options (the
/// message names the function, the argument, its value and what was
/// expected), lowrank::numerical_error for non-finite weights or factors.
/// Every throwing call leaves the adapter and the caller's data as they were.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/adapters/base.hpp"
#include "lowrank/adapters/init.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
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
  std::uint64_t seed = 0;        ///< the adapter's random streams (adapters/base.hpp)
  std::uint64_t layer = 0;       ///< this layer's index in the model, < 2^30
};

template <scalar T, class Backend = cpu>
requires adapter_backend_for<Backend, T>
class dora;

namespace detail {

/// The factors of a LoRA update and their gradients (lora and dora hold
/// them), plus PiSSA's initial factors (empty for the other inits).
template <class T, class Backend>
struct lora_factors {
  matrix<T, Backend> a, b, grad_a, grad_b;
  matrix<T, Backend> initial_a, initial_b;

  lora_factors() = default;
  lora_factors(context<Backend>& ctx, index_t rank, index_t out, index_t in)
      : a(ctx, rank, in), b(ctx, out, rank), grad_a(ctx, rank, in), grad_b(ctx, out, rank) {
    zero_grad(ctx);
  }
  void zero_grad(context<Backend>& ctx) {
    ops<Backend>::fill(ctx, grad_a.view(), T(0));
    ops<Backend>::fill(ctx, grad_b.view(), T(0));
  }
};

}  // namespace detail

template <scalar T, class Backend = cpu>
requires adapter_backend_for<Backend, T>
class lora : public detail::adapter_base<T, Backend> {
  using base = detail::adapter_base<T, Backend>;

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
      detail::init_a(ctx, options_.init, this->stream(adapter_stream_kind::init, 0), a());
      ops<Backend>::fill(ctx, b(), T(0));
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
    return with_factors(ctx, weight, bias, a, b, options, "lowrank::lora::from_factors");
  }

  /// An adapter whose update s B A equals the factorisation U diag(S) V^T
  /// (out x in): B = U diag(sqrt(S / s)), A = diag(sqrt(S / s)) V^T. The rank
  /// is the factor's; W is unchanged.
  /// @throws as from_factors(), and lowrank::invalid_argument for a factor of
  ///   another shape, whose U, s and V disagree on the rank, or with a
  ///   negative singular value.
  [[nodiscard]] static lora from_low_rank(context<Backend>& ctx, matrix_view<T, Backend> weight,
                                          vector_view<T, Backend> bias,
                                          const low_rank<T, Backend>& factor,
                                          lora_options options) {
    const char* fn = "lowrank::lora::from_low_rank";
    const index_t k = factor.rank();
    if (factor.u.cols() != k || factor.v.cols() != k) {
      detail::throw_invalid_argument(
          fn, "factor",
          "U with " + std::to_string(factor.u.cols()) + " columns, s with " + std::to_string(k) +
              " values, V with " + std::to_string(factor.v.cols()) + " columns",
          "one rank for U, s and V");
    }
    options.rank = k;
    lora layer(ctx, weight, bias, options, fn);
    if (factor.rows() != layer.out_features() || factor.cols() != layer.in_features()) {
      detail::throw_invalid_argument(fn, "factor", detail::shape_of(factor) + " factorisation",
                                     "out x in = " + detail::shape_of(layer.weight()));
    }
    layer.set_from_svd(ctx, factor.u.view(), factor.s.view(), factor.v.view(), fn);
    return layer;
  }

  lora(lora&&) noexcept = default;
  lora& operator=(lora&&) noexcept = default;
  lora(const lora&) = delete;
  lora& operator=(const lora&) = delete;

  // --- Options and parameters ----------------------------------------------------

  [[nodiscard]] const lora_options& options() const noexcept { return options_; }

  /// A (r x in) and B (out x r): write them freely (an optimizer step) unless merged.
  [[nodiscard]] matrix_view<T, Backend> a() noexcept { return f_.a.view(); }
  [[nodiscard]] matrix_view<T, Backend> b() noexcept { return f_.b.view(); }
  [[nodiscard]] matrix_view<const T, Backend> a() const noexcept { return f_.a.view(); }
  [[nodiscard]] matrix_view<const T, Backend> b() const noexcept { return f_.b.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_a() noexcept { return f_.grad_a.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_b() noexcept { return f_.grad_b.view(); }

  /// The trainable parameters with their gradients: lora_A, lora_B (and bias).
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list{{"lora_A", a(), grad_a()}, {"lora_B", b(), grad_b()}};
    this->add_bias_parameter(list);
    return list;
  }

  /// Sets every gradient to zero.
  void zero_grad(context<Backend>& ctx) {
    f_.zero_grad(ctx);
    this->zero_bias_grad(ctx);
  }

  // --- Forward and backward ----------------------------------------------------

  /// Y = X W^T + b + s (drop(X) A^T) B^T (X W'^T + b when merged). X is N x in,
  /// Y is N x out. Keeps a view of X for backward.
  /// @throws lowrank::invalid_argument for wrong shapes or a Y that overlaps X.
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y) {
    if (!this->begin_forward(ctx, "lowrank::lora::forward", x, y)) return;
    (void)this->adapter_input(ctx, x);
    this->low_rank_forward(ctx, as_const(a()), as_const(b()), y);
    this->end_forward();
  }

  /// Accumulates dA, dB (and db) from G = dL/dY (N x out) of the last
  /// forward, and writes dX = G W + s drop'(G B A) into `dx` (N x in; pass an
  /// empty view to skip it).
  /// @throws lowrank::invalid_argument without a forward since the last
  ///   backward, for a G of another shape than that forward's Y, a dx of the
  ///   wrong shape or overlapping G, or when merged.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    this->begin_backward(ctx, "lowrank::lora::backward", dy, dx);
    const auto s = static_cast<T>(this->scaling());
    const auto h = this->saved_h(ctx);
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, dy, as_const(h), T(1), grad_b());
    const auto gb = as_const(this->times_b(ctx, dy, as_const(b())));
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, gb, this->saved_input(), T(1),
                       grad_a());
    this->low_rank_input_gradient(ctx, dy, gb, as_const(a()), dx);
    this->end_backward();
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
    if (f_.initial_a.size() == 0) {
      detail::throw_invalid_argument("lowrank::lora::pissa_as_lora", "this",
                                     "an adapter not initialised by PiSSA",
                                     "options.init == lora_init::pissa");
    }
    const index_t r = this->rank();
    plain_lora out{matrix<T, Backend>(ctx, 2 * r, this->in_features()),
                   matrix<T, Backend>(ctx, this->out_features(), 2 * r), 2 * r,
                   options_.rslora ? std::sqrt(2.0) * options_.alpha : 2 * options_.alpha};
    ops<Backend>::copy(ctx, as_const(a()), out.a.view().middle_rows(0, r));
    ops<Backend>::copy(ctx, as_const(f_.initial_a.view()), out.a.view().middle_rows(r, r));
    ops<Backend>::copy(ctx, as_const(b()), out.b.view().middle_cols(0, r));
    ops<Backend>::axpby(ctx, T(-1), as_const(f_.initial_b.view()), T(0),
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
    this->unmerge_weight(ctx, "lowrank::lora::unmerge", as_const(merged_b_.view()),
                         as_const(merged_a_.view()), {});
    merged_a_ = matrix<T, Backend>();
    merged_b_ = matrix<T, Backend>();
  }

 private:
  friend class dora<T, Backend>;

  [[nodiscard]] static detail::adapter_settings settings_of(const lora_options& o) noexcept {
    return {o.rank, o.alpha, o.rslora, o.dropout, o.train_bias, o.seed, o.layer};
  }

  lora(context<Backend>& ctx, matrix_view<T, Backend> weight, vector_view<T, Backend> bias,
       const lora_options& options, const char* fn)
      : base(ctx, fn, weight, bias, settings_of(options)),
        options_(options),
        f_(ctx, options.rank, weight.rows(), weight.cols()) {
    if (options.pissa_iterations < 0) {
      detail::throw_invalid_argument(fn, "options.pissa_iterations", options.pissa_iterations,
                                     ">= 0");
    }
  }

  /// An adapter with the factors A and B, checked (from_factors and dora's).
  static lora with_factors(context<Backend>& ctx, matrix_view<T, Backend> weight,
                           vector_view<T, Backend> bias, matrix_view<const T, Backend> a,
                           matrix_view<const T, Backend> b, lora_options options, const char* fn) {
    options.rank = a.rows();
    lora layer(ctx, weight, bias, options, fn);
    detail::require_shape(fn, "a", a, layer.rank(), layer.in_features());
    detail::require_shape(fn, "b", b, layer.out_features(), layer.rank());
    detail::require_finite(ctx, fn, "a", a);
    detail::require_finite(ctx, fn, "b", b);
    ops<Backend>::copy(ctx, a, layer.a());
    ops<Backend>::copy(ctx, b, layer.b());
    return layer;
  }

  /// PiSSA: the rank-r SVD of W, A and B from it, W = W - s B A.
  void init_pissa(context<Backend>& ctx) {
    const auto w = as_const(this->weight());
    const low_rank<T, Backend> f =
        options_.pissa_iterations == 0
            ? truncated_svd(ctx, w, this->rank())
            : randomized_svd(ctx, w, this->rank(),
                             randomized_svd_options{.oversampling = 10,
                                                    .power_iterations = options_.pissa_iterations,
                                                    .seed = options_.seed});
    set_from_svd(ctx, f.u.view(), f.s.view(), f.v.view(), "lowrank::lora::lora");
    // W_res = W - s B A, in extended precision, rounded once.
    ops<Backend>::merge_low_rank(ctx, -this->scaling(), as_const(b()), as_const(a()),
                                 vector_view<const double, Backend>(), this->weight(), false,
                                 nullptr);
    // The initial factors, for pissa_as_lora().
    f_.initial_a = matrix<T, Backend>(ctx, this->rank(), this->in_features());
    f_.initial_b = matrix<T, Backend>(ctx, this->out_features(), this->rank());
    ops<Backend>::copy(ctx, as_const(a()), f_.initial_a.view());
    ops<Backend>::copy(ctx, as_const(b()), f_.initial_b.view());
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
    const Eigen::Array<T, Eigen::Dynamic, 1> root = (hs.col(0).array() / T(this->scaling())).sqrt();
    const host hb = hu * root.matrix().asDiagonal();
    const host ha = root.matrix().asDiagonal() * hv.transpose();
    ops<Backend>::upload(ctx, view(hb), b());
    ops<Backend>::upload(ctx, view(ha), a());
  }

  void merge_impl(context<Backend>& ctx, bool safe, const char* fn) {
    this->require_unmerged(fn);
    matrix<T, Backend> keep_a(ctx, this->rank(), this->in_features());
    matrix<T, Backend> keep_b(ctx, this->out_features(), this->rank());
    ops<Backend>::copy(ctx, as_const(a()), keep_a.view());
    ops<Backend>::copy(ctx, as_const(b()), keep_b.view());
    this->merge_weight(ctx, fn, safe, as_const(keep_b.view()), as_const(keep_a.view()), {});
    merged_a_ = std::move(keep_a);
    merged_b_ = std::move(keep_b);
  }

  lora_options options_;
  detail::lora_factors<T, Backend> f_;
  // A and B as merged (for the exact unmerge).
  matrix<T, Backend> merged_a_, merged_b_;
};

}  // namespace lowrank
