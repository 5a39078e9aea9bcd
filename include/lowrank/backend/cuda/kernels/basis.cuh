#pragma once
/// @file
/// Kernels of the basis family's operations (internal; basis/backend.hpp):
/// the steps of the DCT's FFT route around cuFFT (Makhoul's reordering, the
/// twiddles, the half spectrum of the inverse, the un-reordering), the DCT's
/// basis vectors, the column gathers and scatters, the sampled dot products
/// and the sums of absolute values.
///
/// **Vectors of the DCT.** The transform applies to `count` vectors of
/// length n of a matrix: element i of vector b is at `x[i * step + b *
/// stride]` (every column: step 1, stride ld; every row: step ld, stride 1).
/// The FFT's buffers hold the vectors one after the other: element k of
/// vector b at `v[b * n + k]` (reals) and `f[b * (n / 2 + 1) + k]` (the half
/// spectrum). Angles and twiddles are computed in double, the angle reduced
/// exactly on integers as the CPU backend's dct_cos does.
///
/// **Bits.** gather_columns and scatter_add_columns round each product and
/// sum in T with the round-to-nearest intrinsics (never contracted into an
/// FMA), in the CPU backend's order (scatter_add_columns: one thread per row
/// of Y, the columns in order): the CPU's bits. The row sums of abs_sums are
/// the CPU's too (one thread per row, the columns in order); the column sums
/// and sampled_dots tree-sum over a fixed block shape (deterministic, not the
/// CPU's order).

#include <cmath>
#include <cstdint>

#include "lowrank/backend/cuda/kernels/elementwise.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/backend/cuda/kernels/reduce.cuh"

namespace lowrank::detail::kernels {

/// cos(pi m / (2n)) in double for any integer m: the CPU's dct_cos
/// (backend/cpu/fft.hpp), the angle reduced exactly (m mod 4n) and folded
/// into [0, pi/4], then cospi or sinpi of the folded fraction (in [0, 1/4]).
__device__ inline double dct_cos_of(std::int64_t m, std::int64_t n) {
  const std::int64_t period = 4 * n;
  m %= period;
  if (m < 0) m += period;
  double sign = 1;
  if (m > 2 * n) m = period - m;  // cos(2 pi - a) = cos(a)
  if (m > n) {                    // cos(pi - a) = -cos(a)
    m = 2 * n - m;
    sign = -1;
  }
  // m in [0, n]: angle in [0, pi/2].
  const double twice_n = double(2 * n);
  if (2 * m <= n) return sign * cospi(__ddiv_rn(double(m), twice_n));
  return sign * sinpi(__ddiv_rn(double(n - m), twice_n));  // cos(pi/2 - a) = sin(a)
}

/// s_k of the orthonormal DCT-II of length n: sqrt(1/n) for k = 0, else
/// sqrt(2/n) (the CPU's dct_scale, correctly rounded: the same bits).
__device__ inline double dct_scale_of(std::int64_t k, std::int64_t n) {
  return __dsqrt_rn(__ddiv_rn(k == 0 ? 1.0 : 2.0, double(n)));
}

/// Makhoul's reordering: v[b n + k] = x_{2k} for 2k < n, else x_{2n - 2k - 1}
/// (v = x_0, x_2, x_4, ..., x_5, x_3, x_1), x_i of vector b at x[i step + b
/// stride].
template <class T>
__global__ void dct_reorder(const T* x, index_t step, index_t stride, index_t n, index_t count,
                            T* v) {
  const index_t items = n * count;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t b = item / n;
    const index_t k = item % n;
    const index_t i = 2 * k < n ? 2 * k : 2 * n - 2 * k - 1;
    v[item] = x[i * step + b * stride];
  }
}

/// The forward twiddle: Y_k = s_k Re(exp(-i pi k / 2n) V_k) of vector b, V =
/// the FFT of its reordering (half spectrum f, n / 2 + 1 per vector; V_k =
/// conj(V_{n-k}) above n / 2), in double, rounded once to T; Y_k of vector b
/// at y[k step + b stride]. C is cuFFT's complex type (members x, y).
template <class T, class C>
__global__ void dct_twiddle(const C* f, index_t n, index_t count, T* y, index_t step,
                            index_t stride) {
  const index_t half = n / 2 + 1;
  const index_t items = n * count;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t b = item / n;
    const index_t k = item % n;
    const double c = dct_cos_of(k, n);
    const double s = dct_cos_of(k - n, n);  // sin(a) = cos(a - pi/2)
    double re = 0;
    if (2 * k <= n) {
      const C v = f[b * half + k];
      re = __dadd_rn(__dmul_rn(c, double(v.x)), __dmul_rn(s, double(v.y)));
    } else {
      const C v = f[b * half + (n - k)];
      re = __dsub_rn(__dmul_rn(c, double(v.x)), __dmul_rn(s, double(v.y)));
    }
    y[k * step + b * stride] = static_cast<T>(__dmul_rn(dct_scale_of(k, n), re));
  }
}

/// The inverse's half spectrum: f[b (n / 2 + 1) + k] = exp(i pi k / 2n) (c_k
/// - i c_{n-k}) for k <= n / 2, c_k = x_k / s_k of vector b (x_k at x[k step
/// + b stride]), c_n = 0; in double, rounded once to cuFFT's real type.
template <class T, class C>
__global__ void dct_spectrum(const T* x, index_t step, index_t stride, index_t n, index_t count,
                             C* f) {
  using real = decltype(C::x);
  const index_t half = n / 2 + 1;
  const index_t items = half * count;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t b = item / half;
    const index_t k = item % half;
    const T* xb = x + b * stride;
    const double ck = __ddiv_rn(double(xb[k * step]), dct_scale_of(k, n));
    const double cn = k == 0 ? 0.0 : __ddiv_rn(double(xb[(n - k) * step]), dct_scale_of(n - k, n));
    const double c = dct_cos_of(k, n);
    const double s = dct_cos_of(k - n, n);
    C out;
    out.x = static_cast<real>(__dadd_rn(__dmul_rn(c, ck), __dmul_rn(s, cn)));
    out.y = static_cast<real>(__dsub_rn(__dmul_rn(s, ck), __dmul_rn(c, cn)));
    f[item] = out;
  }
}

/// The inverse's un-reordering: with v = the unnormalised inverse FFT of
/// vector b (v[b n + k]), x_{2k} = v_k / n and x_{2k+1} = v_{n-1-k} / n, in
/// double, rounded once to T; x_i of vector b at y[i step + b stride].
template <class T, class R>
__global__ void dct_unreorder(const R* v, index_t n, index_t count, T* y, index_t step,
                              index_t stride) {
  const double inv_n = __ddiv_rn(1.0, double(n));
  const index_t items = n * count;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t b = item / n;
    const index_t i = item % n;
    const index_t k = i % 2 == 0 ? i / 2 : n - 1 - i / 2;
    y[i * step + b * stride] = static_cast<T>(__dmul_rn(double(v[b * n + k]), inv_n));
  }
}

/// Out(j, i) = s_k cos(pi k (2j + 1) / (2n)), k = idx_i (n = rows): in double
/// (the angle k (2j + 1) reduced exactly), rounded once to T.
template <class T>
__global__ void dct_basis_fill(const index_t* idx, T* out, index_t ld, index_t n, index_t cols) {
  const index_t items = n * cols;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t j = item % n;
    const index_t i = item / n;
    const std::int64_t k = idx[i];
    const std::int64_t m = k * (2 * std::int64_t(j) + 1);
    out[j + i * ld] = static_cast<T>(__dmul_rn(dct_scale_of(k, n), dct_cos_of(m, n)));
  }
}

/// Out(r, i) = s_i X(r, idx_i), s_i = scale[i] (1 when scale is null).
template <class T>
__global__ void gather_columns(const T* x, index_t ldx, const index_t* idx, const T* scale, T* out,
                               index_t ldo, index_t rows, index_t cols) {
  const index_t items = rows * cols;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t r = item % rows;
    const index_t i = item / rows;
    const T s = scale == nullptr ? T(1) : scale[i];
    out[r + i * ldo] = mul_rn(s, x[r + idx[i] * ldx]);
  }
}

/// Y(r, idx_i) += a_i Src(r, i) for i = 0, 1, ..., k - 1 in that order, a_i =
/// alpha scale[i] (alpha when scale is null), in T: one thread per row r, so
/// repeated indices add up in the CPU's order.
template <class T>
__global__ void scatter_add_columns(T alpha, const T* src, index_t lds, const index_t* idx,
                                    const T* scale, T* y, index_t ldy, index_t rows, index_t k) {
  for (index_t r = index_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += index_t(gridDim.x) * blockDim.x) {
    for (index_t i = 0; i < k; ++i) {
      const T a = scale == nullptr ? alpha : mul_rn(alpha, scale[i]);
      T& out = y[r + idx[i] * ldy];
      out = add_rn(out, mul_rn(a, src[r + i * lds]));
    }
  }
}

/// out_p = sum_r A(r, ia_p) B(r, ib_p), tree-accumulated in double, one
/// block per pair.
template <class T>
__global__ void sampled_dots(const T* a, index_t lda, const T* b, index_t ldb, const index_t* ia,
                             const index_t* ib, index_t rows, index_t pairs, double* out) {
  for (index_t p = blockIdx.x; p < pairs; p += gridDim.x) {
    const T* x = a + ia[p] * lda;
    const T* z = b + ib[p] * ldb;
    double sum = 0;
    for (index_t r = threadIdx.x; r < rows; r += blockDim.x) {
      sum = __dadd_rn(sum, __dmul_rn(double(x[r]), double(z[r])));
    }
    const double total = block_sum(sum);
    if (threadIdx.x == 0) out[p] = total;
    __syncthreads();
  }
}

/// out_j = sum_i |X(i, j)|, tree-accumulated in double, one block per column.
template <class T>
__global__ void column_abs_sums(const T* x, index_t ld, index_t rows, index_t cols, double* out) {
  for (index_t j = blockIdx.x; j < cols; j += gridDim.x) {
    double sum = 0;
    for (index_t i = threadIdx.x; i < rows; i += blockDim.x) {
      sum = __dadd_rn(sum, fabs(double(x[i + j * ld])));
    }
    const double total = block_sum(sum);
    if (threadIdx.x == 0) out[j] = total;
    __syncthreads();
  }
}

/// out_i = sum_j |X(i, j)| in double, one thread per row adding the columns
/// in order (the CPU's order and bits).
template <class T>
__global__ void row_abs_sums(const T* x, index_t ld, index_t rows, index_t cols, double* out) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows;
       i += index_t(gridDim.x) * blockDim.x) {
    double sum = 0;
    for (index_t j = 0; j < cols; ++j) sum = __dadd_rn(sum, fabs(double(x[i + j * ld])));
    out[i] = sum;
  }
}

}  // namespace lowrank::detail::kernels
