#pragma once
/// @file
/// Kernels of the projection family's operations (internal): Adam's moments
/// and direction, Fira's norm ratios, row scaling and absolute values.
///
/// **Bits.** Every element is computed in double with the round-to-nearest
/// intrinsics (never contracted into an FMA), in the CPU backend's order
/// (backend/cpu/projection.hpp), and rounded once to T: the CPU's bits.
/// One thread per element, grid-stride over the column-major index.

#include <cmath>

#include "lowrank/backend/cuda/kernels/elementwise.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"

namespace lowrank::detail::kernels {

/// M = b1 M + (1 - b1) G, V = b2 V + (1 - b2) G (.) G.
template <class T>
__global__ void adam_moments(double b1, double c1, double b2, double c2, const T* g, index_t ldg,
                             T* m, index_t ldm, T* v, index_t ldv, index_t rows, index_t cols) {
  const index_t items = rows * cols;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t i = item % rows;
    const index_t j = item / rows;
    const double x = g[i + j * ldg];
    T& mi = m[i + j * ldm];
    T& vi = v[i + j * ldv];
    mi = static_cast<T>(__dadd_rn(__dmul_rn(b1, double(mi)), __dmul_rn(c1, x)));
    vi = static_cast<T>(__dadd_rn(__dmul_rn(b2, double(vi)), __dmul_rn(c2, __dmul_rn(x, x))));
  }
}

/// Y = a M / (vs sqrt(V) + eps) + beta Y (beta = 0 ignores Y); a = alpha ms.
template <class T>
__global__ void adam_direction(double a, double vs, double eps, const T* m, index_t ldm, const T* v,
                               index_t ldv, T beta, T* y, index_t ldy, index_t rows, index_t cols) {
  const index_t items = rows * cols;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t i = item % rows;
    const index_t j = item / rows;
    const double d = __ddiv_rn(__dmul_rn(a, double(m[i + j * ldm])),
                               __dadd_rn(__dmul_rn(vs, __dsqrt_rn(double(v[i + j * ldv]))), eps));
    T& out = y[i + j * ldy];
    out = static_cast<T>(beta == T(0) ? d : __dadd_rn(d, __dmul_rn(double(beta), double(out))));
  }
}

/// out_i = sqrt(num_i) / (sqrt(den_i) + eps).
template <class T>
__global__ void norm_ratio(const double* num, const double* den, double eps, index_t n, T* out) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += index_t(gridDim.x) * blockDim.x) {
    out[i] = static_cast<T>(__ddiv_rn(__dsqrt_rn(num[i]), __dadd_rn(__dsqrt_rn(den[i]), eps)));
  }
}

/// X = diag(d) X.
template <class T>
__global__ void scale_rows(const T* d, T* x, index_t ldx, index_t rows, index_t cols) {
  const index_t items = rows * cols;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t i = item % rows;
    const index_t j = item / rows;
    T& xi = x[i + j * ldx];
    xi = mul_rn(xi, d[i]);
  }
}

/// X = |X|.
template <class T>
__global__ void abs_values(T* x, index_t ldx, index_t rows, index_t cols) {
  const index_t items = rows * cols;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t i = item % rows;
    const index_t j = item / rows;
    x[i + j * ldx] = std::fabs(x[i + j * ldx]);
  }
}

}  // namespace lowrank::detail::kernels
