#pragma once
/// @file
/// Several LoRA adapters on one frozen linear layer, served (and trained) in
/// one mixed batch (docs/algorithms.md, "Adapters"; punica's SGMV kernels
/// and S-LoRA). adapters/shared_a_lora.hpp has the variant whose adapters
/// share one A.
///
/// **`multi_lora<T, Backend>`.** A frozen W (out x in), an optional bias b
/// (out entries) and adapters a = 0, 1, ..., K - 1, each with its own
/// A_a (r_a x in), B_a (out x r_a) and scaling s_a (ranks may differ). A batch
/// X (N x in) carries one int32 adapter id per row (id -1: the base only):
///
///     Y = X W^T + b,     Y(rows of a, :) += s_a (X(rows of a, :) A_a^T) B_a^T.
///
/// It is computed the SGMV way, with GEMMs over segments, never one GEMV per
/// row: a counting sort of the ids (on the host) gives a permutation P that
/// lists the rows of adapter 0, then those of adapter 1, ... (rows with id -1
/// left out); one `gather_rows` copies X(P, :) into a workspace Xg where each
/// adapter's rows are a contiguous segment; two small GEMMs per adapter that
/// has rows, H_a = Xg_a A_a^T and Z_a = s_a H_a B_a^T; one `scatter_add_rows`
/// adds Z into Y(P, :). Backward, with G = dL/dY and Gg = G(P, :):
/// dB_a += s_a Gg_a^T H_a, dA_a += s_a (Gg_a B_a)^T Xg_a and
/// dX = G W + scatter(s_a (Gg_a B_a) A_a). An adapter without rows in the
/// batch costs nothing and gets no gradient. The gradients accumulate (as in
/// PyTorch) until zero_grad(); W and b are frozen.
///
/// **Ids.** A `std::span<const std::int32_t>` (a `std::vector` converts) or a
/// `vector_view<const std::int32_t, cpu>` of host memory, N entries, each -1
/// or an adapter id. The permutation goes to the backend's memory through
/// `upload_indices` (a copy on the CPU, an upload on a GPU).
///
/// **State and memory.** Each adapter owns copies of its factors and their
/// gradients: 2 r_a (in + out) scalars. The layer refers to W and b (views:
/// they must outlive it). Per-batch workspaces, grown to the largest N seen,
/// so that no call allocates after the first with a given N (whatever the
/// ids): N (in + out + max r_a) scalars, plus 2 N indices (host and
/// backend) and K + 1 offsets. workspace_bytes() reports them. Adding an
/// adapter of a larger rank than all before grows the rank workspace on the
/// next forward.
///
/// **Costs** (N_a rows of adapter a): forward 2 N in out (the base GEMM)
/// + sum_a 2 N_a r_a (in + out) + the gather and scatter of the adapted rows;
/// backward 2 N in out (dX's base GEMM, when dX is asked for)
/// + sum_a 4 N_a r_a (in + out).
///
/// **Errors.** lowrank::invalid_argument for shapes, ranks (r = 0 included),
/// scalings, ids (N entries, each -1 or in [0, K)) and adapter ids out of
/// range (the message names the function, the argument,
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
#include "lowrank/adapters/lora.hpp"
#include "lowrank/adapters/row_groups.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"

namespace lowrank {

/// Several LoRA adapters (own A_a, B_a, s_a each) on one frozen layer; one
/// adapter id per batch row (see the file comment).
template <scalar T, class Backend = cpu>
requires adapter_backend_for<Backend, T>
class multi_lora : public detail::frozen_layer<const T, Backend> {
  using base = detail::frozen_layer<const T, Backend>;

 public:
  using scalar_type = T;
  using backend = Backend;

  /// A layer on the frozen W (out x in) and b (out entries, or empty for
  /// none), without adapters yet.
  /// @throws lowrank::invalid_argument for an empty W or a bias of the wrong
  ///   size; lowrank::numerical_error for a non-finite entry of W or b.
  multi_lora(context<Backend>& ctx, matrix_view<const T, Backend> weight,
             vector_view<const T, Backend> bias = {})
      : base(ctx, "lowrank::multi_lora::multi_lora", weight, bias) {}

  multi_lora(multi_lora&&) noexcept = default;
  multi_lora& operator=(multi_lora&&) noexcept = default;
  multi_lora(const multi_lora&) = delete;
  multi_lora& operator=(const multi_lora&) = delete;

  /// Adds an adapter with copies of A (r x in) and B (out x r) and scaling s
  /// (the update is s B A), with zero gradients; returns its id (0, 1, ...).
  /// @throws lowrank::invalid_argument for r not in [1, min(out, in)], A or B
  ///   of another shape, a non-finite s; lowrank::numerical_error for a
  ///   non-finite entry of A or B. The layer is unchanged on a throw.
  std::int32_t add_adapter(context<Backend>& ctx, matrix_view<const T, Backend> a,
                           matrix_view<const T, Backend> b, double scaling) {
    return add(ctx, a, b, scaling, "lowrank::multi_lora::add_adapter");
  }

  /// Adds an adapter with copies of a LoRA adapter's A, B and scaling (its
  /// dropout, bias and W are not used); returns its id.
  /// @throws as add_adapter(), and lowrank::invalid_argument when the LoRA's
  ///   in or out features differ from this layer's.
  std::int32_t add_adapter(context<Backend>& ctx, const lora<T, Backend>& adapter) {
    const char* fn = "lowrank::multi_lora::add_adapter";
    if (adapter.in_features() != this->in_features() ||
        adapter.out_features() != this->out_features()) {
      detail::throw_invalid_argument(fn, "adapter",
                                     "a LoRA of " + detail::shape_of(adapter.weight()),
                                     "out x in = " + detail::shape_of(this->weight()));
    }
    return add(ctx, adapter.a(), adapter.b(), adapter.scaling(), fn);
  }

  // --- Shapes and parameters ---------------------------------------------------

  /// K, the number of adapters.
  [[nodiscard]] index_t adapters() const noexcept { return adapters_.size(); }
  /// r_a. @throws lowrank::invalid_argument for an id not in [0, K).
  [[nodiscard]] index_t rank(index_t id) const {
    return adapters_.at(id, "lowrank::multi_lora::rank").a.rows();
  }
  /// s_a. @throws lowrank::invalid_argument for an id not in [0, K).
  [[nodiscard]] double scaling(index_t id) const {
    return adapters_.at(id, "lowrank::multi_lora::scaling").scaling;
  }

  /// A_a (r_a x in), B_a (out x r_a) and their gradients: write the factors
  /// freely (an optimizer step). @throws lowrank::invalid_argument for an id
  /// not in [0, K).
  [[nodiscard]] matrix_view<T, Backend> a(index_t id) {
    return adapters_.at(id, "lowrank::multi_lora::a").a.view();
  }
  [[nodiscard]] matrix_view<T, Backend> b(index_t id) {
    return adapters_.at(id, "lowrank::multi_lora::b").b.view();
  }
  [[nodiscard]] matrix_view<const T, Backend> a(index_t id) const {
    return adapters_.at(id, "lowrank::multi_lora::a").a.view();
  }
  [[nodiscard]] matrix_view<const T, Backend> b(index_t id) const {
    return adapters_.at(id, "lowrank::multi_lora::b").b.view();
  }
  [[nodiscard]] matrix_view<T, Backend> grad_a(index_t id) {
    return adapters_.at(id, "lowrank::multi_lora::grad_a").grad_a.view();
  }
  [[nodiscard]] matrix_view<T, Backend> grad_b(index_t id) {
    return adapters_.at(id, "lowrank::multi_lora::grad_b").grad_b.view();
  }

  /// Adapter id's trainable parameters: lora_A, lora_B.
  /// @throws lowrank::invalid_argument for an id not in [0, K).
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters(index_t id) {
    auto& f = adapters_.at(id, "lowrank::multi_lora::parameters");
    return {{"lora_A", f.a.view(), f.grad_a.view()}, {"lora_B", f.b.view(), f.grad_b.view()}};
  }
  /// Every adapter's parameters in id order: lora_A, lora_B of adapter 0, then of 1, ...
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list;
    list.reserve(2 * std::size_t(adapters_.size()));
    for (auto& f : adapters_) {
      list.push_back({"lora_A", f.a.view(), f.grad_a.view()});
      list.push_back({"lora_B", f.b.view(), f.grad_b.view()});
    }
    return list;
  }

  /// Sets every adapter's gradients to zero.
  void zero_grad(context<Backend>& ctx) {
    for (auto& f : adapters_) {
      ops<Backend>::fill(ctx, f.grad_a.view(), T(0));
      ops<Backend>::fill(ctx, f.grad_b.view(), T(0));
    }
  }

  /// The bytes of the per-batch workspaces (see the file comment).
  [[nodiscard]] std::size_t workspace_bytes() const noexcept {
    return xg_.bytes() + h_.bytes() + z_.bytes() + groups_.bytes();
  }

  // --- Forward and backward ----------------------------------------------------

  /// Y = X W^T + b, then Y(i, :) += s_a (X(i, :) A_a^T) B_a^T for every row i
  /// with ids[i] = a >= 0 (grouped GEMMs; see the file comment). X is N x in,
  /// Y is N x out, ids has N host entries.
  /// @throws lowrank::invalid_argument for wrong shapes, a Y that overlaps X, ids.size() != N or
  ///   an id not in [-1, K) (Y unchanged).
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x,
               std::span<const std::int32_t> ids, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::multi_lora::forward";
    this->check_batch(fn, x, y);
    groups_.build(ctx, fn, ids, x.rows(), adapters());
    const index_t n = x.rows();
    this->base_forward(ctx, x, y);
    const index_t m = groups_.adapted();
    const auto xg = xg_.rows(ctx, n, this->in_features()).middle_rows(0, m);
    const auto h = h_.rows(ctx, n, max_rank_).middle_rows(0, m);
    const auto z = z_.rows(ctx, n, this->out_features()).middle_rows(0, m);
    if (m > 0) {
      ops<Backend>::gather_rows(ctx, x, groups_.rows(), xg);
      groups_.for_each_segment([&](index_t k, index_t first, index_t count) {
        const auto& f = adapters_[k];
        const auto ha = h.block(first, 0, count, f.a.rows());
        // H_a = Xg_a A_a^T; Z_a = s_a H_a B_a^T.
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1),
                           as_const(xg.middle_rows(first, count)), f.a.view(), T(0), ha);
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(f.scaling), as_const(ha),
                           f.b.view(), T(0), z.middle_rows(first, count));
      });
      ops<Backend>::scatter_add_rows(ctx, T(1), as_const(z), groups_.rows(), y);
    }
    saved_xg_ = xg;
    saved_h_ = h;
    saved_z_ = z;
    saved_rows_ = n;
    pending_ = true;
  }

  /// forward() with the ids as a host vector view.
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x,
               vector_view<const std::int32_t, cpu> ids, matrix_view<T, Backend> y) {
    forward(ctx, x, std::span<const std::int32_t>(ids.data(), std::size_t(ids.size())), y);
  }

  /// Accumulates dA_a, dB_a of every adapter with rows in the last forward's
  /// batch from G = dL/dY (N x out), and writes dX = G W + (the adapters'
  /// part) into `dx` (N x in; pass an empty view to skip it). X itself is
  /// not needed (the forward kept its adapted rows).
  /// @throws lowrank::invalid_argument without a forward since the last
  ///   backward, for a G of another shape than that forward's Y, or a dx of
  ///   the wrong shape.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    const char* fn = "lowrank::multi_lora::backward";
    this->require_pending(fn, pending_);
    this->check_gradients(fn, saved_rows_, dy, dx);
    if (!dx.empty()) this->base_input_gradient(ctx, dy, dx);
    if (groups_.adapted() > 0) {
      // Gg = G(P, :) takes Z's storage; GB_a takes H_a's (once dB_a has it),
      // and s_a GB_a A_a takes Xg_a's (once dA_a has it).
      const auto gg = saved_z_;
      ops<Backend>::gather_rows(ctx, dy, groups_.rows(), gg);
      groups_.for_each_segment([&](index_t k, index_t first, index_t count) {
        auto& f = adapters_[k];
        const auto s = T(f.scaling);
        const auto ga = as_const(gg.middle_rows(first, count));
        const auto ha = saved_h_.block(first, 0, count, f.a.rows());
        const auto xa = saved_xg_.middle_rows(first, count);
        // dB_a += s_a Gg_a^T H_a; GB_a = Gg_a B_a; dA_a += s_a GB_a^T Xg_a.
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, ga, as_const(ha), T(1),
                           f.grad_b.view());
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), ga, as_const(f.b.view()), T(0),
                           ha);
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, as_const(ha), as_const(xa), T(1),
                           f.grad_a.view());
        if (!dx.empty()) {
          ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, as_const(ha),
                             as_const(f.a.view()), T(0), xa);
        }
      });
      if (!dx.empty()) {
        ops<Backend>::scatter_add_rows(ctx, T(1), as_const(saved_xg_), groups_.rows(), dx);
      }
    }
    saved_xg_ = {};
    saved_h_ = {};
    saved_z_ = {};
    pending_ = false;
  }

 private:
  struct factors {
    matrix<T, Backend> a, b, grad_a, grad_b;
    double scaling;
  };

  std::int32_t add(context<Backend>& ctx, matrix_view<const T, Backend> a,
                   matrix_view<const T, Backend> b, double scaling, const char* fn) {
    adapters_.require_room(fn);
    const index_t in = this->in_features();
    const index_t out = this->out_features();
    detail::require_in_range(fn, "a.rows()", a.rows(), 1, std::min(out, in), "min(out, in)");
    detail::require_shape(fn, "a", a, a.rows(), in);
    detail::require_shape(fn, "b", b, out, a.rows());
    if (!std::isfinite(static_cast<T>(scaling))) {
      detail::throw_invalid_argument(fn, "scaling", scaling,
                                     "a scaling finite in the element type");
    }
    detail::require_finite(ctx, fn, "a", a);
    detail::require_finite(ctx, fn, "b", b);
    const index_t r = a.rows();
    factors f{matrix<T, Backend>(ctx, r, in), matrix<T, Backend>(ctx, out, r),
              matrix<T, Backend>(ctx, r, in), matrix<T, Backend>(ctx, out, r), scaling};
    ops<Backend>::copy(ctx, a, f.a.view());
    ops<Backend>::copy(ctx, b, f.b.view());
    ops<Backend>::fill(ctx, f.grad_a.view(), T(0));
    ops<Backend>::fill(ctx, f.grad_b.view(), T(0));
    const std::int32_t id = adapters_.push(std::move(f));
    max_rank_ = std::max(max_rank_, r);
    return id;
  }

  detail::adapter_list<factors> adapters_;
  index_t max_rank_ = 0;
  // The per-batch workspaces and the pending forward.
  detail::row_groups<Backend> groups_;
  detail::batch_workspace<T, Backend> xg_, h_, z_;
  matrix_view<T, Backend> saved_xg_, saved_h_, saved_z_;
  index_t saved_rows_ = 0;
  bool pending_ = false;
};

}  // namespace lowrank
