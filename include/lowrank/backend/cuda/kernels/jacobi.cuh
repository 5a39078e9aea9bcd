#pragma once
/// @file
/// One-sided Jacobi SVD of a small matrix in one block (internal): the l x l
/// SVD at the end of the randomized SVDs, where cuSOLVER's routines are
/// latency-bound (bench/README.md has the timings). It computes in double for
/// float and double data alike. It is latency-bound as well: a sweep is
/// n - 1 rounds, each a barrier after a chain of dependent double operations
/// (three reductions, two square roots, two divisions).
///
/// Hestenes' method: X (m x n, m >= n, in double in shared memory) is
/// multiplied on the right by plane rotations until its columns are
/// orthogonal, X V = U S: s_p = ||x_p||, u_p = x_p / s_p, V the product of the
/// rotations. The rotation of columns (p, q) zeroes their inner product
/// (Rutishauser's formulas, as in LAPACK's dgesvj):
/// ```
/// a = ||x_p||^2, b = ||x_q||^2, c = x_p . x_q     rotate when |c| > tol sqrt(a b)
/// zeta = (b - a) / (2 c), t = sign(zeta) / (|zeta| + sqrt(1 + zeta^2))
/// cs = 1 / sqrt(1 + t^2), sn = cs t
/// [x_p, x_q] <- [cs x_p - sn x_q, sn x_p + cs x_q]   (and V's columns alike)
/// ```
/// A sweep visits every pair once in n - 1 rounds of disjoint pairs (the
/// circle method of round-robin tournaments), each pair handled by a group of
/// `jacobi_group` threads; the sweeps stop when one rotates nothing. One-sided
/// Jacobi is accurate to the last digits (Demmel and Veselic 1992): each
/// singular value errs by a small multiple of eps_double s_p cond(D X) for
/// the best column scaling D (plus about tol^2 s_p from stopping), U is
/// orthonormal to about tol and V to double precision. Every
/// thread's work and every sum's order are fixed: the result is the same bits
/// on every run.

#include <cmath>
#include <cstddef>

#include "lowrank/backend/cuda/kernels/launch.cuh"

namespace lowrank::detail::kernels {

/// Threads of `jacobi_svd`'s block.
inline constexpr int jacobi_threads = 1024;
/// Threads that share one pair of columns (a power of two, at most 32).
inline constexpr int jacobi_group = 16;
/// The largest m and n `jacobi_svd` takes.
inline constexpr index_t jacobi_svd_max = 128;

/// What `jacobi_svd` reports.
struct jacobi_svd_status {
  int sweeps;        ///< sweeps made (the last rotated nothing when converged)
  int converged;     ///< a sweep rotated nothing
  int zero_columns;  ///< non-zero when a singular value is zero or not finite
};

/// Dynamic shared memory of `jacobi_svd` for an m x n X: X, V and the
/// singular values in double, and their ranks.
[[nodiscard]] inline std::size_t jacobi_svd_shared_bytes(index_t m, index_t n) noexcept {
  return sizeof(double) * std::size_t(m * n + n * n + n) + sizeof(int) * std::size_t(n);
}

/// The sum of `value` over the calling thread's group of `jacobi_group`
/// threads, in a fixed order, the same in every thread of the group. Only the
/// group need be converged (the groups of a warp may diverge).
__device__ inline double group_sum(double value) {
  constexpr unsigned lanes = jacobi_group == 32 ? 0xffffffffu : (1u << jacobi_group) - 1;
  const unsigned mask = lanes << (threadIdx.x % 32 / jacobi_group * jacobi_group);
  for (int offset = jacobi_group / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(mask, value, offset, jacobi_group);
  }
  return __shfl_sync(mask, value, 0, jacobi_group);
}

/// X = A (m x n) or A^T (`transposed`, A n x m), m >= n: X = U diag(s) V^T
/// with s descending, U (m x n) and V (n x n) written in T. One block of
/// `jacobi_threads` threads with `jacobi_svd_shared_bytes(m, n)` bytes of
/// dynamic shared memory; n <= jacobi_svd_max (< jacobi_threads). Columns of X
/// whose norm is zero or not finite get zero columns of U and make
/// status->zero_columns non-zero: the caller must then use another method, as
/// it must when the sweeps did not converge.
template <class T>
__global__ void __launch_bounds__(jacobi_threads)
    jacobi_svd(const T* a, index_t lda, bool transposed, index_t m, index_t n, double tol,
               int max_sweeps, T* u, index_t ldu, T* s, T* v, index_t ldv,
               jacobi_svd_status* status) {
  extern __shared__ double jacobi_shared[];
  double* x = jacobi_shared;  // m x n, leading dimension m
  double* w = x + m * n;      // V, n x n
  double* sigma = w + n * n;  // n
  int* rank = reinterpret_cast<int*>(sigma + n);

  for (index_t k = threadIdx.x; k < m * n; k += blockDim.x) {
    const index_t i = k % m;
    const index_t j = k / m;
    x[k] = double(transposed ? a[j + i * lda] : a[i + j * lda]);
  }
  for (index_t k = threadIdx.x; k < n * n; k += blockDim.x) w[k] = k % n == k / n ? 1.0 : 0.0;

  const index_t group = threadIdx.x / jacobi_group;
  const index_t groups = blockDim.x / jacobi_group;
  const index_t lane = threadIdx.x % jacobi_group;
  const index_t players = n + (n & 1);  // an even count; player n (n odd) sits out
  int sweep = 0;
  bool converged = false;
  while (!converged && sweep < max_sweeps) {
    ++sweep;
    bool rotated = false;
    for (index_t round = 0; round + 1 < players; ++round) {
      __syncthreads();
      for (index_t pair = group; pair < players / 2; pair += groups) {
        // The circle method: player 0 stays, the others turn one place a round.
        const index_t first = pair == 0 ? 0 : 1 + (round + pair - 1) % (players - 1);
        const index_t second = 1 + (round + players - 2 - pair) % (players - 1);
        const index_t p = first < second ? first : second;
        const index_t q = first < second ? second : first;
        if (q >= n) continue;  // uniform in the group
        double* xp = x + p * m;
        double* xq = x + q * m;
        double alpha = 0;
        double beta = 0;
        double gamma = 0;
        for (index_t i = lane; i < m; i += jacobi_group) {
          alpha += xp[i] * xp[i];
          beta += xq[i] * xq[i];
          gamma += xp[i] * xq[i];
        }
        alpha = group_sum(alpha);
        beta = group_sum(beta);
        gamma = group_sum(gamma);
        if (!(fabs(gamma) > tol * sqrt(alpha) * sqrt(beta))) continue;  // uniform
        rotated = true;
        const double zeta = (beta - alpha) / (2 * gamma);
        const double t = fabs(zeta) > 1e150
                             ? 0.5 / zeta
                             : copysign(1.0, zeta) / (fabs(zeta) + sqrt(1 + zeta * zeta));
        const double cs = 1 / sqrt(1 + t * t);
        const double sn = cs * t;
        for (index_t i = lane; i < m; i += jacobi_group) {
          const double a_p = xp[i];
          const double a_q = xq[i];
          xp[i] = cs * a_p - sn * a_q;
          xq[i] = sn * a_p + cs * a_q;
        }
        double* wp = w + p * n;
        double* wq = w + q * n;
        for (index_t i = lane; i < n; i += jacobi_group) {
          const double a_p = wp[i];
          const double a_q = wq[i];
          wp[i] = cs * a_p - sn * a_q;
          wq[i] = sn * a_p + cs * a_q;
        }
      }
    }
    converged = __syncthreads_or(rotated ? 1 : 0) == 0;
  }

  for (index_t p = group; p < n; p += groups) {
    double sum = 0;
    for (index_t i = lane; i < m; i += jacobi_group) sum += x[i + p * m] * x[i + p * m];
    sum = group_sum(sum);
    if (lane == 0) sigma[p] = sqrt(sum);
  }
  __syncthreads();
  // Descending order; ties keep the column order.
  int zero = 0;
  for (index_t p = threadIdx.x; p < n; p += blockDim.x) {
    int before = 0;
    for (index_t q = 0; q < n; ++q) {
      before += sigma[q] > sigma[p] || (sigma[q] == sigma[p] && q < p) ? 1 : 0;
    }
    rank[p] = before;
    if (!(sigma[p] > 0 && isfinite(sigma[p]))) ++zero;
  }
  zero = __syncthreads_count(zero);
  for (index_t k = threadIdx.x; k < m * n; k += blockDim.x) {
    const index_t i = k % m;
    const index_t p = k / m;
    const double value = sigma[p] > 0 && isfinite(sigma[p]) ? x[k] / sigma[p] : 0.0;
    u[i + index_t(rank[p]) * ldu] = T(value);
  }
  for (index_t k = threadIdx.x; k < n * n; k += blockDim.x) {
    const index_t i = k % n;
    const index_t p = k / n;
    v[i + index_t(rank[p]) * ldv] = T(w[k]);
  }
  for (index_t p = threadIdx.x; p < n; p += blockDim.x) s[rank[p]] = T(sigma[p]);
  if (threadIdx.x == 0) {
    status->sweeps = sweep;
    status->converged = converged ? 1 : 0;
    status->zero_columns = zero;
  }
}

}  // namespace lowrank::detail::kernels
