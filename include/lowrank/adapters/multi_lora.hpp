#pragma once
/// @file
/// Several LoRA adapters on one frozen linear layer, served (and trained) in
/// one mixed batch (ALGORITHMS.md section 2, "Multi-adapter"; punica's
/// BGMV/SGMV kernels, S-LoRA, HydraLoRA and LRAgent for the shared A).
///
/// **`multi_lora<Backend, T>`.** A frozen W (out x in), an optional bias b
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
/// **`shared_a_lora<Backend, T>`** (HydraLoRA, LRAgent): one A (r x in)
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
/// **Ids.** A `std::span<const std::int32_t>` (a `std::vector` converts) or a
/// `vector_view<const std::int32_t, cpu>` of host memory, N entries, each -1
/// or an adapter id. The permutation goes to the backend's memory through
/// `upload_indices` (a copy on the CPU, an upload on a GPU).
///
/// **State and memory.** Each adapter owns copies of its factors and their
/// gradients: 2 r_a (in + out) scalars (shared A: 2 r in + 2 r out per
/// adapter). The layer refers to W and b (views: they must outlive it) and,
/// for shared_a_lora, between forward and backward, to the forward's X (which
/// the caller must keep unchanged). Per-batch workspaces, grown to the
/// largest N seen, so that no call allocates after the first with a given N
/// (whatever the ids): multi_lora N (in + out + max r_a) scalars,
/// shared_a_lora N (out + 2 r) scalars, plus 2 N indices (host and backend)
/// and K + 1 offsets. workspace_bytes() reports them. Adding an adapter of a
/// larger rank than all before grows the rank workspace on the next forward.
///
/// **Costs** (N_a rows of adapter a): forward 2 N in out (the base GEMM)
/// + sum_a 2 N_a r_a (in + out) + the gather and scatter of the adapted rows
/// (shared A: 2 N r in once + sum_a 2 N_a r out); backward 2 N in out (dX's
/// base GEMM, when dX is asked for) + sum_a 4 N_a r_a (in + out).
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
#include <limits>
#include <span>
#include <string>
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

namespace detail {

/// Throws invalid_argument unless X is N x in and Y is N x out.
template <class T, class Backend>
void check_adapter_batch(const char* fn, matrix_view<const T, Backend> x, matrix_view<T, Backend> y,
                         index_t in, index_t out) {
  if (x.cols() != in) {
    throw_invalid_argument(fn, "x.cols()", x.cols(), "in = " + std::to_string(in));
  }
  require_shape(fn, "y", y, x.rows(), out);
}

/// Throws invalid_argument unless there are n ids, each -1 or in [0, adapters).
inline void check_adapter_ids(const char* fn, std::span<const std::int32_t> ids, index_t n,
                              index_t adapters) {
  if (index_t(ids.size()) != n) {
    throw_invalid_argument(fn, "ids.size()", ids.size(),
                           "N = x.rows() = " + std::to_string(n) + " (one id per row)");
  }
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < -1 || ids[i] >= adapters) {
      throw_invalid_argument(
          fn, ("ids[" + std::to_string(i) + "]").c_str(), ids[i],
          "-1 (base only) or an adapter id in [0, " + std::to_string(adapters) + ")");
    }
  }
}

/// Throws invalid_argument unless id is in [0, adapters).
inline void check_adapter_id(const char* fn, index_t id, index_t adapters) {
  if (id < 0 || id >= adapters) {
    throw_invalid_argument(fn, "id", id, "an adapter id in [0, " + std::to_string(adapters) + ")");
  }
}

/// Throws invalid_argument when no further int32 adapter id is available.
inline void check_adapter_count(const char* fn, std::size_t adapters) {
  if (adapters >= std::size_t(std::numeric_limits<std::int32_t>::max())) {
    throw_invalid_argument(fn, "this", "a layer with 2^31 - 1 adapters",
                           "fewer adapters (ids are int32)");
  }
}

/// Y = X W^T + b.
template <class T, class Backend>
void frozen_forward(context<Backend>& ctx, matrix_view<const T, Backend> weight,
                    vector_view<const T, Backend> bias, matrix_view<const T, Backend> x,
                    matrix_view<T, Backend> y) {
  ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, weight, T(0), y);
  if (!bias.empty()) ops<Backend>::add_row_vector(ctx, T(1), bias, y);
}

/// The rows of a batch grouped by adapter (SGMV segments): a stable counting
/// sort of the ids on the host into a permutation that lists the rows of
/// adapter 0, then those of adapter 1, ... (rows with id -1 left out), and a
/// copy of it in the backend's memory. No allocation after the first build
/// with a given N and number of adapters.
template <class Backend>
class row_groups {
 public:
  /// Groups `ids` (already checked: each -1 or in [0, adapters)).
  void build(context<Backend>& ctx, std::span<const std::int32_t> ids, index_t adapters) {
    const auto n = index_t(ids.size());
    offsets_.assign(std::size_t(adapters) + 1, 0);
    for (const std::int32_t id : ids) {
      if (id >= 0) ++offsets_[std::size_t(id) + 1];
    }
    for (index_t a = 0; a < adapters; ++a) offsets_[a + 1] += offsets_[a];
    cursor_.assign(offsets_.begin(), offsets_.end() - 1);
    if (index_t(host_.size()) < n) host_.resize(std::size_t(n));
    for (index_t i = 0; i < n; ++i) {
      const std::int32_t id = ids[std::size_t(i)];
      if (id >= 0) host_[std::size_t(cursor_[std::size_t(id)]++)] = i;
    }
    adapted_ = offsets_.back();
    if (device_.size() < n) device_ = vector<index_t, Backend>(ctx, n);
    if (adapted_ > 0) {
      ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(host_.data(), adapted_),
                                   device_.view().segment(0, adapted_));
    }
  }

  /// How many adapters the grouping covers (K at the time of build()).
  [[nodiscard]] index_t groups() const noexcept { return index_t(offsets_.size()) - 1; }
  /// How many rows have an adapter (id != -1).
  [[nodiscard]] index_t adapted() const noexcept { return adapted_; }
  /// Where adapter a's segment starts in the permutation, and its length.
  [[nodiscard]] index_t offset(index_t a) const noexcept { return offsets_[std::size_t(a)]; }
  [[nodiscard]] index_t count(index_t a) const noexcept {
    return offsets_[std::size_t(a) + 1] - offsets_[std::size_t(a)];
  }
  /// The permutation (adapted() entries) in the backend's memory.
  [[nodiscard]] vector_view<const index_t, Backend> rows() noexcept {
    return device_.view().segment(0, adapted_);
  }
  [[nodiscard]] std::size_t bytes() const noexcept {
    return (host_.capacity() + std::size_t(device_.size()) + offsets_.capacity() +
            cursor_.capacity()) *
           sizeof(index_t);
  }

 private:
  std::vector<index_t> offsets_{0};
  std::vector<index_t> cursor_;
  std::vector<index_t> host_;
  vector<index_t, Backend> device_;
  index_t adapted_ = 0;
};

}  // namespace detail

/// Several LoRA adapters (own A_a, B_a, s_a each) on one frozen layer; one
/// adapter id per batch row (see the file comment).
template <class Backend, scalar T>
requires adapter_backend_for<Backend, T>
class multi_lora {
 public:
  using scalar_type = T;
  using backend = Backend;

  /// A layer on the frozen W (out x in) and b (out entries, or empty for
  /// none), without adapters yet.
  /// @throws lowrank::invalid_argument for an empty W or a bias of the wrong
  ///   size; lowrank::numerical_error for a non-finite entry of W or b.
  multi_lora(context<Backend>& ctx, matrix_view<const T, Backend> weight,
             vector_view<const T, Backend> bias = {})
      : weight_(weight), bias_(bias) {
    detail::check_frozen_base(ctx, "lowrank::multi_lora::multi_lora", weight, bias);
  }

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
  std::int32_t add_adapter(context<Backend>& ctx, const lora<Backend, T>& adapter) {
    const char* fn = "lowrank::multi_lora::add_adapter";
    if (adapter.in_features() != in_features() || adapter.out_features() != out_features()) {
      detail::throw_invalid_argument(
          fn, "adapter",
          "a LoRA of " + std::to_string(adapter.out_features()) + " x " +
              std::to_string(adapter.in_features()),
          "out x in = " + std::to_string(out_features()) + " x " + std::to_string(in_features()));
    }
    return add(ctx, adapter.a(), adapter.b(), adapter.scaling(), fn);
  }

  // --- Shapes and parameters ---------------------------------------------------

  [[nodiscard]] index_t in_features() const noexcept { return weight_.cols(); }
  [[nodiscard]] index_t out_features() const noexcept { return weight_.rows(); }
  /// K, the number of adapters.
  [[nodiscard]] index_t adapters() const noexcept { return index_t(adapters_.size()); }
  /// r_a. @throws lowrank::invalid_argument for an id not in [0, K).
  [[nodiscard]] index_t rank(index_t id) const {
    return at(id, "lowrank::multi_lora::rank").a.rows();
  }
  /// s_a. @throws lowrank::invalid_argument for an id not in [0, K).
  [[nodiscard]] double scaling(index_t id) const {
    return at(id, "lowrank::multi_lora::scaling").scaling;
  }

  [[nodiscard]] matrix_view<const T, Backend> weight() const noexcept { return weight_; }
  [[nodiscard]] vector_view<const T, Backend> bias() const noexcept { return bias_; }
  /// A_a (r_a x in), B_a (out x r_a) and their gradients: write the factors
  /// freely (an optimizer step). @throws lowrank::invalid_argument for an id
  /// not in [0, K).
  [[nodiscard]] matrix_view<T, Backend> a(index_t id) {
    return at(id, "lowrank::multi_lora::a").a.view();
  }
  [[nodiscard]] matrix_view<T, Backend> b(index_t id) {
    return at(id, "lowrank::multi_lora::b").b.view();
  }
  [[nodiscard]] matrix_view<const T, Backend> a(index_t id) const {
    return at(id, "lowrank::multi_lora::a").a.view();
  }
  [[nodiscard]] matrix_view<const T, Backend> b(index_t id) const {
    return at(id, "lowrank::multi_lora::b").b.view();
  }
  [[nodiscard]] matrix_view<T, Backend> grad_a(index_t id) {
    return at(id, "lowrank::multi_lora::grad_a").grad_a.view();
  }
  [[nodiscard]] matrix_view<T, Backend> grad_b(index_t id) {
    return at(id, "lowrank::multi_lora::grad_b").grad_b.view();
  }

  /// Adapter id's trainable parameters: lora_A, lora_B.
  /// @throws lowrank::invalid_argument for an id not in [0, K).
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters(index_t id) {
    auto& f = at(id, "lowrank::multi_lora::parameters");
    return {{"lora_A", f.a.view(), f.grad_a.view()}, {"lora_B", f.b.view(), f.grad_b.view()}};
  }
  /// Every adapter's parameters in id order: lora_A, lora_B of adapter 0, then of 1, ...
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list;
    list.reserve(2 * adapters_.size());
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
  /// @throws lowrank::invalid_argument for wrong shapes, ids.size() != N or
  ///   an id not in [-1, K) (Y unchanged).
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x,
               std::span<const std::int32_t> ids, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::multi_lora::forward";
    detail::check_adapter_batch(fn, x, y, in_features(), out_features());
    detail::check_adapter_ids(fn, ids, x.rows(), adapters());
    const index_t n = x.rows();
    detail::frozen_forward(ctx, weight_, bias_, x, y);
    groups_.build(ctx, ids, adapters());
    const index_t m = groups_.adapted();
    const auto xg = xg_.rows(ctx, n, in_features()).middle_rows(0, m);
    const auto h = h_.rows(ctx, n, max_rank_).middle_rows(0, m);
    const auto z = z_.rows(ctx, n, out_features()).middle_rows(0, m);
    if (m > 0) {
      ops<Backend>::gather_rows(ctx, x, groups_.rows(), xg);
      for (index_t k = 0; k < groups_.groups(); ++k) {
        const index_t count = groups_.count(k);
        if (count == 0) continue;
        const index_t first = groups_.offset(k);
        const auto& f = adapters_[std::size_t(k)];
        const auto ha = h.block(first, 0, count, f.a.rows());
        // H_a = Xg_a A_a^T; Z_a = s_a H_a B_a^T.
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1),
                           as_const(xg.middle_rows(first, count)), f.a.view(), T(0), ha);
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(f.scaling), as_const(ha),
                           f.b.view(), T(0), z.middle_rows(first, count));
      }
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
    if (!pending_) {
      detail::throw_invalid_argument(fn, "this", "a layer without a pending forward",
                                     "forward() before each backward()");
    }
    detail::require_shape(fn, "dy", dy, saved_rows_, out_features());
    if (!dx.empty()) detail::require_shape(fn, "dx", dx, saved_rows_, in_features());
    if (!dx.empty()) {
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, weight_, T(0), dx);
    }
    if (groups_.adapted() > 0) {
      // Gg = G(P, :) takes Z's storage; GB_a takes H_a's (once dB_a has it),
      // and s_a GB_a A_a takes Xg_a's (once dA_a has it).
      const auto gg = saved_z_;
      ops<Backend>::gather_rows(ctx, dy, groups_.rows(), gg);
      for (index_t k = 0; k < groups_.groups(); ++k) {
        const index_t count = groups_.count(k);
        if (count == 0) continue;
        const index_t first = groups_.offset(k);
        auto& f = adapters_[std::size_t(k)];
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
      }
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
    detail::check_adapter_count(fn, adapters_.size());
    detail::check_adapter_rank(fn, "a.rows()", a.rows(), out_features(), in_features());
    detail::require_shape(fn, "a", a, a.rows(), in_features());
    detail::require_shape(fn, "b", b, out_features(), a.rows());
    if (!std::isfinite(scaling)) {
      detail::throw_invalid_argument(fn, "scaling", scaling, "a finite scaling");
    }
    detail::require_finite_values(ctx, fn, "a", a);
    detail::require_finite_values(ctx, fn, "b", b);
    const index_t r = a.rows();
    factors f{matrix<T, Backend>(ctx, r, in_features()), matrix<T, Backend>(ctx, out_features(), r),
              matrix<T, Backend>(ctx, r, in_features()), matrix<T, Backend>(ctx, out_features(), r),
              scaling};
    ops<Backend>::copy(ctx, a, f.a.view());
    ops<Backend>::copy(ctx, b, f.b.view());
    ops<Backend>::fill(ctx, f.grad_a.view(), T(0));
    ops<Backend>::fill(ctx, f.grad_b.view(), T(0));
    adapters_.push_back(std::move(f));
    max_rank_ = std::max(max_rank_, r);
    return static_cast<std::int32_t>(adapters_.size() - 1);
  }

  [[nodiscard]] factors& at(index_t id, const char* fn) {
    detail::check_adapter_id(fn, id, adapters());
    return adapters_[std::size_t(id)];
  }
  [[nodiscard]] const factors& at(index_t id, const char* fn) const {
    detail::check_adapter_id(fn, id, adapters());
    return adapters_[std::size_t(id)];
  }

  matrix_view<const T, Backend> weight_;
  vector_view<const T, Backend> bias_;
  std::vector<factors> adapters_;
  index_t max_rank_ = 0;
  // The per-batch workspaces and the pending forward.
  detail::row_groups<Backend> groups_;
  detail::batch_workspace<T, Backend> xg_, h_, z_;
  matrix_view<T, Backend> saved_xg_, saved_h_, saved_z_;
  index_t saved_rows_ = 0;
  bool pending_ = false;
};

/// LoRA adapters sharing one A (r x in), each with its own B_a (out x r) and
/// s_a (HydraLoRA, LRAgent): H = X A^T once per batch (see the file comment).
template <class Backend, scalar T>
requires adapter_backend_for<Backend, T>
class shared_a_lora {
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
      : weight_(weight), bias_(bias) {
    const char* fn = "lowrank::shared_a_lora::shared_a_lora";
    detail::check_frozen_base(ctx, fn, weight, bias);
    detail::check_adapter_rank(fn, "a.rows()", a.rows(), out_features(), in_features());
    detail::require_shape(fn, "a", a, a.rows(), in_features());
    detail::require_finite_values(ctx, fn, "a", a);
    a_ = matrix<T, Backend>(ctx, a.rows(), in_features());
    grad_a_ = matrix<T, Backend>(ctx, a.rows(), in_features());
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
    detail::check_adapter_count(fn, adapters_.size());
    detail::require_shape(fn, "b", b, out_features(), rank());
    if (!std::isfinite(scaling)) {
      detail::throw_invalid_argument(fn, "scaling", scaling, "a finite scaling");
    }
    detail::require_finite_values(ctx, fn, "b", b);
    factors f{matrix<T, Backend>(ctx, out_features(), rank()),
              matrix<T, Backend>(ctx, out_features(), rank()), scaling};
    ops<Backend>::copy(ctx, b, f.b.view());
    ops<Backend>::fill(ctx, f.grad_b.view(), T(0));
    adapters_.push_back(std::move(f));
    return static_cast<std::int32_t>(adapters_.size() - 1);
  }

  // --- Shapes and parameters ---------------------------------------------------

  [[nodiscard]] index_t in_features() const noexcept { return weight_.cols(); }
  [[nodiscard]] index_t out_features() const noexcept { return weight_.rows(); }
  /// r, the shared rank.
  [[nodiscard]] index_t rank() const noexcept { return a_.rows(); }
  /// K, the number of adapters.
  [[nodiscard]] index_t adapters() const noexcept { return index_t(adapters_.size()); }
  /// s_a. @throws lowrank::invalid_argument for an id not in [0, K).
  [[nodiscard]] double scaling(index_t id) const {
    return at(id, "lowrank::shared_a_lora::scaling").scaling;
  }

  [[nodiscard]] matrix_view<const T, Backend> weight() const noexcept { return weight_; }
  [[nodiscard]] vector_view<const T, Backend> bias() const noexcept { return bias_; }
  /// The shared A (r x in) and its gradient.
  [[nodiscard]] matrix_view<T, Backend> a() noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> a() const noexcept { return a_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_a() noexcept { return grad_a_.view(); }
  /// B_a (out x r) and its gradient. @throws lowrank::invalid_argument for an
  /// id not in [0, K).
  [[nodiscard]] matrix_view<T, Backend> b(index_t id) {
    return at(id, "lowrank::shared_a_lora::b").b.view();
  }
  [[nodiscard]] matrix_view<const T, Backend> b(index_t id) const {
    return at(id, "lowrank::shared_a_lora::b").b.view();
  }
  [[nodiscard]] matrix_view<T, Backend> grad_b(index_t id) {
    return at(id, "lowrank::shared_a_lora::grad_b").grad_b.view();
  }

  /// The trainable parameters: lora_A (shared), then lora_B of adapter 0, 1, ...
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list;
    list.reserve(adapters_.size() + 1);
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
  /// @throws lowrank::invalid_argument for wrong shapes, ids.size() != N or
  ///   an id not in [-1, K) (Y unchanged).
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x,
               std::span<const std::int32_t> ids, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::shared_a_lora::forward";
    detail::check_adapter_batch(fn, x, y, in_features(), out_features());
    detail::check_adapter_ids(fn, ids, x.rows(), adapters());
    const index_t n = x.rows();
    detail::frozen_forward(ctx, weight_, bias_, x, y);
    groups_.build(ctx, ids, adapters());
    const index_t m = groups_.adapted();
    const auto h = h_.rows(ctx, n, rank());
    const auto hg = hg_.rows(ctx, n, rank()).middle_rows(0, m);
    const auto z = z_.rows(ctx, n, out_features()).middle_rows(0, m);
    if (m > 0) {
      // H = X A^T once; Hg = H(P, :); Z_a = s_a Hg_a B_a^T; Y(P, :) += Z.
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, a(), T(0), h);
      ops<Backend>::gather_rows(ctx, as_const(h), groups_.rows(), hg);
      for (index_t k = 0; k < groups_.groups(); ++k) {
        const index_t count = groups_.count(k);
        if (count == 0) continue;
        const index_t first = groups_.offset(k);
        const auto& f = adapters_[std::size_t(k)];
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(f.scaling),
                           as_const(hg.middle_rows(first, count)), f.b.view(), T(0),
                           z.middle_rows(first, count));
      }
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
    detail::check_adapter_batch(fn, x, y, in_features(), out_features());
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
    detail::frozen_forward(ctx, weight_, bias_, x, y);
    coefficients_.assign(weights.begin(), weights.end());
    for (std::size_t k = 0; k < adapters_.size(); ++k) coefficients_[k] *= adapters_[k].scaling;
    const auto h = h_.rows(ctx, n, rank());
    // dH's storage in backward, reserved now so that backward does not allocate.
    const auto dh = hg_.rows(ctx, n, rank());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), x, a(), T(0), h);
    for (std::size_t k = 0; k < adapters_.size(); ++k) {
      if (coefficients_[k] == 0) continue;
      // Y += w_a s_a H B_a^T.
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(coefficients_[k]), as_const(h),
                         adapters_[k].b.view(), T(1), y);
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
    if (mode_ == mode::none) {
      detail::throw_invalid_argument(fn, "this", "a layer without a pending forward",
                                     "forward() before each backward()");
    }
    detail::require_shape(fn, "dy", dy, saved_x_.rows(), out_features());
    if (!dx.empty()) detail::require_shape(fn, "dx", dx, saved_x_.rows(), in_features());
    if (!dx.empty()) {
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), dy, weight_, T(0), dx);
    }
    // dH (N x r): the gradient of H = X A^T; dA = dH^T X, dX += dH A.
    matrix_view<T, Backend> dh;
    if (mode_ == mode::ids) {
      if (groups_.adapted() > 0) {
        // Gg = G(P, :) takes Z's storage, dHg_a = s_a Gg_a B_a takes Hg_a's
        // (once dB_a has it), dH = scatter(dHg) takes H's.
        const auto gg = saved_z_;
        ops<Backend>::gather_rows(ctx, dy, groups_.rows(), gg);
        for (index_t k = 0; k < groups_.groups(); ++k) {
          const index_t count = groups_.count(k);
          if (count == 0) continue;
          const index_t first = groups_.offset(k);
          auto& f = adapters_[std::size_t(k)];
          const auto s = T(f.scaling);
          const auto ga = as_const(gg.middle_rows(first, count));
          const auto ha = saved_hg_.middle_rows(first, count);
          // dB_a += s_a Gg_a^T Hg_a; dHg_a = s_a Gg_a B_a.
          ops<Backend>::gemm(ctx, transpose::yes, transpose::no, s, ga, as_const(ha), T(1),
                             f.grad_b.view());
          ops<Backend>::gemm(ctx, transpose::no, transpose::no, s, ga, as_const(f.b.view()), T(0),
                             ha);
        }
        dh = saved_h_;
        ops<Backend>::fill(ctx, dh, T(0));
        ops<Backend>::scatter_add_rows(ctx, T(1), as_const(saved_hg_), groups_.rows(), dh);
      }
    } else {
      dh = saved_hg_;
      ops<Backend>::fill(ctx, dh, T(0));
      for (std::size_t k = 0; k < coefficients_.size(); ++k) {
        if (coefficients_[k] == 0) continue;
        auto& f = adapters_[k];
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

  [[nodiscard]] factors& at(index_t id, const char* fn) {
    detail::check_adapter_id(fn, id, adapters());
    return adapters_[std::size_t(id)];
  }
  [[nodiscard]] const factors& at(index_t id, const char* fn) const {
    detail::check_adapter_id(fn, id, adapters());
    return adapters_[std::size_t(id)];
  }

  void save(matrix_view<const T, Backend> x, matrix_view<T, Backend> h, matrix_view<T, Backend> hg,
            matrix_view<T, Backend> z, mode m) noexcept {
    saved_x_ = x;
    saved_h_ = h;
    saved_hg_ = hg;
    saved_z_ = z;
    mode_ = m;
  }

  matrix_view<const T, Backend> weight_;
  vector_view<const T, Backend> bias_;
  matrix<T, Backend> a_, grad_a_;
  std::vector<factors> adapters_;
  // The per-batch workspaces and the pending forward.
  detail::row_groups<Backend> groups_;
  detail::batch_workspace<T, Backend> h_, hg_, z_;
  std::vector<double> coefficients_;  // w_a s_a of the last forward_mixed
  matrix_view<const T, Backend> saved_x_;
  matrix_view<T, Backend> saved_h_, saved_hg_, saved_z_;
  mode mode_ = mode::none;
};

}  // namespace lowrank
