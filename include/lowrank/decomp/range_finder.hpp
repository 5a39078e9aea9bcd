#pragma once
/// @file
/// The randomized range finder with power (subspace) iterations:
/// Halko, Martinsson, Tropp, "Finding structure with randomness", SIAM Review
/// 2011, Algorithms 4.3 / 4.4.
///
/// Q = orth((A A^T)^q A Omega), Omega an n x l standard Gaussian matrix drawn
/// from Philox (random/philox.hpp). HMT's Algorithm 4.4 orthonormalises after
/// every product; this one normalises once per iteration, after A^T A:
/// ```
/// Y = A Omega
/// repeat q times:  Z = orth1(A^T Y);  Y = A Z
/// Q = orth2(Y)
/// ```
/// Y = A Z needs no normalisation for its span, only so that A^T Y is
/// computed from a well-conditioned block: with Z orthonormal, cond(Y) is at
/// most the spread s_1 / s_l of the spectrum Z sees, and one Cholesky QR pass
/// on A^T Y (condition cond(Y)^2) succeeds while eps cond(Y)^4 < 1. When it
/// does not (the pass fell back: a spectrum falling by more than about
/// eps^(-1/4), 55 in float, over l values), the remaining iterations
/// normalise Y as well, as Algorithm 4.4 does. Measured on the test spectra
/// (geometric, harmonic, s_i = i^(-1/2), a cliff, rank-deficient, clustered;
/// float and double), the error of the randomized SVD is the same as with a
/// normalisation after every product to six digits (docs/algorithms.md).
/// orth1 is one CholQR pass (a well-conditioned basis is all the iteration
/// needs); orth2 is CholQR2, so Q^T Q = I to working precision
/// (decomp/orthonormalize.hpp).
///
/// Shapes: A is m x n (a dense view or any `linear_operator`), Q is m x l,
/// 1 <= l <= min(m, n).
/// Cost: q + 1 products with A and q with A^T (2 m n l flops each for a
/// dense A; an operator's own cost otherwise) and q + 2 Cholesky QR passes
/// (q single ones on n x l blocks, two on Q, one where cond(Q) <= 2; 3 rows
/// l^2 flops each), plus q
/// on m x l blocks where the spectrum forces the fallback above.
/// Memory: the output plus an n x l sketch.
/// Guarantee (HMT Theorem 10.5 for q = 0, Corollary 10.10 for q > 0): with
/// l = k + p, E||A - Q Q^T A||_F <= (1 + k / (p - 1))^{1/2} (sum_{j>k} s_j^2)^{1/2}
/// for q = 0, and the power iterations drive the (spectral) error towards
/// s_{k+1} at the rate (s_{k+1} / s_k)^{2q+1}.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/linear_operator.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/decomp/detail/common.hpp"
#include "lowrank/decomp/orthonormalize.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// Options of `range_finder`.
struct range_finder_options {
  index_t power_iterations = 2;  ///< q >= 0
  std::uint64_t seed = 0;        ///< Omega is the Gaussian matrix of random_stream{seed, 0}
};

namespace detail {

/// Y = M Omega, Omega (M.cols() x l) the Gaussian matrix of `stream`, drawn
/// into `omega`. The product sets M's scale: 1 for data in T's safe range
/// (its square root for `power` 4, range_scale), else the power of two that
/// brings M Omega to about 1 (detail/common.hpp), and M Omega is formed again
/// from scaled M.
/// @throws lowrank::numerical_error if A holds a non-finite entry (found
/// through this product, which it would poison).
template <class Op, class T, class Backend>
void first_sketch(context<Backend>& ctx, oriented<Op>& m, random_stream stream,
                  matrix_view<T, Backend> omega, matrix_view<T, Backend> y, const char* function,
                  int power) {
  ops<Backend>::fill_random(ctx, distribution::gaussian, stream, omega, 0, 0);
  m.apply(ctx, as_const(omega), y);
  // Any NaN or Inf in A reaches Y through the dense Gaussian Omega, so
  // checking the sketch replaces a pass over the input; its largest entry
  // gives the data's size.
  const double largest = ops<Backend>::max_abs(ctx, as_const(y));
  m.scale = std::isfinite(largest) ? range_scale<T>(largest, power)
                                   : overflow_scale(ctx, function, m.a, m.cols());
  if (m.scale != 1) {
    m.apply(ctx, as_const(omega), y);
    if (!std::isfinite(ops<Backend>::max_abs(ctx, as_const(y)))) {
      throw_non_finite(ctx, function, m.a);
    }
  }
}

/// Y = orth((M M^T)^q M Omega) with Omega (M.cols() x l) the Gaussian matrix
/// of `stream`, drawn into Z (first_sketch); Z is workspace (M.cols() x l)
/// afterwards. With `c` given, the last CholQR pass is deferred (see
/// detail::orthonormalize): Y C is the orthonormal basis.
/// @throws lowrank::numerical_error if A holds a non-finite entry.
template <class Op, class T, class Backend>
void subspace_iteration(context<Backend>& ctx, oriented<Op>& m, random_stream stream, index_t q,
                        matrix_view<T, Backend> y, matrix_view<T, Backend> z, const char* function,
                        matrix<double, Backend>* c = nullptr) {
  first_sketch(ctx, m, stream, z, y, function, q > 0 ? 4 : 2);
  // One normalisation per iteration, after M^T M (docs/algorithms.md): Y = M Z
  // needs none for its span, only for the conditioning of M^T Y, which is
  // cond(Y)^2. Where that is too much for one Cholesky QR pass (the pass fell
  // back: a spectrum decaying by more than about eps^(-1/4) over l values),
  // the remaining iterations normalise Y as well, as HMT's Algorithm 4.4 does.
  bool normalise_y = false;
  for (index_t it = 0; it < q; ++it) {
    if (normalise_y) orthonormalize(ctx, y, orth_accuracy::basis);
    m.apply_transposed(ctx, as_const(y), z);
    if (orthonormalize(ctx, z, orth_accuracy::basis) != orth_method::cholesky_qr) {
      normalise_y = true;
    }
    m.apply(ctx, as_const(z), y);
  }
  detail::orthonormalize<T, Backend>(ctx, y, orth_accuracy::orthonormal, nullptr, c);
}

}  // namespace detail

/// Q (m x l) with orthonormal columns whose span approximates the dominant
/// l-dimensional range of A, a dense view or any `linear_operator` (see the
/// file comment for the algorithm, cost and guarantee).
/// @throws lowrank::invalid_argument if A is empty, l is not in [1, min(m, n)]
/// or power_iterations < 0; lowrank::numerical_error if A is not finite.
template <linear_operator Op>
requires backend_for<operator_backend_t<Op>, operator_value_t<Op>>
[[nodiscard]] matrix<operator_value_t<Op>, operator_backend_t<Op>> range_finder(
    context<operator_backend_t<Op>>& ctx, const Op& a, index_t l,
    const range_finder_options& options = {}) {
  using T = operator_value_t<Op>;
  using Backend = operator_backend_t<Op>;
  const char* fn = "lowrank::range_finder";
  detail::require_non_empty(fn, a);
  detail::require_in_range(fn, "l", l, 1, std::min<index_t>(a.rows(), a.cols()), "min(m, n)");
  if (options.power_iterations < 0) {
    detail::throw_invalid_argument(fn, "options.power_iterations", options.power_iterations,
                                   ">= 0");
  }
  detail::oriented<Op> m{a, transpose::no};
  matrix<T, Backend> q(ctx, a.rows(), l);
  matrix<T, Backend> z(ctx, a.cols(), l);
  detail::subspace_iteration(ctx, m, random_stream{options.seed, 0}, options.power_iterations,
                             q.view(), z.view(), fn);
  return q;
}

/// `range_finder` on an Eigen matrix or expression, on the CPU.
template <class Derived>
requires scalar<typename Derived::Scalar>
[[nodiscard]] matrix<typename Derived::Scalar, cpu> range_finder(
    const Eigen::MatrixBase<Derived>& a, index_t l, const range_finder_options& options = {}) {
  const eigen_input<typename Derived::Scalar> input(a.derived());
  detail::host_context<Derived> ctx;
  return range_finder(ctx, view(input), l, options);
}

}  // namespace lowrank
