#pragma once
/// @file
/// Kernels of the CUDA backend's Cholesky QR factor (internal), so that the
/// factor never crosses to the host:
/// - `cholesky_fused`: the whole factor (symmetrise, shift, Cholesky, R^{-1},
///   checks) in one block, the matrix in shared memory, for l up to
///   `fused_cholesky_max`: one launch instead of five (bench/README.md has
///   the timings of both routes). The kernel is latency-bound: 2 l steps,
///   each a barrier and a chain of dependent double operations.
/// - `cholesky_prepare`, `cholesky_split`, `cholesky_check_inverse`: the small
///   steps around cuSOLVER's potrf and trtri for larger l.
/// Each runs as one block: a fixed assignment of elements to threads and a
/// fixed order of operations, so results and status are deterministic.

#include <cmath>
#include <cstddef>

#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/backend/cuda/kernels/reduce.cuh"

namespace lowrank::detail::kernels {

/// What the factor's kernels and cuSOLVER calls report, in device memory;
/// read back once per factor.
struct cholesky_device_status {
  double deviation;  ///< ||G - I||_F
  int input_finite;  ///< tr(G) and the deviation are finite
  int potrf_info;    ///< cuSOLVER potrf's devInfo
  int diagonal_ok;   ///< R's diagonal is positive and finite
  int trtri_info;    ///< cuSOLVER trtri's devInfo
  int inverse_ok;    ///< every |R^{-1}(i, j)| is below the target type's largest value
};

/// A (n x n, double) = the symmetric matrix whose lower triangle is G's,
/// status->deviation = ||G - I||_F, then, when tr(G) and the deviation are
/// finite (status->input_finite), A += shift tr(G) I. Called by every thread
/// of a block of `Threads` threads; returns input_finite to all of them.
template <int Threads, class T>
__device__ bool load_shifted_gram(const T* g, index_t ldg, index_t n, double shift, double* a,
                                  index_t lda, cholesky_device_status* status) {
  double deviation = 0;
  double trace = 0;
  for (index_t k = threadIdx.x; k < n * n; k += blockDim.x) {
    const index_t i = k % n;
    const index_t j = k / n;
    const double v = double(i >= j ? g[i + j * ldg] : g[j + i * ldg]);
    a[i + j * lda] = v;
    const double e = i == j ? v - 1.0 : v;
    deviation += e * e;
    if (i == j) trace += v;
  }
  deviation = block_sum<Threads>(deviation);
  __syncthreads();  // block_sum's shared memory is reused
  trace = block_sum<Threads>(trace);
  const bool finite = isfinite(trace) && isfinite(deviation);
  if (finite && shift != 0) {
    for (index_t i = threadIdx.x; i < n; i += blockDim.x) a[i + i * lda] += shift * trace;
  }
  if (threadIdx.x == 0) {
    status->deviation = sqrt(deviation);
    status->input_finite = finite ? 1 : 0;
  }
  return finite;
}

/// `load_shifted_gram` as a kernel of its own, before cuSOLVER's potrf. One
/// block.
template <class T>
__global__ void cholesky_prepare(const T* g, index_t ldg, index_t n, double shift, double* a,
                                 index_t lda, cholesky_device_status* status) {
  load_shifted_gram<block_threads>(g, ldg, n, shift, a, lda, status);
}

/// After potrf (upper): zeros R's strictly lower part, copies R into
/// R_inv (for trtri) and checks R's diagonal. One block.
template <class Unused = void>
__global__ void cholesky_split(double* r, index_t ldr, index_t n, double* r_inv, index_t ldi,
                               cholesky_device_status* status) {
  double bad = 0;
  for (index_t k = threadIdx.x; k < n * n; k += blockDim.x) {
    const index_t i = k % n;
    const index_t j = k / n;
    double v = r[i + j * ldr];
    if (i > j) {
      v = 0;
      r[i + j * ldr] = 0;
    }
    if (i == j && !(v > 0 && isfinite(v))) bad += 1;
    r_inv[i + j * ldi] = v;
  }
  bad = block_sum(bad);
  if (threadIdx.x == 0) status->diagonal_ok = bad == 0 ? 1 : 0;
}

/// After trtri: checks that every entry of the upper triangle of R^{-1} is
/// below `limit` in magnitude (NaN fails). One block.
template <class Unused = void>
__global__ void cholesky_check_inverse(const double* r_inv, index_t ld, index_t n, double limit,
                                       cholesky_device_status* status) {
  double bad = 0;
  for (index_t k = threadIdx.x; k < n * n; k += blockDim.x) {
    const index_t i = k % n;
    const index_t j = k / n;
    if (i <= j && !(fabs(r_inv[i + j * ld]) < limit)) bad += 1;
  }
  bad = block_sum(bad);
  if (threadIdx.x == 0) status->inverse_ok = bad == 0 ? 1 : 0;
}

/// Threads of `cholesky_fused`'s block.
inline constexpr int cholesky_threads = 512;

/// The largest order `cholesky_fused` takes.
inline constexpr index_t fused_cholesky_max = 128;

/// Dynamic shared memory of `cholesky_fused` for order n: the matrix
/// (leading dimension n + 1) and R's diagonal.
[[nodiscard]] inline std::size_t fused_cholesky_shared_bytes(index_t n) noexcept {
  return sizeof(double) * std::size_t(n * (n + 1) + n);
}

/// (i, j), i <= j, of entry `idx` of an upper triangle listed column by
/// column: idx = j (j + 1) / 2 + i.
__device__ inline void upper_triangle_index(index_t idx, index_t& i, index_t& j) {
  index_t c = index_t((sqrtf(8.0f * float(idx) + 1.0f) - 1.0f) * 0.5f);
  while (c * (c + 1) / 2 > idx) --c;
  while ((c + 1) * (c + 2) / 2 <= idx) ++c;
  j = c;
  i = idx - c * (c + 1) / 2;
}

/// The whole Cholesky QR factor of G (n x n, lower triangle read) in one block
/// of `cholesky_threads` threads, with `fused_cholesky_shared_bytes(n)` bytes
/// of dynamic shared memory:
/// A = sym(G) in double, status->deviation = ||A - I||_F, A += shift tr(A) I;
/// R^T R = A by the outer-product Cholesky (R upper, zeros below); R^{-1}
/// (upper, zeros below) by back substitution, row by row from the last:
/// X(i, :) = (e_i - sum_{k > i} R(i, k) X(k, :)) / R(i, i), the sums
/// accumulated as each row of X is finished. Fails (in `status`) on a
/// non-finite input, a pivot that is not positive and finite, or an entry of
/// R^{-1} not below `limit` in magnitude. Shared memory holds A's upper
/// triangle, which becomes R, and the accumulator B of the inverse
/// transposed in the strict lower triangle (B(k, j) at (j, k)) with its
/// diagonal on the diagonal; R's diagonal is kept apart.
template <class T>
__global__ void __launch_bounds__(cholesky_threads)
    cholesky_fused(const T* g, index_t ldg, index_t n, double shift, double limit, double* r,
                   index_t ldr, double* r_inv, index_t ldi, cholesky_device_status* status) {
  extern __shared__ double shared_matrix[];
  const index_t ld = n + 1;
  double* a = shared_matrix;
  double* diagonal = shared_matrix + ld * n;
  const auto at = [&](index_t i, index_t j) -> double& { return a[i + j * ld]; };

  if (threadIdx.x == 0) {
    status->potrf_info = 0;
    status->diagonal_ok = 0;
    status->trtri_info = 0;
    status->inverse_ok = 0;
  }
  // Uniform: every thread has the same sums.
  if (!load_shifted_gram<cholesky_threads>(g, ldg, n, shift, a, ld, status)) return;

  // R^T R = A, upper: after step k, row k of A is R(k, :) R(k, k), and the
  // trailing block is updated by the outer product of R(k, k+1:).
  for (index_t k = 0; k < n; ++k) {
    __syncthreads();
    const double pivot = at(k, k);
    if (!(pivot > 0 && isfinite(pivot))) {  // uniform
      if (threadIdx.x == 0) status->potrf_info = int(k + 1);
      return;
    }
    const double d = sqrt(pivot);
    const double scale = 1.0 / d;
    const index_t t = n - k - 1;
    for (index_t idx = threadIdx.x; idx < t * (t + 1) / 2; idx += blockDim.x) {
      index_t i;
      index_t j;
      upper_triangle_index(idx, i, j);
      i += k + 1;
      j += k + 1;
      at(i, j) -= (at(k, i) * scale) * (at(k, j) * scale);
    }
    if (threadIdx.x == 0) diagonal[k] = d;
  }
  __syncthreads();

  // R to global memory and into A's upper triangle; B = I.
  for (index_t k = threadIdx.x; k < n * n; k += blockDim.x) {
    const index_t i = k % n;
    const index_t j = k / n;
    double v = 0;
    if (i < j) {
      v = at(i, j) / diagonal[i];
      at(i, j) = v;
    } else if (i == j) {
      v = diagonal[i];
      at(i, i) = 1;
    } else {
      at(i, j) = 0;
    }
    r[i + j * ldr] = v;
  }

  // B(k, j) -= R(k, i) X(i, j) for k < i <= j, rows i from the last; X(i, :)
  // = B(i, :) / R(i, i) is final when row i is reached.
  for (index_t i = n - 1; i > 0; --i) {
    __syncthreads();
    const double scale = 1.0 / diagonal[i];
    const index_t count = i * (n - i);
    for (index_t idx = threadIdx.x; idx < count; idx += blockDim.x) {
      const index_t k = idx % i;
      const index_t j = i + idx / i;
      at(j, k) -= at(k, i) * (at(j, i) * scale);
    }
  }
  __syncthreads();

  double bad = 0;
  for (index_t k = threadIdx.x; k < n * n; k += blockDim.x) {
    const index_t i = k % n;
    const index_t j = k / n;
    double v = 0;
    if (i <= j) {
      v = at(j, i) / diagonal[i];
      if (!(fabs(v) < limit)) bad += 1;
    }
    r_inv[i + j * ldi] = v;
  }
  bad = block_sum<cholesky_threads>(bad);
  if (threadIdx.x == 0) {
    status->diagonal_ok = 1;
    status->inverse_ok = bad == 0 ? 1 : 0;
  }
}

}  // namespace lowrank::detail::kernels
