#pragma once
/// @file
/// `lowrank::projector<T, Backend>`: the low-rank gradient projector of the
/// GaLore family (docs/algorithms.md, "Gradient projection"; galore-torch's
/// `GaLoreProjector`, with its bugs fixed).
///
/// **Shapes** (PyTorch `nn.Linear` layout): the gradient G is m x n (out x
/// in). The projector holds an orthonormal basis of rank r = min(rank, m, n)
/// (the rank asked for is clamped, and `rank()` says what it is):
///
/// | side      | basis        | project: R =  | R's shape | back(N) =         |
/// |-----------|--------------|---------------|-----------|-------------------|
/// | left      | U (m x r)    | U^T G         | r x n     | scale U N         |
/// | right     | V (n x r)    | G V           | m x r     | scale N V^T       |
/// | two_sided | U, V         | U^T G V       | r x r     | scale U N V^T     |
///
/// galore-torch's right basis is P = V^T (r x n); ours stores V, its
/// transpose, so both sides keep their basis vectors as columns.
/// `projection_side::standard` (galore's "std") projects the smaller
/// dimension: right when m >= n (square included), left when m < n;
/// `reverse_standard` the opposite. The side is resolved once, from the shape
/// the projector is built for, and never re-inferred from an argument's shape
/// (galore-torch re-infers it in project_back and breaks on square low-rank
/// gradients). 1-D or flattened gradients (rows or columns < 2: galore-torch
/// crashes on them under FSDP) are refused: train them with plain AdamW.
///
/// **Refresh** (`refresh(ctx, G)`) recomputes the basis from G; `due(step)`
/// says when: at the first call (no basis yet) and at steps s with
/// s mod T = phase, T = `update_gap`, phase 0 (galore-torch: steps 0, T,
/// 2T, ..., counted before the step's increment) or, with `stagger`,
/// phase = layer mod T, so that the layers of a model spread their refreshes
/// over T steps. Methods:
/// - `exact`: the leading r singular vectors of G from our truncated SVD
///   (decomp/truncated_svd.hpp), signs as scikit-learn's svd_flip. Cost
///   O(m n min(m, n)); workspace a copy of G and the thin factors.
/// - `randomized`: our randomized SVD (decomp/randomized_svd.hpp) with
///   `oversampling` p and `power_iterations` q, its sketch the Gaussian matrix
///   of `layer_stream(seed, layer, 4, refresh index)`. Cost 2 (q + 1) products
///   with G of l = r + p columns; workspace (m + n) l.
/// - `warm`: subspace iteration from the current basis: for the right side
///   V <- orth(G^T (G V)) (`warm_iterations` times), for the left side
///   U <- orth(G (G^T U)), both for two_sided; orth is Cholesky QR2 with the
///   fallbacks of decomp/orthonormalize.hpp. 2 products with G per iteration
///   and side; workspace (m + n) r. Because the Cholesky factor is
///   triangular, a basis that still spans the leading subspace comes back
///   nearly unchanged, column by column (what the `keep` moment policy
///   wants). When the overlap ||P_old^T P_new||_F^2 / r falls below
///   `warm_min_overlap`, or the iteration's block is rank-deficient, it falls
///   back to `randomized` (counted in `fallbacks()`). The first refresh is
///   `randomized`.
/// - `random`: an orthonormalised Gaussian basis (GoLore / Flora style) from
///   `layer_stream(seed, layer, 5, 2 i)` (left) and `(..., 2 i + 1)` (right)
///   for refresh i: the same numbers on every backend and thread count. G is
///   only checked for finiteness.
/// A refresh keeps the old basis, and says so, when G is not finite or the
/// factorisation fails; without any basis the projector cannot project, and
/// the optimizer skips its step.
///
/// After each refresh with a previous basis, `transition_left()` = U_new^T
/// U_old and `transition_right()` = V_new^T V_old (r x r) give the change of
/// coordinates (the `rotate` moment policy: a moment M in the old
/// coordinates is C_L M (left), M C_R^T (right), C_L M C_R^T (two-sided) in
/// the new ones), and `overlap()` = min over the sides of ||C||_F^2 / r, in
/// [0, 1] (1: same subspace).
///
/// **Memory.** State: the basis, r (m or n or both) scalars, and the
/// transitions, r^2 per side (`state_bytes()`). Refresh workspace
/// (`refresh_workspace_bytes()`, besides what the SVD routines take inside
/// the backend): exact m n + (m + n + 1) min(m, n); randomized (m + n) (r + p)
/// + 2 (r + p)^2; warm (m + n) r + 2 r^2 per side + the randomized fallback
/// when taken; random the basis; plus a copy of the old basis.
///
/// **Errors.** lowrank::invalid_argument for options (the message names the
/// function, the option, its value and what was expected) and for arguments
/// of the wrong shape. A throwing call changes nothing.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
#include "lowrank/decomp/orthonormalize.hpp"
#include "lowrank/decomp/randomized_svd.hpp"
#include "lowrank/decomp/truncated_svd.hpp"
#include "lowrank/projection/backend.hpp"
#include "lowrank/random/streams.hpp"

namespace lowrank {

/// Which dimension of G a projector projects (see the file comment).
enum class projection_side {
  standard,          ///< galore's "std": right when m >= n, else left
  reverse_standard,  ///< galore's "reverse_std": left when m >= n, else right
  left,              ///< R = U^T G (r x n)
  right,             ///< R = G V (m x r)
  two_sided,         ///< R = U^T G V (r x r)
};

/// How a projector recomputes its basis (see the file comment).
enum class refresh_method { exact, randomized, warm, random };

/// What a call of `projector::refresh` did.
enum class refresh_outcome {
  refreshed,           ///< a new basis by the projector's method
  fell_back,           ///< `warm` fell back to `randomized` (a new basis)
  skipped_non_finite,  ///< G had a NaN or Inf entry: the old basis stays
  skipped_failed,      ///< the factorisation failed: the old basis stays
};

/// The random matrices of the projection family (random/streams.hpp): the
/// randomized refresh's sketch and the random basis.
enum class projection_stream_kind : stream_kind { sketch = 4, random_basis = 5 };

/// Options of a projector (galore-torch's names in brackets).
struct projector_options {
  index_t rank = 128;                                ///< >= 1, clamped to min(m, n) [rank]
  projection_side side = projection_side::standard;  ///< [proj_type]
  refresh_method method = refresh_method::warm;
  index_t update_gap = 200;       ///< T >= 1 [update_proj_gap]
  bool stagger = false;           ///< refresh when step mod T = layer mod T
  double scale = 1.0;             ///< back-projection factor, finite [scale]
  std::uint64_t seed = 0;         ///< the random streams (randomized, random)
  std::uint64_t layer = 0;        ///< this weight's index in the model, < 2^30
  index_t oversampling = 10;      ///< randomized: p >= 0
  index_t power_iterations = 2;   ///< randomized: q >= 0
  index_t warm_iterations = 1;    ///< warm: subspace iterations, >= 1
  double warm_min_overlap = 0.5;  ///< warm: fall back below, in [0, 1]
};

template <scalar T, class Backend = cpu>
requires projection_backend_for<Backend, T>
class projector {
 public:
  using scalar_type = T;
  using backend = Backend;

  /// A projector for m x n gradients, with no basis yet.
  /// @throws lowrank::invalid_argument if rows or cols < 2, rank < 1,
  ///   update_gap < 1, scale not finite, layer >= 2^30, oversampling,
  ///   power_iterations < 0, warm_iterations < 1 or warm_min_overlap not in
  ///   [0, 1].
  projector(index_t rows, index_t cols, const projector_options& options = {})
      : options_(checked(rows, cols, options)), rows_(rows), cols_(cols) {
    rank_ = std::min({options.rank, rows, cols});
    switch (options.side) {
      case projection_side::standard:
        side_ = rows >= cols ? projection_side::right : projection_side::left;
        break;
      case projection_side::reverse_standard:
        side_ = rows >= cols ? projection_side::left : projection_side::right;
        break;
      default:
        side_ = options.side;
    }
  }

  // --- Shape and state ------------------------------------------------------------

  [[nodiscard]] const projector_options& options() const noexcept { return options_; }
  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t cols() const noexcept { return cols_; }
  /// r = min(options().rank, m, n).
  [[nodiscard]] index_t rank() const noexcept { return rank_; }
  /// The resolved side: left, right or two_sided.
  [[nodiscard]] projection_side side() const noexcept { return side_; }
  [[nodiscard]] bool projects_left() const noexcept { return side_ != projection_side::right; }
  [[nodiscard]] bool projects_right() const noexcept { return side_ != projection_side::left; }
  /// R's shape: r x n (left), m x r (right), r x r (two-sided).
  [[nodiscard]] index_t projected_rows() const noexcept { return projects_left() ? rank_ : rows_; }
  [[nodiscard]] index_t projected_cols() const noexcept { return projects_right() ? rank_ : cols_; }

  [[nodiscard]] bool has_basis() const noexcept { return refreshes_ > 0; }
  /// U (m x r; empty for the right side) and V (n x r; empty for the left side).
  [[nodiscard]] matrix_view<const T, Backend> left_basis() const noexcept { return u_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> right_basis() const noexcept { return v_.view(); }
  /// U_new^T U_old and V_new^T V_old of the last refresh (r x r; empty before
  /// the second refresh, or for a side not projected).
  [[nodiscard]] matrix_view<const T, Backend> transition_left() const noexcept {
    return c_left_.view();
  }
  [[nodiscard]] matrix_view<const T, Backend> transition_right() const noexcept {
    return c_right_.view();
  }
  /// min over the sides of ||C||_F^2 / r at the last refresh with a previous
  /// basis (1 before: nothing changed).
  [[nodiscard]] double overlap() const noexcept { return overlap_; }

  /// Bases computed (the successful refreshes, the first included).
  [[nodiscard]] std::uint64_t refreshes() const noexcept { return refreshes_; }
  /// Refreshes that kept the old basis (non-finite G, failed factorisation).
  [[nodiscard]] std::uint64_t skipped_refreshes() const noexcept { return skipped_; }
  /// `warm` refreshes that fell back to `randomized`.
  [[nodiscard]] std::uint64_t fallbacks() const noexcept { return fallbacks_; }

  /// Whether the step numbered `step` (0-based, counted before the step)
  /// refreshes: no basis yet, or step mod T = phase (see the file comment).
  [[nodiscard]] bool due(std::uint64_t step) const noexcept {
    const auto gap = static_cast<std::uint64_t>(options_.update_gap);
    const std::uint64_t phase = options_.stagger ? options_.layer % gap : 0;
    return !has_basis() || step % gap == phase;
  }

  /// Bytes of state: the basis and the transitions (see the file comment).
  [[nodiscard]] std::size_t state_bytes() const noexcept {
    const std::size_t sides = (projects_left() ? 1 : 0) + (projects_right() ? 1 : 0);
    const std::size_t basis = (projects_left() ? rows_ : 0) + (projects_right() ? cols_ : 0);
    return sizeof(T) * std::size_t(rank_) * (basis + sides * std::size_t(rank_));
  }

  /// Bytes of workspace a refresh takes by the projector's method (see the
  /// file comment; `warm` without its fallback), besides the backend's own.
  [[nodiscard]] std::size_t refresh_workspace_bytes() const noexcept {
    const auto m = std::size_t(rows_);
    const auto n = std::size_t(cols_);
    const auto r = std::size_t(rank_);
    const std::size_t old = r * ((projects_left() ? m : 0) + (projects_right() ? n : 0));
    switch (options_.method) {
      case refresh_method::exact:
        return sizeof(T) * (m * n + (m + n + 1) * std::min(m, n)) + old * sizeof(T);
      case refresh_method::randomized:
        return randomized_bytes() + old * sizeof(T);
      case refresh_method::warm: {
        const std::size_t sides = (projects_left() ? 1 : 0) + (projects_right() ? 1 : 0);
        return sizeof(T) * ((m + n) * r + 2 * sides * r * r) + old * sizeof(T);
      }
      case refresh_method::random:
        return old * sizeof(T);
    }
    return 0;
  }

  // --- Refresh -------------------------------------------------------------------

  /// Recomputes the basis from G (m x n) by the projector's method (see the
  /// file comment).
  /// @throws lowrank::invalid_argument if G is not m x n.
  refresh_outcome refresh(context<Backend>& ctx, matrix_view<const T, Backend> g) {
    const char* fn = "lowrank::projector::refresh";
    detail::require_shape(fn, "g", g, rows_, cols_);
    const double largest = ops<Backend>::max_abs(ctx, g);
    if (!std::isfinite(largest)) {
      ++skipped_;
      return refresh_outcome::skipped_non_finite;
    }
    matrix<T, Backend> u;
    matrix<T, Backend> v;
    refresh_outcome outcome = refresh_outcome::refreshed;
    try {
      switch (has_basis() ? options_.method
                          : (options_.method == refresh_method::warm ? refresh_method::randomized
                                                                     : options_.method)) {
        case refresh_method::exact: {
          auto f = truncated_svd(ctx, g, rank_);
          u = std::move(f.u);
          v = std::move(f.v);
          break;
        }
        case refresh_method::randomized:
          randomized(ctx, g, u, v);
          break;
        case refresh_method::warm:
          if (!warm(ctx, g, largest, u, v)) {
            randomized(ctx, g, u, v);
            outcome = refresh_outcome::fell_back;
          }
          break;
        case refresh_method::random:
          random(ctx, u, v);
          break;
      }
    } catch (const numerical_error&) {
      ++skipped_;
      return refresh_outcome::skipped_failed;
    }
    install(ctx, std::move(u), std::move(v));
    if (outcome == refresh_outcome::fell_back) ++fallbacks_;
    return outcome;
  }

  /// Sets the basis directly (U m x r for a left or two-sided projector, V
  /// n x r for a right or two-sided one; the other empty), orthonormal
  /// columns expected: a basis from elsewhere, or a restored state.
  /// @throws lowrank::invalid_argument for a basis of the wrong shape.
  void set_basis(context<Backend>& ctx, matrix_view<const T, Backend> u,
                 matrix_view<const T, Backend> v) {
    const char* fn = "lowrank::projector::set_basis";
    if (projects_left()) detail::require_shape(fn, "u", u, rows_, rank_);
    if (projects_right()) detail::require_shape(fn, "v", v, cols_, rank_);
    matrix<T, Backend> nu;
    matrix<T, Backend> nv;
    if (projects_left()) {
      nu = matrix<T, Backend>(ctx, rows_, rank_);
      ops<Backend>::copy(ctx, u, nu.view());
    }
    if (projects_right()) {
      nv = matrix<T, Backend>(ctx, cols_, rank_);
      ops<Backend>::copy(ctx, v, nv.view());
    }
    install(ctx, std::move(nu), std::move(nv));
  }

  /// Restores the counters of a saved projector (projected_adam's load).
  void set_counters(std::uint64_t refreshes, std::uint64_t skipped, std::uint64_t fallbacks,
                    double overlap) noexcept {
    refreshes_ = refreshes;
    skipped_ = skipped;
    fallbacks_ = fallbacks;
    overlap_ = overlap;
  }

  // --- Projection ----------------------------------------------------------------

  /// R = U^T G, G V or U^T G V (see the file comment), into r (projected_rows
  /// x projected_cols).
  /// @throws lowrank::invalid_argument if there is no basis yet, or for shapes.
  void project(context<Backend>& ctx, matrix_view<const T, Backend> g,
               matrix_view<T, Backend> r) const {
    const char* fn = "lowrank::projector::project";
    require_basis(fn);
    detail::require_shape(fn, "g", g, rows_, cols_);
    detail::require_shape(fn, "r", r, projected_rows(), projected_cols());
    detail::require_apart(fn, "r", r, "g", g);
    const auto u = u_.view();
    const auto v = v_.view();
    switch (side_) {
      case projection_side::left:
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), u, g, T(0), r);
        break;
      case projection_side::right:
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), g, v, T(0), r);
        break;
      default: {
        auto ws = ctx.workspace();
        matrix_view<T, Backend> ug(ws.template take<T>(std::size_t(rank_ * cols_)), rank_, cols_);
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), u, g, T(0), ug);
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), as_const(ug), v, T(0), r);
      }
    }
  }

  /// Y = alpha scale back(N) + beta Y (beta = 0 ignores Y): back(N) = U N,
  /// N V^T or U N V^T (see the file comment); N projected_rows x
  /// projected_cols, Y m x n (a weight, for a fused update).
  /// @throws lowrank::invalid_argument if there is no basis yet, or for shapes.
  void project_back(context<Backend>& ctx, matrix_view<const T, Backend> n, T alpha, T beta,
                    matrix_view<T, Backend> y) const {
    back(ctx, "lowrank::projector::project_back", n, static_cast<T>(double(alpha) * options_.scale),
         beta, y);
  }

  /// Y = alpha back(R) + beta Y without the scale: alpha = 1, beta = 0 gives
  /// the projection of G onto the basis' span, U U^T G, G V V^T or
  /// U U^T G V V^T, from R = project(G) (Fira's residual is G minus it).
  /// @throws lowrank::invalid_argument if there is no basis yet, or for shapes.
  void reconstruct(context<Backend>& ctx, matrix_view<const T, Backend> r, T alpha, T beta,
                   matrix_view<T, Backend> y) const {
    back(ctx, "lowrank::projector::reconstruct", r, alpha, beta, y);
  }

  /// Y = scale back(N) (see project_back).
  void project_back(context<Backend>& ctx, matrix_view<const T, Backend> n,
                    matrix_view<T, Backend> y) const {
    project_back(ctx, n, T(1), T(0), y);
  }

 private:
  static const projector_options& checked(index_t rows, index_t cols, const projector_options& o) {
    const char* fn = "lowrank::projector::projector";
    if (rows < 2 || cols < 2) {
      detail::throw_invalid_argument(
          fn, "rows x cols", std::to_string(rows) + " x " + std::to_string(cols),
          "a 2-D gradient with rows, cols >= 2 (project weight matrices; train 1-D or flattened "
          "parameters with plain AdamW)");
    }
    if (o.rank < 1) detail::throw_invalid_argument(fn, "options.rank", o.rank, ">= 1");
    if (o.update_gap < 1) {
      detail::throw_invalid_argument(fn, "options.update_gap", o.update_gap, ">= 1");
    }
    if (!std::isfinite(o.scale)) {
      detail::throw_invalid_argument(fn, "options.scale", o.scale, "a finite number");
    }
    if (o.layer >= max_stream_layers) {
      detail::throw_invalid_argument(fn, "options.layer", o.layer, "< 2^30");
    }
    if (o.oversampling < 0) {
      detail::throw_invalid_argument(fn, "options.oversampling", o.oversampling, ">= 0");
    }
    if (o.power_iterations < 0) {
      detail::throw_invalid_argument(fn, "options.power_iterations", o.power_iterations, ">= 0");
    }
    if (o.warm_iterations < 1) {
      detail::throw_invalid_argument(fn, "options.warm_iterations", o.warm_iterations, ">= 1");
    }
    if (!(o.warm_min_overlap >= 0 && o.warm_min_overlap <= 1)) {
      detail::throw_invalid_argument(fn, "options.warm_min_overlap", o.warm_min_overlap,
                                     "a value in [0, 1]");
    }
    return o;
  }

  void require_basis(const char* fn) const {
    if (!has_basis()) {
      detail::throw_invalid_argument(fn, "this", "a projector without a basis",
                                     "a refreshed projector (call refresh first)");
    }
  }

  void back(context<Backend>& ctx, const char* fn, matrix_view<const T, Backend> n, T a, T beta,
            matrix_view<T, Backend> y) const {
    require_basis(fn);
    detail::require_shape(fn, "n", n, projected_rows(), projected_cols());
    detail::require_shape(fn, "y", y, rows_, cols_);
    detail::require_apart(fn, "y", y, "n", n);
    const auto u = u_.view();
    const auto v = v_.view();
    switch (side_) {
      case projection_side::left:
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, a, u, n, beta, y);
        break;
      case projection_side::right:
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, a, n, v, beta, y);
        break;
      default: {
        auto ws = ctx.workspace();
        matrix_view<T, Backend> nv(ws.template take<T>(std::size_t(rank_ * cols_)), rank_, cols_);
        ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), n, v, T(0), nv);
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, a, u, as_const(nv), beta, y);
      }
    }
  }

  [[nodiscard]] std::size_t randomized_bytes() const noexcept {
    const auto l = std::size_t(std::min(rank_ + options_.oversampling, std::min(rows_, cols_)));
    return sizeof(T) * ((std::size_t(rows_) + std::size_t(cols_)) * l) + 2 * sizeof(double) * l * l;
  }

  /// The basis of the randomized SVD of G, sketched from this layer's stream.
  void randomized(context<Backend>& ctx, matrix_view<const T, Backend> g, matrix<T, Backend>& u,
                  matrix<T, Backend>& v) const {
    const random_stream s =
        layer_stream(options_.seed, options_.layer,
                     static_cast<stream_kind>(projection_stream_kind::sketch), refreshes_);
    auto f = randomized_svd(ctx, g, rank_,
                            randomized_svd_options{.oversampling = options_.oversampling,
                                                   .power_iterations = options_.power_iterations,
                                                   .seed = s.seed,
                                                   .stream = s.stream});
    u = std::move(f.u);
    v = std::move(f.v);
  }

  /// Subspace iteration from the current basis; false when it must fall back.
  bool warm(context<Backend>& ctx, matrix_view<const T, Backend> g, double largest,
            matrix<T, Backend>& u, matrix<T, Backend>& v) const {
    // The first product is scaled by a power of two (exact) so that G^T G V
    // stays inside T's range for any finite G; the span does not change.
    const T first = largest > 0 ? static_cast<T>(std::ldexp(1.0, -std::ilogb(largest))) : T(1);
    const auto iterate = [&](matrix_view<const T, Backend> old, bool left,
                             matrix<T, Backend>& out) {
      const index_t big = left ? rows_ : cols_;
      const index_t other = left ? cols_ : rows_;
      matrix<T, Backend> y(ctx, other, rank_);
      out = matrix<T, Backend>(ctx, big, rank_);
      ops<Backend>::copy(ctx, old, out.view());
      for (index_t it = 0; it < options_.warm_iterations; ++it) {
        // left: Y = G^T U, U = G Y; right: Y = G V, V = G^T Y.
        ops<Backend>::gemm(ctx, left ? transpose::yes : transpose::no, transpose::no, first, g,
                           as_const(out.view()), T(0), y.view());
        ops<Backend>::gemm(ctx, left ? transpose::no : transpose::yes, transpose::no, T(1), g,
                           as_const(y.view()), T(0), out.view());
        if (ops<Backend>::max_abs(ctx, as_const(out.view())) == 0) return false;
        if (orthonormalize(ctx, out.view()) == orth_method::householder) return false;
      }
      return overlap_of(ctx, as_const(out.view()), old) >= options_.warm_min_overlap;
    };
    if (projects_left() && !iterate(u_.view(), true, u)) return false;
    if (projects_right() && !iterate(v_.view(), false, v)) return false;
    return true;
  }

  /// An orthonormalised Gaussian basis per side, from refresh index i.
  void random(context<Backend>& ctx, matrix<T, Backend>& u, matrix<T, Backend>& v) const {
    const auto draw = [&](index_t rows, std::uint64_t index, matrix<T, Backend>& out) {
      out = matrix<T, Backend>(ctx, rows, rank_);
      const random_stream s =
          layer_stream(options_.seed, options_.layer,
                       static_cast<stream_kind>(projection_stream_kind::random_basis), index);
      ops<Backend>::fill_random(ctx, distribution::gaussian, s, out.view(), 0, 0);
      orthonormalize(ctx, out.view());
    };
    if (projects_left()) draw(rows_, 2 * refreshes_, u);
    if (projects_right()) draw(cols_, 2 * refreshes_ + 1, v);
  }

  /// ||A^T B||_F^2 / r for two n x r orthonormal bases.
  [[nodiscard]] double overlap_of(context<Backend>& ctx, matrix_view<const T, Backend> a,
                                  matrix_view<const T, Backend> b) const {
    matrix<T, Backend> c(ctx, rank_, rank_);
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), a, b, T(0), c.view());
    return ops<Backend>::squared_norm(ctx, as_const(c.view())) / double(rank_);
  }

  /// Takes the new basis; the transitions from the old one, if any.
  void install(context<Backend>& ctx, matrix<T, Backend>&& u, matrix<T, Backend>&& v) {
    if (!projects_left()) u = matrix<T, Backend>();
    if (!projects_right()) v = matrix<T, Backend>();
    if (has_basis()) {
      double overlap = 1;
      const auto transition = [&](const matrix<T, Backend>& now, const matrix<T, Backend>& old,
                                  matrix<T, Backend>& c) {
        c = matrix<T, Backend>(ctx, rank_, rank_);
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), now.view(), old.view(), T(0),
                           c.view());
        overlap =
            std::min(overlap, ops<Backend>::squared_norm(ctx, as_const(c.view())) / double(rank_));
      };
      if (projects_left()) transition(u, u_, c_left_);
      if (projects_right()) transition(v, v_, c_right_);
      overlap_ = overlap;
    }
    u_ = std::move(u);
    v_ = std::move(v);
    ++refreshes_;
  }

  projector_options options_;
  index_t rows_ = 0;
  index_t cols_ = 0;
  index_t rank_ = 0;
  projection_side side_ = projection_side::right;
  matrix<T, Backend> u_, v_;             // the basis
  matrix<T, Backend> c_left_, c_right_;  // the last transitions
  double overlap_ = 1;
  std::uint64_t refreshes_ = 0;
  std::uint64_t skipped_ = 0;
  std::uint64_t fallbacks_ = 0;
};

}  // namespace lowrank
