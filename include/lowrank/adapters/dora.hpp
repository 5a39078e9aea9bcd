#pragma once
/// @file
/// `lowrank::dora<Backend, T>`: weight-decomposed low-rank adaptation (DoRA,
/// Liu et al. 2024) on a frozen linear layer, as PEFT computes it
/// (`tuners/lora/dora.py`, `DoraLinearLayer`; ALGORITHMS.md section 2).
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
/// m = ||W + s B A||_row (so that the adapter starts as the base layer).
///
/// **Merge.** W' = c (.)_rows (W + s B A) with c = m / n from the current A, B
/// and m, in extended precision and rounded once; c, A, B and the elements
/// the inverse cannot recompute are kept, so unmerge() restores W bit for
/// bit. safe_merge() throws (W untouched) on a non-finite merged value.
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

#include <utility>
#include <vector>

#include "lowrank/adapters/init.hpp"
#include "lowrank/adapters/lora.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

template <class Backend, scalar T>
requires adapter_backend_for<Backend, T>
class dora {
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
      : dora(ctx, lora<Backend, T>(ctx, weight, bias, options)) {}

  /// DoRA over an existing LoRA adapter (its A, B, options and bias
  /// gradient), with m = ||W + s B A||_row.
  dora(context<Backend>& ctx, lora<Backend, T>&& adapter) : lora_(std::move(adapter)) {
    const index_t out = lora_.out_features();
    const index_t r = lora_.rank();
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
    auto w = as_const(lora_.weight());
    ops<Backend>::row_dots(ctx, w, w, vec(w_sq_));
    compute_norms(ctx);
    ops<Backend>::convert(ctx, as_const(n_.view()), m_.view());
  }

  dora(dora&&) noexcept = default;
  dora& operator=(dora&&) noexcept = default;

  // --- Shapes, options, parameters (as lora) --------------------------------------

  [[nodiscard]] index_t in_features() const noexcept { return lora_.in_features(); }
  [[nodiscard]] index_t out_features() const noexcept { return lora_.out_features(); }
  [[nodiscard]] index_t rank() const noexcept { return lora_.rank(); }
  [[nodiscard]] double scaling() const noexcept { return lora_.scaling(); }
  [[nodiscard]] const lora_options& options() const noexcept { return lora_.options(); }
  void train(bool on = true) noexcept { lora_.train(on); }
  [[nodiscard]] bool training() const noexcept { return lora_.training(); }
  [[nodiscard]] std::uint64_t step() const noexcept { return step_; }

  [[nodiscard]] matrix_view<T, Backend> weight() const noexcept { return lora_.weight(); }
  [[nodiscard]] vector_view<T, Backend> bias() const noexcept { return lora_.bias(); }
  [[nodiscard]] matrix_view<T, Backend> a() noexcept { return lora_.a(); }
  [[nodiscard]] matrix_view<T, Backend> b() noexcept { return lora_.b(); }
  [[nodiscard]] matrix_view<T, Backend> grad_a() noexcept { return lora_.grad_a(); }
  [[nodiscard]] matrix_view<T, Backend> grad_b() noexcept { return lora_.grad_b(); }
  [[nodiscard]] matrix_view<T, Backend> grad_bias() noexcept { return lora_.grad_bias(); }
  /// m (out x 1), trainable.
  [[nodiscard]] matrix_view<T, Backend> magnitude() noexcept { return m_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_magnitude() noexcept { return grad_m_.view(); }
  /// The row norms n of the last forward (or of the construction), in double,
  /// in the backend's memory (out entries).
  [[nodiscard]] vector_view<const double, Backend> norms() const noexcept { return cvec(n_); }

  /// lora_A, lora_B, lora_magnitude_vector (and bias) with their gradients.
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    auto list = lora_.parameters();
    list.insert(list.begin() + 2, {"lora_magnitude_vector", m_.view(), grad_m_.view()});
    return list;
  }

  void zero_grad(context<Backend>& ctx) {
    lora_.zero_grad(ctx);
    ops<Backend>::fill(ctx, grad_m_.view(), T(0));
  }

  // --- Forward and backward ----------------------------------------------------

  /// Y = b + c (.) Z (file comment); X is N x in, Y N x out. Keeps a view of X.
  /// @throws lowrank::invalid_argument for wrong shapes.
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::dora::forward";
    detail::check_forward_shapes(fn, x, y, in_features(), out_features());
    pending_ = false;
    const auto w = as_const(weight());
    const auto bias_v = bias();
    if (merged()) {
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, w, T(0), y);
      if (!bias_v.empty()) ops<Backend>::add_row_vector(ctx, T(1), as_const(bias_v), y);
      return;
    }
    const index_t n = x.rows();
    const auto s = static_cast<T>(scaling());
    compute_norms(ctx);
    ops<Backend>::divide(ctx, cvec(m_), cvec(n_), 0.0, vec(c_));  // c = m / n
    dropout_on_ = training() && options().dropout > 0;
    auto z = z_.rows(ctx, n, out_features());
    matrix_view<const T, Backend> xa = x;
    if (dropout_on_) {
      dropout_stream_ =
          adapter_stream(options().seed, options().layer, adapter_stream_kind::dropout, step_);
      auto xd = dropped_.rows(ctx, n, in_features());
      ops<Backend>::dropout(ctx, dropout_stream_, options().dropout, T(1), x, T(0), xd);
      xa = xd;
      // Y = (X - X_d) W^T, the part PEFT leaves unscaled.
      auto rest = rest_.rows(ctx, n, in_features());
      ops<Backend>::copy(ctx, x, rest);
      ops<Backend>::axpby(ctx, T(-1), as_const(xd), T(1), rest);
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), as_const(rest), w, T(0), y);
    }
    if (training()) ++step_;
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), xa, w, T(0), z);
    auto h = h_.rows(ctx, n, rank());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), xa, as_const(lora_.a()), T(0), h);
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, s, as_const(h), as_const(lora_.b()),
                       T(1), z);
    const auto c = vector_view<const T, Backend>(c_.data(), out_features());
    if (dropout_on_) {
      auto scaled = gp_.rows(ctx, n, out_features());
      ops<Backend>::copy(ctx, as_const(z), scaled);
      ops<Backend>::scale_columns(ctx, c, scaled);
      ops<Backend>::axpby(ctx, T(1), as_const(scaled), T(1), y);
    } else {
      ops<Backend>::copy(ctx, as_const(z), y);
      ops<Backend>::scale_columns(ctx, c, y);
    }
    if (!bias_v.empty()) ops<Backend>::add_row_vector(ctx, T(1), as_const(bias_v), y);
    saved_rows_ = n;
    saved_input_ = xa;
    pending_ = true;
  }

  /// Accumulates dm, dA, dB (and db) from G = dL/dY of the last forward and
  /// writes dX into `dx` (N x in; an empty view skips it).
  /// @throws lowrank::invalid_argument as lora::backward.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    const char* fn = "lowrank::dora::backward";
    detail::check_backward_state(fn, merged(), pending_, saved_rows_, dy, dx, in_features(),
                                 out_features());
    const index_t n = saved_rows_;
    const auto s = static_cast<T>(scaling());
    const auto w = as_const(weight());
    auto grad_bias = lora_.grad_bias();
    if (grad_bias.rows() > 0) {
      ops<Backend>::add_column_sums(ctx, T(1), dy,
                                    vector_view<T, Backend>(grad_bias.data(), out_features()));
    }
    // dm_j += <G(:, j), Z(:, j)> / n_j (in double, rounded once).
    auto z = z_.rows(ctx, n, out_features());
    ops<Backend>::column_dots(ctx, dy, as_const(z), vec(dots_));
    ops<Backend>::divide(ctx, cvec(dots_), cvec(n_), 1.0, vec(grad_m_));
    // G' = G (.) c.
    auto gp = gp_.rows(ctx, n, out_features());
    ops<Backend>::copy(ctx, dy, gp);
    ops<Backend>::scale_columns(ctx, vector_view<const T, Backend>(c_.data(), out_features()), gp);
    auto h = h_.rows(ctx, n, rank());
    auto gb = gb_.rows(ctx, n, rank());
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, as_const(gp), as_const(h), T(1),
                       lora_.grad_b());
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), as_const(gp), as_const(lora_.b()),
                       T(0), gb);
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, as_const(gb), saved_input_, T(1),
                       lora_.grad_a());
    if (!dx.empty()) {
      if (dropout_on_) {
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, w, T(0), dx);
        ops<Backend>::axpby(ctx, T(-1), dy, T(1), gp);  // G' - G
        auto t = rest_.rows(ctx, n, in_features());
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), as_const(gp), w, T(0), t);
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, as_const(gb), as_const(lora_.a()),
                           T(1), t);
        ops<Backend>::dropout(ctx, dropout_stream_, options().dropout, T(1), as_const(t), T(1), dx);
      } else {
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), as_const(gp), w, T(0), dx);
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, as_const(gb), as_const(lora_.a()),
                           T(1), dx);
      }
    }
    saved_input_ = {};
    pending_ = false;
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
    merge_.unmerge(ctx, "lowrank::dora::unmerge", scaling(), merged_b_.view(), merged_a_.view(),
                   cvec(merged_c_), weight());
    merged_a_ = matrix<T, Backend>();
    merged_b_ = matrix<T, Backend>();
    merged_c_ = matrix<double, Backend>();
  }

  [[nodiscard]] bool merged() const noexcept { return merge_.active(); }
  [[nodiscard]] std::size_t merge_exceptions() const noexcept { return merge_.exceptions(); }

 private:
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
    const auto w = as_const(weight());
    const auto a = as_const(lora_.a());
    const auto b = as_const(lora_.b());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, one, w, a, T(0), wa_.view());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, one, a, a, T(0), aa_.view());
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, one, b, as_const(aa_.view()), T(0),
                       bm_.view());
    ops<Backend>::row_dots(ctx, b, as_const(wa_.view()), vec(dots_));
    ops<Backend>::row_dots(ctx, b, as_const(bm_.view()), vec(dots2_));
    ops<Backend>::factored_row_norms(ctx, scaling(), norm_floor, cvec(w_sq_), cvec(dots_),
                                     cvec(dots2_), vec(n_));
  }

  void merge_impl(context<Backend>& ctx, bool safe, const char* fn) {
    merge_.require_inactive(fn);
    compute_norms(ctx);
    matrix<double, Backend> c(ctx, out_features(), 1);
    ops<Backend>::divide(ctx, cvec(m_), cvec(n_), 0.0, vec(c));  // c = m / n in double
    matrix<T, Backend> keep_a(ctx, rank(), in_features());
    matrix<T, Backend> keep_b(ctx, out_features(), rank());
    ops<Backend>::copy(ctx, as_const(lora_.a()), keep_a.view());
    ops<Backend>::copy(ctx, as_const(lora_.b()), keep_b.view());
    merge_.merge(ctx, fn, scaling(), keep_b.view(), keep_a.view(), cvec(c), weight(), safe);
    merged_a_ = std::move(keep_a);
    merged_b_ = std::move(keep_b);
    merged_c_ = std::move(c);
  }

  lora<Backend, T> lora_;
  matrix<T, Backend> m_, grad_m_, c_;
  matrix<double, Backend> n_, w_sq_, dots_, dots2_;
  matrix<T, Backend> wa_, bm_, aa_;
  std::uint64_t step_ = 0;
  // The pending forward.
  bool pending_ = false;
  bool dropout_on_ = false;
  index_t saved_rows_ = 0;
  random_stream dropout_stream_{};
  matrix_view<const T, Backend> saved_input_;
  detail::batch_workspace<T, Backend> z_, gp_, h_, gb_, dropped_, rest_;
  // The merge: A, B and c = m / n as merged, and the record of the exact unmerge.
  detail::weight_merge<T, Backend> merge_;
  matrix<T, Backend> merged_a_, merged_b_;
  matrix<double, Backend> merged_c_;
};

}  // namespace lowrank
