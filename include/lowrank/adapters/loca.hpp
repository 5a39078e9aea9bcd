#pragma once
/// @file
/// `lowrank::loca<T, Backend>`: a LoCA adapter (location-aware cosine
/// adaptation) on a frozen linear layer, with forward, backward, its
/// alternating schedule, merge and unmerge (docs/algorithms.md, "Adapters";
/// Du et al., "LoCA: Location-Aware Cosine Adaptation for Parameter-Efficient
/// Fine-Tuning", ICLR 2025, arXiv 2502.06820, reference code TL-UESTC/LoCA
/// `peft/src/peft/tuners/loca/{layer.py, dct_utils.py}`; the rule as the
/// fixture records it: tests/adapters/fixtures/loca/README.md).
///
/// **Math.** The frozen weight W is out x in (M = out, N = in), the optional
/// bias b has out entries, a batch X is N_b x in (one sample per row). C_n is
/// the n x n orthonormal DCT-II matrix (basis/dct.hpp; basis vector k is row k
/// of C_n). The adapter has k coefficients a_i (`coefficients()`, k x 1, zero
/// at start) at integer frequency locations (r_i, c_i), r_i in [0, out), c_i
/// in [0, in):
///
///     dW = alpha C_out^T S C_in,   S = sum_i a_i e_{r_i} e_{c_i}^T  (duplicates add up),
///     Y  = X W^T + b + drop(X) dW^T,
///
/// alpha being the reference's `scale`. The update has rank <= k: dW = alpha
/// B' A' with B' = C_out^T[:, r] (out x k) and A' = diag(a) C_in[c, :] (k x in).
///
/// **Locations.** The trainable location parameters p (`locations()`, 2 x k:
/// row 0 the output (row) frequencies, row 1 the input (column) ones) are
/// continuous, as the reference's `spectrum_indices`; they start uniform in
/// [0, 1) (the Philox matrix of `adapter_stream(seed, layer, loca_locations,
/// 0)`, adapters/base.hpp), and
///
///     r_i = round(clamp(p_0i, 0, c) (out - 1)),   c_i = round(clamp(p_1i, 0, c) (in - 1)),
///
/// computed in T, rounding half to even (torch.round), at every forward (p
/// may have changed). c = 1 by default, so that every frequency is
/// reachable; `reference_clamp` gives the reference's c = 0.999, with which
/// the largest reachable index is round(0.999 (n - 1)): n - 1 for n <= 500
/// but 4091 for n = 4096 (frequencies 4092 to 4095 can never be chosen).
///
/// **Forward, factored** (never an out x in matrix). With Dx = drop(X) C_in^T
/// = dct(drop(X), rows) (N_b x in), the identity X dW^T = alpha X C_in^T S^T
/// C_out gives
///
///     Z = Dx[:, c] diag(a)  (N_b x k, gather_columns),
///     F(:, r_i) += alpha Z(:, i)  (N_b x out, scatter_add_columns),
///     Y += F C_out = idct(F, rows).
///
/// **Backward.** With G = dL/dY and Dy = G C_out^T = dct(G, rows) (N_b x out):
///
///     dX   = G W + alpha drop'(idct(E, rows)),   E(:, c_i) += a_i Dy(:, r_i)  (N_b x in),
///     K    = alpha C_out G^T drop(X) C_in^T = alpha Dy^T Dx  (out x in, never formed),
///     da_i += K[r_i, c_i] = alpha <Dy(:, r_i), Dx(:, c_i)>  (sampled_dots, an SDDMM),
///     db   += 1^T G  (when the bias trains).
///
/// **Location gradient** (the reference's `IdctWithIndexGrad.backward`, with
/// K as above: alpha enters K before the clamp). With the neighbours clamped
/// at the borders, up = min(r + 1, out - 1), dn = max(r - 1, 0), rt =
/// min(c + 1, in - 1), lf = max(c - 1, 0) (the factor 1/2 stays at a border):
///
///     g_r,i = clamp(a_i (K[up_i, c_i] - K[dn_i, c_i]) / 2, -1, 1),
///     g_c,i = clamp(a_i (K[r_i, rt_i] - K[r_i, lf_i]) / 2, -1, 1),
///     dp_0i += (out - 1) g_r,i [0 < p_0i < c],   dp_1i += (in - 1) g_c,i [0 < p_1i < c],
///
/// the gradients of the scaled locations (the rounding straight-through)
/// chained through `clamp(p, 0, c) (n - 1)`; the clamp's gradient is zero at
/// and beyond its bounds (strict inequalities, as torch's scalar clamp gives).
/// The four K values are four more sampled_dots of N_b k each, computed in
/// double; the rule is then applied on the host (k values).
///
/// **Schedule** (the reference's, counted in optimizer steps): with t =
/// `optimizer_steps()`, B_a = `coefficient_steps` (10) and B_l =
/// `location_steps` (20), the locations train at step t iff
/// t < `learn_location_until` and t mod (B_a + B_l) >= B_a; the coefficients
/// train otherwise (from learn_location_until on, always). The trainer calls
/// `optimizer_step()` after each optimizer step; `locations_phase()` says
/// which group trains now, `active_parameters()` lists it (step only those,
/// as the reference toggles requires_grad), and backward accumulates only
/// the gradient of the group that was active at its forward (the other's
/// stays as it was, zero after zero_grad()).
///
/// **Routes.** The gather step Dx[:, c] (and its mirror images) is computed
/// either
/// - `transform`: the full DCT of every row, O(N_b in log in) by FFT (or a
///   GEMM with C for awkward lengths, basis/dct.hpp's cost model), then a
///   gather of k columns; or
/// - `basis`: products with the k selected basis vectors, H = drop(X)
///   C_in[c, :]^T (2 N_b in k flops) and Y += alpha H diag(a) C_out[r, :]
///   (2 N_b out k), backward alike, with the basis vectors (k (in + out)
///   scalars) cached while the locations stay the same;
/// `automatic` (the default) takes `basis` when k (in + out) < in m(in) +
/// out m(out), m(n) being the cost of one DCT of length n per element in
/// GEMM columns: n when the DCT takes its GEMM route (basis/dct.hpp), kappa
/// times the sum of n's prime factors when it takes the FFT, with the DCT's
/// own kappa (`dct_fft_kappa`: 20 on the CPU, 4 on CUDA). So `basis` for k <
/// 480 at out = in = 4096 on the CPU, `transform` above (the paper's k =
/// 1000); measured there, one FFT-route DCT of a 512 x 4096 batch takes as
/// long as its product with 360 to 400 basis vectors (kappa = 16; the
/// routes' step times cross between k = 256 and 512: bench/loca_bench.cpp's
/// loca_routes).
/// In the locations phase the transform route is always taken (the location
/// gradient needs the neighbours of every location, and the locations
/// change at every step). `loca_route_for()` gives the choice.
///
/// **Costs** per training step, transform route: forward 2 N_b in out (the
/// base GEMM) + two DCTs (N_b in and N_b out values) + O(N_b k); backward 2
/// N_b in out (dX's base GEMM) + two DCTs (one without dX) + N_b k (4 N_b k
/// in the locations phase). Basis route: forward 2 N_b k (in + out) instead
/// of the DCTs, backward 2 N_b k (in + out) + 2 N_b k. The reference's
/// default mode forms dW by two dense GEMMs (2 out in (out + in) flops),
/// applies it by a third (2 N_b out in) and its backward forms dL/ddW (2 N_b
/// out in) and K = dct2 of it densely (2 out in (out + in)): O(out in (out +
/// in)) per step against our O(N_b (in log in + out log out) + N_b k).
///
/// **Host synchronisation.** Each forward reads p (2 k scalars) back to the
/// host to round the locations, and writes the 6 k integer indices (the
/// locations and their clamped neighbours) when they changed; a backward in
/// the locations phase reads 4 k sampled products and the k coefficients
/// and writes 2 k location gradients. On CUDA these are small synchronous
/// copies.
///
/// **State and memory.** The adapter owns a and p and their gradients
/// (6 k scalars), k doubles (1 / alpha, for the coefficient gradient) and
/// 6 k indices, with host mirrors (5 k scalars, 4 k doubles, 6 k indices).
/// It refers to W and b (views: they must outlive it) and, between forward
/// and backward, to the forward's X and coefficients (which the caller must
/// keep unchanged). Per batch: Dx (N_b x in, transform route) or H (N_b x k,
/// basis route), growing to the largest N_b seen; the basis route's cache
/// (k (in + out)); the context's workspace holds the rest (forward at most
/// N_b (2 out + k), backward at most N_b (out + k + 2 in) scalars and 4 k
/// doubles). A training loop allocates nothing after the first step of each
/// route.
///
/// **Merge.** merge() adds alpha B' A' to W with lora's exact merge
/// (adapters/base.hpp: extended precision, one rounding per element, O(out
/// in k) work, so seconds for a 4096 x 4096 layer at k = 1000) and keeps the
/// coefficients and the integer locations; unmerge() regenerates the same
/// B' and A' (the basis vectors are computed in double and rounded once:
/// the same bits every time) and restores W bit for bit. safe_merge() first
/// checks that the coefficients and every merged value are finite. While
/// merged, forward computes X W'^T + b and backward throws.
///
/// **Ours, not the reference's.** The factored forward and backward (the
/// reference forms dW and K densely); the schedule counted in optimizer
/// steps, not training forwards (the reference's counter runs ahead under
/// gradient accumulation) with B_a and B_l as options; c = 1 unless
/// `reference_clamp`; the location gradient rule evaluated in double and
/// rounded once to T (the reference computes K in T); the basis vectors in
/// double, rounded once (the reference builds C in float32); the exact
/// merge. Everything else (zero-initialised coefficients, U[0, 1) location
/// parameters, the rounding, duplicates adding up, the gradient rule and
/// its chain rule) follows the reference.
///
/// **Errors.** lowrank::invalid_argument for shapes and options (the message
/// names the function, the argument, its value and what was expected),
/// lowrank::numerical_error for a non-finite weight, bias, location
/// parameter (at forward) or, in safe_merge(), coefficient or merged weight.
/// Every throwing call leaves the adapter and the caller's data as they were.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/adapters/base.hpp"
#include "lowrank/basis/backend.hpp"
#include "lowrank/basis/dct.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// How LoCA computes its products with the selected DCT basis vectors (see
/// the file comment).
enum class loca_route {
  automatic,  ///< the cost model of loca_route_for()
  transform,  ///< full DCTs of the rows, then gathers and scatters of k columns
  basis,      ///< GEMMs with the k selected basis vectors (cached)
};

/// The options of a LoCA adapter (the reference's names in brackets).
struct loca_options {
  index_t n_frequency = 1000;        ///< k, the coefficients, 1 <= k <= out in [n_frequency]
  double alpha = 1;                  ///< the update's scale, finite > 0 [scale]
  index_t learn_location_until = 0;  ///< locations train before this optimizer step; 0: never
                                     ///< [learn_location_iter; the paper: 10% of the steps]
  index_t coefficient_steps = 10;    ///< B_a, >= 1: coefficient steps of each cycle
  index_t location_steps = 20;       ///< B_l, >= 0: location steps of each cycle
  bool reference_clamp = false;      ///< clamp p to [0, 0.999] as the reference, not [0, 1]
  double dropout = 0;                ///< p in [0, 1), on the adapter's input
  bool train_bias = false;           ///< the bias trains too
  loca_route route = loca_route::automatic;
  std::uint64_t seed = 0;   ///< the adapter's random streams (adapters/base.hpp)
  std::uint64_t layer = 0;  ///< this layer's index in the model, < 2^30
};

/// LoCA's integer frequency locations, on the host (loca::integer_locations()).
struct loca_indices {
  std::vector<index_t> rows;  ///< r_i in [0, out)
  std::vector<index_t> cols;  ///< c_i in [0, in)
};

/// The route `loca_route::automatic` takes on Backend for a layer of out x in
/// with k coefficients, outside the locations phase (see the file comment).
template <class Backend>
[[nodiscard]] loca_route loca_route_for(index_t out, index_t in, index_t k) noexcept {
  // m(n): one DCT of length n costs as much per element as a product with
  // m(n) basis vectors (see the file comment).
  const auto per_element = [](index_t n) {
    if (dct_route_for<Backend>(n, 1) == dct_route::gemm) return double(n);
    return detail::dct_fft_kappa<Backend> * double(detail::fft_factor_cost(n));
  };
  const double transform = double(in) * per_element(in) + double(out) * per_element(out);
  return double(k) * double(in + out) < transform ? loca_route::basis : loca_route::transform;
}

/// A LoCA adapter on a frozen linear layer (see the file comment).
template <scalar T, class Backend = cpu>
requires adapter_backend_for<Backend, T> && basis_backend_for<Backend, T>
class loca : public detail::adapter_base<T, Backend> {
  using base = detail::adapter_base<T, Backend>;

 public:
  using scalar_type = T;
  using backend = Backend;

  /// A new adapter on W (out x in) and b (out entries, or empty for none):
  /// coefficients zero (so it starts as the base layer), location parameters
  /// uniform in [0, 1) from Philox.
  /// @throws lowrank::invalid_argument for an empty W, a bias of the wrong
  ///   size, n_frequency not in [1, out in], alpha <= 0 or not finite (or
  ///   not finite in T), learn_location_until < 0, coefficient_steps < 1,
  ///   location_steps < 0, dropout not in [0, 1) or layer >= 2^30;
  ///   lowrank::numerical_error if W or b has a non-finite entry.
  loca(context<Backend>& ctx, matrix_view<T, Backend> weight, vector_view<T, Backend> bias,
       const loca_options& options = {})
      : loca(ctx, weight, bias, options, "lowrank::loca::loca") {
    ops<Backend>::fill(ctx, coef_.view(), T(0));
    ops<Backend>::fill_random(ctx, distribution::uniform,
                              this->stream(adapter_stream_kind::loca_locations, 0), loc_.view());
  }

  /// An adapter with the given coefficients a (k x 1) and continuous
  /// location parameters p (2 x k; values outside [0, c] are clamped, as at
  /// every forward); `options.n_frequency` is taken from a. W is unchanged.
  /// @throws as the constructor, plus lowrank::invalid_argument for shapes
  ///   and lowrank::numerical_error for non-finite a or p; nothing is built.
  [[nodiscard]] static loca from_state(context<Backend>& ctx, matrix_view<T, Backend> weight,
                                       vector_view<T, Backend> bias,
                                       matrix_view<const T, Backend> coefficients,
                                       matrix_view<const T, Backend> locations,
                                       loca_options options) {
    const char* fn = "lowrank::loca::from_state";
    check_coefficients(fn, weight, coefficients, options);
    loca layer(ctx, weight, bias, options, fn);
    detail::require_shape(fn, "locations", locations, 2, layer.n_frequency());
    detail::require_finite(ctx, fn, "coefficients", coefficients);
    detail::require_finite(ctx, fn, "locations", locations);
    ops<Backend>::copy(ctx, coefficients, layer.coefficients());
    ops<Backend>::copy(ctx, locations, layer.locations());
    return layer;
  }

  /// An adapter with the given coefficients a (k x 1) at the integer
  /// locations (rows[i], cols[i]) (host indices, k each): p = (rows / (out -
  /// 1), cols / (in - 1)), which rounds back to them. W is unchanged.
  /// @throws as the other from_state(), plus lowrank::invalid_argument for
  ///   index counts other than k, an index outside [0, out) or [0, in), or,
  ///   with reference_clamp, one the 0.999 clamp cannot reach; nothing is built.
  [[nodiscard]] static loca from_state(context<Backend>& ctx, matrix_view<T, Backend> weight,
                                       vector_view<T, Backend> bias,
                                       matrix_view<const T, Backend> coefficients,
                                       std::span<const index_t> rows, std::span<const index_t> cols,
                                       loca_options options) {
    const char* fn = "lowrank::loca::from_state";
    check_coefficients(fn, weight, coefficients, options);
    const index_t k = coefficients.rows();
    const index_t m = weight.rows();
    const index_t n = weight.cols();
    const T cmax = clamp_max(options.reference_clamp);
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> p(2, k);
    const auto place = [&](std::span<const index_t> idx, const char* name, index_t size,
                           index_t row) {
      if (index_t(idx.size()) != k) {
        detail::throw_invalid_argument(fn, std::string(name) + ".size()", idx.size(),
                                       "k = " + std::to_string(k) + " (the coefficients)");
      }
      for (index_t i = 0; i < k; ++i) {
        const index_t v = idx[std::size_t(i)];
        const std::string arg = std::string(name) + "[" + std::to_string(i) + "]";
        if (v < 0 || v >= size) {
          detail::throw_invalid_argument(fn, arg, v,
                                         "a location in [0, " + std::to_string(size) + ")");
        }
        const T value = size == 1 ? T(0) : T(v) / T(size - 1);
        if (to_index(value, size, cmax) != v) {
          detail::throw_invalid_argument(fn, arg, v,
                                         "a location the reference's 0.999 clamp can reach (<= " +
                                             std::to_string(to_index(cmax, size, cmax)) +
                                             "; reference_clamp is set)");
        }
        p(row, i) = value;
      }
    };
    place(rows, "rows", m, 0);
    place(cols, "cols", n, 1);
    matrix<T, Backend> dp(ctx, 2, k);
    ops<Backend>::upload(ctx, view(std::as_const(p)), dp.view());
    return from_state(ctx, weight, bias, coefficients, as_const(dp.view()), options);
  }

  loca(loca&&) noexcept = default;
  loca& operator=(loca&&) noexcept = default;
  loca(const loca&) = delete;
  loca& operator=(const loca&) = delete;

  // --- Options and parameters ----------------------------------------------------

  [[nodiscard]] const loca_options& options() const noexcept { return options_; }
  /// k, the number of coefficients.
  [[nodiscard]] index_t n_frequency() const noexcept { return options_.n_frequency; }
  /// alpha (the update's scale; `scaling()` returns it too).
  [[nodiscard]] double alpha() const noexcept { return this->scaling(); }

  /// a (k x 1) and p (2 x k): write them freely (an optimizer step) unless merged.
  [[nodiscard]] matrix_view<T, Backend> coefficients() noexcept { return coef_.view(); }
  [[nodiscard]] matrix_view<T, Backend> locations() noexcept { return loc_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> coefficients() const noexcept { return coef_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> locations() const noexcept { return loc_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_coefficients() noexcept { return grad_coef_.view(); }
  [[nodiscard]] matrix_view<T, Backend> grad_locations() noexcept { return grad_loc_.view(); }

  /// Every trainable parameter with its gradient: loca_spectrum (a, k x 1),
  /// loca_spectrum_indices (p, 2 x k) (the reference's `spectrum` and
  /// `spectrum_indices`, prefixed as PEFT names adapter parameters), and
  /// bias when it trains.
  [[nodiscard]] std::vector<parameter<T, Backend>> parameters() {
    std::vector<parameter<T, Backend>> list{spectrum_parameter(), indices_parameter()};
    this->add_bias_parameter(list);
    return list;
  }

  /// The parameters that train at the current step: loca_spectrum or
  /// loca_spectrum_indices (locations_phase()), and bias when it trains. An
  /// optimizer should step only these (the reference sets requires_grad so).
  [[nodiscard]] std::vector<parameter<T, Backend>> active_parameters() {
    std::vector<parameter<T, Backend>> list{locations_phase() ? indices_parameter()
                                                              : spectrum_parameter()};
    this->add_bias_parameter(list);
    return list;
  }

  /// Sets every gradient to zero.
  void zero_grad(context<Backend>& ctx) {
    ops<Backend>::fill(ctx, grad_coef_.view(), T(0));
    ops<Backend>::fill(ctx, grad_loc_.view(), T(0));
    this->zero_bias_grad(ctx);
  }

  // --- Schedule ------------------------------------------------------------------

  /// Counts one optimizer step: call it after each step of the optimizer.
  void optimizer_step() noexcept { ++optimizer_steps_; }
  /// The optimizer steps counted so far.
  [[nodiscard]] std::uint64_t optimizer_steps() const noexcept { return optimizer_steps_; }
  /// Sets the count (to resume a training run).
  void set_optimizer_steps(std::uint64_t steps) noexcept { optimizer_steps_ = steps; }

  /// True when the locations train at the current step, false when the
  /// coefficients do (see the file comment).
  [[nodiscard]] bool locations_phase() const noexcept {
    const auto until = static_cast<std::uint64_t>(options_.learn_location_until);
    const auto ba = static_cast<std::uint64_t>(options_.coefficient_steps);
    const auto cycle = ba + static_cast<std::uint64_t>(options_.location_steps);
    return optimizer_steps_ < until && optimizer_steps_ % cycle >= ba;
  }

  /// The integer locations the current p gives: rows (in [0, out)) and cols
  /// (in [0, in)), k each, on the host.
  /// @throws lowrank::numerical_error for a non-finite p.
  [[nodiscard]] loca_indices integer_locations(context<Backend>& ctx) const {
    loca_indices out;
    host_locations(ctx, "lowrank::loca::integer_locations", out.rows, out.cols);
    return out;
  }

  /// The route a forward takes outside the locations phase (options.route,
  /// or loca_route_for()'s choice).
  [[nodiscard]] loca_route route() const noexcept {
    if (options_.route != loca_route::automatic) return options_.route;
    return loca_route_for<Backend>(this->out_features(), this->in_features(), n_frequency());
  }

  // --- Forward and backward ----------------------------------------------------

  /// Y = X W^T + b + drop(X) dW^T (X W'^T + b when merged), factored (see
  /// the file comment). X is N x in, Y is N x out. Keeps a view of X for
  /// backward, and rounds the current p to the locations it uses.
  /// @throws lowrank::invalid_argument for wrong shapes or a Y that overlaps
  ///   X; lowrank::numerical_error for a non-finite p (Y unwritten).
  void forward(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y) {
    const char* fn = "lowrank::loca::forward";
    this->check_batch(fn, x, y);
    if (!this->merged()) update_locations(ctx, fn);
    if (!this->begin_forward(ctx, fn, x, y)) return;
    phase_ = locations_phase();
    route_ = phase_ ? loca_route::transform : route();
    const auto input = this->adapter_input(ctx, x);
    const index_t n = x.rows();
    if (n > 0) {
      if (route_ == loca_route::transform) {
        transform_forward(ctx, input, y);
      } else {
        basis_forward(ctx, input, y);
      }
    }
    this->end_forward();
  }

  /// Accumulates the gradient of the group that trained at the last forward
  /// (da, or dp: see the file comment) and db (when the bias trains) from
  /// G = dL/dY (N x out), and writes dX = G W + alpha drop'(...) into `dx`
  /// (N x in; pass an empty view to skip it).
  /// @throws lowrank::invalid_argument without a forward since the last
  ///   backward, for a G of another shape than that forward's Y, a dx of the
  ///   wrong shape or overlapping G, or when merged.
  void backward(context<Backend>& ctx, matrix_view<const T, Backend> dy,
                matrix_view<T, Backend> dx) {
    this->begin_backward(ctx, "lowrank::loca::backward", dy, dx);
    if (!dx.empty()) this->base_input_gradient(ctx, dy, dx);
    if (this->pending_rows() > 0) {
      if (route_ == loca_route::transform) {
        transform_backward(ctx, dy, dx);
      } else {
        basis_backward(ctx, dy, dx);
      }
    }
    this->end_backward();
  }

  // --- Merge -------------------------------------------------------------------

  /// W += alpha B' A' (extended precision, one rounding); see the file comment.
  /// @throws lowrank::invalid_argument when already merged;
  ///   lowrank::numerical_error for a non-finite p (W unchanged).
  void merge(context<Backend>& ctx) { merge_impl(ctx, false, "lowrank::loca::merge"); }

  /// merge(), but first checks the coefficients and every merged value: if
  /// one is not finite, throws lowrank::numerical_error and leaves W untouched.
  void safe_merge(context<Backend>& ctx) { merge_impl(ctx, true, "lowrank::loca::safe_merge"); }

  /// Restores W exactly as it was before merge(), from B' and A' regenerated
  /// with the coefficients and locations of the merge.
  /// @throws lowrank::invalid_argument when not merged.
  void unmerge(context<Backend>& ctx) {
    const char* fn = "lowrank::loca::unmerge";
    this->require_merged(fn);
    auto f = factors(ctx, as_const(merged_coef_.view()), merged_rows_, merged_cols_);
    this->unmerge_weight(ctx, fn, as_const(f.b.view()), as_const(f.a.view()), {});
    merged_coef_ = matrix<T, Backend>();
    merged_rows_.clear();
    merged_cols_.clear();
  }

  // --- Memory ------------------------------------------------------------------

  /// Frees the per-batch buffers and the basis cache; they are allocated
  /// again on next use. Ends a pending forward.
  void release_workspace() noexcept {
    saved_dx_.release();
    saved_h_.release();
    phi_in_ = matrix<T, Backend>();
    phi_out_ = matrix<T, Backend>();
    basis_ready_ = false;
    this->release_batch_workspace();
  }

  /// The bytes of the adapter's state: a, p, their gradients, 1 / alpha, the
  /// indices and the host mirrors (see the file comment), plus, while merged,
  /// the kept coefficients and locations and the merge record.
  [[nodiscard]] std::size_t state_bytes() const noexcept {
    const auto k = static_cast<std::size_t>(n_frequency());
    return 11 * k * sizeof(T) + 5 * k * sizeof(double) + 12 * k * sizeof(index_t) +
           std::size_t(merged_coef_.size()) * sizeof(T) +
           (merged_rows_.size() + merged_cols_.size()) * sizeof(index_t) + this->merge_bytes();
  }

  /// The bytes of the workspaces now allocated: Dx or H, the basis cache and
  /// the dropout buffer.
  [[nodiscard]] std::size_t workspace_bytes() const noexcept {
    return saved_dx_.bytes() + saved_h_.bytes() +
           std::size_t(phi_in_.size() + phi_out_.size()) * sizeof(T) + this->batch_bytes();
  }

 private:
  // Hidden: LoCA has n_frequency(), not a LoRA rank (the base's is 1, so
  // that its scaling is alpha).
  using base::rank;

  /// The parts of idx_: the locations, then their clamped neighbours.
  enum index_part : index_t { rows_part, cols_part, up_part, down_part, right_part, left_part };

  loca(context<Backend>& ctx, matrix_view<T, Backend> weight, vector_view<T, Backend> bias,
       const loca_options& options, const char* fn)
      : base(ctx, fn, checked(fn, weight, options), bias,
             {1, options.alpha, false, options.dropout, options.train_bias, options.seed,
              options.layer}),
        options_(options),
        cmax_(clamp_max(options.reference_clamp)) {
    const index_t k = options.n_frequency;
    coef_ = matrix<T, Backend>(ctx, k, 1);
    loc_ = matrix<T, Backend>(ctx, 2, k);
    grad_coef_ = matrix<T, Backend>(ctx, k, 1);
    grad_loc_ = matrix<T, Backend>(ctx, 2, k);
    inv_alpha_ = vector<double, Backend>(ctx, k);
    idx_ = vector<index_t, Backend>(ctx, 6 * k);
    ops<Backend>::fill(ctx, inv_alpha_.view().as_matrix(), 1 / options.alpha);
    host_p_.resize(std::size_t(2 * k));
    host_a_.resize(std::size_t(k));
    host_g_.resize(std::size_t(2 * k));
    host_dots_.resize(std::size_t(4 * k));
    host_idx_.assign(std::size_t(6 * k), -1);
    zero_grad(ctx);
  }

  /// W, once the options are checked against it (before W's own checks).
  static matrix_view<T, Backend> checked(const char* fn, matrix_view<T, Backend> weight,
                                         const loca_options& o) {
    detail::require_non_empty(fn, "weight", weight);
    detail::require_in_range(fn, "options.n_frequency", o.n_frequency, 1,
                             weight.rows() * weight.cols(), "out in");
    if (o.learn_location_until < 0) {
      detail::throw_invalid_argument(fn, "options.learn_location_until", o.learn_location_until,
                                     ">= 0 (0: the locations never train)");
    }
    if (o.coefficient_steps < 1) {
      detail::throw_invalid_argument(fn, "options.coefficient_steps", o.coefficient_steps, ">= 1");
    }
    if (o.location_steps < 0) {
      detail::throw_invalid_argument(fn, "options.location_steps", o.location_steps, ">= 0");
    }
    return weight;
  }

  /// Throws unless the coefficients are k x 1 with k valid for W (from_state).
  static void check_coefficients(const char* fn, matrix_view<T, Backend> weight,
                                 matrix_view<const T, Backend> coefficients,
                                 loca_options& options) {
    detail::require_non_empty(fn, "weight", weight);
    if (coefficients.cols() != 1) {
      detail::throw_invalid_argument(fn, "coefficients", detail::shape_of(coefficients), "k x 1");
    }
    options.n_frequency = coefficients.rows();
    detail::require_in_range(fn, "coefficients.rows()", coefficients.rows(), 1,
                             weight.rows() * weight.cols(), "out in");
  }

  [[nodiscard]] static T clamp_max(bool reference) noexcept { return reference ? T(0.999) : T(1); }

  /// round(clamp(p, 0, cmax) (n - 1)) in T, half to even (torch.round),
  /// whatever the floating-point environment's rounding mode.
  [[nodiscard]] static index_t to_index(T p, index_t n, T cmax) noexcept {
    const T v = std::min(std::max(p, T(0)), cmax) * T(n - 1);
    const T floor = std::floor(v);
    const T rest = v - floor;  // exact
    auto i = static_cast<index_t>(floor);
    if (rest > T(0.5) || (rest == T(0.5) && i % 2 != 0)) ++i;
    return i;
  }

  [[nodiscard]] parameter<T, Backend> spectrum_parameter() noexcept {
    return {"loca_spectrum", coef_.view(), grad_coef_.view()};
  }
  [[nodiscard]] parameter<T, Backend> indices_parameter() noexcept {
    return {"loca_spectrum_indices", loc_.view(), grad_loc_.view()};
  }

  /// The k indices of part `which` of idx_.
  [[nodiscard]] vector_view<const index_t, Backend> idx(index_part which) const noexcept {
    const index_t k = n_frequency();
    return idx_.view().segment(index_t(which) * k, k);
  }
  /// a as a vector.
  [[nodiscard]] vector_view<const T, Backend> coef_vector() const noexcept {
    return {coef_.view().data(), n_frequency()};
  }

  /// Reads p into host_p_ and throws numerical_error naming its first
  /// non-finite entry.
  void read_locations(context<Backend>& ctx, const char* fn, std::vector<T>& host) const {
    const index_t k = n_frequency();
    ops<Backend>::download(ctx, as_const(loc_.view()), matrix_view<T, cpu>(host.data(), 2, k));
    for (index_t j = 0; j < k; ++j) {
      for (index_t i = 0; i < 2; ++i) {
        const T v = host[std::size_t(2 * j + i)];
        if (!std::isfinite(v)) {
          detail::throw_numerical_error(
              fn, "locations(" + std::to_string(i) + ", " + std::to_string(j) + ")", v,
              "finite entries");
        }
      }
    }
  }

  /// The integer locations of the current p, on the host.
  void host_locations(context<Backend>& ctx, const char* fn, std::vector<index_t>& rows,
                      std::vector<index_t>& cols) const {
    const index_t k = n_frequency();
    std::vector<T> p(std::size_t(2 * k));
    read_locations(ctx, fn, p);
    rows.resize(std::size_t(k));
    cols.resize(std::size_t(k));
    for (std::size_t i = 0; i < std::size_t(k); ++i) {
      rows[i] = to_index(p[2 * i], this->out_features(), cmax_);
      cols[i] = to_index(p[2 * i + 1], this->in_features(), cmax_);
    }
  }

  /// The forward's locations: p read into host_p_ (kept for backward's chain
  /// rule), rounded; the indices and their neighbours uploaded when they
  /// changed (then the basis cache is stale). Changes nothing when it throws.
  void update_locations(context<Backend>& ctx, const char* fn) {
    // host_g_ (scratch of 2 k) takes p until it is known finite.
    read_locations(ctx, fn, host_g_);
    std::swap(host_p_, host_g_);
    const index_t k = n_frequency();
    const index_t m = this->out_features();
    const index_t n = this->in_features();
    const auto at = [&](index_part which, index_t i) -> index_t& {
      return host_idx_[std::size_t(index_t(which) * k + i)];
    };
    bool changed = false;
    for (index_t i = 0; i < k; ++i) {
      const index_t r = to_index(host_p_[std::size_t(2 * i)], m, cmax_);
      const index_t c = to_index(host_p_[std::size_t(2 * i + 1)], n, cmax_);
      if (at(rows_part, i) == r && at(cols_part, i) == c) continue;
      changed = true;
      at(rows_part, i) = r;
      at(cols_part, i) = c;
      // The reference's neighbours: clamped to the range, so one-sided at a border.
      at(up_part, i) = std::min(r + 1, m - 1);
      at(down_part, i) = std::max<index_t>(r - 1, 0);
      at(right_part, i) = std::min(c + 1, n - 1);
      at(left_part, i) = std::max<index_t>(c - 1, 0);
    }
    if (changed) {
      ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(host_idx_.data(), 6 * k),
                                   idx_.view());
      basis_ready_ = false;
    }
  }

  // --- The transform route -------------------------------------------------------

  /// Dx = dct(input) (kept), Z = Dx[:, c] diag(a), F(:, r) += alpha Z, Y += idct(F).
  void transform_forward(context<Backend>& ctx, matrix_view<const T, Backend> input,
                         matrix_view<T, Backend> y) {
    const index_t n = input.rows();
    const index_t k = n_frequency();
    const index_t out = this->out_features();
    const auto dx = saved_dx_.rows(ctx, n, this->in_features());
    dct(ctx, input, dx, dct_axis::rows);
    auto ws = ctx.workspace();
    const matrix_view<T, Backend> z(ws.template take<T>(std::size_t(n * k)), n, k);
    const matrix_view<T, Backend> f(ws.template take<T>(std::size_t(n * out)), n, out);
    const matrix_view<T, Backend> t(ws.template take<T>(std::size_t(n * out)), n, out);
    ops<Backend>::gather_columns(ctx, as_const(dx), idx(cols_part), coef_vector(), z);
    ops<Backend>::fill(ctx, f, T(0));
    ops<Backend>::scatter_add_columns(ctx, static_cast<T>(this->scaling()), as_const(z),
                                      idx(rows_part), vector_view<const T, Backend>(), f);
    idct(ctx, as_const(f), t, dct_axis::rows);
    ops<Backend>::axpby(ctx, T(1), as_const(t), T(1), y);
  }

  /// Dy = dct(G); da += alpha Dy^T Dx sampled at (r, c), or dp from the
  /// neighbours; dX += alpha drop'(idct(E)), E(:, c) += Dy[:, r] diag(a).
  void transform_backward(context<Backend>& ctx, matrix_view<const T, Backend> g,
                          matrix_view<T, Backend> dx) {
    const index_t n = g.rows();
    const index_t k = n_frequency();
    const index_t in = this->in_features();
    const auto dxd = as_const(saved_dx_.rows(ctx, n, in));
    auto ws = ctx.workspace();
    const matrix_view<T, Backend> dyd(ws.template take<T>(std::size_t(n * this->out_features())), n,
                                      this->out_features());
    dct(ctx, g, dyd, dct_axis::rows);
    if (phase_) {
      add_location_gradients(ctx, as_const(dyd), dxd);
    } else {
      const vector_view<double, Backend> dots(ws.template take<double>(std::size_t(k)), k);
      ops<Backend>::sampled_dots(ctx, as_const(dyd), dxd, idx(rows_part), idx(cols_part), dots);
      add_scaled(ctx, as_const(dots));
    }
    if (dx.empty()) return;
    const matrix_view<T, Backend> z(ws.template take<T>(std::size_t(n * k)), n, k);
    const matrix_view<T, Backend> e(ws.template take<T>(std::size_t(n * in)), n, in);
    const matrix_view<T, Backend> t(ws.template take<T>(std::size_t(n * in)), n, in);
    ops<Backend>::gather_columns(ctx, as_const(dyd), idx(rows_part), coef_vector(), z);
    ops<Backend>::fill(ctx, e, T(0));
    ops<Backend>::scatter_add_columns(ctx, static_cast<T>(this->scaling()), as_const(z),
                                      idx(cols_part), vector_view<const T, Backend>(), e);
    idct(ctx, as_const(e), t, dct_axis::rows);
    add_input_term(ctx, as_const(t), dx);
  }

  /// grad_a += alpha dots (in double, rounded once).
  void add_scaled(context<Backend>& ctx, vector_view<const double, Backend> dots) {
    ops<Backend>::divide(ctx, dots, as_const(inv_alpha_.view()), 1.0,
                         vector_view<T, Backend>(grad_coef_.data(), n_frequency()));
  }

  /// dX += T, through the forward's dropout mask when there is one.
  void add_input_term(context<Backend>& ctx, matrix_view<const T, Backend> t,
                      matrix_view<T, Backend> dx) {
    if (this->dropout_on()) {
      this->add_masked(ctx, t, dx);
    } else {
      ops<Backend>::axpby(ctx, T(1), t, T(1), dx);
    }
  }

  /// The location gradient rule (see the file comment) from K at the four
  /// neighbours of every location: sampled on the device, applied on the host.
  void add_location_gradients(context<Backend>& ctx, matrix_view<const T, Backend> dyd,
                              matrix_view<const T, Backend> dxd) {
    const index_t k = n_frequency();
    auto ws = ctx.workspace();
    const vector_view<double, Backend> dots(ws.template take<double>(std::size_t(4 * k)), 4 * k);
    ops<Backend>::sampled_dots(ctx, dyd, dxd, idx(up_part), idx(cols_part), dots.segment(0, k));
    ops<Backend>::sampled_dots(ctx, dyd, dxd, idx(down_part), idx(cols_part), dots.segment(k, k));
    ops<Backend>::sampled_dots(ctx, dyd, dxd, idx(rows_part), idx(right_part),
                               dots.segment(2 * k, k));
    ops<Backend>::sampled_dots(ctx, dyd, dxd, idx(rows_part), idx(left_part),
                               dots.segment(3 * k, k));
    ops<Backend>::download(ctx, as_const(dots.as_matrix()),
                           matrix_view<double, cpu>(host_dots_.data(), 4 * k, 1));
    ops<Backend>::download(ctx, as_const(coef_.view()), matrix_view<T, cpu>(host_a_.data(), k, 1));
    const double alpha = this->scaling();
    const double m1 = double(this->out_features() - 1);
    const double n1 = double(this->in_features() - 1);
    const auto inside = [&](T p) { return p > T(0) && p < cmax_; };
    const auto clamp1 = [](double v) { return std::isnan(v) ? v : std::clamp(v, -1.0, 1.0); };
    for (std::size_t i = 0; i < std::size_t(k); ++i) {
      const std::size_t kk = std::size_t(k);
      const double a = host_a_[i];
      // K = alpha <Dy(:, r'), Dx(:, c')>; alpha enters before the clamp.
      const double g_row = clamp1(0.5 * a * alpha * (host_dots_[i] - host_dots_[kk + i]));
      const double g_col =
          clamp1(0.5 * a * alpha * (host_dots_[2 * kk + i] - host_dots_[3 * kk + i]));
      host_g_[2 * i] = inside(host_p_[2 * i]) ? static_cast<T>(m1 * g_row) : T(0);
      host_g_[2 * i + 1] = inside(host_p_[2 * i + 1]) ? static_cast<T>(n1 * g_col) : T(0);
    }
    const matrix_view<T, Backend> g(ws.template take<T>(std::size_t(2 * k)), 2, k);
    ops<Backend>::upload(ctx, matrix_view<const T, cpu>(host_g_.data(), 2, k), g);
    ops<Backend>::axpby(ctx, T(1), as_const(g), T(1), grad_loc_.view());
  }

  // --- The basis route -----------------------------------------------------------

  /// Phi_in = C_in[c, :]^T (in x k) and Phi_out = C_out[r, :]^T (out x k),
  /// made again when the locations changed.
  void ensure_basis(context<Backend>& ctx) {
    if (basis_ready_) return;
    const index_t k = n_frequency();
    if (phi_in_.size() == 0) phi_in_ = matrix<T, Backend>(ctx, this->in_features(), k);
    if (phi_out_.size() == 0) phi_out_ = matrix<T, Backend>(ctx, this->out_features(), k);
    dct_basis(ctx, idx(cols_part), phi_in_.view());
    dct_basis(ctx, idx(rows_part), phi_out_.view());
    basis_ready_ = true;
  }

  /// H = input Phi_in (kept), Y += alpha (H diag(a)) Phi_out^T.
  void basis_forward(context<Backend>& ctx, matrix_view<const T, Backend> input,
                     matrix_view<T, Backend> y) {
    ensure_basis(ctx);
    const index_t n = input.rows();
    const index_t k = n_frequency();
    const auto h = saved_h_.rows(ctx, n, k);
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), input, as_const(phi_in_.view()),
                       T(0), h);
    auto ws = ctx.workspace();
    const matrix_view<T, Backend> hs(ws.template take<T>(std::size_t(n * k)), n, k);
    ops<Backend>::copy(ctx, as_const(h), hs);
    ops<Backend>::scale_columns(ctx, coef_vector(), hs);
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, static_cast<T>(this->scaling()),
                       as_const(hs), as_const(phi_out_.view()), T(1), y);
  }

  /// P = G Phi_out (= Dy[:, r]); da_i += alpha <P(:, i), H(:, i)>;
  /// dX += alpha drop'((P diag(a)) Phi_in^T).
  void basis_backward(context<Backend>& ctx, matrix_view<const T, Backend> g,
                      matrix_view<T, Backend> dx) {
    const index_t n = g.rows();
    const index_t k = n_frequency();
    auto ws = ctx.workspace();
    const matrix_view<T, Backend> p(ws.template take<T>(std::size_t(n * k)), n, k);
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), g, as_const(phi_out_.view()), T(0),
                       p);
    const vector_view<double, Backend> dots(ws.template take<double>(std::size_t(k)), k);
    ops<Backend>::column_dots(ctx, as_const(p), as_const(saved_h_.rows(ctx, n, k)), dots);
    add_scaled(ctx, as_const(dots));
    if (dx.empty()) return;
    ops<Backend>::scale_columns(ctx, coef_vector(), p);
    const auto s = static_cast<T>(this->scaling());
    if (this->dropout_on()) {
      // drop(X) is no longer needed: its storage takes the adapter's term.
      const auto t = this->dropped(ctx);
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, s, as_const(p),
                         as_const(phi_in_.view()), T(0), t);
      this->add_masked(ctx, as_const(t), dx);
    } else {
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, s, as_const(p),
                         as_const(phi_in_.view()), T(1), dx);
    }
  }

  // --- The merge -----------------------------------------------------------------

  struct merge_factors {
    matrix<T, Backend> b;  ///< out x k: C_out[r, :]^T
    matrix<T, Backend> a;  ///< k x in: diag(a) C_in[c, :]
  };

  /// B' and A' from coefficients and host locations (the same bits every call).
  merge_factors factors(context<Backend>& ctx, matrix_view<const T, Backend> coefficients,
                        const std::vector<index_t>& rows, const std::vector<index_t>& cols) {
    const index_t k = n_frequency();
    const index_t in = this->in_features();
    merge_factors f{matrix<T, Backend>(ctx, this->out_features(), k),
                    matrix<T, Backend>(ctx, k, in)};
    vector<index_t, Backend> r(ctx, k);
    vector<index_t, Backend> c(ctx, k);
    ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(rows.data(), k), r.view());
    ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(cols.data(), k), c.view());
    dct_basis(ctx, as_const(r.view()), f.b.view());
    matrix<T, Backend> phi(ctx, in, k);
    dct_basis(ctx, as_const(c.view()), phi.view());
    // A' = diag(a) Phi^T, transposed on the host (the merge is rare).
    using host = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
    host hphi(in, k);
    host ha(k, 1);
    ops<Backend>::download(ctx, as_const(phi.view()), view(hphi));
    ops<Backend>::download(ctx, coefficients, view(ha));
    const host at = (hphi * ha.col(0).asDiagonal()).transpose();
    ops<Backend>::upload(ctx, view(at), f.a.view());
    return f;
  }

  void merge_impl(context<Backend>& ctx, bool safe, const char* fn) {
    this->require_unmerged(fn);
    if (safe) detail::require_finite(ctx, fn, "coefficients", as_const(coef_.view()));
    std::vector<index_t> rows, cols;
    host_locations(ctx, fn, rows, cols);
    matrix<T, Backend> keep(ctx, n_frequency(), 1);
    ops<Backend>::copy(ctx, as_const(coef_.view()), keep.view());
    auto f = factors(ctx, as_const(keep.view()), rows, cols);
    this->merge_weight(ctx, fn, safe, as_const(f.b.view()), as_const(f.a.view()), {});
    merged_coef_ = std::move(keep);
    merged_rows_ = std::move(rows);
    merged_cols_ = std::move(cols);
  }

  loca_options options_;
  T cmax_ = 1;
  std::uint64_t optimizer_steps_ = 0;
  // The state: a (k x 1), p (2 x k), their gradients, 1 / alpha (k doubles).
  matrix<T, Backend> coef_, loc_, grad_coef_, grad_loc_;
  vector<double, Backend> inv_alpha_;
  // The forward's locations and neighbours (6 parts of k), on the device and the host.
  vector<index_t, Backend> idx_;
  std::vector<index_t> host_idx_;
  // Host mirrors: the forward's p, the coefficients, the location gradient, K's samples.
  std::vector<T> host_p_, host_a_, host_g_;
  std::vector<double> host_dots_;
  // The pending forward: its phase and route; Dx (transform) or H (basis).
  bool phase_ = false;
  loca_route route_ = loca_route::transform;
  detail::batch_workspace<T, Backend> saved_dx_, saved_h_;
  // The basis route's cache, valid for the locations in idx_.
  matrix<T, Backend> phi_in_, phi_out_;
  bool basis_ready_ = false;
  // The coefficients and locations as merged (for the exact unmerge).
  matrix<T, Backend> merged_coef_;
  std::vector<index_t> merged_rows_, merged_cols_;
};

}  // namespace lowrank
