#pragma once
/// @file
/// Reductions of the CUDA backend (internal). Each is deterministic: a fixed
/// grid, a fixed assignment of elements to threads and a fixed tree, so the
/// same input gives the same bits on every run and every GPU. Sums are
/// accumulated in double. row_dots adds each row's columns in order, one
/// thread per row, as the CPU backend does, and gives its bits (products and
/// sums rounded to nearest, never contracted); the column reductions
/// (add_column_sums, column_dots) tree-sum over a fixed block shape, one
/// block per column: the same bits on every run and every GPU (not the CPU's
/// summation order).

#include <cmath>

#include "lowrank/backend/cuda/kernels/elementwise.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"

namespace lowrank::detail::kernels {

/// Tree-sums `value` over a block of `Threads` threads (a power of two); every
/// thread gets the total. Two calls in a row need a __syncthreads() between
/// them (the shared scratch is reused).
template <int Threads = block_threads>
__device__ inline double block_sum(double value) {
  static_assert((Threads & (Threads - 1)) == 0, "block_sum: Threads must be a power of two");
  __shared__ double shared[Threads];
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int width = Threads / 2; width > 0; width /= 2) {
    if (int(threadIdx.x) < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
  return shared[0];
}

/// The blocks of the two-pass reductions' first pass (a fixed grid, so that
/// the order of the sums does not depend on the device).
inline constexpr unsigned reduce_blocks = 256;

/// partial[b] = the sum of (scale x)^2 over the elements that grid block b
/// visits (a grid of exactly `reduce_blocks` blocks).
template <class T>
__global__ void squared_norm_partials(const T* x, index_t rows, index_t cols, index_t ld,
                                      double scale, double* partial) {
  const index_t n = rows * cols;
  double sum = 0;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    const double v = scale * double(x[k % rows + (k / rows) * ld]);
    sum += v * v;
  }
  const double total = block_sum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

/// max(a, b), NaN once either is NaN (order-independent: deterministic).
__device__ inline double nan_max(double a, double b) {
  return (isnan(a) || isnan(b)) ? nan("") : fmax(a, b);
}

/// The largest `value` over a block of `Threads` threads (a power of two),
/// NaN when any is NaN; every thread gets it. As block_sum, two calls in a
/// row need a __syncthreads() between them.
template <int Threads = block_threads>
__device__ inline double block_max(double value) {
  static_assert((Threads & (Threads - 1)) == 0, "block_max: Threads must be a power of two");
  __shared__ double shared[Threads];
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int width = Threads / 2; width > 0; width /= 2) {
    if (int(threadIdx.x) < width) {
      shared[threadIdx.x] = nan_max(shared[threadIdx.x], shared[threadIdx.x + width]);
    }
    __syncthreads();
  }
  return shared[0];
}

/// partial[b] = the largest |x| over the elements that grid block b visits,
/// NaN for a NaN or an infinity (a grid of exactly `reduce_blocks` blocks).
template <class T>
__global__ void max_abs_partials(const T* x, index_t rows, index_t cols, index_t ld,
                                 double* partial) {
  const index_t n = rows * cols;
  double largest = 0;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    const double v = fabs(double(x[k % rows + (k / rows) * ld]));
    largest = nan_max(largest, isfinite(v) ? v : nan(""));
  }
  const double total = block_max(largest);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

/// out[0] = the largest of partial[0 .. count), NaN if one is NaN, in one block.
template <class Unused = void>
__global__ void max_partials(const double* partial, index_t count, double* out) {
  double largest = 0;
  for (index_t k = threadIdx.x; k < count; k += blockDim.x) largest = nan_max(largest, partial[k]);
  const double total = block_max(largest);
  if (threadIdx.x == 0) out[0] = total;
}

/// out[0] = the sum of partial[0 .. count), in one block (a template, so that
/// the header may be included by several translation units).
template <class Unused = void>
__global__ void sum_partials(const double* partial, index_t count, double* out) {
  double sum = 0;
  for (index_t k = threadIdx.x; k < count; k += blockDim.x) sum += partial[k];
  const double total = block_sum(sum);
  if (threadIdx.x == 0) out[0] = total;
}

/// out[j] = ||X(:, j)||^2, one block per column.
template <class T>
__global__ void column_squared_norms(const T* x, index_t rows, index_t cols, index_t ld,
                                     double* out) {
  for (index_t j = blockIdx.x; j < cols; j += gridDim.x) {
    double sum = 0;
    for (index_t i = threadIdx.x; i < rows; i += blockDim.x) {
      const double v = double(x[i + j * ld]);
      sum += v * v;
    }
    const double total = block_sum(sum);
    if (threadIdx.x == 0) out[j] = total;
    __syncthreads();
  }
}

/// *first = min(*first, linear index of every non-finite entry).
template <class T>
__global__ void find_non_finite(const T* x, index_t rows, index_t cols, index_t ld,
                                unsigned long long* first) {
  const index_t n = rows * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    if (!isfinite(x[k % rows + (k / rows) * ld]))
      atomicMin(first, static_cast<unsigned long long>(k));
  }
}

/// out[j] = the sign of the largest-magnitude entry of column j (the first
/// on ties; +1 for a zero column), one block per column.
template <class T>
__global__ void signs_of_largest(const T* x, index_t rows, index_t cols, index_t ld, T* out) {
  __shared__ T best[block_threads];
  __shared__ index_t where[block_threads];
  for (index_t j = blockIdx.x; j < cols; j += gridDim.x) {
    T b = -1;
    index_t w = rows;
    for (index_t i = threadIdx.x; i < rows; i += blockDim.x) {
      const T a = fabs(x[i + j * ld]);
      if (a > b) {  // strictly larger: keeps the first of equal values; skips NaN
        b = a;
        w = i;
      }
    }
    best[threadIdx.x] = b;
    where[threadIdx.x] = w;
    __syncthreads();
    for (int width = block_threads / 2; width > 0; width /= 2) {
      if (int(threadIdx.x) < width) {
        const T ob = best[threadIdx.x + width];
        const index_t ow = where[threadIdx.x + width];
        if (ob > best[threadIdx.x] || (ob == best[threadIdx.x] && ow < where[threadIdx.x])) {
          best[threadIdx.x] = ob;
          where[threadIdx.x] = ow;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) out[j] = (where[0] < rows && x[where[0] + j * ld] < T(0)) ? T(-1) : T(1);
    __syncthreads();
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

}  // namespace lowrank::detail::kernels
