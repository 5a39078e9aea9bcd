#pragma once
/// @file
/// Kernels of the adapters' operations (internal): element-wise maps, the
/// dropout mask, row gathers and scatters, and per-row / per-column dot
/// products.
///
/// **Bits.** Every product and sum is written with the round-to-nearest
/// intrinsics (__fmul_rn, __dadd_rn, ...), which nvcc never fuses into an
/// FMA, so that each element-wise result is the CPU backend's expression
/// rounded the same way: affine, axpby, dropout, add_row_vector,
/// scatter_add_rows, factored_row_norms, divide and row_dots (one thread per
/// row, the columns in order, as the CPU adds them) give the CPU's bits (on a
/// CPU build without FMA contraction, the default on x86-64). The dropout mask is the CPU's: the
/// same Philox words, lane i % 4 of block i / 4 of column j.
///
/// **Determinism.** The column reductions (add_column_sums, column_dots)
/// tree-sum in double over a fixed block shape, one block per column: the
/// same bits on every run and every GPU (not the CPU's summation order).

#include <cstdint>

#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/backend/cuda/kernels/reduce.cuh"
#include "lowrank/random/philox.hpp"

namespace lowrank::detail::kernels {

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

/// Y = keep (X (.) M) + beta Y with M(i, j) = [u24(word) >= p], the word
/// being lane i % 4 of random_words(s, i / 4, j); keep = alpha / (1 - p).
/// One thread per Philox block (4 rows of one column); `blocks` = ceil(rows / 4).
template <class T>
__global__ void dropout(random_stream s, double p, T keep, const T* x, index_t ldx, T beta, T* y,
                        index_t ldy, index_t rows, index_t cols, index_t blocks) {
  const index_t items = blocks * cols;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t b = item % blocks;
    const index_t j = item / blocks;
    const philox_counter w =
        random_words(s, static_cast<std::uint64_t>(b), static_cast<std::uint64_t>(j));
    for (index_t lane = 0; lane < 4; ++lane) {
      const index_t i = 4 * b + lane;
      if (i >= rows) break;
      const T kept = u24(w.v[lane]) >= p ? mul_rn(keep, x[i + j * ldx]) : T(0);
      T& out = y[i + j * ldy];
      out = beta == T(0) ? kept : add_rn(kept, mul_rn(beta, out));
    }
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

/// y_j = T(y_j + alpha sum_i X(i, j)), the sum tree-accumulated in double,
/// one block per column.
template <class T>
__global__ void add_column_sums(T alpha, const T* x, index_t rows, index_t cols, index_t ld, T* y) {
  for (index_t j = blockIdx.x; j < cols; j += gridDim.x) {
    double sum = 0;
    for (index_t i = threadIdx.x; i < rows; i += blockDim.x)
      sum = __dadd_rn(sum, double(x[i + j * ld]));
    const double total = block_sum(sum);
    if (threadIdx.x == 0)
      y[j] = static_cast<T>(__dadd_rn(double(y[j]), __dmul_rn(double(alpha), total)));
    __syncthreads();
  }
}

/// out_i = sum_j X(i, j) Y(i, j) in double, one thread per row adding the
/// columns in order (the CPU's order).
template <class T>
__global__ void row_dots(const T* x, index_t ldx, const T* y, index_t ldy, index_t rows,
                         index_t cols, double* out) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows;
       i += index_t(gridDim.x) * blockDim.x) {
    double sum = 0;
    for (index_t j = 0; j < cols; ++j) {
      sum = __dadd_rn(sum, __dmul_rn(double(x[i + j * ldx]), double(y[i + j * ldy])));
    }
    out[i] = sum;
  }
}

/// out_j = sum_i X(i, j) Y(i, j), tree-accumulated in double, one block per column.
template <class T>
__global__ void column_dots(const T* x, index_t ldx, const T* y, index_t ldy, index_t rows,
                            index_t cols, double* out) {
  for (index_t j = blockIdx.x; j < cols; j += gridDim.x) {
    double sum = 0;
    for (index_t i = threadIdx.x; i < rows; i += blockDim.x) {
      sum = __dadd_rn(sum, __dmul_rn(double(x[i + j * ldx]), double(y[i + j * ldy])));
    }
    const double total = block_sum(sum);
    if (threadIdx.x == 0) out[j] = total;
    __syncthreads();
  }
}

/// n_i = max(sqrt(max(w_i + 2 s b_i + s^2 c_i, 0)), floor), the CPU's
/// expression and comparisons (a NaN stays NaN).
template <class Unused = void>
__global__ void factored_row_norms(double s, double floor, const double* w, const double* b,
                                   const double* c, index_t n, double* out) {
  const double two_s = __dmul_rn(2.0, s);
  const double s2 = __dmul_rn(s, s);
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += index_t(gridDim.x) * blockDim.x) {
    const double sq = __dadd_rn(__dadd_rn(w[i], __dmul_rn(two_s, b[i])), __dmul_rn(s2, c[i]));
    const double norm = __dsqrt_rn(sq < 0 ? 0.0 : sq);
    out[i] = norm < floor ? floor : norm;
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
