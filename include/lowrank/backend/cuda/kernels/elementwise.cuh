#pragma once
/// @file
/// Element-wise kernels of the CUDA backend (internal).

#include <cmath>

#include "lowrank/backend/cuda/kernels/launch.cuh"

namespace lowrank::detail::kernels {

/// X = value.
template <class T>
__global__ void fill(T* x, index_t rows, index_t cols, index_t ld, T value) {
  const index_t n = rows * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    x[k % rows + (k / rows) * ld] = value;
  }
}

/// X = X diag(d).
template <class T>
__global__ void scale_columns(const T* d, T* x, index_t rows, index_t cols, index_t ld) {
  const index_t n = rows * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t j = k / rows;
    x[k % rows + j * ld] *= d[j];
  }
}

/// R (n x n) = the upper triangle of the top n x n block of Y, zeros below.
template <class T>
__global__ void upper_triangle(const T* y, index_t ldy, T* r, index_t ldr, index_t n) {
  const index_t total = n * n;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t i = k % n;
    const index_t j = k / n;
    r[i + j * ldr] = i <= j ? y[i + j * ldy] : T(0);
  }
}

/// Dst = Src rounded to Dst's element type.
template <class S, class D>
__global__ void convert(const S* src, index_t lds, D* dst, index_t ldd, index_t rows,
                        index_t cols) {
  const index_t n = rows * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    dst[k % rows + (k / rows) * ldd] = static_cast<D>(src[k % rows + (k / rows) * lds]);
  }
}

/// The eigenpairs of X^T X (E n x n, w ascending, from syevd) as descending
/// singular pairs: V(:, j) = E(:, n - 1 - j), s_j = sqrt(max(w_{n-1-j}, 0)).
template <class Unused = void>
__global__ void descending_singular_pairs(const double* e, index_t lde, const double* w, index_t n,
                                          double* v, index_t ldv, double* s) {
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n * n;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t i = k % n;
    const index_t j = k / n;
    v[i + j * ldv] = e[i + (n - 1 - j) * lde];
    if (i == 0) s[j] = sqrt(fmax(w[n - 1 - j], 0.0));
  }
}

/// sign_j = -1 where R(j, j) < 0, else +1 (R: the n x n top of a geqrf result).
template <class Unused = void>
__global__ void diagonal_signs(const double* r, index_t ld, index_t n, double* sign) {
  for (index_t j = index_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += index_t(gridDim.x) * blockDim.x) {
    sign[j] = r[j + j * ld] < 0 ? -1.0 : 1.0;
  }
}

}  // namespace lowrank::detail::kernels
