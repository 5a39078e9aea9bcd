#pragma once
/// @file
/// Kernels of the factors family's operations (internal; factors/backend.hpp):
/// the products with a sparse S (by rows through the CSR, by columns through
/// the CSC copy), the SDDMM, the scatter and gather between S and a dense
/// matrix, the soft threshold and the steps of the random support and the
/// column copy around CUB's radix sort.
///
/// **Bits.** Every product and sum is written with the round-to-nearest
/// intrinsics of kernels/elementwise.cuh (never contracted into an FMA), in
/// the CPU backend's order (backend/cpu/factors.hpp): each entry of Y of
/// sparse_times is one thread's, accumulating the support's terms in the
/// CPU's order, then adding the sum to Y as the CPU does; the SDDMM replays
/// the CPU's blocks of 64 batch rows (eight lanes, the CPU's tree over them,
/// the blocks in order). So the results are the CPU's bits (the CPU built
/// without FMA contraction, the default on x86-64).

#include <cstdint>

#include "lowrank/backend/cuda/kernels/elementwise.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/random/permutation.hpp"

namespace lowrank::detail::kernels {

/// The batch rows of one block of the SDDMM (the CPU's `sparse_block`).
inline constexpr index_t sddmm_block = 64;

/// The row i of entry k of a CSR support: the largest i in [0, rows) with
/// offsets[i] <= k (so empty rows are skipped), by binary search.
__device__ inline index_t support_row_of(const std::int32_t* offsets, index_t rows, index_t k) {
  index_t lo = 0;  // offsets[lo] <= k
  index_t hi = rows;
  while (hi - lo > 1) {
    const index_t mid = lo + (hi - lo) / 2;
    if (index_t(offsets[mid]) <= k) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/// The number of the sorted keys[0 .. n) below `value` (a lower bound).
template <class K>
__device__ inline index_t count_below(const K* keys, index_t n, K value) {
  index_t lo = 0;
  index_t hi = n;
  while (lo < hi) {
    const index_t mid = lo + (hi - lo) / 2;
    if (keys[mid] < value) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/// Y(n, i) += alpha sum_k v_k X(n, c_k) over the entries k of row i of S
/// (CSR), the sum accumulated in T with the k in order, then added once:
/// blocks over the rows i of S (x) and chunks of blockDim.x batch rows (y),
/// one thread per batch row n (coalesced in X and Y).
template <class T>
__global__ void sparse_times_rows(T alpha, const std::int32_t* row_offsets,
                                  const std::int32_t* col_indices, const T* v, const T* x,
                                  index_t ldx, T* y, index_t ldy, index_t n_rows, index_t s_rows) {
  for (index_t i = blockIdx.x; i < s_rows; i += gridDim.x) {
    const std::int32_t k0 = row_offsets[i];
    const std::int32_t k1 = row_offsets[i + 1];
    for (index_t n = index_t(blockIdx.y) * blockDim.x + threadIdx.x; n < n_rows;
         n += index_t(gridDim.y) * blockDim.x) {
      T acc = 0;
      for (std::int32_t k = k0; k < k1; ++k) {
        acc = add_rn(acc, mul_rn(v[k], x[n + index_t(col_indices[k]) * ldx]));
      }
      T& out = y[n + i * ldy];
      out = add_rn(out, mul_rn(alpha, acc));
    }
  }
}

/// Y(n, j) += sum_k (alpha v_k) X(n, r_k) over the entries of column j of S
/// (CSC: rows increasing, k = positions[e]), the sum accumulated in T in that
/// order from 0, then added once (the CPU's panel of Y's block; an empty
/// column adds 0): blocks over the columns j of S (x) and chunks of
/// blockDim.x batch rows (y), one thread per batch row n; no atomics.
template <class T>
__global__ void sparse_times_columns(T alpha, const std::int32_t* col_offsets,
                                     const std::int32_t* row_indices, const std::int32_t* positions,
                                     const T* v, const T* x, index_t ldx, T* y, index_t ldy,
                                     index_t n_rows, index_t s_cols) {
  for (index_t j = blockIdx.x; j < s_cols; j += gridDim.x) {
    const std::int32_t e0 = col_offsets[j];
    const std::int32_t e1 = col_offsets[j + 1];
    for (index_t n = index_t(blockIdx.y) * blockDim.x + threadIdx.x; n < n_rows;
         n += index_t(gridDim.y) * blockDim.x) {
      T acc = 0;
      for (std::int32_t e = e0; e < e1; ++e) {
        const T a = mul_rn(alpha, v[positions[e]]);
        acc = add_rn(acc, mul_rn(a, x[n + index_t(row_indices[e]) * ldx]));
      }
      T& out = y[n + j * ldy];
      out = add_rn(out, acc);
    }
  }
}

/// v_k = alpha sum_n G(n, r_k) X(n, c_k) + beta v_k (beta = 0 ignores v),
/// one warp per entry k, in the CPU's order: the batch in blocks of 64 rows
/// (the last one padded with zeros), each block as eight lanes (lane l
/// starts with the product of row l and adds those of rows l + 8, ..., l +
/// 56 in turn) summed by the CPU's tree ((l0 + l1) + (l2 + l3)) + ((l4 + l5)
/// + (l6 + l7)), and the blocks' dots added in order to 0. A warp does four
/// blocks at a time (eight lanes each, 8 consecutive rows per lane group and
/// step: whole memory sectors).
template <class T>
__global__ void sampled_product(T alpha, const T* g, index_t ldg, const T* x, index_t ldx,
                                const std::int32_t* row_offsets, const std::int32_t* col_indices,
                                index_t s_rows, index_t nnz, index_t n_rows, T beta, T* v) {
  constexpr int warp = 32;
  constexpr unsigned all = 0xffffffffu;
  const int lane = int(threadIdx.x) % warp;
  const int group = lane / 8;  // the block of this step the lane works on
  const int l = lane % 8;      // the CPU's lane within the block
  const index_t warps = index_t(gridDim.x) * (blockDim.x / warp);
  const index_t blocks = (n_rows + sddmm_block - 1) / sddmm_block;
  for (index_t k = index_t(blockIdx.x) * (blockDim.x / warp) + threadIdx.x / warp; k < nnz;
       k += warps) {
    const T* gk = g + support_row_of(row_offsets, s_rows, k) * ldg;
    const T* xk = x + index_t(col_indices[k]) * ldx;
    T sum = 0;  // the same in every lane
    for (index_t b0 = 0; b0 < blocks; b0 += 4) {
      const index_t b = b0 + group;
      T part = 0;
      if (b < blocks) {
        for (index_t q = 0; q < sddmm_block; q += 8) {
          const index_t r = b * sddmm_block + q + l;
          const T p = r < n_rows ? mul_rn(gk[r], xk[r]) : T(0);  // the CPU's zero padding
          part = q == 0 ? p : add_rn(part, p);
        }
      }
      // The CPU's tree over the eight lanes: lane 8 h ends with block b0 + h's dot.
      part = add_rn(part, __shfl_down_sync(all, part, 1));
      part = add_rn(part, __shfl_down_sync(all, part, 2));
      part = add_rn(part, __shfl_down_sync(all, part, 4));
      for (int h = 0; h < 4; ++h) {
        const T dot = __shfl_sync(all, part, 8 * h);
        if (b0 + h < blocks) sum = add_rn(sum, dot);
      }
    }
    if (lane == 0) {
      const T d = mul_rn(alpha, sum);
      v[k] = beta == T(0) ? d : add_rn(d, mul_rn(beta, v[k]));
    }
  }
}

/// W(r_k, c_k) += alpha v_k, one thread per entry k (the positions are
/// distinct: no two threads write one element).
template <class T>
__global__ void sparse_to_dense(T alpha, const std::int32_t* row_offsets,
                                const std::int32_t* col_indices, index_t s_rows, index_t nnz,
                                const T* v, T* w, index_t ldw) {
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < nnz;
       k += index_t(gridDim.x) * blockDim.x) {
    T& out = w[support_row_of(row_offsets, s_rows, k) + index_t(col_indices[k]) * ldw];
    out = add_rn(out, mul_rn(alpha, v[k]));
  }
}

/// v_k = alpha W(r_k, c_k) + beta v_k (beta = 0 ignores v), one thread per
/// entry k.
template <class T>
__global__ void dense_to_sparse(T alpha, const std::int32_t* row_offsets,
                                const std::int32_t* col_indices, index_t s_rows, index_t nnz,
                                const T* w, index_t ldw, T beta, T* v) {
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < nnz;
       k += index_t(gridDim.x) * blockDim.x) {
    const T d =
        mul_rn(alpha, w[support_row_of(row_offsets, s_rows, k) + index_t(col_indices[k]) * ldw]);
    v[k] = beta == T(0) ? d : add_rn(d, mul_rn(beta, v[k]));
  }
}

/// Y = sign(X) max(|X| - tau, 0) (the CPU's expression; X and Y may be the
/// same memory: each element is read, then written, by one thread).
template <class T>
__global__ void soft_threshold(T tau, const T* x, index_t ldx, T* y, index_t ldy, index_t rows,
                               index_t cols) {
  const index_t n = rows * cols;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    const index_t i = k % rows;
    const index_t j = k / rows;
    const T in = x[i + j * ldx];
    const T m = fabs(in) - tau;
    y[i + j * ldy] = m > T(0) ? copysign(m, in) : T(0);
  }
}

/// flat[k] = p(k) for k in [0, nnz): the positions of a random support, unsorted.
template <class Unused = void>
__global__ void permutation_values(random_permutation p, index_t nnz, std::uint64_t* flat) {
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < nnz;
       k += index_t(gridDim.x) * blockDim.x) {
    flat[k] = p(std::uint64_t(k));
  }
}

/// The CSR of sorted flat positions (p = r cols + c): row_offsets[i] = the
/// number of positions below i cols (i in [0, rows]).
template <class Unused = void>
__global__ void flat_row_offsets(const std::uint64_t* sorted, index_t nnz, index_t cols,
                                 index_t rows, std::int32_t* row_offsets) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i <= rows;
       i += index_t(gridDim.x) * blockDim.x) {
    row_offsets[i] =
        static_cast<std::int32_t>(count_below(sorted, nnz, std::uint64_t(i) * std::uint64_t(cols)));
  }
}

/// col_indices[k] = sorted[k] mod cols.
template <class Unused = void>
__global__ void flat_columns(const std::uint64_t* sorted, index_t nnz, index_t cols,
                             std::int32_t* col_indices) {
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < nnz;
       k += index_t(gridDim.x) * blockDim.x) {
    col_indices[k] = static_cast<std::int32_t>(sorted[k] % std::uint64_t(cols));
  }
}

/// out[k] = k (the CSR slots, sorted by column into the CSC's positions).
template <class Unused = void>
__global__ void iota_int32(index_t n, std::int32_t* out) {
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += index_t(gridDim.x) * blockDim.x) {
    out[k] = static_cast<std::int32_t>(k);
  }
}

/// The CSC from the entries stably sorted by column (sorted_cols, and the
/// CSR slot of each, positions): row_indices[e] = the row of slot
/// positions[e], col_offsets[j] = the number of entries in columns below j.
template <class Unused = void>
__global__ void csc_from_sorted(const std::uint32_t* sorted_cols, const std::int32_t* positions,
                                const std::int32_t* row_offsets, index_t rows, index_t cols,
                                index_t nnz, std::int32_t* col_offsets, std::int32_t* row_indices) {
  const index_t items = nnz > cols + 1 ? nnz : cols + 1;
  for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < items;
       t += index_t(gridDim.x) * blockDim.x) {
    if (t < nnz) {
      row_indices[t] = static_cast<std::int32_t>(support_row_of(row_offsets, rows, positions[t]));
    }
    if (t <= cols) {
      col_offsets[t] =
          static_cast<std::int32_t>(count_below(sorted_cols, nnz, static_cast<std::uint32_t>(t)));
    }
  }
}

}  // namespace lowrank::detail::kernels
