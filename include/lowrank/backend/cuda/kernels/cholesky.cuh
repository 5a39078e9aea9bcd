#pragma once
/// @file
/// Kernels of the CUDA backend's Cholesky QR factor (internal): the small
/// l x l steps around cuSOLVER's potrf and trtri, so that the factor never
/// crosses to the host. Each runs as one block (l is at most a few hundred):
/// a fixed assignment of elements to threads and a fixed tree, so the status
/// they report is deterministic.

#include <cmath>

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
/// status->deviation = ||G - I||_F, then A += shift tr(G) I. One block.
template <class T>
__global__ void cholesky_prepare(const T* g, index_t ldg, index_t n, double shift, double* a,
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
  deviation = block_sum(deviation);
  __syncthreads();  // block_sum's shared memory is reused
  trace = block_sum(trace);
  const bool finite = isfinite(trace) && isfinite(deviation);
  if (finite && shift != 0) {
    for (index_t i = threadIdx.x; i < n; i += blockDim.x) a[i + i * lda] += shift * trace;
  }
  if (threadIdx.x == 0) {
    status->deviation = sqrt(deviation);
    status->input_finite = finite ? 1 : 0;
  }
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

}  // namespace lowrank::detail::kernels
