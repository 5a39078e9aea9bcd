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
/// - `dct`: the SVD-free DCT projector (Modoranu et al. 2025; IST-DASLab's
///   DCT-AdamW): the basis is r of the n orthonormal DCT-II basis vectors
///   (basis/dct.hpp: vector k is row k of C_n, the cosine of frequency k),
///   chosen for G: right side S = G C_n^T (the DCT of every row of G, the
///   transform's cost model picking the FFT or a GEMM with C), each
///   candidate j scored by ||S(:, j)||_2 (`dct_norm` l2, the default: since
///   the basis is orthonormal, ||G - G Q_I Q_I^T||_F^2 = ||G||_F^2 -
///   sum_{j in I} ||S(:, j)||^2, so the top r by l2 is the exact optimum
///   over r-subsets of the basis) or ||S(:, j)||_1 (l1, the reference's
///   default); left side the same on S = C_m G, rows scored; two-sided both.
///   The top r (ties to the lower index) are kept as r int32 indices per
///   side, the whole state: the basis vectors are computed from them when
///   used (n r cosines, never all of C), so nothing is shared across sizes
///   (the reference sizes one C from the first layer and shares it). Slots
///   are stable: an index still selected keeps its position, so `keep`
///   leaves its moments on the same vector; new indices fill the freed slots
///   in score order (the first refresh orders by score). `refresh(ctx, G,
///   R)` reads the one-sided R out of S (no second product with G); the
///   transitions are 0/1 matrices from the indices ([new_i == old_j]), so
///   `rotate` moves a moment with its basis vector and zeroes the rest,
///   without forming any basis. Cost of a refresh: one transform of G
///   (O(m n log n) by FFT) and a gather; workspace m n scalars for S.
///   Differences from the reference: basis vectors are C's rows, as its
///   `makhoul` mode (its default `matmul` mode uses C's columns, another
///   basis), C is exact in double (the reference builds it in float32), l2
///   is the default, and one-sided projectors follow `side` (the reference
///   forces some shapes to the right side).
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
/// **Q-GaLore** (q-galore-torch's QGaLoreProjector, two options each
/// independent of the other):
/// - `quantize_bits` 4 or 8 stores the basis as codes: asymmetric min-max
///   quantisation per group of `quantize_group` (256) consecutive elements of
///   the reference's flattened P (U row by row; V, whose transpose P is,
///   column by column), s = max(max - min, 1e-5) / (2^b - 1), z =
///   clamp(-round(min / s), 0, 2^b - 1), q = clamp(round(P / s) + z, 0,
///   2^b - 1), rounding half to even, in T; 4-bit codes packed two a byte
///   (the reference keeps one a byte). The basis is dequantized, s (q - z),
///   into workspace on every use (project, back-projection, the next warm
///   start); the transitions and the lazy rule use the new basis before
///   quantisation. The last group may be shorter (the reference requires
///   whole groups).
/// - `lazy`: after each refresh with a previous basis, the cosine between
///   the previous and the new first basis vector (V's first column for the
///   right side, else U's) joins a queue of the last `lazy_queue` (5); when the
///   queue is full and its mean is >= `lazy_threshold` (0.4), the gap becomes
///   floor(gap `lazy_growth`) (2), capped by `max_gap` if set. `due(step)`
///   then tests step mod the current gap (not last refresh + gap), as the
///   reference does. The reference's cosine is signed (an SVD sign flip reads
///   as -1; our exact and randomized bases have canonical signs, warm bases
///   stay close to the previous one); `lazy_abs_cosine` compares |cos|. The
///   queue is never cleared, so a stable subspace grows the gap at every
///   refresh, uncapped by default, like the reference.
///
/// **Memory.** State: the basis, r (m or n or both) scalars, and the
/// transitions, r^2 per side; quantized, ceil(b r n / 8) bytes of codes and
/// a scale and zero point per group instead of the basis; lazy, one basis
/// vector (`state_bytes()`). What a refresh allocates, bounded by
/// `refresh_workspace_bytes()` (tests/projection/memory_test.cpp counts it):
/// the new basis beside the old, O(r^2) per side, and by method: exact at
/// most 2 m n + 3 (m + n) min(m, n) + 8 min(m, n)^2 scalars (LAPACK's copy
/// of G and workspace, the thin factors, the SVD's residual check);
/// randomized at most 4 (m + n) (r + p) (no copy of G); warm (m + n) r per
/// side (plus the randomized fallback when taken); random nothing more; dct
/// m n scalars (the transform S) and a score per candidate. A dct projector's
/// state is r int32 per side and the transitions (no basis is stored); its
/// project and project_back compute the r basis vectors into workspace (n r
/// scalars per side) on each call.
///
/// **Errors.** lowrank::invalid_argument for options (the message names the
/// function, the option, its value and what was expected) and for arguments
/// of the wrong shape. A throwing call changes nothing.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "lowrank/basis/dct.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
#include "lowrank/decomp/orthonormalize.hpp"
#include "lowrank/decomp/randomized_svd.hpp"
#include "lowrank/decomp/truncated_svd.hpp"
#include "lowrank/io/safetensors.hpp"
#include "lowrank/projection/backend.hpp"
#include "lowrank/projection/detail/checkpoint.hpp"
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
enum class refresh_method { exact, randomized, warm, random, dct };

/// How the DCT projector scores a candidate basis vector (see the file comment).
enum class dct_score {
  l2,  ///< ||S(:, j)||_2: the exact optimum over r-subsets of the basis (default)
  l1,  ///< ||S(:, j)||_1: IST-DASLab's default (`ell_norm = 1`)
};

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
  index_t update_gap = 200;            ///< T >= 1 [update_proj_gap]
  bool stagger = false;                ///< refresh when step mod T = layer mod T
  double scale = 1.0;                  ///< back-projection factor, finite [scale]
  std::uint64_t seed = 0;              ///< the random streams (randomized, random)
  std::uint64_t layer = 0;             ///< this weight's index in the model, < 2^30
  index_t oversampling = 10;           ///< randomized: p >= 0
  index_t power_iterations = 2;        ///< randomized: q >= 0
  index_t warm_iterations = 1;         ///< warm: subspace iterations, >= 1
  double warm_min_overlap = 0.5;       ///< warm: fall back below, in [0, 1]
  dct_score dct_norm = dct_score::l2;  ///< dct: the score [ell_norm]
  // Q-GaLore (see the file comment; q-galore-torch's names in brackets).
  int quantize_bits = 0;         ///< 0: a float basis; 4 or 8: codes [proj_bits]
  index_t quantize_group = 256;  ///< elements per group, >= 1, even for 4 bits [proj_group_size]
  bool lazy = false;             ///< lazy refresh: the gap grows while the basis is stable
  index_t lazy_queue = 5;        ///< cosines averaged, >= 1 [queue_size]
  double lazy_threshold = 0.4;   ///< grow when their mean >= this [cos_threshold]
  double lazy_growth = 2;        ///< gap <- floor(gap growth), >= 1 [gamma_proj]
  bool lazy_abs_cosine = false;  ///< |cos| (the reference compares signed cosines)
  index_t max_gap = 0;           ///< the lazy gap's cap; 0: none (the reference)
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
  ///   power_iterations < 0, warm_iterations < 1, warm_min_overlap not in
  ///   [0, 1], quantize_bits not 0, 4 or 8, quantize_group < 1 (or odd for
  ///   4 bits), lazy_queue < 1, lazy_threshold not finite, lazy_growth < 1
  ///   or max_gap < 0.
  projector(index_t rows, index_t cols, const projector_options& options = {})
      : options_(checked(rows, cols, options)), rows_(rows), cols_(cols), gap_(options.update_gap) {
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
  /// U (m x r; empty for the right side) and V (n x r; empty for the left
  /// side); both empty when the projector quantizes or is a `dct` projector
  /// (see basis_copy and indices).
  [[nodiscard]] matrix_view<const T, Backend> left_basis() const noexcept { return u_.view(); }
  [[nodiscard]] matrix_view<const T, Backend> right_basis() const noexcept { return v_.view(); }
  /// A copy of U (`left`) or V, dequantized when the projector quantizes.
  [[nodiscard]] matrix<T, Backend> basis_copy(context<Backend>& ctx, bool left) const {
    const index_t n = left ? rows_ : cols_;
    matrix<T, Backend> out(ctx, n, rank_);
    if ((left ? projects_left() : projects_right()) && has_basis()) {
      auto ws = ctx.workspace();
      ops<Backend>::copy(ctx, basis_of(ctx, ws, left), out.view());
    } else {
      out = matrix<T, Backend>(ctx, 0, 0);
    }
    return out;
  }
  /// A `dct` projector's selected basis vectors (row indices of C) of one
  /// side, in slot order (empty for another method or side, or before the
  /// first refresh).
  [[nodiscard]] const std::vector<std::int32_t>& indices(bool left) const noexcept {
    return left ? idx_left_ : idx_right_;
  }
  /// Whether the basis is stored as Q-GaLore's codes.
  [[nodiscard]] bool quantized() const noexcept { return options_.quantize_bits != 0; }
  /// The refresh gap now in force: T, or the lazy rule's.
  [[nodiscard]] index_t current_gap() const noexcept { return gap_; }
  /// The lazy rule's last cosines (at most lazy_queue, oldest first).
  [[nodiscard]] const std::vector<double>& cosines() const noexcept { return cosines_; }
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
    const auto gap = static_cast<std::uint64_t>(gap_);
    const std::uint64_t phase = options_.stagger ? options_.layer % gap : 0;
    return !has_basis() || step % gap == phase;
  }

  /// Bytes of state: the basis (float, or codes with a scale and a zero
  /// point per group), the transitions, and for the lazy rule the last first
  /// basis vector (see the file comment).
  [[nodiscard]] std::size_t state_bytes() const noexcept {
    const std::size_t sides = (projects_left() ? 1 : 0) + (projects_right() ? 1 : 0);
    const std::size_t basis = (projects_left() ? rows_ : 0) + (projects_right() ? cols_ : 0);
    const auto r = std::size_t(rank_);
    std::size_t bytes = sizeof(T) * sides * r * r;
    if (dct_method()) {
      bytes += sizeof(std::int32_t) * sides * r;
    } else if (quantized()) {
      const auto side_bytes = [&](index_t n) {
        const std::size_t elements = std::size_t(n) * r;
        const std::size_t groups = (elements + std::size_t(options_.quantize_group) - 1) /
                                   std::size_t(options_.quantize_group);
        return (options_.quantize_bits == 4 ? (elements + 1) / 2 : elements) +
               2 * sizeof(T) * groups;
      };
      if (projects_left()) bytes += side_bytes(rows_);
      if (projects_right()) bytes += side_bytes(cols_);
    } else {
      bytes += sizeof(T) * r * basis;
    }
    if (options_.lazy) bytes += sizeof(T) * std::size_t(projects_right() ? cols_ : rows_);
    return bytes;
  }

  /// An upper bound of the bytes a refresh allocates by the projector's
  /// method (see the file comment; `warm` without its fallback), the
  /// backend's SVD workspaces included.
  [[nodiscard]] std::size_t refresh_workspace_bytes() const noexcept {
    const auto m = std::size_t(rows_);
    const auto n = std::size_t(cols_);
    const auto r = std::size_t(rank_);
    const std::size_t sides = (projects_left() ? 1 : 0) + (projects_right() ? 1 : 0);
    // The new basis beside the old one; per side the Cholesky QR's and the
    // transition's r x r matrices and some bookkeeping.
    const std::size_t basis =
        sizeof(T) * r * ((projects_left() ? m : 0) + (projects_right() ? n : 0));
    const std::size_t small = sides * (8 * (sizeof(T) + sizeof(double)) * r * r + 4096);
    const std::size_t k = std::min(m, n);
    switch (options_.method) {
      case refresh_method::exact:
        // LAPACK's copy of G and workspace, the thin factors, the SVD's check.
        return sizeof(T) * (2 * m * n + 3 * (m + n) * k + 8 * k * k) + basis + small;
      case refresh_method::randomized:
        return randomized_bytes() + basis + small;
      case refresh_method::warm:
        return sizeof(T) * (m + n) * r * sides + basis + small;
      case refresh_method::random:
        return basis + small;
      case refresh_method::dct:
        // The transform S, the scores (double) and the indices per side.
        return sizeof(T) * m * n + sides * (sizeof(double) + 2 * sizeof(index_t)) * std::max(m, n) +
               small;
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
    return refresh_impl(ctx, g, nullptr);
  }

  /// refresh(ctx, G), then R = project(G) into r when there is a basis (the
  /// new one, or the old one when the refresh kept it); r is left as it was
  /// without a basis. A one-sided `dct` projector reads R out of the
  /// transform its refresh computed, with no second product with G.
  /// @throws lowrank::invalid_argument if G is not m x n or r not
  ///   projected_rows x projected_cols, or r overlaps G.
  refresh_outcome refresh(context<Backend>& ctx, matrix_view<const T, Backend> g,
                          matrix_view<T, Backend> r) {
    const char* fn = "lowrank::projector::refresh";
    detail::require_shape(fn, "g", g, rows_, cols_);
    detail::require_shape(fn, "r", r, projected_rows(), projected_cols());
    detail::require_apart(fn, "r", r, "g", g);
    bool projected = false;
    const refresh_outcome outcome = refresh_impl(ctx, g, &r, &projected);
    if (!projected && has_basis()) project(ctx, g, r);
    return outcome;
  }

 private:
  refresh_outcome refresh_impl(context<Backend>& ctx, matrix_view<const T, Backend> g,
                               matrix_view<T, Backend>* r, bool* projected = nullptr) {
    const double largest = ops<Backend>::max_abs(ctx, g);
    if (!std::isfinite(largest)) {
      ++skipped_;
      return refresh_outcome::skipped_non_finite;
    }
    if (dct_method()) {
      dct_refresh(ctx, g, r, projected);
      return refresh_outcome::refreshed;
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
        case refresh_method::dct:
          break;  // handled above
      }
    } catch (const numerical_error&) {
      ++skipped_;
      return refresh_outcome::skipped_failed;
    }
    install(ctx, std::move(u), std::move(v));
    if (outcome == refresh_outcome::fell_back) ++fallbacks_;
    return outcome;
  }

 public:
  /// Sets the basis directly (U m x r for a left or two-sided projector, V
  /// n x r for a right or two-sided one; the other empty), orthonormal
  /// columns expected: a basis from elsewhere, or a restored state.
  /// @throws lowrank::invalid_argument for a basis of the wrong shape.
  void set_basis(context<Backend>& ctx, matrix_view<const T, Backend> u,
                 matrix_view<const T, Backend> v) {
    const char* fn = "lowrank::projector::set_basis";
    if (dct_method()) {
      detail::throw_invalid_argument(fn, "this", "a dct projector",
                                     "a projector whose basis is a matrix (a dct projector's "
                                     "basis is its indices)");
    }
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

  // --- Checkpoints ---------------------------------------------------------------

  /// Appends the projector's state to a checkpoint (projected_adam::save):
  /// metadata `<prefix>projector` (counters, gap, the lazy queue) and tensors
  /// `<prefix>basis_left` / `basis_right` (float bases), or
  /// `<prefix>codes_left`, `scales_left`, `zeros_left` (and `_right`: codes
  /// as byte values), and `<prefix>first_vector` (the lazy rule's).
  void save_state(context<Backend>& ctx, const std::string& prefix,
                  std::vector<io::tensor_to_write>& tensors,
                  std::map<std::string, std::string>& meta) const {
    const io::dtype type = std::is_same_v<T, float> ? io::dtype::float32 : io::dtype::float64;
    std::string text = std::to_string(refreshes_) + " " + std::to_string(skipped_) + " " +
                       std::to_string(fallbacks_) + " " + detail::hex(overlap_) + " " +
                       std::to_string(gap_) + " " + std::to_string(cosines_.size());
    for (const double c : cosines_) text += " " + detail::hex(c);
    meta[prefix + "projector"] = text;
    if (!has_basis()) return;
    for (const bool left : {true, false}) {
      if (!(left ? projects_left() : projects_right())) continue;
      const std::string side = left ? "_left" : "_right";
      if (dct_method()) {
        const auto& idx = left ? idx_left_ : idx_right_;
        Eigen::MatrixXd h(index_t(idx.size()), 1);
        for (std::size_t i = 0; i < idx.size(); ++i) h(index_t(i)) = double(idx[i]);
        tensors.push_back({prefix + "indices" + side, io::dtype::float32, h, false});
        continue;
      }
      if (!quantized()) {
        tensors.push_back(
            {prefix + "basis" + side, type, host_copy(ctx, left ? u_.view() : v_.view()), false});
        continue;
      }
      const auto& q = left ? qu_ : qv_;
      const auto bytes = q.bytes.to_eigen();
      tensors.push_back(
          {prefix + "codes" + side, io::dtype::float32, bytes.template cast<double>(), false});
      tensors.push_back(
          {prefix + "scales" + side, type, host_copy(ctx, q.scales.view().as_matrix()), false});
      tensors.push_back(
          {prefix + "zeros" + side, type, host_copy(ctx, q.zeros.view().as_matrix()), false});
    }
    if (first_.rows() != 0) {
      tensors.push_back({prefix + "first_vector", type, host_copy(ctx, first_.view()), false});
    }
  }

  /// Replaces the state by the one save_state wrote under `prefix`; the
  /// projector must have the saved shape and options (the caller checks
  /// them). Nothing changes when it throws.
  /// @throws lowrank::invalid_argument (src.fn, argument `file`) for a
  ///   missing, malformed or misshapen entry.
  void load_state(context<Backend>& ctx, const std::string& prefix,
                  const detail::checkpoint_source& src) {
    projector p(rows_, cols_, options_);
    auto words = detail::split(src.need(prefix + "projector"));
    if (words.size() < 6) src.fail("with malformed " + prefix + "projector", "6 or more values");
    p.refreshes_ = detail::unsigned_of(src, words[0]);
    p.skipped_ = detail::unsigned_of(src, words[1]);
    p.fallbacks_ = detail::unsigned_of(src, words[2]);
    p.overlap_ = detail::unhex(src, words[3]);
    const std::uint64_t gap = detail::unsigned_of(src, words[4]);
    const std::uint64_t count = detail::unsigned_of(src, words[5]);
    if (gap < 1 || gap > std::uint64_t(1) << 62 || count > std::uint64_t(options_.lazy_queue) ||
        words.size() != 6 + count) {
      src.fail("with malformed " + prefix + "projector",
               "a gap >= 1 and at most lazy_queue cosines");
    }
    p.gap_ = index_t(gap);
    for (std::size_t i = 0; i < count; ++i) p.cosines_.push_back(detail::unhex(src, words[6 + i]));
    const auto read = [&](const std::string& name, index_t rows, index_t cols) {
      if (!src.file->contains(name)) {
        src.fail("without tensor '" + name + "'",
                 "a tensor of " + std::to_string(rows) + " x " + std::to_string(cols));
      }
      auto h = src.file->template matrix<T>(name);
      if (h.rows() != rows || h.cols() != cols) {
        src.fail("with tensor '" + name + "' of " + detail::shape_of(h),
                 std::to_string(rows) + " x " + std::to_string(cols));
      }
      return h;
    };
    const auto upload = [&](const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& h,
                            matrix_view<T, Backend> out) {
      if (h.size() > 0) ops<Backend>::upload(ctx, as_const(view(h)), out);
    };
    if (p.refreshes_ > 0) {
      for (const bool left : {true, false}) {
        if (!(left ? projects_left() : projects_right())) continue;
        const std::string side = left ? "_left" : "_right";
        const index_t n = left ? rows_ : cols_;
        if (dct_method()) {
          const std::string name = prefix + "indices" + side;
          const auto h = read(name, rank_, 1);
          std::vector<std::int32_t> idx(static_cast<std::size_t>(rank_));
          std::vector<bool> seen(static_cast<std::size_t>(n), false);
          for (index_t k = 0; k < rank_; ++k) {
            const T x = h(k);
            if (!(x >= 0 && x < T(n) && x == std::floor(x)) || seen[std::size_t(x)]) {
              src.fail("with tensor '" + name + "' holding " + std::to_string(x),
                       "distinct integer indices in [0, " + std::to_string(n) + ")");
            }
            seen[std::size_t(x)] = true;
            idx[std::size_t(k)] = static_cast<std::int32_t>(x);
          }
          (left ? p.idx_left_ : p.idx_right_) = std::move(idx);
          continue;
        }
        if (!quantized()) {
          auto& b = left ? p.u_ : p.v_;
          b = matrix<T, Backend>(ctx, n, rank_);
          upload(read(prefix + "basis" + side, n, rank_), b.view());
          continue;
        }
        const index_t elements = n * rank_;
        const index_t groups = (elements + options_.quantize_group - 1) / options_.quantize_group;
        const index_t nbytes = options_.quantize_bits == 4 ? (elements + 1) / 2 : elements;
        const auto values = read(prefix + "codes" + side, nbytes, 1);
        Eigen::Matrix<std::uint8_t, Eigen::Dynamic, 1> bytes(nbytes);
        for (index_t k = 0; k < nbytes; ++k) {
          const T x = values(k);
          if (!(x >= 0 && x <= 255 && x == std::floor(x))) {
            src.fail("with tensor '" + prefix + "codes" + side + "' holding " + std::to_string(x),
                     "byte values 0 to 255");
          }
          bytes(k) = static_cast<std::uint8_t>(x);
        }
        auto& q = left ? p.qu_ : p.qv_;
        if constexpr (std::is_same_v<Backend, cpu>) {
          q.bytes = vector<std::uint8_t, cpu>(ctx, nbytes);
          q.bytes = bytes;
        } else {
          q.bytes = vector<std::uint8_t, Backend>(ctx, bytes);
        }
        q.scales = vector<T, Backend>(ctx, groups);
        q.zeros = vector<T, Backend>(ctx, groups);
        upload(read(prefix + "scales" + side, groups, 1), q.scales.view().as_matrix());
        upload(read(prefix + "zeros" + side, groups, 1), q.zeros.view().as_matrix());
      }
    }
    if (options_.lazy && p.refreshes_ > 0 && !dct_method()) {
      const index_t n = projects_right() ? cols_ : rows_;
      p.first_ = matrix<T, Backend>(ctx, n, 1);
      upload(read(prefix + "first_vector", n, 1), p.first_.view());
    }
    *this = std::move(p);
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
    auto bases = ctx.workspace();
    const auto u = projects_left() ? basis_of(ctx, bases, true) : u_.view();
    const auto v = projects_right() ? basis_of(ctx, bases, false) : v_.view();
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
    if (o.quantize_bits != 0 && o.quantize_bits != 4 && o.quantize_bits != 8) {
      detail::throw_invalid_argument(fn, "options.quantize_bits", o.quantize_bits,
                                     "0 (a float basis), 4 or 8");
    }
    if (o.method == refresh_method::dct && o.quantize_bits != 0) {
      detail::throw_invalid_argument(fn, "options.quantize_bits", o.quantize_bits,
                                     "0 with method dct (its basis is r indices, nothing to "
                                     "quantize)");
    }
    if (o.quantize_group < 1 || (o.quantize_bits == 4 && o.quantize_group % 2 != 0)) {
      detail::throw_invalid_argument(fn, "options.quantize_group", o.quantize_group,
                                     ">= 1, and even for 4-bit codes (two a byte)");
    }
    if (o.lazy_queue < 1) {
      detail::throw_invalid_argument(fn, "options.lazy_queue", o.lazy_queue, ">= 1");
    }
    if (!std::isfinite(o.lazy_threshold)) {
      detail::throw_invalid_argument(fn, "options.lazy_threshold", o.lazy_threshold,
                                     "a finite number");
    }
    if (!(o.lazy_growth >= 1 && std::isfinite(o.lazy_growth))) {
      detail::throw_invalid_argument(fn, "options.lazy_growth", o.lazy_growth,
                                     "a finite value >= 1");
    }
    if (o.max_gap < 0) {
      detail::throw_invalid_argument(fn, "options.max_gap", o.max_gap, ">= 0 (0: no cap)");
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
    auto bases = ctx.workspace();
    const auto u = projects_left() ? basis_of(ctx, bases, true) : u_.view();
    const auto v = projects_right() ? basis_of(ctx, bases, false) : v_.view();
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

  /// The randomized SVD's sketch, its products and factors: at most 4 (m + n)
  /// l scalars and 16 l^2 doubles, l = r + p.
  [[nodiscard]] std::size_t randomized_bytes() const noexcept {
    const auto l = std::size_t(std::min(rank_ + options_.oversampling, std::min(rows_, cols_)));
    return 4 * sizeof(T) * (std::size_t(rows_) + std::size_t(cols_)) * l +
           16 * sizeof(double) * l * l;
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
    auto bases = ctx.workspace();
    if (projects_left() && !iterate(basis_of(ctx, bases, true), true, u)) return false;
    if (projects_right() && !iterate(basis_of(ctx, bases, false), false, v)) return false;
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

  /// The basis of one side as a view: the float basis, or the codes
  /// dequantized into a piece of `frame` (valid while the frame is open).
  template <class Frame>
  [[nodiscard]] matrix_view<const T, Backend> basis_of(context<Backend>& ctx, Frame& frame,
                                                       bool left) const {
    if (dct_method()) {
      const auto& idx = left ? idx_left_ : idx_right_;
      const index_t n = left ? rows_ : cols_;
      matrix_view<T, Backend> out(frame.template take<T>(std::size_t(n * rank_)), n, rank_);
      vector_view<index_t, Backend> d(frame.template take<index_t>(std::size_t(rank_)), rank_);
      std::vector<index_t> wide(idx.begin(), idx.end());
      ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(wide.data(), rank_), d);
      ops<Backend>::dct_basis_fill(ctx, as_const(d), out);
      return as_const(out);
    }
    if (!quantized()) return left ? u_.view() : v_.view();
    const index_t n = left ? rows_ : cols_;
    const auto& q = left ? qu_ : qv_;
    matrix_view<T, Backend> out(frame.template take<T>(std::size_t(n * rank_)), n, rank_);
    ops<Backend>::dequantize_groups(ctx, as_const(q.bytes.view()), as_const(q.scales.view()),
                                    as_const(q.zeros.view()), options_.quantize_group,
                                    options_.quantize_bits, left, out);
    return as_const(out);
  }

  /// Codes of one side's basis, grouped as q-galore-torch groups its
  /// flattened P: U (P, m x r) row by row, V (P = V^T) column by column.
  struct quantized_basis {
    vector<std::uint8_t, Backend> bytes;
    vector<T, Backend> scales, zeros;
  };
  [[nodiscard]] quantized_basis quantize(context<Backend>& ctx, matrix_view<const T, Backend> basis,
                                         bool left) const {
    const index_t n = basis.size();
    const index_t groups = (n + options_.quantize_group - 1) / options_.quantize_group;
    quantized_basis c{
        vector<std::uint8_t, Backend>(ctx, options_.quantize_bits == 4 ? (n + 1) / 2 : n),
        vector<T, Backend>(ctx, groups), vector<T, Backend>(ctx, groups)};
    ops<Backend>::quantize_groups(ctx, basis, left, options_.quantize_group, options_.quantize_bits,
                                  c.bytes.view(), c.scales.view(), c.zeros.view());
    return c;
  }

  /// The lazy rule after a new basis whose first vector is `first` (n x 1):
  /// the cosine with the previous one joins the queue, and a full queue
  /// whose mean reaches the threshold grows the gap (q-galore-torch).
  void lazy_update(context<Backend>& ctx, matrix_view<const T, Backend> first) {
    if (first_.rows() != 0) {
      vector<double, Backend> d(ctx, 3);
      ops<Backend>::column_dots(ctx, as_const(first_.view()), first, d.view().segment(0, 1));
      ops<Backend>::column_dots(ctx, as_const(first_.view()), as_const(first_.view()),
                                d.view().segment(1, 1));
      ops<Backend>::column_dots(ctx, first, first, d.view().segment(2, 1));
      Eigen::VectorXd h(3);
      ops<Backend>::download(ctx, as_const(d.view().as_matrix()), view(h));
      // torch.nn.functional.cosine_similarity: x.y / max(|x| |y|, 1e-8).
      lazy_push(h(0) / std::max(std::sqrt(h(1)) * std::sqrt(h(2)), 1e-8));
    } else {
      first_ = matrix<T, Backend>(ctx, first.rows(), 1);
    }
    ops<Backend>::copy(ctx, first, first_.view());
  }

  /// The lazy rule's queue and gap after a cosine c between first vectors.
  void lazy_push(double c) {
    if (options_.lazy_abs_cosine) c = std::abs(c);
    cosines_.push_back(c);
    if (index_t(cosines_.size()) > options_.lazy_queue) cosines_.erase(cosines_.begin());
    double mean = 0;
    for (const double x : cosines_) mean += x;
    mean /= double(cosines_.size());
    if (index_t(cosines_.size()) == options_.lazy_queue && mean >= options_.lazy_threshold) {
      const double grown = std::floor(double(gap_) * options_.lazy_growth);
      const double cap = options_.max_gap > 0 ? double(options_.max_gap) : 1e18;
      gap_ = index_t(std::min(grown, cap));
    }
  }

  [[nodiscard]] bool dct_method() const noexcept { return options_.method == refresh_method::dct; }

  /// The top r candidates by score (descending, ties to the lower index; a
  /// NaN score, from an overflowing transform, ranks last), in slot order:
  /// an index of `old` still selected keeps its slot, the others fill the
  /// free slots in score order (see the file comment).
  [[nodiscard]] static std::vector<std::int32_t> select_top(const Eigen::VectorXd& score, index_t r,
                                                            const std::vector<std::int32_t>& old) {
    const index_t n = score.size();
    std::vector<std::int32_t> order(static_cast<std::size_t>(n));
    for (index_t j = 0; j < n; ++j) order[std::size_t(j)] = static_cast<std::int32_t>(j);
    const auto key = [&](std::int32_t j) {
      const double x = score(j);
      return std::isnan(x) ? -std::numeric_limits<double>::infinity() : x;
    };
    std::partial_sort(order.begin(), order.begin() + r, order.end(),
                      [&](std::int32_t a, std::int32_t b) {
                        const double ka = key(a);
                        const double kb = key(b);
                        return ka > kb || (ka == kb && a < b);
                      });
    order.resize(static_cast<std::size_t>(r));
    if (old.size() != order.size()) return order;
    std::vector<bool> chosen(static_cast<std::size_t>(n), false);
    for (const auto j : order) chosen[std::size_t(j)] = true;
    std::vector<std::int32_t> out(order.size(), -1);
    for (std::size_t slot = 0; slot < old.size(); ++slot) {
      if (chosen[std::size_t(old[slot])]) {
        out[slot] = old[slot];
        chosen[std::size_t(old[slot])] = false;  // placed
      }
    }
    std::size_t next = 0;
    for (const auto j : order) {
      if (!chosen[std::size_t(j)]) continue;
      while (out[next] >= 0) ++next;
      out[next] = j;
    }
    return out;
  }

  /// The `dct` refresh: per side the transform of G, the scores, the top r;
  /// with `r`, R read out of the one-sided transform (*projected = true).
  void dct_refresh(context<Backend>& ctx, matrix_view<const T, Backend> g,
                   matrix_view<T, Backend>* r, bool* projected) {
    auto ws = ctx.workspace();
    matrix_view<T, Backend> s(ws.template take<T>(std::size_t(rows_ * cols_)), rows_, cols_);
    std::vector<std::int32_t> chosen[2];
    for (const bool left : {true, false}) {
      if (!(left ? projects_left() : projects_right())) continue;
      // left: S = C_m G, rows scored; right: S = G C_n^T, columns scored.
      dct(ctx, g, s, left ? dct_axis::columns : dct_axis::rows);
      const index_t n = left ? rows_ : cols_;
      vector<double, Backend> score(ctx, n);
      if (options_.dct_norm == dct_score::l1) {
        ops<Backend>::abs_sums(ctx, as_const(s), left, score.view());
      } else if (left) {
        ops<Backend>::row_dots(ctx, as_const(s), as_const(s), score.view());
      } else {
        ops<Backend>::column_squared_norms(ctx, as_const(s), score.view());
      }
      Eigen::VectorXd h(n);
      ops<Backend>::download(ctx, as_const(score.view().as_matrix()), view(h));
      auto& idx = chosen[left ? 0 : 1];
      idx = select_top(h, rank_, left ? idx_left_ : idx_right_);
      if (r != nullptr && side_ != projection_side::two_sided) {
        std::vector<index_t> wide(idx.begin(), idx.end());
        vector<index_t, Backend> d(ctx, rank_);
        ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(wide.data(), rank_),
                                     d.view());
        if (left) {
          ops<Backend>::gather_rows(ctx, as_const(s), as_const(d.view()), *r);
        } else {
          ops<Backend>::gather_columns(ctx, as_const(s), as_const(d.view()),
                                       vector_view<const T, Backend>(), *r);
        }
        *projected = true;
      }
    }
    install_indices(ctx, std::move(chosen[0]), std::move(chosen[1]));
  }

  /// Takes the new indices; the transitions [new_i == old_j] and the overlap
  /// (the fraction of indices kept), the lazy rule (its cosine between first
  /// vectors is 1 or 0: the basis is orthonormal).
  void install_indices(context<Backend>& ctx, std::vector<std::int32_t>&& left,
                       std::vector<std::int32_t>&& right) {
    if (has_basis()) {
      double overlap = 1;
      const auto transition = [&](const std::vector<std::int32_t>& now,
                                  const std::vector<std::int32_t>& old, matrix<T, Backend>& c) {
        Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> h =
            Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>::Zero(rank_, rank_);
        index_t kept = 0;
        for (index_t i = 0; i < rank_; ++i) {
          for (index_t j = 0; j < rank_; ++j) {
            if (now[std::size_t(i)] == old[std::size_t(j)]) {
              h(i, j) = T(1);
              ++kept;
            }
          }
        }
        c = matrix<T, Backend>(ctx, rank_, rank_);
        ops<Backend>::upload(ctx, as_const(view(h)), c.view());
        overlap = std::min(overlap, double(kept) / double(rank_));
      };
      if (projects_left()) transition(left, idx_left_, c_left_);
      if (projects_right()) transition(right, idx_right_, c_right_);
      overlap_ = overlap;
      if (options_.lazy) {
        const auto& now = projects_right() ? right : left;
        const auto& old = projects_right() ? idx_right_ : idx_left_;
        lazy_push(now[0] == old[0] ? 1.0 : 0.0);
      }
    }
    idx_left_ = std::move(left);
    idx_right_ = std::move(right);
    ++refreshes_;
  }

  static Eigen::MatrixXd host_copy(context<Backend>& ctx, matrix_view<const T, Backend> x) {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> h(x.rows(), x.cols());
    if (x.size() > 0) ops<Backend>::download(ctx, x, view(h));
    return h.template cast<double>();
  }

  /// Takes the new basis; the transitions from the old one, if any; the lazy
  /// rule; the codes, when the projector quantizes.
  void install(context<Backend>& ctx, matrix<T, Backend>&& u, matrix<T, Backend>&& v) {
    if (!projects_left()) u = matrix<T, Backend>();
    if (!projects_right()) v = matrix<T, Backend>();
    if (has_basis()) {
      double overlap = 1;
      auto bases = ctx.workspace();
      const auto transition = [&](const matrix<T, Backend>& now, bool left, matrix<T, Backend>& c) {
        c = matrix<T, Backend>(ctx, rank_, rank_);
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), now.view(),
                           basis_of(ctx, bases, left), T(0), c.view());
        overlap =
            std::min(overlap, ops<Backend>::squared_norm(ctx, as_const(c.view())) / double(rank_));
      };
      if (projects_left()) transition(u, true, c_left_);
      if (projects_right()) transition(v, false, c_right_);
      overlap_ = overlap;
    }
    if (options_.lazy) {
      const auto& basis = projects_right() ? v : u;
      lazy_update(ctx, as_const(basis.view().left_cols(1)));
    }
    if (quantized()) {
      if (projects_left()) qu_ = quantize(ctx, as_const(u.view()), true);
      if (projects_right()) qv_ = quantize(ctx, as_const(v.view()), false);
      u = matrix<T, Backend>();
      v = matrix<T, Backend>();
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
  index_t gap_ = 1;                                 // the refresh gap in force
  matrix<T, Backend> u_, v_;                        // the basis (empty when quantized)
  quantized_basis qu_, qv_;                         // the basis as codes (when quantized)
  matrix<T, Backend> first_;                        // the lazy rule's last first vector
  std::vector<double> cosines_;                     // the lazy rule's queue
  matrix<T, Backend> c_left_, c_right_;             // the last transitions
  std::vector<std::int32_t> idx_left_, idx_right_;  // dct: the selected basis vectors
  double overlap_ = 1;
  std::uint64_t refreshes_ = 0;
  std::uint64_t skipped_ = 0;
  std::uint64_t fallbacks_ = 0;
};

}  // namespace lowrank
