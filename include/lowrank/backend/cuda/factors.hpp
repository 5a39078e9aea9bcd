#pragma once
/// @file
/// The factors family's part of the CUDA operation table (internal; the
/// operations of `factors_backend_for`, factors/backend.hpp), assembled into
/// `lowrank::ops<lowrank::cuda>` by backend/cuda/ops.hpp. None synchronises
/// the stream but the index transfers (upload_int32, download_int32).
///
/// The kernels are lowrank's (kernels/factors.cuh); the sorts are CUB's
/// radix sorts (stable, deterministic), their scratch from the context's
/// workspace. Schemes:
/// - X S^T: blocks over the rows i of S and chunks of batch rows, one thread
///   per batch row n (coalesced): acc = sum over row i's entries, k in order,
///   of v_k X(n, c_k), then Y(n, i) += alpha acc;
/// - X S: the same over the columns j of S through the CSC copy (so
///   `needs_columns` is true and sparse_support keeps it): acc = sum over
///   column j's entries, rows increasing, of (alpha v_k) X(n, r_k), then
///   Y(n, j) += acc, as the CPU's panels do; no atomics;
/// - the SDDMM: one warp per entry, the CPU's blocks of 64 batch rows (the
///   last one zero-padded; eight lanes and the CPU's tree over them, the
///   blocks in order), four blocks per warp step;
/// - sparse_to_dense, dense_to_sparse: one thread per entry, its row found
///   by binary search in the row offsets;
/// - random_support: p(k) for k < nnz (the `random_permutation`, as on the
///   CPU), a radix sort of the 64-bit positions, then the row offsets by
///   binary search per row and the columns p mod n;
/// - support_columns: a stable radix sort of the entries' columns carrying
///   their CSR slots k (so rows increase within a column), then the rows by
///   binary search in the row offsets and the column offsets by binary
///   search in the sorted columns.
/// **Bits.** Every product and sum rounds as the CPU backend's does, in its
/// order (kernels/factors.cuh): the products, the SDDMM, the scatter and
/// gather and the soft threshold are the CPU's bits; the supports and their
/// CSC copies are the CPU's arrays.

#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/error.hpp"
#include "lowrank/backend/cuda/kernels/factors.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/backend/cuda/matrix.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/factors/backend.hpp"
#include "lowrank/random/permutation.hpp"

namespace lowrank::detail {

/// A sparse flop's cost in GEMM flops on CUDA: a guess, not measured (no GPU
/// was at hand when the CUDA part was written); measure it on a GPU (the
/// ratios bench/factors_bench.cpp reports on the CPU) and replace it.
template <>
inline constexpr double sparse_flop_cost<cuda> = 8.0;

/// The factors family's operations of the CUDA backend.
struct cuda_factor_ops {
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cuda>;

  /// X S needs the CSC copy (deterministic products without atomics).
  static constexpr bool needs_columns = true;

  /// Y += alpha X S^T (op no) or Y += alpha X S (op yes; needs the CSC copy).
  template <scalar T>
  static void sparse_times(context<cuda>& ctx, transpose op, T alpha, support_view<cuda> s,
                           vector_view<const std::type_identity_t<T>, cuda> v, input<T> x,
                           matrix_view<T, cuda> y) {
    const index_t n_rows = x.rows();
    LOWRANK_ASSERT(y.rows() == n_rows && v.size() == s.nnz);
    LOWRANK_ASSERT(op == transpose::no ? (x.cols() == s.cols && y.cols() == s.rows)
                                       : (x.cols() == s.rows && y.cols() == s.cols));
    if (n_rows == 0 || s.nnz == 0) return;
    // Warps over the batch rows, up to a full block.
    const index_t threads =
        std::clamp<index_t>((n_rows + 31) / 32 * 32, 32, kernels::block_threads);
    const auto chunks =
        static_cast<unsigned>(std::min<index_t>((n_rows + threads - 1) / threads, 65535));
    if (op == transpose::no) {
      const dim3 grid(static_cast<unsigned>(std::min<index_t>(s.rows, 65535)), chunks);
      kernels::sparse_times_rows<<<grid, static_cast<unsigned>(threads), 0, ctx.stream()>>>(
          alpha, s.row_offsets, s.col_indices, v.data(), x.data(), x.ld(), y.data(), y.ld(), n_rows,
          s.rows);
    } else {
      LOWRANK_ASSERT(s.col_offsets != nullptr && s.row_indices != nullptr &&
                     s.positions != nullptr);
      const dim3 grid(static_cast<unsigned>(std::min<index_t>(s.cols, 65535)), chunks);
      kernels::sparse_times_columns<<<grid, static_cast<unsigned>(threads), 0, ctx.stream()>>>(
          alpha, s.col_offsets, s.row_indices, s.positions, v.data(), x.data(), x.ld(), y.data(),
          y.ld(), n_rows, s.cols);
    }
    check(cudaGetLastError(), "lowrank::ops<cuda>::sparse_times: kernel launch");
  }

  /// v_k = alpha sum_i G(i, r_k) X(i, c_k) + beta v_k (beta = 0 ignores v).
  template <scalar T>
  static void sampled_product(context<cuda>& ctx, T alpha, input<T> g, input<T> x,
                              support_view<cuda> s, T beta, vector_view<T, cuda> v) {
    const index_t n_rows = x.rows();
    LOWRANK_ASSERT(g.rows() == n_rows && g.cols() == s.rows && x.cols() == s.cols &&
                   v.size() == s.nnz);
    if (s.nnz == 0) return;
    constexpr index_t warps_per_block = kernels::block_threads / 32;
    const auto grid = static_cast<unsigned>(
        std::min<index_t>((s.nnz + warps_per_block - 1) / warps_per_block, 65535));
    kernels::sampled_product<<<grid, kernels::block_threads, 0, ctx.stream()>>>(
        alpha, g.data(), g.ld(), x.data(), x.ld(), s.row_offsets, s.col_indices, s.rows, s.nnz,
        n_rows, beta, v.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::sampled_product: kernel launch");
  }

  /// W(r_k, c_k) += alpha v_k.
  template <scalar T>
  static void sparse_to_dense(context<cuda>& ctx, T alpha, support_view<cuda> s,
                              vector_view<const std::type_identity_t<T>, cuda> v,
                              matrix_view<T, cuda> w) {
    LOWRANK_ASSERT(w.rows() == s.rows && w.cols() == s.cols && v.size() == s.nnz);
    if (s.nnz == 0) return;
    kernels::sparse_to_dense<<<kernels::grid_for(s.nnz), kernels::block_threads, 0, ctx.stream()>>>(
        alpha, s.row_offsets, s.col_indices, s.rows, s.nnz, v.data(), w.data(), w.ld());
    check(cudaGetLastError(), "lowrank::ops<cuda>::sparse_to_dense: kernel launch");
  }

  /// v_k = alpha W(r_k, c_k) + beta v_k (beta = 0 ignores v).
  template <scalar T>
  static void dense_to_sparse(context<cuda>& ctx, T alpha, support_view<cuda> s, input<T> w, T beta,
                              vector_view<T, cuda> v) {
    LOWRANK_ASSERT(w.rows() == s.rows && w.cols() == s.cols && v.size() == s.nnz);
    if (s.nnz == 0) return;
    kernels::dense_to_sparse<<<kernels::grid_for(s.nnz), kernels::block_threads, 0, ctx.stream()>>>(
        alpha, s.row_offsets, s.col_indices, s.rows, s.nnz, w.data(), w.ld(), beta, v.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::dense_to_sparse: kernel launch");
  }

  /// The CSR of the first nnz values of a random permutation of [0, m n):
  /// the CPU's arrays.
  static void random_support(context<cuda>& ctx, random_stream stream, index_t cols, index_t nnz,
                             vector_view<std::int32_t, cuda> row_offsets,
                             vector_view<std::int32_t, cuda> col_indices) {
    const index_t rows = row_offsets.size() - 1;
    LOWRANK_ASSERT(rows >= 0 && col_indices.size() == nnz && nnz <= rows * cols);
    if (nnz == 0) {
      check(cudaMemsetAsync(row_offsets.data(), 0, sizeof(std::int32_t) * std::size_t(rows + 1),
                            ctx.stream()),
            "lowrank::ops<cuda>::random_support: cudaMemsetAsync");
      return;
    }
    const std::uint64_t domain = std::uint64_t(rows) * std::uint64_t(cols);
    const random_permutation p(stream, domain);
    // The positions are below domain: sort only the bits they use.
    const int bits = std::max(1, int(std::bit_width(domain - 1)));
    auto ws = ctx.workspace();
    auto* flat = ws.take<std::uint64_t>(std::size_t(nnz));
    auto* sorted = ws.take<std::uint64_t>(std::size_t(nnz));
    const auto threads = kernels::block_threads;
    kernels::permutation_values<<<kernels::grid_for(nnz), threads, 0, ctx.stream()>>>(p, nnz, flat);
    check(cudaGetLastError(), "lowrank::ops<cuda>::random_support: kernel launch");
    std::size_t temp_bytes = 0;
    check(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, flat, sorted, nnz, 0, bits,
                                         ctx.stream()),
          "lowrank::ops<cuda>::random_support: cub::DeviceRadixSort::SortKeys");
    void* temp = ws.take<std::byte>(temp_bytes);
    check(
        cub::DeviceRadixSort::SortKeys(temp, temp_bytes, flat, sorted, nnz, 0, bits, ctx.stream()),
        "lowrank::ops<cuda>::random_support: cub::DeviceRadixSort::SortKeys");
    kernels::flat_row_offsets<<<kernels::grid_for(rows + 1), threads, 0, ctx.stream()>>>(
        sorted, nnz, cols, rows, row_offsets.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::random_support: kernel launch");
    kernels::flat_columns<<<kernels::grid_for(nnz), threads, 0, ctx.stream()>>>(sorted, nnz, cols,
                                                                                col_indices.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::random_support: kernel launch");
  }

  /// The CSC copy of a CSR support (rows increasing within a column,
  /// positions = the CSR slots): the CPU's arrays.
  static void support_columns(context<cuda>& ctx, support_view<cuda> s,
                              vector_view<std::int32_t, cuda> col_offsets,
                              vector_view<std::int32_t, cuda> row_indices,
                              vector_view<std::int32_t, cuda> positions) {
    LOWRANK_ASSERT(col_offsets.size() == s.cols + 1 && row_indices.size() == s.nnz &&
                   positions.size() == s.nnz);
    if (s.nnz == 0) {
      check(cudaMemsetAsync(col_offsets.data(), 0, sizeof(std::int32_t) * std::size_t(s.cols + 1),
                            ctx.stream()),
            "lowrank::ops<cuda>::support_columns: cudaMemsetAsync");
      return;
    }
    const int bits =
        std::max(1, int(std::bit_width(std::uint64_t(std::max<index_t>(s.cols - 1, 0)))));
    auto ws = ctx.workspace();
    auto* slots = ws.take<std::int32_t>(std::size_t(s.nnz));
    auto* sorted_cols = ws.take<std::uint32_t>(std::size_t(s.nnz));
    // Columns are in [0, 2^31): their bits as unsigned keys.
    const auto* keys = reinterpret_cast<const std::uint32_t*>(s.col_indices);
    const auto threads = kernels::block_threads;
    kernels::iota_int32<<<kernels::grid_for(s.nnz), threads, 0, ctx.stream()>>>(s.nnz, slots);
    check(cudaGetLastError(), "lowrank::ops<cuda>::support_columns: kernel launch");
    // Stable: the slots k, so the rows, stay increasing within a column.
    std::size_t temp_bytes = 0;
    check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, sorted_cols, slots,
                                          positions.data(), s.nnz, 0, bits, ctx.stream()),
          "lowrank::ops<cuda>::support_columns: cub::DeviceRadixSort::SortPairs");
    void* temp = ws.take<std::byte>(temp_bytes);
    check(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, sorted_cols, slots,
                                          positions.data(), s.nnz, 0, bits, ctx.stream()),
          "lowrank::ops<cuda>::support_columns: cub::DeviceRadixSort::SortPairs");
    kernels::csc_from_sorted<<<kernels::grid_for(std::max(s.nnz, s.cols + 1)), threads, 0,
                               ctx.stream()>>>(sorted_cols, positions.data(), s.row_offsets, s.rows,
                                               s.cols, s.nnz, col_offsets.data(),
                                               row_indices.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::support_columns: kernel launch");
  }

  /// Y = sign(X) max(|X| - tau, 0) (X and Y may be the same memory).
  template <scalar T>
  static void soft_threshold(context<cuda>& ctx, T tau, input<T> x, matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols());
    if (x.empty()) return;
    kernels::
        soft_threshold<<<kernels::grid_for(x.size()), kernels::block_threads, 0, ctx.stream()>>>(
            tau, x.data(), x.ld(), y.data(), y.ld(), x.rows(), x.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::soft_threshold: kernel launch");
  }

  /// Device dst = host src (synchronises the stream, so that src may be
  /// reused at once).
  static void upload_int32(context<cuda>& ctx, vector_view<const std::int32_t, cpu> src,
                           vector_view<std::int32_t, cuda> dst) {
    LOWRANK_ASSERT(src.size() == dst.size());
    if (src.empty()) return;
    check(cudaMemcpyAsync(dst.data(), src.data(), sizeof(std::int32_t) * std::size_t(src.size()),
                          cudaMemcpyHostToDevice, ctx.stream()),
          "lowrank::ops<cuda>::upload_int32: cudaMemcpyAsync");
    ctx.synchronize();
  }

  /// Host dst = device src (synchronises the stream).
  static void download_int32(context<cuda>& ctx, vector_view<const std::int32_t, cuda> src,
                             vector_view<std::int32_t, cpu> dst) {
    LOWRANK_ASSERT(src.size() == dst.size());
    if (src.empty()) return;
    check(cudaMemcpyAsync(dst.data(), src.data(), sizeof(std::int32_t) * std::size_t(src.size()),
                          cudaMemcpyDeviceToHost, ctx.stream()),
          "lowrank::ops<cuda>::download_int32: cudaMemcpyAsync");
    ctx.synchronize();
  }
};

}  // namespace lowrank::detail
