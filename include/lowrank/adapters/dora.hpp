#pragma once
/// @file
/// `lowrank::dora<T, Backend>`: weight-decomposed low-rank adaptation (DoRA,
/// Liu et al. 2024) on a frozen linear layer, as PEFT computes it
/// (`tuners/lora/dora.py`, `DoraLinearLayer`; docs/algorithms.md, "Adapters").
///
/// **Math.** A LoRA pair (A r x in, B out x r, scaling s) plus a trainable
/// magnitude m with one entry per output row. Every forward computes the row
/// norms n = ||W + s B A||_row, **detached** (no gradient flows through n), and
/// c = m / n. Without dropout
///
///     Z = X W^T + s (X A^T) B^T,    Y = b + c (.) Z   (column j of Y scaled by c_j),
///
/// and with dropout (PEFT's form, which applies the dropped input to the
/// magnitude-scaled part only), with X_d = drop(X):
///
///     Z = X_d W^T + s (X_d A^T) B^T,    Y = b + (X - X_d) W^T + c (.) Z.
///
/// Backward, with G = dL/dY and G' = G (.) c: dm_j += sum_t G_tj Z_tj / n_j;
/// dB += s G'^T H; dA += s (G' B)^T X_d; db += 1^T G (when the bias trains);
/// dX = G' W + s (G' B) A without dropout, and
/// dX = G W + drop'((G' - G) W + s (G' B) A) with it.
///
/// **The norm without an out x in temporary** (the default, and only, path):
///     n_i^2 = ||W_i||^2 + 2 s <B_i, (W A^T)_i> + s^2 <B_i, (B (A A^T))_i>,
/// with ||W_i||^2 computed once (W is frozen) and everything accumulated in
/// double: O(r out in) per step. n is floored at `norm_floor` = 1e-12, so a
/// zero row (W_i = 0, B_i = 0: real checkpoints have them, and PEFT returns
/// NaN there) gives c_i Z_ti = 0 instead of 0 / 0.
///
/// **Init.** A and B as for LoRA (`lora_options::init`, PiSSA included), then
/// m = ||W + s B A||_row (so that the adapter starts as the base layer); or
/// trained A, B and m given at once (`from_factors`, to load a PEFT DoRA).
///
/// **Merge.** W' = c (.)_rows (W + s B A) with c = m / n from the current A, B
/// and m, in extended precision and rounded once; c, A, B and the elements
/// the inverse cannot recompute (16 bytes each: usually few, up to every
/// element of W when the update dwarfs W) are kept, so unmerge() restores W
/// bit for bit. safe_merge() throws (W untouched) on a non-finite merged value.
///
/// **Memory** beyond LoRA's: m and dm (out each), ||W_i||^2 and n (double),
/// W A^T, B A A^T (out x r), A A^T (r x r); per batch Z and G' (N x out each)
/// and, with dropout, X - X_d (N x in).
///
/// **Costs** per step beyond LoRA's: 2 r out in + 2 r^2 (in + out) flops for
/// the norm, O(N out) element-wise work; with dropout, one more N x in x out
/// GEMM in forward and in backward (PEFT pays the same). The per-row
/// arithmetic (n, c = m / n, dm) runs on the backend too: on a GPU a step
/// neither copies to nor waits for the host.
///
/// **Errors.** As lora (adapters/lora.hpp).

#include <string>
#include <utility>
#include <vector>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/adapters/base.hpp"
#include "lowrank/adapters/lora.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"

namespace lowrank {

template <scalar T, class Backend>
requires adapter_backend_for<Backend, T>
class dora : public detail::adapter_base<T, Backend> {
  using base = detail::adapter_base<T, Backend>;

 public:
  using scalar_type = T;
  using backend = Backend;

  /// The floor of the row norms n.
  static constexpr double norm_floor = 1e-12;

  /// A new adapter: A, B as `lora(ctx, weight, bias, options)` makes them,
  /// then m = ||W + s B A||_row.
  /// @throws as lora's constructor.
  dora(context<Backend>& ctx, matrix_view<T, Backend> weight, vector_view<T, Backend> bias,
       const lora_options& options = {})
      : dora(ctx, lora<T, Backend>(ctx, weight, bias, options)) {}

  /// DoRA over an existing, unmerged LoRA adapter (its A, B, options, bias
  /// gradient and step), with m = ||W + s B A||_row.
  /// @throws lowrank::invalid_argument if the adapter is merged.
  dora(context<Backend>& ctx, lora<T, Backend>&& adapter)
      : dora(ctx, std::move(adapter), "lowrank::dora::dora") {
    ops<Backend>::convert(ctx, as_const(n_.view()), m_.view());
  }

  /// A DoRA with trained factors A (r x in) and B (out x r) and magnitude m
  /// (out entries), as a PEFT DoRA adapter stores them; W unchanged.
  /// `options.init` is ignored; `options.rank` must equal A's rows.
  /// @throws as lora::from_factors(), and lowrank::invalid_argument for a
  ///   magnitude of another size, lowrank::numerical_error for a non-finite one.
  [[nodiscard]] static dora from_factors(context<Backend>& ctx, matrix_view<T, Backend> weight,
                                         vector_view<T, Backend> bias,
                                         matrix_view<const T, Backend> a,
                                         matrix_view<const T, Backend> b,
                                         vector_view<const T, Backend> magnitude,
                                         const lora_options& options) {
    const char* fn = "lowrank::dora::from_factors";
    auto adapter = lora<T, Backend>::with_factors(ctx, weight, bias, a, b, options, fn);
    detail::require_shape(fn, "magnitude", magnitude.as_matrix(), adapter.out_features(), 1);
    detail::require_finite(ctx, fn, "magnitude", magnitude.as_matrix());
    dora layer(ctx, std::move(adapter), fn);
    ops<Backend>::copy(ctx, magnitude.as_matrix(), layer.m_.view());
    return layer;
  }

  dora(dora&&) noexcept = default;
  dora& operator=(dora&&) noexcept = default;
  dora(const dora&) = delete;
  dora& operator=(const dora&) = delete;

  // --- Options and parameters ----------------------------------------------------

  [[nodiscard]] const lora_options& options() const noexcept { return options_; }

  [[nodiscard]] matrix_view<T, Backend> a() noexcept { return f_.a.view(); }
  [[nodiscard]] matrix_view<T, Backend> b() noexcept { return f_.b.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_a() noexcept { return f_.grad_a.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_b() noexcept { return f_.grad_b.view(); }
  /// m (out x 1), trainable.
  [[nodiscard]] matrix_view<T, Backend> magnitude() noexcept { return m_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_magnitude() noexcept { return grad_m_.view(); }
  /// The row norms n of the last forward (or of the construction), in double,
  /// in the backend's memory (out entries).
  [[nodiscard]] vector_view<const double, Backend> norms() const noexcept { return cvec(n_); }

  /// lora_A, lora_B, lora_magnitude_vector (and bias) with their gradients.
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list{{"lora_A", a(), grad_a()},
                                            {"lora_B", b(), grad_b()},
                                            {"lora_magnitude_vector", m_.view(), grad_m_.view()}};
    this->add_bias_parameter(list);
    return list;
  }

  void zero_grad(context<Backend>& ctx) {
    f_.zero_grad(ctx);
    this->zero_bias_grad(ctx);
    ops<Backend>::fill(ctx, grad_m_.view(), T(0));
  }

  // --- Forward and backward ----------------------------------------------------

  /// Y = b + c (.) Z (file comment); X is N x in, Y N x out. Keeps a view of X.
  /// @throws lowrank::invalid_argument for wrong shapes or a Y that overlaps X.
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y) {
    if (!this->begin_forward(ctx, "lowrank::dora::forward", x, y, false)) return;
    const auto w = as_const(this->weight());
    compute_norms(ctx);
    ops<Backend>::divide(ctx, cvec(m_), cvec(n_), 0.0, vec(c_));  // c = m / n
    const index_t n = x.rows();
    const auto xa = this->adapter_input(ctx, x);
    if (this->dropout_on()) {
      // Y = (X - X_d) W^T, the part PEFT leaves unscaled.
      auto rest = rest_.rows(ctx, n, this->in_features());
      ops<Backend>::copy(ctx, x, rest);
      ops<Backend>::axpby(ctx, T(-1), xa, T(1), rest);
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), as_const(rest), w, T(0), y);
    }
    auto z = z_.rows(ctx, n, this->out_features());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), xa, w, T(0), z);
    this->low_rank_forward(ctx, as_const(a()), as_const(b()), z);
    const auto c = cvec(c_);
    if (this->dropout_on()) {
      auto scaled = gp_.rows(ctx, n, this->out_features());
      ops<Backend>::copy(ctx, as_const(z), scaled);
      ops<Backend>::scale_columns(ctx, c, scaled);
      ops<Backend>::axpby(ctx, T(1), as_const(scaled), T(1), y);
    } else {
      ops<Backend>::copy(ctx, as_const(z), y);
      ops<Backend>::scale_columns(ctx, c, y);
    }
    const auto bias = this->bias();
    if (!bias.empty()) ops<Backend>::add_row_vector(ctx, T(1), as_const(bias), y);
    this->end_forward();
  }

  /// Accumulates dm, dA, dB (and db) from G = dL/dY of the last forward and
  /// writes dX into `dx` (N x in; an empty view skips it).
  /// @throws lowrank::invalid_argument as lora::backward.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    this->begin_backward(ctx, "lowrank::dora::backward", dy, dx);
    const index_t n = this->pending_rows();
    const auto s = static_cast<T>(this->scaling());
    const auto w = as_const(this->weight());
    // dm_j += <G(:, j), Z(:, j)> / n_j (in double, rounded once).
    auto z = z_.rows(ctx, n, this->out_features());
    ops<Backend>::column_dots(ctx, dy, as_const(z), vec(dots_));
    ops<Backend>::divide(ctx, cvec(dots_), cvec(n_), 1.0, vec(grad_m_));
    // G' = G (.) c.
    auto gp = gp_.rows(ctx, n, this->out_features());
    ops<Backend>::copy(ctx, dy, gp);
    ops<Backend>::scale_columns(ctx, cvec(c_), gp);
    const auto h = this->saved_h(ctx);
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, as_const(gp), as_const(h), T(1),
                       grad_b());
    const auto gb = as_const(this->times_b(ctx, as_const(gp), as_const(b())));
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, gb, this->saved_input(), T(1),
                       grad_a());
    if (!dx.empty()) {
      if (this->dropout_on()) {
        // dX = G W + drop'((G' - G) W + s (G' B) A).
        this->base_input_gradient(ctx, dy, dx);
        ops<Backend>::axpby(ctx, T(-1), dy, T(1), gp);
        auto t = rest_.rows(ctx, n, this->in_features());
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), as_const(gp), w, T(0), t);
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, gb, as_const(a()), T(1), t);
        this->add_masked(ctx, as_const(t), dx);
      } else {
        // dX = G' W + s (G' B) A.
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), as_const(gp), w, T(0), dx);
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, gb, as_const(a()), T(1), dx);
      }
    }
    this->end_backward();
  }

  // --- Merge -------------------------------------------------------------------

  /// W = c (.)_rows (W + s B A), c = m / n; see the file comment.
  /// @throws lowrank::invalid_argument when already merged.
  void merge(context<Backend>& ctx) { merge_impl(ctx, false, "lowrank::dora::merge"); }

  /// merge(), unless a merged value would be non-finite: then throws
  /// lowrank::numerical_error and leaves W untouched.
  void safe_merge(context<Backend>& ctx) { merge_impl(ctx, true, "lowrank::dora::safe_merge"); }

  /// Restores W bit for bit.
  /// @throws lowrank::invalid_argument when not merged.
  void unmerge(context<Backend>& ctx) {
    this->unmerge_weight(ctx, "lowrank::dora::unmerge", as_const(merged_b_.view()),
                         as_const(merged_a_.view()), cvec(merged_c_));
    merged_a_ = matrix<T, Backend>();
    merged_b_ = matrix<T, Backend>();
    merged_c_ = matrix<double, Backend>();
  }

 private:
  /// The layer over `adapter`'s parts, with n = ||W + s B A||_row (m is the
  /// caller's to set).
  dora(context<Backend>& ctx, lora<T, Backend>&& adapter, const char* fn)
      : base(take_base(fn, adapter)), options_(adapter.options_), f_(std::move(adapter.f_)) {
    const index_t out = this->out_features();
    const index_t r = this->rank();
    m_ = matrix<T, Backend>(ctx, out, 1);
    grad_m_ = matrix<T, Backend>(ctx, out, 1);
    ops<Backend>::fill(ctx, grad_m_.view(), T(0));
    c_ = matrix<T, Backend>(ctx, out, 1);
    n_ = matrix<double, Backend>(ctx, out, 1);
    w_sq_ = matrix<double, Backend>(ctx, out, 1);
    dots_ = matrix<double, Backend>(ctx, out, 1);
    dots2_ = matrix<double, Backend>(ctx, out, 1);
    wa_ = matrix<T, Backend>(ctx, out, r);
    bm_ = matrix<T, Backend>(ctx, out, r);
    aa_ = matrix<T, Backend>(ctx, r, r);
    const auto w = as_const(this->weight());
    ops<Backend>::row_dots(ctx, w, w, vec(w_sq_));
    compute_norms(ctx);
  }

  /// The base part of an unmerged lora.
  static base&& take_base(const char* fn, lora<T, Backend>& adapter) {
    if (adapter.merged()) {
      detail::throw_invalid_argument(fn, "adapter", "a merged LoRA adapter",
                                     "an unmerged one (call unmerge() first)");
    }
    return static_cast<base&&>(adapter);
  }

  template <class U>
  static vector_view<U, Backend> vec(matrix<U, Backend>& m) noexcept {
    return {m.data(), m.rows()};
  }
  template <class U>
  static vector_view<const U, Backend> cvec(const matrix<U, Backend>& m) noexcept {
    return {m.data(), m.rows()};
  }

  /// n_ = max(||W + s B A||_row, norm_floor), by the factored formula.
  void compute_norms(context<Backend>& ctx) {
    const T one(1);
    const auto w = as_const(this->weight());
    const auto a = as_const(f_.a.view());
    const auto b = as_const(f_.b.view());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, one, w, a, T(0), wa_.view());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, one, a, a, T(0), aa_.view());
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, one, b, as_const(aa_.view()), T(0),
                       bm_.view());
    ops<Backend>::row_dots(ctx, b, as_const(wa_.view()), vec(dots_));
    ops<Backend>::row_dots(ctx, b, as_const(bm_.view()), vec(dots2_));
    ops<Backend>::factored_row_norms(ctx, this->scaling(), norm_floor, cvec(w_sq_), cvec(dots_),
                                     cvec(dots2_), vec(n_));
  }

  void merge_impl(context<Backend>& ctx, bool safe, const char* fn) {
    this->require_unmerged(fn);
    compute_norms(ctx);
    matrix<double, Backend> c(ctx, this->out_features(), 1);
    ops<Backend>::divide(ctx, cvec(m_), cvec(n_), 0.0, vec(c));  // c = m / n in double
    matrix<T, Backend> keep_a(ctx, this->rank(), this->in_features());
    matrix<T, Backend> keep_b(ctx, this->out_features(), this->rank());
    ops<Backend>::copy(ctx, as_const(f_.a.view()), keep_a.view());
    ops<Backend>::copy(ctx, as_const(f_.b.view()), keep_b.view());
    this->merge_weight(ctx, fn, safe, as_const(keep_b.view()), as_const(keep_a.view()), cvec(c));
    merged_a_ = std::move(keep_a);
    merged_b_ = std::move(keep_b);
    merged_c_ = std::move(c);
  }

  lora_options options_;
  detail::lora_factors<T, Backend> f_;
  matrix<T, Backend> m_, grad_m_, c_;
  matrix<double, Backend> n_, w_sq_, dots_, dots2_;
  matrix<T, Backend> wa_, bm_, aa_;
  detail::batch_workspace<T, Backend> z_, gp_, rest_;
  // The merge: A, B and c = m / n as merged (for the exact unmerge).
  matrix<T, Backend> merged_a_, merged_b_;
  matrix<double, Backend> merged_c_;
};

}  // namespace lowrank
