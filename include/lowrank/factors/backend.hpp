#pragma once
/// @file
/// The factors family's contract with the backends (docs/architecture.md,
/// "Backends"): the sparse operations of the sparse-plus-low-rank factors
/// (factors/sparse.hpp, factors/sparse_plus_low_rank.hpp,
/// factors/compress.hpp) beyond the core, adapter and basis operations. Each
/// backend implements them in its own file (backend/cpu/factors.hpp,
/// backend/cuda/factors.hpp) and `static_assert`s `factors_backend_for`
/// where its `ops` are assembled.

#include <cstdint>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/basis/backend.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// The positions of the non-zeros of an m x n sparse matrix S, in the
/// backend's memory (factors/sparse.hpp owns them): CSR by rows, int32,
/// columns strictly increasing within a row, so that entry k (the k-th
/// non-zero in row-major order) is S(r_k, c_k). `col_offsets`,
/// `row_indices` and `positions` are the same entries by columns (CSC: rows
/// increasing within a column, `positions` the CSR slot k of each), present
/// (non-null) only on backends whose `ops::needs_columns` is true.
template <class Backend>
struct support_view {
  index_t rows = 0;
  index_t cols = 0;
  index_t nnz = 0;
  const std::int32_t* row_offsets = nullptr;  ///< rows + 1 entries, [0] = 0, [rows] = nnz
  const std::int32_t* col_indices = nullptr;  ///< nnz entries
  const std::int32_t* col_offsets = nullptr;  ///< cols + 1 entries (CSC)
  const std::int32_t* row_indices = nullptr;  ///< nnz entries (CSC)
  const std::int32_t* positions = nullptr;    ///< nnz entries (CSC): the CSR slot
};

namespace detail {

/// How many GEMM flops one flop of the sparse operations (`sparse_times`,
/// `sampled_product`) costs on a backend: the factored route's sparse work
/// is weighted by it (factor_route_for, factors/sparse_plus_low_rank.hpp). A
/// backend part specialises it with its measured figure.
template <class Backend>
inline constexpr double sparse_flop_cost = 4.0;

}  // namespace detail

/// The operations the factors family adds. S is a `support_view` with
/// values v (nnz entries, in the support's row-major order); X, Y, G are
/// column-major N x . batches (one sample per row, as the adapters').
/// - `sparse_times(ctx, op, alpha, s, v, x, y)`: op = no: Y += alpha X S^T
///   (X N x n, Y N x m); op = yes: Y += alpha X S (X N x m, Y N x n). Each
///   entry of Y adds its terms in the support's order, whatever the threads.
/// - `sampled_product(ctx, alpha, g, x, s, beta, v)`: v_k = alpha sum_i G(i,
///   r_k) X(i, c_k) + beta v_k (G N x m, X N x n; beta = 0 ignores v): the
///   support's entries of G^T X without forming it (an SDDMM), in T, the
///   sum over i in a fixed order.
/// - `sparse_to_dense(ctx, alpha, s, v, w)`: W(r_k, c_k) += alpha v_k (W m x n).
/// - `dense_to_sparse(ctx, alpha, s, w, beta, v)`: v_k = alpha W(r_k, c_k) +
///   beta v_k (beta = 0 ignores v).
/// - `random_support(ctx, stream, cols, nnz, row_offsets, col_indices)`: the
///   CSR of {p(0), ..., p(nnz - 1)}, p the `random_permutation` of [0, m n)
///   drawn from `stream` (random/permutation.hpp; flat row-major positions,
///   p = r n + c), m = row_offsets.size() - 1, n = cols; the same on every
///   backend, whatever the threads.
/// - `support_columns(ctx, s, col_offsets, row_indices, positions)`: the CSC
///   copy of a CSR support (used where `needs_columns`).
/// - `soft_threshold(ctx, tau, x, y)`: Y = sign(X) max(|X| - tau, 0), X and Y
///   one shape, possibly the same memory.
/// - `upload_int32(ctx, src, dst)` / `download_int32(ctx, src, dst)`: index
///   arrays between host and backend memory.
template <class Backend, class T>
concept factors_backend_for = basis_backend_for<Backend, T> && adapter_backend_for<Backend, T> &&
    requires(context<Backend>& ctx, matrix_view<T, Backend> x, matrix_view<const T, Backend> cx,
             vector_view<T, Backend> v, vector_view<const T, Backend> cv, support_view<Backend> s,
             random_stream stream, vector_view<std::int32_t, Backend> iv,
             vector_view<const std::int32_t, Backend> civ,
             vector_view<const std::int32_t, cpu> host_in, vector_view<std::int32_t, cpu> host_out,
             T alpha) {
  { ops<Backend>::needs_columns } -> std::convertible_to<bool>;
  ops<Backend>::sparse_times(ctx, transpose::no, alpha, s, cv, cx, x);
  ops<Backend>::sampled_product(ctx, alpha, cx, cx, s, alpha, v);
  ops<Backend>::sparse_to_dense(ctx, alpha, s, cv, x);
  ops<Backend>::dense_to_sparse(ctx, alpha, s, cx, alpha, v);
  ops<Backend>::random_support(ctx, stream, index_t{1}, index_t{1}, iv, iv);
  ops<Backend>::support_columns(ctx, s, iv, iv, iv);
  ops<Backend>::soft_threshold(ctx, alpha, cx, x);
  ops<Backend>::upload_int32(ctx, host_in, iv);
  ops<Backend>::download_int32(ctx, civ, host_out);
};

}  // namespace lowrank
