#pragma once
/// @file
/// Element-wise kernels of the CUDA backend (internal).
///
/// **Bits.** Every product and sum of affine, axpby, add_row_vector,
/// scatter_add_rows and divide is written with the round-to-nearest
/// intrinsics (__fmul_rn, __dadd_rn, ...), which nvcc never fuses into an
/// FMA, so that each result is the CPU backend's expression rounded the same
/// way (on a CPU build without FMA contraction, the default on x86-64).

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

/// a * b and a + b, rounded to nearest, never contracted into an FMA.
__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ inline float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ inline double add_rn(double a, double b) { return __dadd_rn(a, b); }

/// X = alpha X + beta.
template <class T>
__global__ void affine(T alpha, T beta, T* x, index_t rows, index_t cols, index_t ld) {
  const index_t n = rows * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    T& v = x[k % rows + (k / rows) * ld];
    v = add_rn(mul_rn(alpha, v), beta);
  }
}

/// Y = alpha X + beta Y (beta = 0: Y = alpha X, Y's content ignored).
template <class T>
__global__ void axpby(T alpha, const T* x, index_t ldx, T beta, T* y, index_t ldy, index_t rows,
                      index_t cols) {
  const index_t n = rows * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t i = k % rows;
    const index_t j = k / rows;
    const T ax = mul_rn(alpha, x[i + j * ldx]);
    T& out = y[i + j * ldy];
    out = beta == T(0) ? ax : add_rn(ax, mul_rn(beta, out));
  }
}

/// Y(i, j) += alpha v_j.
template <class T>
__global__ void add_row_vector(T alpha, const T* v, T* y, index_t rows, index_t cols, index_t ld) {
  const index_t n = rows * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t j = k / rows;
    T& out = y[k % rows + j * ld];
    out = add_rn(out, mul_rn(alpha, v[j]));
  }
}

/// y_i = x_i / d_i + beta y_i in double, rounded once to V (beta = 0 ignores y).
template <class U, class V>
__global__ void divide(const U* x, const double* d, double beta, V* y, index_t n) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += index_t(gridDim.x) * blockDim.x) {
    const double q = __ddiv_rn(double(x[i]), d[i]);
    y[i] = static_cast<V>(beta == 0 ? q : __dadd_rn(q, __dmul_rn(beta, double(y[i]))));
  }
}

/// Out(k, j) = X(rows[k], j) (Out is m x cols).
template <class T>
__global__ void gather_rows(const T* x, index_t ldx, const index_t* row_index, T* out, index_t ldo,
                            index_t m, index_t cols) {
  const index_t n = m * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t r = k % m;
    const index_t j = k / m;
    out[r + j * ldo] = x[row_index[r] + j * ldx];
  }
}

/// Y(rows[k], j) += alpha Src(k, j) (Src is m x cols; the rows[k] distinct,
/// so no two threads write one element).
template <class T>
__global__ void scatter_add_rows(T alpha, const T* src, index_t lds, const index_t* row_index, T* y,
                                 index_t ldy, index_t m, index_t cols) {
  const index_t n = m * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t r = k % m;
    const index_t j = k / m;
    T& out = y[row_index[r] + j * ldy];
    out = add_rn(out, mul_rn(alpha, src[r + j * lds]));
  }
}

}  // namespace lowrank::detail::kernels
