#pragma once
/// @file
/// Kernels of the projection family's operations (internal): Adam's moments
/// and direction, Fira's norm ratios, row scaling and absolute values.
///
/// **Bits.** Every element is computed in double with the round-to-nearest
/// intrinsics (never contracted into an FMA), in the CPU backend's order
/// (backend/cpu/projection.hpp), and rounded once to T: the CPU's bits.
/// One thread per element, grid-stride over the column-major index; the
/// quantisation (Q-GaLore) runs in T with the CPU's operations, one thread
/// per group.

#include <cmath>
#include <cstdint>

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

/// Element k of the row-major or column-major flattening of a rows x cols X.
template <class T>
__device__ inline T flat_at(const T* x, index_t ld, index_t rows, index_t cols, bool row_major,
                            index_t k) {
  return row_major ? x[k / cols + (k % cols) * ld] : x[k % rows + (k / rows) * ld];
}

__device__ inline float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ inline double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ inline float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ inline double sub_rn(double a, double b) { return __dsub_rn(a, b); }

/// Q-GaLore's quantisation of group g (projection/backend.hpp): one thread
/// per group. A 4-bit group starts on a byte (group is even) unless it is
/// the last; each thread writes whole bytes of its own group.
template <class T>
__global__ void quantize_groups(const T* x, index_t ld, index_t rows, index_t cols, bool row_major,
                                index_t group, int bits, std::uint8_t* codes, T* scales, T* zeros,
                                index_t groups) {
  const index_t n = rows * cols;
  const T top = T((1 << bits) - 1);
  for (index_t g = index_t(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += index_t(gridDim.x) * blockDim.x) {
    const index_t first = g * group;
    const index_t last = first + group < n ? first + group : n;
    T lo = flat_at(x, ld, rows, cols, row_major, first);
    T hi = lo;
    for (index_t k = first + 1; k < last; ++k) {
      const T v = flat_at(x, ld, rows, cols, row_major, k);
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    const T range = sub_rn(hi, lo);
    const T s = div_rn(range > T(1e-5) ? range : T(1e-5), top);
    T z = -rint(div_rn(lo, s));
    z = z < T(0) ? T(0) : (z > top ? top : z);
    scales[g] = s;
    zeros[g] = z;
    for (index_t k = first; k < last; ++k) {
      T q = add_rn(T(rint(div_rn(flat_at(x, ld, rows, cols, row_major, k), s))), z);
      q = q < T(0) ? T(0) : (q > top ? top : q);
      const auto code = static_cast<std::uint8_t>(q);
      if (bits == 8) {
        codes[k] = code;
      } else if (k % 2 == 0) {
        codes[k / 2] = code;
      } else {
        codes[k / 2] = static_cast<std::uint8_t>(codes[k / 2] | (code << 4));
      }
    }
  }
}

/// X = s (q - z), element-wise.
template <class T>
__global__ void dequantize_groups(const std::uint8_t* codes, const T* scales, const T* zeros,
                                  index_t group, int bits, bool row_major, T* x, index_t ld,
                                  index_t rows, index_t cols) {
  const index_t items = rows * cols;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t i = item % rows;
    const index_t j = item / rows;
    const index_t k = row_major ? i * cols + j : item;
    const unsigned q = bits == 8 ? codes[k] : (codes[k / 2] >> (4 * (k % 2))) & 15u;
    x[i + j * ld] = mul_rn(scales[k / group], sub_rn(T(q), zeros[k / group]));
  }
}

}  // namespace lowrank::detail::kernels
