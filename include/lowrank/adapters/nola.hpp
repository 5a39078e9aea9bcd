#pragma once
/// @file
/// `lowrank::nola<T, Backend>`: a NOLA adapter on a frozen linear layer, a
/// LoRA whose factors are linear combinations of random bases that are
/// regenerated from Philox, never stored (docs/algorithms.md, "Adapters"; Koohpayegani
/// et al., "NOLA: Compressing LoRA using Linear Combination of Random Basis",
/// ICLR 2024, reference code UCDvision/NOLA).
///
/// **Math.** The frozen weight W is out x in, the optional bias b has out
/// entries, a batch X is N x in. With k bases A_i (r x in) and l bases B_j
/// (out x r), all uniform in [-1, 1), and a frozen kaiming-uniform A0 (r x in):
///
///     A = A0 + (1/sqrt(k)) sum_i c_i A_i,   B = (1/sqrt(l)) sum_j d_j B_j,
///     Y = X W^T + b + s (drop(X) A^T) B^T,  dW = s B A,
///
/// s = alpha / r (rsLoRA: alpha / sqrt(r)) as in LoRA, alpha being LoRA's
/// scaling option. Only the coefficient vectors c (k x 1,
/// `coefficients_a()`) and d (l x 1, `coefficients_b()`) train; both start at
/// 0, so the adapter starts as the base layer (B = 0 exactly).
///
/// **Backward.** With G = dL/dY, H = drop(X) A^T, dA_full = s (G B)^T drop(X)
/// (r x in) and dB_full = s G^T H (out x r):
/// dc_i += <dA_full, A_i>_F / sqrt(k), dd_j += <dB_full, B_j>_F / sqrt(l),
/// dX = G W + s drop'(G B A). The gradients accumulate until zero_grad().
///
/// **Bases.** Column i of the random matrix of `adapter_stream(seed, layer,
/// nola_a, 0)` (r in rows, k columns, uniform mapped to [-1, 1)) is vec(A_i),
/// column-major; likewise the B bases with kind `nola_b` (out r rows, l
/// columns); A0 is lora's `peft_default` A, drawn from `adapter_stream(seed,
/// layer, init, 0)` (adapters/base.hpp). Each element depends only on (seed,
/// layer, A or B, basis index, element), so the bases are the same whatever
/// the chunk size and on every backend. The bases are generated
/// `chunk_size` at a time: vec(A) += (1/sqrt(k)) Bases_chunk c_chunk and
/// dc_chunk += Bases_chunk^T vec(dA_full) / sqrt(k) are GEMMs. A and B
/// are regenerated at every forward (the coefficients may have changed).
///
/// **Dropout** as lora's: the mask of training step t comes from
/// `adapter_stream(seed, layer, dropout, t)`, and backward reuses it.
///
/// **State and memory.** The adapter owns the k + l coefficients and their
/// gradients: 2 (k + l) scalars (state_bytes(); while merged, plus a copy of
/// the coefficients and the merge record). It refers to W and b (views: they
/// must outlive it) and, between forward and backward, to the forward's X.
/// Workspaces, freed by release_workspace(): the materialised A and B
/// (r (in + out)), one chunk of bases (max(r in min(c, k), out r min(c, l))
/// scalars for c = chunk_size, at most (r in + out r) c), dA_full / dB_full
/// (max(r in, out r), after the first backward), and per batch H and G B
/// (N x r each) and, with dropout, drop(X) (N x in). They are allocated on
/// first use and grow to the largest N seen: a training loop allocates
/// nothing after its first step.
///
/// **Costs** per step: forward 2 N in out + 2 N r (in + out), plus the
/// generation of k r in + l out r uniforms and 2 (k r in + l out r) flops to
/// form A and B; backward 2 N in out + 4 N r (in + out), plus the same
/// generation and flops again for the coefficient gradients.
///
/// **Merge.** merge() adds s B A (from the regenerated A and B) to W in
/// extended precision, rounding once per element, and keeps the coefficients
/// and the elements whose rounding the subtraction cannot undo (16 bytes
/// each: usually few, up to every element of W when the update dwarfs W);
/// unmerge()
/// regenerates the same A and B and restores W bit for bit. safe_merge()
/// first checks that every merged value is finite. While merged, forward
/// computes X W'^T + b and backward throws.
///
/// **Errors.** lowrank::invalid_argument for shapes, ranks and options (the
/// message names the function, the argument, its value and what was
/// expected), lowrank::numerical_error for a non-finite weight or bias, or a
/// non-finite merged weight in safe_merge(). Every throwing call leaves the
/// adapter and the caller's data as they were.

#include <algorithm>
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
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// The options of a NOLA adapter.
struct nola_options {
  index_t rank = 8;            ///< r, 1 <= r <= min(out, in)
  double alpha = 8;            ///< LoRA's scaling alpha (s = alpha / r), > 0
  bool rslora = false;         ///< s = alpha / sqrt(r)
  double dropout = 0;          ///< p in [0, 1), on the adapter's input
  index_t num_bases_a = 1024;  ///< k, the number of A bases, in [1, 2^32]
  index_t num_bases_b = 1024;  ///< l, the number of B bases, in [1, 2^32]
  index_t chunk_size = 64;     ///< bases generated at a time (memory bound), >= 1
  std::uint64_t seed = 0;      ///< the adapter's random streams (adapters/base.hpp)
  std::uint64_t layer = 0;     ///< this layer's index in the model, < 2^30
};

template <scalar T, class Backend = cpu>
requires adapter_backend_for<Backend, T>
class nola : public detail::adapter_base<T, Backend> {
  using base = detail::adapter_base<T, Backend>;

 public:
  using scalar_type = T;
  using backend = Backend;

  /// A new adapter on W (out x in) and b (out entries, or empty for none),
  /// with c = d = 0 (so it starts as the base layer).
  /// @throws lowrank::invalid_argument for an empty W, a bias of the wrong
  ///   size, rank not in [1, min(out, in)], alpha <= 0 or not finite, dropout
  ///   not in [0, 1), num_bases_a or num_bases_b not in [1, 2^32],
  ///   chunk_size < 1, layer >= 2^30, or r in or out r beyond the
  ///   generator's row range (2^32 R, random/philox.hpp);
  ///   lowrank::numerical_error if W or b has a non-finite entry.
  nola(context<Backend>& ctx, matrix_view<T, Backend> weight, vector_view<T, Backend> bias,
       const nola_options& options = {})
      : base(ctx, "lowrank::nola::nola", weight, bias,
             {options.rank, options.alpha, options.rslora, options.dropout, false, options.seed,
              options.layer}),
        options_(options) {
    const char* fn = "lowrank::nola::nola";
    constexpr index_t max_bases = index_t{1} << 32;
    if (options.num_bases_a < 1 || options.num_bases_a > max_bases) {
      detail::throw_invalid_argument(fn, "options.num_bases_a", options.num_bases_a,
                                     "1 <= k <= 2^32");
    }
    if (options.num_bases_b < 1 || options.num_bases_b > max_bases) {
      detail::throw_invalid_argument(fn, "options.num_bases_b", options.num_bases_b,
                                     "1 <= l <= 2^32");
    }
    if (options.chunk_size < 1) {
      detail::throw_invalid_argument(fn, "options.chunk_size", options.chunk_size, ">= 1");
    }
    constexpr index_t max_rows = (index_t{1} << 32) * rows_per_block<T, distribution::uniform>;
    const index_t basis_rows = options.rank * std::max(weight.rows(), weight.cols());
    if (basis_rows > max_rows) {
      detail::throw_invalid_argument(
          fn, "options.rank", options.rank,
          "r max(in, out) <= " + std::to_string(max_rows) + " (the generator's row range)");
    }
    coeff_a_ = matrix<T, Backend>(ctx, options.num_bases_a, 1);
    coeff_b_ = matrix<T, Backend>(ctx, options.num_bases_b, 1);
    grad_a_ = matrix<T, Backend>(ctx, options.num_bases_a, 1);
    grad_b_ = matrix<T, Backend>(ctx, options.num_bases_b, 1);
    ops<Backend>::fill(ctx, coeff_a_.view(), T(0));
    ops<Backend>::fill(ctx, coeff_b_.view(), T(0));
    zero_grad(ctx);
  }

  nola(nola&&) noexcept = default;
  nola& operator=(nola&&) noexcept = default;
  nola(const nola&) = delete;
  nola& operator=(const nola&) = delete;

  // --- Options and parameters ----------------------------------------------------

  /// k, the number of A bases.
  [[nodiscard]] index_t num_bases_a() const noexcept { return options_.num_bases_a; }
  /// l, the number of B bases.
  [[nodiscard]] index_t num_bases_b() const noexcept { return options_.num_bases_b; }
  [[nodiscard]] const nola_options& options() const noexcept { return options_; }

  /// c (k x 1) and d (l x 1): write them freely (an optimizer step) unless
  /// merged.
  [[nodiscard]] matrix_view<T, Backend> coefficients_a() noexcept { return coeff_a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> coefficients_b() noexcept { return coeff_b_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> coefficients_a() const noexcept {
    return coeff_a_.view();
  }
  [[nodiscard]] matrix_view<const T, Backend> coefficients_b() const noexcept {
    return coeff_b_.view();
  }
  [[nodiscard]] matrix_view<T, Backend> grad_coefficients_a() noexcept { return grad_a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_coefficients_b() noexcept { return grad_b_.view(); }

  /// The trainable parameters with their gradients: nola_coefficients_a
  /// (c, k x 1) and nola_coefficients_b (d, l x 1).
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    return {{"nola_coefficients_a", coeff_a_.view(), grad_a_.view()},
            {"nola_coefficients_b", coeff_b_.view(), grad_b_.view()}};
  }

  /// Sets every gradient to zero.
  void zero_grad(context<Backend>& ctx) {
    ops<Backend>::fill(ctx, grad_a_.view(), T(0));
    ops<Backend>::fill(ctx, grad_b_.view(), T(0));
  }

  // --- Bases and factors ---------------------------------------------------------

  /// Columns first, ..., first + c - 1 of the A bases: column i is vec(A_i)
  /// (r in x 1, column-major r x in). `out` is (r in) x c.
  /// @throws lowrank::invalid_argument for another row count or columns
  ///   outside [0, k).
  void bases_a(context<Backend>& ctx, index_t first, matrix_view<T, Backend> out) const {
    check_bases("lowrank::nola::bases_a", first, out, this->rank() * this->in_features(),
                num_bases_a());
    fill_bases(ctx, adapter_stream_kind::nola_a, first, out);
  }

  /// Columns first, ..., first + c - 1 of the B bases: column j is vec(B_j)
  /// (out r x 1, column-major out x r). `out` is (out r) x c.
  /// @throws lowrank::invalid_argument for another row count or columns
  ///   outside [0, l).
  void bases_b(context<Backend>& ctx, index_t first, matrix_view<T, Backend> out) const {
    check_bases("lowrank::nola::bases_b", first, out, this->out_features() * this->rank(),
                num_bases_b());
    fill_bases(ctx, adapter_stream_kind::nola_b, first, out);
  }

  /// A = A0 + (1/sqrt(k)) sum_i c_i A_i from the current coefficients
  /// into `a` (r x in, contiguous). Uses the basis workspace.
  /// @throws lowrank::invalid_argument for another shape or a strided view.
  void materialize_a(context<Backend>& ctx, matrix_view<T, Backend> a) {
    check_factor("lowrank::nola::materialize_a", "a", a, this->rank(), this->in_features());
    compose_a(ctx, coeff_a_.view(), a);
  }

  /// B = (1/sqrt(l)) sum_j d_j B_j from the current coefficients into `b`
  /// (out x r, contiguous). Uses the basis workspace.
  /// @throws lowrank::invalid_argument for another shape or a strided view.
  void materialize_b(context<Backend>& ctx, matrix_view<T, Backend> b) {
    check_factor("lowrank::nola::materialize_b", "b", b, this->out_features(), this->rank());
    compose_b(ctx, coeff_b_.view(), b);
  }

  // --- Forward and backward ----------------------------------------------------

  /// Y = X W^T + b + s (drop(X) A^T) B^T (X W'^T + b when merged), with A and
  /// B formed from the current coefficients. X is N x in, Y is N x out.
  /// Keeps a view of X for backward.
  /// @throws lowrank::invalid_argument for wrong shapes or a Y that overlaps X.
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y) {
    if (!this->begin_forward(ctx, "lowrank::nola::forward", x, y)) return;
    if (a_.size() == 0) a_ = matrix<T, Backend>(ctx, this->rank(), this->in_features());
    if (b_.size() == 0) b_ = matrix<T, Backend>(ctx, this->out_features(), this->rank());
    compose_a(ctx, as_const(coeff_a_.view()), a_.view());
    compose_b(ctx, as_const(coeff_b_.view()), b_.view());
    (void)this->adapter_input(ctx, x);
    this->low_rank_forward(ctx, as_const(a_.view()), as_const(b_.view()), y);
    this->end_forward();
  }

  /// Accumulates dc and dd from G = dL/dY (N x out) of the last forward, and
  /// writes dX = G W + s drop'(G B A) into `dx` (N x in; pass an empty view
  /// to skip it). A and B are those of that forward.
  /// @throws lowrank::invalid_argument without a forward since the last
  ///   backward (or since release_workspace()), for a G of another shape
  ///   than that forward's Y, a dx of the wrong shape or overlapping G, or when merged.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    this->begin_backward(ctx, "lowrank::nola::backward", dy, dx);
    const index_t r = this->rank();
    const auto s = static_cast<T>(this->scaling());
    if (grad_full_.size() == 0) {
      grad_full_ =
          matrix<T, Backend>(ctx, r * std::max(this->in_features(), this->out_features()), 1);
    }
    const auto a = as_const(a_.view());
    const auto gb = as_const(this->times_b(ctx, dy, as_const(b_.view())));
    // dB_full = s G^T H, then dd += Bases_b^T vec(dB_full) / sqrt(l).
    const matrix_view<T, Backend> full_b(grad_full_.data(), this->out_features(), r);
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, dy, as_const(this->saved_h(ctx)),
                       T(0), full_b);
    project(ctx, adapter_stream_kind::nola_b, as_const(full_b), grad_b_.view());
    // dA_full = s (G B)^T drop(X), then dc += Bases_a^T vec(dA_full) / sqrt(k).
    const matrix_view<T, Backend> full_a(grad_full_.data(), r, this->in_features());
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, gb, this->saved_input(), T(0),
                       full_a);
    project(ctx, adapter_stream_kind::nola_a, as_const(full_a), grad_a_.view());
    this->low_rank_input_gradient(ctx, dy, gb, a, dx);
    this->end_backward();
  }

  // --- Merge -------------------------------------------------------------------

  /// W += s B A (extended precision, one rounding); see the file comment.
  /// @throws lowrank::invalid_argument when already merged.
  void merge(context<Backend>& ctx) { merge_impl(ctx, false, "lowrank::nola::merge"); }

  /// merge(), but first checks every merged value: if one is not finite,
  /// throws lowrank::numerical_error and leaves W untouched.
  void safe_merge(context<Backend>& ctx) { merge_impl(ctx, true, "lowrank::nola::safe_merge"); }

  /// Restores W exactly as it was before merge(), from A and B regenerated
  /// with the coefficients of the merge.
  /// @throws lowrank::invalid_argument when not merged.
  void unmerge(context<Backend>& ctx) {
    const char* fn = "lowrank::nola::unmerge";
    this->require_merged(fn);
    matrix<T, Backend> a(ctx, this->rank(), this->in_features());
    matrix<T, Backend> b(ctx, this->out_features(), this->rank());
    compose_a(ctx, as_const(merged_a_.view()), a.view());
    compose_b(ctx, as_const(merged_b_.view()), b.view());
    this->unmerge_weight(ctx, fn, as_const(b.view()), as_const(a.view()), {});
    merged_a_ = matrix<T, Backend>();
    merged_b_ = matrix<T, Backend>();
  }

  // --- Memory ------------------------------------------------------------------

  /// Frees every workspace (A, B, the basis chunk, the gradient buffer and
  /// the per-batch buffers); they are allocated again on next use. Ends a
  /// pending forward (backward then throws until the next forward).
  void release_workspace() noexcept {
    a_ = matrix<T, Backend>();
    b_ = matrix<T, Backend>();
    basis_ = matrix<T, Backend>();
    grad_full_ = matrix<T, Backend>();
    this->release_batch_workspace();
  }

  /// The bytes of the adapter's state: the coefficients and their gradients,
  /// 2 (k + l) scalars, plus, while merged, the kept coefficients and the
  /// merge record.
  [[nodiscard]] std::size_t state_bytes() const noexcept {
    const auto scalars =
        static_cast<std::size_t>(coeff_a_.size() + coeff_b_.size() + grad_a_.size() +
                                 grad_b_.size() + merged_a_.size() + merged_b_.size());
    return scalars * sizeof(T) + this->merge_bytes();
  }

  /// The bytes of the workspaces now allocated (see the file comment).
  [[nodiscard]] std::size_t workspace_bytes() const noexcept {
    const auto scalars =
        static_cast<std::size_t>(a_.size() + b_.size() + basis_.size() + grad_full_.size());
    return scalars * sizeof(T) + this->batch_bytes();
  }

 private:
  void check_bases(const char* fn, index_t first, matrix_view<T, Backend> out, index_t rows,
                   index_t count) const {
    if (out.rows() != rows) {
      detail::throw_invalid_argument(fn, "out.rows()", out.rows(), std::to_string(rows));
    }
    if (first < 0 || out.cols() > count - first) {
      detail::throw_invalid_argument(fn, "first, out.cols()",
                                     std::to_string(first) + ", " + std::to_string(out.cols()),
                                     "columns within [0, " + std::to_string(count) + ")");
    }
  }

  static void check_factor(const char* fn, const char* argument, matrix_view<T, Backend> x,
                           index_t rows, index_t cols) {
    detail::require_shape(fn, argument, x, rows, cols);
    if (!x.contiguous()) {
      detail::throw_invalid_argument(fn, argument, "leading dimension " + std::to_string(x.ld()),
                                     "a contiguous view (ld = " + std::to_string(rows) + ")");
    }
  }

  /// Columns first.. of the bases of `kind`: U(-1, 1) from the uniform [0, 1).
  void fill_bases(context<Backend>& ctx, adapter_stream_kind kind, index_t first,
                  matrix_view<T, Backend> out) const {
    ops<Backend>::fill_random(ctx, distribution::uniform, this->stream(kind, 0), out, 0, first);
    ops<Backend>::affine(ctx, T(2), T(-1), out);
  }

  /// A chunk of `cols` bases of `rows` elements, in the basis workspace.
  [[nodiscard]] matrix_view<T, Backend> basis_chunk(context<Backend>& ctx, index_t rows,
                                                    index_t cols) {
    if (basis_.size() == 0) {
      const index_t c = options_.chunk_size;
      const index_t elements =
          std::max(this->rank() * this->in_features() * std::min(c, num_bases_a()),
                   this->out_features() * this->rank() * std::min(c, num_bases_b()));
      basis_ = matrix<T, Backend>(ctx, elements, 1);
    }
    return {basis_.data(), rows, cols};
  }

  /// vec(target) += (1/sqrt(count)) Bases coef, chunk by chunk (target contiguous).
  void accumulate(context<Backend>& ctx, adapter_stream_kind kind,
                  matrix_view<const T, Backend> coef, matrix_view<T, Backend> target) {
    const index_t rows = target.size();
    const index_t count = coef.rows();
    const index_t chunk = std::min(options_.chunk_size, count);
    const auto scale = static_cast<T>(1 / std::sqrt(double(count)));
    const matrix_view<T, Backend> vec(target.data(), rows, 1);
    const auto basis = basis_chunk(ctx, rows, chunk);
    for (index_t first = 0; first < count; first += chunk) {
      const index_t c = std::min(chunk, count - first);
      const auto part = basis.left_cols(c);
      fill_bases(ctx, kind, first, part);
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, scale, as_const(part),
                         coef.middle_rows(first, c), T(1), vec);
    }
  }

  /// grad += (1/sqrt(count)) Bases^T vec(full), chunk by chunk (full contiguous).
  void project(context<Backend>& ctx, adapter_stream_kind kind, matrix_view<const T, Backend> full,
               matrix_view<T, Backend> grad) {
    const index_t rows = full.size();
    const index_t count = grad.rows();
    const index_t chunk = std::min(options_.chunk_size, count);
    const auto scale = static_cast<T>(1 / std::sqrt(double(count)));
    const matrix_view<const T, Backend> vec(full.data(), rows, 1);
    const auto basis = basis_chunk(ctx, rows, chunk);
    for (index_t first = 0; first < count; first += chunk) {
      const index_t c = std::min(chunk, count - first);
      const auto part = basis.left_cols(c);
      fill_bases(ctx, kind, first, part);
      ops<Backend>::gemm(ctx, transpose::yes, transpose::no, scale, as_const(part), vec, T(1),
                         grad.middle_rows(first, c));
    }
  }

  /// A = A0 + (1/sqrt(k)) Bases_a coef.
  void compose_a(context<Backend>& ctx, matrix_view<const T, Backend> coef,
                 matrix_view<T, Backend> a) {
    detail::init_a(ctx, lora_init::peft_default, this->stream(adapter_stream_kind::init, 0), a);
    accumulate(ctx, adapter_stream_kind::nola_a, coef, a);
  }

  /// B = (1/sqrt(l)) Bases_b coef.
  void compose_b(context<Backend>& ctx, matrix_view<const T, Backend> coef,
                 matrix_view<T, Backend> b) {
    ops<Backend>::fill(ctx, b, T(0));
    accumulate(ctx, adapter_stream_kind::nola_b, coef, b);
  }

  void merge_impl(context<Backend>& ctx, bool safe, const char* fn) {
    this->require_unmerged(fn);
    // Fresh A and B: the forward's (in a_, b_) may still serve a pending backward.
    matrix<T, Backend> keep_a(ctx, num_bases_a(), 1);
    matrix<T, Backend> keep_b(ctx, num_bases_b(), 1);
    ops<Backend>::copy(ctx, as_const(coeff_a_.view()), keep_a.view());
    ops<Backend>::copy(ctx, as_const(coeff_b_.view()), keep_b.view());
    matrix<T, Backend> a(ctx, this->rank(), this->in_features());
    matrix<T, Backend> b(ctx, this->out_features(), this->rank());
    compose_a(ctx, as_const(keep_a.view()), a.view());
    compose_b(ctx, as_const(keep_b.view()), b.view());
    this->merge_weight(ctx, fn, safe, as_const(b.view()), as_const(a.view()), {});
    merged_a_ = std::move(keep_a);
    merged_b_ = std::move(keep_b);
  }

  nola_options options_;
  // The state: the coefficients c and d and their gradients.
  matrix<T, Backend> coeff_a_, coeff_b_, grad_a_, grad_b_;
  // Workspaces: A, B, one chunk of bases, dA_full / dB_full.
  matrix<T, Backend> a_, b_, basis_, grad_full_;
  // The coefficients as merged (for the exact unmerge).
  matrix<T, Backend> merged_a_, merged_b_;
};

}  // namespace lowrank
