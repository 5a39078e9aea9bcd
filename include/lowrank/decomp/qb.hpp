#pragma once
/// @file
/// The blocked fixed-accuracy QB factorisation randQB_EI (Yu, Gu, Li, "Efficient
/// randomized algorithms for the fixed-precision low-rank matrix
/// approximation", SIMAX 2018, Algorithm 2), the engine of the tolerance mode
/// of `randomized_svd` (internal: the public entry point is there).
///
/// M (big x small, tall) ~ Q B with Q orthonormal, built b columns at a time;
/// M is read only (no residual is formed):
/// ```
/// E = ||M||_F^2
/// loop: Omega_i Gaussian (small x b), columns [rank, rank + b) of one big draw
///       Q_i = M Omega_i - Q (B Omega_i)
///       repeat P: Z = orth(M^T Q_i - B^T (Q^T Q_i)); Q_i = M Z - Q (B Z)
///       Q_i = orth(Q_i - Q (Q^T Q_i))                  (re-orthogonalise against Q)
///       B_i = Q_i^T M - (Q_i^T Q) B
///       E -= ||B_i||_F^2                               (||M - QB||_F^2 = ||M||^2 - ||B||^2)
/// ```
/// One normalisation per power iteration, as in the fixed-rank range finder
/// (range_finder.hpp): Q_i is also normalised before M^T only once a pass on
/// Z fell back. P + 2 Cholesky QR passes a block (2P + 3 with a normalisation
/// after every product).
/// When a block brings E below tol^2 ||M||_F^2, that block is rotated by the
/// SVD of B_i so its rows come in decreasing energy, and only as many of them
/// are kept as the tolerance needs: the rank is then within the block's
/// exact-rank search of the smallest rank the sketch supports.
///
/// B is stored transposed (small x rank) so that blocks append columns. Q and
/// B^T grow geometrically (capacity doubling) up to max_rank.
/// The indicator is a difference of two large numbers, accumulated in double:
/// it cannot resolve relative errors below about sqrt(eps_T); the caller
/// clamps the tolerance to `qb_tolerance_floor<T>()`.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <concepts>
#include <limits>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/linear_operator.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/decomp/detail/common.hpp"
#include "lowrank/decomp/detail/tall_svd.hpp"
#include "lowrank/decomp/low_rank.hpp"
#include "lowrank/decomp/orthonormalize.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// The smallest relative Frobenius error the randQB_EI indicator can resolve
/// in precision T: 4 sqrt(eps_T) (about 1e-3 for float, 6e-8 for double).
template <scalar T>
[[nodiscard]] constexpr double qb_tolerance_floor() noexcept {
  // sqrt(2^-23) and sqrt(2^-52), spelled out because std::sqrt is not constexpr.
  return 4.0 * (std::same_as<T, float> ? 3.4526698300124393e-4 : 1.4901161193847656e-8);
}

namespace detail {

/// M ~ Q B^T' with Q = q.left_cols(rank) and B^T = bt.left_cols(rank).
template <class T, class Backend>
struct qb_factors {
  matrix<T, Backend> q;   ///< big x capacity
  matrix<T, Backend> bt;  ///< small x capacity
  index_t rank = 0;
  double residual = 0;  ///< the indicator: ||M||_F^2 - ||B||_F^2
  double total = 0;     ///< ||M||_F^2
  qb_status status = qb_status::converged;
};

/// Copies the first `used` columns of `old` into a matrix of `capacity` columns.
template <class T, class Backend>
matrix<T, Backend> grown(context<Backend>& ctx, const matrix<T, Backend>& old, index_t used,
                         index_t capacity) {
  matrix<T, Backend> fresh(ctx, old.rows(), capacity);
  if (used > 0) ops<Backend>::copy(ctx, old.view().left_cols(used), fresh.view().left_cols(used));
  return fresh;
}

/// Sets M's scale from ||A||_F^2 (detail/common.hpp: 1 unless A's RMS entry
/// lies outside T's safe range) and returns ||M||_F^2 in double. For a dense
/// A whose energy is not a normal double (double data near the ends of the
/// range), the scale comes from A's largest entry instead. `power` as
/// range_scale's: 4 when M^T M X is formed (power iterations).
/// @throws lowrank::numerical_error if A is not finite.
template <class Op>
double scaled_energy(context<operator_backend_t<Op>>& ctx, oriented<Op>& m, const char* function,
                     int power) {
  using T = operator_value_t<Op>;
  using Backend = operator_backend_t<Op>;
  const double total = operator_squared_norm(ctx, m.a);
  if constexpr (is_matrix_view_v<Op>) {
    if (!std::isfinite(total) || total < std::numeric_limits<double>::min()) {
      const matrix_view<const T, Backend> a = m.a;
      const double largest = ops<Backend>::max_abs(ctx, a);
      if (!std::isfinite(largest)) throw_non_finite(ctx, function, m.a);
      m.scale = range_scale<T>(largest, power);
      return ops<Backend>::squared_norm(ctx, a, m.scale);
    }
  }
  if (!std::isfinite(total)) throw_non_finite(ctx, function, m.a);
  m.scale = range_scale<T>(std::sqrt(total / (double(m.rows()) * double(m.cols()))), power);
  return total * m.scale * m.scale;
}

/// randQB_EI on M (see the file comment), M's scale set first
/// (scaled_energy). `tolerance` is relative (already clamped), `block` >= 1,
/// 1 <= `max_rank` <= M.cols().
template <class Op, class T = operator_value_t<Op>, class Backend = operator_backend_t<Op>>
qb_factors<T, Backend> randomized_qb(context<Backend>& ctx, oriented<Op>& m, double tolerance,
                                     index_t max_rank, index_t block, index_t power_iterations,
                                     random_stream stream, const char* function) {
  const index_t big = m.rows();
  const index_t small = m.cols();
  qb_factors<T, Backend> f;
  f.total = scaled_energy(ctx, m, function, power_iterations > 0 ? 4 : 2);
  f.residual = f.total;
  index_t capacity = std::min(max_rank, 2 * block);
  f.q = matrix<T, Backend>(ctx, big, capacity);
  f.bt = matrix<T, Backend>(ctx, small, capacity);
  if (f.total == 0) return f;

  const double target = tolerance * tolerance * f.total;
  // A block whose energy is below what the indicator resolves made no progress.
  const double negligible = 0.0625 * qb_tolerance_floor<T>() * qb_tolerance_floor<T>() * f.total;
  matrix<T, Backend> z(ctx, small, block);        // Omega_i, then the power iterates
  matrix<T, Backend> proj(ctx, max_rank, block);  // B Omega_i, Q^T Q_i, ...
  vector<double, Backend> energy(ctx, block);
  Eigen::MatrixXd host_energy(block, 1);

  f.status = qb_status::max_rank_reached;
  while (f.rank < max_rank) {
    const index_t r = f.rank;
    const index_t b = std::min(block, max_rank - r);
    if (r + b > capacity) {
      capacity = std::min(max_rank, std::max(2 * capacity, r + b));
      f.q = grown(ctx, f.q, r, capacity);
      f.bt = grown(ctx, f.bt, r, capacity);
    }
    const auto q = as_const(f.q.view().left_cols(r));
    const auto bt = as_const(f.bt.view().left_cols(r));
    auto qi = f.q.view().middle_cols(r, b);
    auto bti = f.bt.view().middle_cols(r, b);
    auto zi = z.view().left_cols(b);
    auto pi = proj.view().block(0, 0, r, b);

    // Q_i = M Omega_i - Q (B Omega_i): columns [r, r + b) of one big draw.
    ops<Backend>::fill_random(ctx, distribution::gaussian, stream, zi, 0, r);
    m.apply(ctx, as_const(zi), qi);
    if (r > 0) {
      ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), bt, as_const(zi), T(0), pi);
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(-1), q, as_const(pi), T(1), qi);
    }
    // One normalisation per power iteration, after M^T (range_finder.hpp):
    // Q_i is normalised too only after that pass fell back, and the last Q_i
    // is orthonormalised below in any case.
    bool normalise_qi = false;
    for (index_t it = 0; it < power_iterations; ++it) {
      if (normalise_qi) orthonormalize(ctx, qi, orth_accuracy::basis);
      // Z = M^T Q_i - B^T (Q^T Q_i)
      m.apply_transposed(ctx, as_const(qi), zi);
      if (r > 0) {
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), q, as_const(qi), T(0), pi);
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(-1), bt, as_const(pi), T(1), zi);
      }
      if (orthonormalize(ctx, zi, orth_accuracy::basis) != orth_method::cholesky_qr) {
        normalise_qi = true;
      }
      // Q_i = M Z - Q (B Z)
      m.apply(ctx, as_const(zi), qi);
      if (r > 0) {
        ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), bt, as_const(zi), T(0), pi);
        ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(-1), q, as_const(pi), T(1), qi);
      }
    }
    // Re-orthogonalise against Q, then B_i^T = M^T Q_i - B^T (Q^T Q_i).
    if (r > 0) {
      ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), q, as_const(qi), T(0), pi);
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(-1), q, as_const(pi), T(1), qi);
    }
    orthonormalize(ctx, qi, orth_accuracy::orthonormal);
    m.apply_transposed(ctx, as_const(qi), bti);
    if (r > 0) {
      ops<Backend>::gemm(ctx, transpose::yes, transpose::no, T(1), q, as_const(qi), T(0), pi);
      ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(-1), bt, as_const(pi), T(1), bti);
    }

    auto ei = energy.view().segment(0, b);
    ops<Backend>::column_squared_norms(ctx, as_const(bti), ei);
    ops<Backend>::download(ctx, as_const(ei.as_matrix()), view(host_energy).block(0, 0, b, 1));
    double block_energy = 0;
    for (index_t t = 0; t < b; ++t) block_energy += host_energy(t);

    if (f.residual - block_energy <= target) {
      // Rotate the block by the SVD of B_i = X S W^T (B_i^T = W S X^T) so that
      // its rows come in decreasing energy, and keep the fewest that suffice.
      auto svd = tall_svd(ctx, bti, b);
      matrix<T, Backend> v(ctx, b, b);
      ops<Backend>::convert(ctx, as_const(svd.v.view()), v.view());
      ops<Backend>::multiply_right(ctx, as_const(v.view()), qi);
      ops<Backend>::copy(ctx, as_const(svd.w.view()), bti);
      ops<Backend>::scale_columns(ctx, as_const(svd.s.view()), bti);
      Eigen::Matrix<T, Eigen::Dynamic, 1> host_s(b);
      ops<Backend>::download(ctx, as_const(svd.s.view().as_matrix()), view(host_s));
      index_t keep = 0;
      while (keep < b && f.residual > target) {
        f.residual -= static_cast<double>(host_s(keep)) * static_cast<double>(host_s(keep));
        ++keep;
      }
      f.rank = r + keep;
      f.status = qb_status::converged;
      break;
    }
    f.rank = r + b;
    f.residual -= block_energy;
    if (block_energy <= negligible) {
      f.status = qb_status::stalled;
      break;
    }
  }
  return f;
}

}  // namespace detail
}  // namespace lowrank
