#pragma once
/// @file
/// Kernels of the adapters' operations (internal): the dropout mask and
/// DoRA's row norms.
///
/// **Bits.** The products and sums are written with the round-to-nearest
/// intrinsics of kernels/elementwise.cuh, which nvcc never contracts into an
/// FMA: the dropout mask and its scaling, and the row norms, are the CPU
/// backend's bits. The mask is the CPU's: the same Philox words, lane i % 4
/// of block i / 4 of column j.

#include <cstdint>

#include "lowrank/backend/cuda/kernels/elementwise.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/random/philox.hpp"

namespace lowrank::detail::kernels {

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

}  // namespace lowrank::detail::kernels
