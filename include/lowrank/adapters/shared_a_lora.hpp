#pragma once
/// @file
/// LoRA adapters that share one A on one frozen linear layer (HydraLoRA,
/// LRAgent; docs/algorithms.md, "Adapters"), served and trained in one mixed
/// batch by per-row adapter ids or mixed by given weights for every row.
///
/// **`shared_a_lora<T, Backend>`** (HydraLoRA, LRAgent): one A (r x in)
/// shared by all adapters, each with its own B_a (out x r) and s_a. H = X A^T
/// is computed once for the whole batch, then
/// - per-row ids (forward): Y(rows of a, :) += s_a H(rows of a, :) B_a^T,
///   grouped as above (H is gathered, not X);
/// - mixing (forward_mixed, HydraLoRA's router with given weights w_a):
///   Y += sum_a w_a s_a H B_a^T for every row.
/// Backward: dB_a += s_a G_a^T H_a (w_a s_a G^T H when mixing), the per-row
/// dH = s_a G_a B_a (sum_a w_a s_a G B_a), dA += dH^T X, dX = G W + dH A. The
/// mixing weights are constants (no gradient flows to them).
///
///
/// **Ids.** A `std::span<const std::int32_t>` (a `std::vector` converts) or a
/// `vector_view<const std::int32_t, cpu>` of host memory, N entries, each -1
/// (the base only) or an adapter id. The rows are grouped by adapter as in
/// multi_lora (adapters/multi_lora.hpp, adapters/row_groups.hpp).
///
/// **State and memory.** The layer owns A and dA (2 r in scalars) and, per
/// adapter, copies of B_a and dB_a (2 r out). It refers to W and b (views:
/// they must outlive it) and, between forward and backward, to the forward's
/// X (which the caller must keep unchanged). Per-batch workspaces, grown to
/// the largest N seen, so that no call allocates after the first with a
/// given N (whatever the ids): N (out + 2 r) scalars, plus 2 N indices (host
/// and backend) and K + 1 offsets. workspace_bytes() reports them.
///
/// **Costs** (N_a rows of adapter a): forward 2 N in out (the base GEMM)
/// + 2 N r in once + sum_a 2 N_a r out (mixing: every adapter with a
/// non-zero weight over all N rows); backward 2 N in out (dX's base GEMM,
/// when dX is asked for) + 4 N r in + the adapters' share.
///
/// **Errors.** lowrank::invalid_argument for shapes, ranks (r = 0 included),
/// scalings, ids (N entries, each -1 or in [0, K)), mixing weights and
/// adapter ids out of range (the message names the function, the argument,
/// its value and what was expected); lowrank::numerical_error for non-finite
/// weights, biases or factors. Every throwing call leaves the layer and the
/// caller's data as they were.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/adapters/base.hpp"
#include "lowrank/adapters/row_groups.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"

namespace lowrank {

/// LoRA adapters sharing one A (r x in), each with its own B_a (out x r) and
/// s_a (HydraLoRA, LRAgent): H = X A^T once per batch (see the file comment).
template <scalar T, class Backend = cpu>
requires adapter_backend_for<Backend, T>
class shared_a_lora : public detail::frozen_layer<const T, Backend> {
  using base = detail::frozen_layer<const T, Backend>;

 public:
  using scalar_type = T;
  using backend = Backend;

  /// A layer on the frozen W (out x in) and b (out entries, or empty), with a
  /// copy of the shared A (r x in), a zero dA and no adapters yet.
  /// @throws lowrank::invalid_argument for an empty W, a bias of the wrong
  ///   size, r not in [1, min(out, in)] or A of another shape;
  ///   lowrank::numerical_error for a non-finite entry of W, b or A.
  shared_a_lora(context<Backend>& ctx, matrix_view<const T, Backend> weight,
                vector_view<const T, Backend> bias, matrix_view<const T, Backend> a)
      : base(ctx, "lowrank::shared_a_lora::shared_a_lora", weight, bias) {
    const char* fn = "lowrank::shared_a_lora::shared_a_lora";
    const index_t in = this->in_features();
    detail::require_in_range(fn, "a.rows()", a.rows(), 1, std::min(this->out_features(), in),
                             "min(out, in)");
    detail::require_shape(fn, "a", a, a.rows(), in);
    detail::require_finite(ctx, fn, "a", a);
    a_ = matrix<T, Backend>(ctx, a.rows(), in);
    grad_a_ = matrix<T, Backend>(ctx, a.rows(), in);
    ops<Backend>::copy(ctx, a, a_.view());
    ops<Backend>::fill(ctx, grad_a_.view(), T(0));
  }

  shared_a_lora(shared_a_lora&&) noexcept = default;
  shared_a_lora& operator=(shared_a_lora&&) noexcept = default;
  shared_a_lora(const shared_a_lora&) = delete;
  shared_a_lora& operator=(const shared_a_lora&) = delete;

  /// Adds an adapter with a copy of B (out x r) and scaling s (its update is
  /// s B A), with a zero gradient; returns its id (0, 1, ...).
  /// @throws lowrank::invalid_argument for B of another shape or a
  ///   non-finite s; lowrank::numerical_error for a non-finite entry of B.
  ///   The layer is unchanged on a throw.
  std::int32_t add_adapter(context<Backend>& ctx, matrix_view<const T, Backend> b, double scaling) {
    const char* fn = "lowrank::shared_a_lora::add_adapter";
    adapters_.require_room(fn);
    const index_t out = this->out_features();
    detail::require_shape(fn, "b", b, out, rank());
    if (!std::isfinite(static_cast<T>(scaling))) {
      detail::throw_invalid_argument(fn, "scaling", scaling,
                                     "a scaling finite in the element type");
    }
    detail::require_finite(ctx, fn, "b", b);
    factors f{matrix<T, Backend>(ctx, out, rank()), matrix<T, Backend>(ctx, out, rank()), scaling};
    ops<Backend>::copy(ctx, b, f.b.view());
    ops<Backend>::fill(ctx, f.grad_b.view(), T(0));
    return adapters_.push(std::move(f));
  }

  // --- Shapes and parameters ---------------------------------------------------

  /// r, the shared rank.
  [[nodiscard]] index_t rank() const noexcept { return a_.rows(); }
  /// K, the number of adapters.
  [[nodiscard]] index_t adapters() const noexcept { return adapters_.size(); }
  /// s_a. @throws lowrank::invalid_argument for an id not in [0, K).
  [[nodiscard]] double scaling(index_t id) const {
    return adapters_.at(id, "lowrank::shared_a_lora::scaling").scaling;
  }

  /// The shared A (r x in) and its gradient.
  [[nodiscard]] matrix_view<T, Backend> a() noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> a() const noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_a() noexcept { return grad_a_.view(); }
  /// B_a (out x r) and its gradient. @throws lowrank::invalid_argument for an
  /// id not in [0, K).
  [[nodiscard]] matrix_view<T, Backend> b(index_t id) {
    return adapters_.at(id, "lowrank::shared_a_lora::b").b.view();
  }
  [[nodiscard]] matrix_view<const T, Backend> b(index_t id) const {
    return adapters_.at(id, "lowrank::shared_a_lora::b").b.view();
  }
  [[nodiscard]] matrix_view<T, Backend> grad_b(index_t id) {
    return adapters_.at(id, "lowrank::shared_a_lora::grad_b").grad_b.view();
  }

  /// The trainable parameters: lora_A (shared), then lora_B of adapter 0, 1, ...
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list;
    list.reserve(std::size_t(adapters_.size()) + 1);
    list.push_back({"lora_A", a_.view(), grad_a_.view()});
    for (auto& f : adapters_) list.push_back({"lora_B", f.b.view(), f.grad_b.view()});
    return list;
  }

  /// Sets every gradient to zero.
  void zero_grad(context<Backend>& ctx) {
    ops<Backend>::fill(ctx, grad_a_.view(), T(0));
    for (auto& f : adapters_) ops<Backend>::fill(ctx, f.grad_b.view(), T(0));
  }

  /// The bytes of the per-batch workspaces (see the file comment).
  [[nodiscard]] std::size_t workspace_bytes() const noexcept {
    return h_.bytes() + hg_.bytes() + z_.bytes() + groups_.bytes() +
           coefficients_.capacity() * sizeof(double);
  }

  // --- Forward and backward ----------------------------------------------------

  /// Y = X W^T + b, H = X A^T, then Y(i, :) += s_a H(i, :) B_a^T for every
  /// row i with ids[i] = a >= 0. X is N x in, Y is N x out, ids has N host
  /// entries. Keeps a view of X for backward.
  /// @throws lowrank::invalid_argument for wrong shapes, a Y that overlaps X, ids.size() != N or
  ///   an id not in [-1, K) (Y unchanged).
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x,
               std::span<const std::int32_t> ids, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::shared_a_lora::forward";
    this->check_batch(fn, x, y);
    groups_.build(ctx, fn, ids, x.rows(), adapters());
    const index_t n = x.rows();
    this->base_forward(ctx, x, y);
    const index_t m = groups_.adapted();
    const auto h = h_.rows(ctx, n, rank());
    const auto hg = hg_.rows(ctx, n, rank()).middle_rows(0, m);
    const auto z = z_.rows(ctx, n, this->out_features()).middle_rows(0, m);
    if (m > 0) {
      // H = X A^T once; Hg = H(P, :); Z_a = s_a Hg_a B_a^T; Y(P, :) += Z.
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, a(), T(0), h);
      ops<Backend>::gather_rows(ctx, as_const(h), groups_.rows(), hg);
      groups_.for_each_segment([&](index_t k, index_t first, index_t count) {
        const auto& f = adapters_[k];
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(f.scaling),
                           as_const(hg.middle_rows(first, count)), f.b.view(), T(0),
                           z.middle_rows(first, count));
      });
      ops<Backend>::scatter_add_rows(ctx, T(1), as_const(z), groups_.rows(), y);
    }
    save(x, h, hg, z, mode::ids);
  }

  /// forward() with the ids as a host vector view.
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x,
               vector_view<const std::int32_t, cpu> ids, matrix_view<T, Backend> y) {
    forward(ctx, x, std::span<const std::int32_t>(ids.data(), std::size_t(ids.size())), y);
  }

  /// HydraLoRA's mixing with given weights: Y = X W^T + b + sum_a w_a s_a H B_a^T
  /// with H = X A^T, for every row. X is N x in, Y is N x out, `weights` has
  /// K host entries (an adapter with w_a = 0 costs nothing). Keeps a view of
  /// X for backward; the weights are constants for it.
  /// @throws lowrank::invalid_argument for wrong shapes, weights.size() != K
  ///   or a non-finite weight (Y unchanged).
  void forward_mixed(context<Backend>& ctx, matrix_view<const T, Backend> x,
                     std::span<const double> weights, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::shared_a_lora::forward_mixed";
    this->check_batch(fn, x, y);
    if (index_t(weights.size()) != adapters()) {
      detail::throw_invalid_argument(fn, "weights.size()", weights.size(),
                                     "K = " + std::to_string(adapters()) + " (one per adapter)");
    }
    for (std::size_t k = 0; k < weights.size(); ++k) {
      if (!std::isfinite(weights[k])) {
        detail::throw_invalid_argument(fn, ("weights[" + std::to_string(k) + "]").c_str(),
                                       weights[k], "a finite weight");
      }
    }
    const index_t n = x.rows();
    this->base_forward(ctx, x, y);
    coefficients_.assign(weights.begin(), weights.end());
    for (std::size_t k = 0; k < coefficients_.size(); ++k) {
      coefficients_[k] *= adapters_[index_t(k)].scaling;
    }
    const auto h = h_.rows(ctx, n, rank());
    // dH's storage in backward, reserved now so that backward does not allocate.
    const auto dh = hg_.rows(ctx, n, rank());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, a(), T(0), h);
    for (std::size_t k = 0; k < coefficients_.size(); ++k) {
      if (coefficients_[k] == 0) continue;
      // Y += w_a s_a H B_a^T.
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(coefficients_[k]), as_const(h),
                         adapters_[index_t(k)].b.view(), T(1), y);
    }
    save(x, h, dh, {}, mode::mixed);
  }

  /// Accumulates dA and dB_a from G = dL/dY (N x out) of the last forward
  /// (either kind), and writes dX = G W + dH A into `dx` (N x in; pass an
  /// empty view to skip it). Adapters without rows (or with w_a = 0) get no
  /// gradient.
  /// @throws lowrank::invalid_argument without a forward since the last
  ///   backward, for a G of another shape than that forward's Y, or a dx of
  ///   the wrong shape.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    const char* fn = "lowrank::shared_a_lora::backward";
    this->require_pending(fn, mode_ != mode::none);
    this->check_gradients(fn, saved_x_.rows(), dy, dx);
    if (!dx.empty()) this->base_input_gradient(ctx, dy, dx);
    // dH (N x r): the gradient of H = X A^T; dA = dH^T X, dX += dH A.
    matrix_view<T, Backend> dh;
    if (mode_ == mode::ids) {
      if (groups_.adapted() > 0) {
        // Gg = G(P, :) takes Z's storage, dHg_a = s_a Gg_a B_a takes Hg_a's
        // (once dB_a has it), dH = scatter(dHg) takes H's.
        const auto gg = saved_z_;
        ops<Backend>::gather_rows(ctx, dy, groups_.rows(), gg);
        groups_.for_each_segment([&](index_t k, index_t first, index_t count) {
          auto& f = adapters_[k];
          const auto s = T(f.scaling);
          const auto ga = as_const(gg.middle_rows(first, count));
          const auto ha = saved_hg_.middle_rows(first, count);
          // dB_a += s_a Gg_a^T Hg_a; dHg_a = s_a Gg_a B_a.
          ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, ga, as_const(ha), T(1),
                             f.grad_b.view());
          ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, ga, as_const(f.b.view()), T(0),
                             ha);
        });
        dh = saved_h_;
        ops<Backend>::fill(ctx, dh, T(0));
        ops<Backend>::scatter_add_rows(ctx, T(1), as_const(saved_hg_), groups_.rows(), dh);
      }
    } else {
      dh = saved_hg_;
      ops<Backend>::fill(ctx, dh, T(0));
      for (std::size_t k = 0; k < coefficients_.size(); ++k) {
        if (coefficients_[k] == 0) continue;
        auto& f = adapters_[index_t(k)];
        const auto c = T(coefficients_[k]);
        // dB_a += w_a s_a G^T H; dH += w_a s_a G B_a.
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, c, dy, as_const(saved_h_), T(1),
                           f.grad_b.view());
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, c, dy, as_const(f.b.view()), T(1),
                           dh);
      }
    }
    if (!dh.empty()) {
      ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), as_const(dh), saved_x_, T(1),
                         grad_a());
      if (!dx.empty()) {
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), as_const(dh), a(), T(1), dx);
      }
    }
    save({}, {}, {}, {}, mode::none);
  }

 private:
  struct factors {
    matrix<T, Backend> b, grad_b;
    double scaling;
  };

  /// What the pending forward was.
  enum class mode { none, ids, mixed };

  void save(matrix_view<const T, Backend> x, matrix_view<T, Backend> h, matrix_view<T, Backend> hg,
            matrix_view<T, Backend> z, mode m) noexcept {
    saved_x_ = x;
    saved_h_ = h;
    saved_hg_ = hg;
    saved_z_ = z;
    mode_ = m;
  }

  matrix<T, Backend> a_, grad_a_;
  detail::adapter_list<factors> adapters_;
  // The per-batch workspaces and the pending forward.
  detail::row_groups<Backend> groups_;
  detail::batch_workspace<T, Backend> h_, hg_, z_;
  std::vector<double> coefficients_;  // w_a s_a of the last forward_mixed
  matrix_view<const T, Backend> saved_x_;
  matrix_view<T, Backend> saved_h_, saved_hg_, saved_z_;
  mode mode_ = mode::none;
};

}  // namespace lowrank
