#pragma once
/// @file
/// The randomized block Krylov SVD: Musco & Musco, "Randomized Block Krylov
/// Methods for Stronger and Faster Approximate Singular Value Decomposition",
/// NeurIPS 2015, Algorithm 2, with the products with A^T reused for the
/// Rayleigh-Ritz step.
///
/// Where the randomized SVD with q power iterations keeps only the last
/// iterate (M M^T)^q M Omega, block Krylov keeps every block: the basis spans
/// the Krylov space [M Omega, (M M^T) M Omega, ..., (M M^T)^{d-1} M Omega],
/// d blocks of b columns. For the same number of products with A, the
/// Rayleigh-Ritz space is d times wider, which pays off on slowly decaying
/// spectra (the power-law spectra of trained weights): it needs about the
/// square root of the products subspace iteration needs for the same
/// accuracy (Musco & Musco, Theorem 1: q = O(log n / sqrt(eps)) blocks
/// against O(log n / eps) iterations).
///
/// On the tall M (M = A when m >= n, A^T otherwise: m' x n', m' >= n'):
/// ```
/// Y_0 = M Omega                    Omega n' x b Gaussian, random_stream{seed, stream}
/// for j = 0 .. d-1:
///   Q_j = orth(Y_j - Q_{<j} (Q_{<j}^T Y_j))   block Gram-Schmidt, repeated (below)
///   Z_j = M^T Q_j                  stored: [Z_0 .. Z_{d-1}] = M^T Q = B^T
///   Y_{j+1} = M Z_j / c            (M M^T Q_j: the next Krylov block; c below)
/// B^T = W S X^T                    thin SVD of the n' x L factor (L = d b)
/// M ~ (Q X_k) S_k W_k^T            keep k of the L columns
/// ```
/// The products M^T Q_j that build the next block are the columns of B^T, so
/// the Rayleigh-Ritz step needs no extra pass over A.
///
/// **Orthogonalisation.** The Krylov blocks grow ever more parallel to the
/// basis so far, so each block is projected out of it and orthonormalised
/// (CholQR2, decomp/orthonormalize.hpp) until the check ||Q_{<j}^T Q_j||_max
/// <= 8 eps_T passes (block classical Gram-Schmidt with re-orthogonalisation;
/// twice is enough unless the block's new part is below rounding). A block
/// that three passes cannot separate from the basis lies in its span (A's
/// rank is below the basis size, or A is zero): it is replaced by the Gaussian
/// columns [(j + 1) b, (j + 2) b) of the same stream, a restart.
///
/// **Sizes.** b = `block_size` (default k, Musco & Musco's choice), d =
/// `blocks` (default 3; see block_krylov_options). The basis size is L =
/// min(d b, n'): when d b exceeds n' the last block is narrower and the
/// basis spans M's whole range (the result is then the exact truncated SVD
/// up to rounding). k <= L is required.
///
/// **Cost.** d products with M and d with M^T (2 m n b flops each for a dense
/// A; the last pair L - (d-1) b columns wide): 2 d b column-products, the
/// same as the randomized SVD with l = b and q = d - 1. Besides, block
/// Gram-Schmidt costs about 5 m' L^2 + 12 m' L b flops and the final SVD
/// about 8 n' L^2 + O(L^3). **Memory** besides the output: Q (m' x L) and
/// B^T (n' x L), from the context's workspace (kept for the next call), plus
/// O(L^2).
/// **Errors** and results as `randomized_svd`: the same scaling of data at
/// the ends of T's range (decomp/detail/common.hpp), the same
/// non-finite detection through the first product, the same sign convention,
/// and the same bits from the same seed whatever the thread count. Each
/// block M Z_j is also divided by c, a power of two near max |Z_j| (exact):
/// it would otherwise have M's size squared, and its Gram matrix M's size to
/// the fourth power, beyond T's range for data well inside it.
///
/// **Early stop** (`tolerance` > 0, a heuristic): after each block the top-k
/// Ritz values of B (from the Gram matrix of B^T, L x L) give the captured
/// energy E = sum_{i<=k} s_i(B)^2; the squared error of the result is exactly
/// ||A||_F^2 - E. When a block raised E by no more than tolerance E, no more
/// blocks are added: the energy a further block could add is then, if the
/// convergence is geometric and not slower than that step, of the same
/// order, so err^2 <= opt^2 + (about) tolerance E.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/linear_operator.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/decomp/detail/common.hpp"
#include "lowrank/decomp/low_rank.hpp"
#include "lowrank/decomp/orthonormalize.hpp"
#include "lowrank/decomp/randomized_svd.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// Options of `block_krylov_svd`.
struct block_krylov_options {
  /// b >= 0, the columns of each block; 0 means k (Musco & Musco's choice: the
  /// Krylov space then needs no oversampling, the depth does its work).
  index_t block_size = 0;
  /// d >= 0, the number of blocks (d products with A and d with A^T); 0 means
  /// max(3, ceil(k / b)). Three blocks of k columns give 1.002 x the optimal
  /// Frobenius error on the power-law spectrum s_i = i^(-1/2) of trained
  /// weights (2048 x 2048, k = 64, float): 6 k column-products, where the
  /// randomized SVD needs q = 2 (6 (k + 10)) for 1.005 and q = 1 gives 1.02.
  index_t blocks = 0;
  /// >= 0; 0 always runs the d blocks. Otherwise a heuristic early stop: no
  /// block is added once the last one raised the top-k Ritz energy by at most
  /// `tolerance` times itself (see the file comment). The energy is known to
  /// about eps_T: a tolerance below that seldom stops.
  double tolerance = 0;
  std::uint64_t seed = 0;    ///< Omega is the Gaussian matrix of random_stream{seed, stream}
  std::uint64_t stream = 0;  ///< (many sketches from one seed: one stream each)
};

/// The result of `block_krylov_svd`: the factorisation and the Krylov space
/// it came from.
template <scalar T, class Backend = cpu>
struct krylov_low_rank : low_rank<T, Backend> {
  index_t block_size = 0;  ///< b, the columns of each block
  index_t blocks = 0;      ///< the blocks built (fewer than d when the tolerance stopped early)
  index_t basis_size = 0;  ///< L, the columns of the Krylov basis (the Rayleigh-Ritz space)

  /// The products with A or A^T: `blocks` of each, each `block_size`
  /// columns wide except the last pair (basis_size - (blocks - 1) block_size).
  [[nodiscard]] index_t products() const noexcept { return 2 * blocks; }
};

namespace detail {

/// Y <- an orthonormal basis of (I - Q Q^T) Y, orthogonal to Q to working
/// precision: projection and CholQR2 until ||Q^T Y||_max <= 8 eps_T (at most
/// three passes), then, for a Y inside span(Q), the Gaussian block at column
/// `restart_column` of `stream` in its place (see the file comment).
/// `w` is workspace (at least Q.cols() x Y.cols()).
template <class T, class Backend>
void orthogonalize_block(context<Backend>& ctx, matrix_view<const T, Backend> q,
                         matrix_view<T, Backend> y, matrix_view<T, Backend> w, random_stream stream,
                         index_t restart_column) {
  if (q.cols() == 0) {
    orthonormalize(ctx, y, orth_accuracy::orthonormal);
    return;
  }
  const auto coefficients = w.block(0, 0, q.cols(), y.cols());
  const double eps = std::numeric_limits<T>::epsilon();
  for (int pass = 0;; ++pass) {
    // W = Q^T Y
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), q, as_const(y), T(0),
                       coefficients);
    if (pass > 0) {
      const double largest = ops<Backend>::max_abs(ctx, as_const(coefficients));
      if (largest <= 8 * eps) return;
      if (pass == 3) {
        // Three passes leave only rounding-level overlap unless what orth
        // picked lies inside span(Q): then restart from a Gaussian block.
        if (largest <= std::sqrt(eps)) return;
        ops<Backend>::fill_random(ctx, distribution::gaussian, stream, y, 0, restart_column);
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), q, as_const(y), T(0),
                           coefficients);
      }
      if (pass == 6) return;  // a projected Gaussian block is clean after two passes
    }
    // Y = orth(Y - Q W)
    ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(-1), q, as_const(coefficients), T(1),
                       y);
    orthonormalize(ctx, y, orth_accuracy::orthonormal);
  }
}

/// sum_{i<k} s_i(B)^2 for B^T = bt (n' x e): the top-k eigenvalues of the
/// Gram matrix G = B B^T, kept up to date in `gram` (L x L) from the columns
/// [from, e) that are new since the last call.
template <class T, class Backend>
double top_energy(context<Backend>& ctx, matrix_view<const T, Backend> bt, index_t from,
                  matrix_view<T, Backend> gram, index_t k) {
  const index_t e = bt.cols();
  const index_t w = e - from;
  // G[0:e, from:e] = B^T[:, 0:e]^T B^T[:, from:e]; G[from:e, 0:from] = its transpose block.
  ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), bt, bt.middle_cols(from, w), T(0),
                     gram.block(0, from, e, w));
  if (from > 0) {
    ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), bt.middle_cols(from, w),
                       bt.left_cols(from), T(0), gram.block(from, 0, w, from));
  }
  matrix<T, Backend> g(ctx, e, e);
  ops<Backend>::copy(ctx, as_const(gram.block(0, 0, e, e)), g.view());
  matrix<T, Backend> u(ctx, e, e);
  matrix<T, Backend> v(ctx, e, e);
  vector<T, Backend> s(ctx, e);
  ops<Backend>::svd(ctx, as_const(g.view()), u.view(), s.view(), v.view());
  Eigen::Matrix<T, Eigen::Dynamic, 1> host(e);
  ops<Backend>::download(ctx, as_const(s.view().as_matrix()), view(host));
  double energy = 0;
  for (index_t i = 0; i < std::min(k, e); ++i) energy += double(host(i));
  return energy;
}

}  // namespace detail

/// Rank-k block Krylov SVD of A (m x n, a dense view or any
/// `linear_operator`): A ~ U diag(s) V^T with U m x k, s k (descending, >= 0),
/// V n x k (see the file comment for algorithm, cost, memory and the early
/// stop); the result also says how many blocks were built.
/// @throws lowrank::invalid_argument if A is empty, k is not in [1, min(m, n)],
/// block_size, blocks or tolerance is negative (or tolerance not finite), or
/// blocks x block_size < k; lowrank::numerical_error if A has a NaN or Inf
/// entry (the message names it for a dense A).
template <linear_operator Op>
requires backend_for<operator_backend_t<Op>, operator_value_t<Op>>
[[nodiscard]] krylov_low_rank<operator_value_t<Op>, operator_backend_t<Op>> block_krylov_svd(
    context<operator_backend_t<Op>>& ctx, const Op& a, index_t k,
    const block_krylov_options& options = {}) {
  using T = operator_value_t<Op>;
  using Backend = operator_backend_t<Op>;
  const char* fn = "lowrank::block_krylov_svd";
  detail::require_non_empty(fn, a);
  detail::require_rank(fn, a, k);
  if (options.block_size < 0) {
    detail::throw_invalid_argument(fn, "options.block_size", options.block_size, ">= 0 (0: k)");
  }
  if (options.blocks < 0) {
    detail::throw_invalid_argument(fn, "options.blocks", options.blocks, ">= 0 (0: automatic)");
  }
  if (!(options.tolerance >= 0) || !std::isfinite(options.tolerance)) {
    detail::throw_invalid_argument(fn, "options.tolerance", options.tolerance,
                                   "a finite value >= 0 (0: no early stop)");
  }
  auto m = detail::oriented<Op>::tall(a);
  const index_t small = m.cols();
  const index_t b = std::min(options.block_size == 0 ? k : options.block_size, small);
  const index_t requested =
      options.blocks == 0 ? std::max<index_t>(3, (k + b - 1) / b) : options.blocks;
  if (requested < (k + b - 1) / b) {
    detail::throw_invalid_argument(fn, "options.blocks", options.blocks,
                                   "blocks x block_size >= k = " + std::to_string(k) +
                                       " (block_size " + std::to_string(b) + ")");
  }
  // L = min(d b, n'), written so that a huge d cannot overflow.
  const index_t d = std::min(requested, (small + b - 1) / b);
  const index_t l = std::min(d * b, small);

  auto ws = ctx.workspace();  // Q and B^T (detail::workspace_matrix)
  const auto q = detail::workspace_matrix<T, Backend>(ws, m.rows(), l);
  const auto bt = detail::workspace_matrix<T, Backend>(ws, small, l);
  matrix<T, Backend> w(ctx, l, b);
  matrix<T, Backend> gram;
  if (options.tolerance > 0) gram = matrix<T, Backend>(ctx, l, l);
  const random_stream stream{options.seed, options.stream};

  // Y_0 = M Omega, Omega in the first block of B^T; the first product sets
  // M's scale and finds non-finite data (as for the randomized SVD).
  detail::first_sketch(ctx, m, stream, bt.left_cols(b), q.left_cols(b), fn, 2);

  krylov_low_rank<T, Backend> result;
  double energy = 0;
  index_t built = 0;  // columns of Q (and B^T) so far
  for (index_t j = 0; j < d; ++j) {
    const index_t width = std::min(b, l - built);
    auto yj = q.middle_cols(built, width);
    auto zj = bt.middle_cols(built, width);
    detail::orthogonalize_block(ctx, as_const(q.left_cols(built)), yj, w.view(), stream, built + b);
    m.apply_transposed(ctx, as_const(yj), zj);  // Z_j = M^T Q_j
    built += width;
    result.blocks = j + 1;
    if (options.tolerance > 0) {
      const double previous = energy;
      energy =
          detail::top_energy(ctx, as_const(bt.left_cols(built)), built - width, gram.view(), k);
      if (j > 0 && built >= k && energy - previous <= options.tolerance * energy) break;
    }
    if (j + 1 < d) {
      // Y_{j+1} = M Z_j / c, c a power of two near Z_j's size (exact): Y then
      // has M's size, not its square, and its Gram matrix cannot overflow.
      const double size = ops<Backend>::max_abs(ctx, as_const(zj));
      const int limit = std::numeric_limits<T>::max_exponent - 2;
      const T alpha =
          size > 0 ? T(std::ldexp(1.0, std::clamp(-std::ilogb(size), -limit, limit))) : T(1);
      const index_t next = std::min(b, l - built);  // the last block may be narrower
      m.apply(ctx, as_const(zj.left_cols(next)), q.middle_cols(built, next), alpha);
    }
  }

  static_cast<low_rank<T, Backend>&>(result) =
      detail::svd_of_qb(ctx, m.op, as_const(q.left_cols(built)), bt.left_cols(built), k);
  detail::unscale_values(ctx, fn, m.scale, result.s.view());
  result.block_size = b;
  result.basis_size = built;
  return result;
}

/// Rank-k block Krylov SVD of an Eigen matrix or expression (float or
/// double), on the CPU: `auto r = lowrank::block_krylov_svd(A, 64);`.
/// Column-major data is read in place; other expressions are evaluated once.
template <class Derived>
requires scalar<typename Derived::Scalar>
[[nodiscard]] krylov_low_rank<typename Derived::Scalar> block_krylov_svd(
    const Eigen::MatrixBase<Derived>& a, index_t k, const block_krylov_options& options = {}) {
  const eigen_input<typename Derived::Scalar> input(a.derived());
  detail::host_context<Derived> ctx;
  return block_krylov_svd(ctx, view(input), k, options);
}

}  // namespace lowrank
