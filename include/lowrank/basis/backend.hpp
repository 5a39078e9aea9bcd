#pragma once
/// @file
/// The basis family's contract with the backends: the operations of the DCT
/// (basis/dct.hpp), the DCT projector (projection/projector.hpp) and LoCA
/// (adapters/loca.hpp) beyond the core ones of `backend_for`
/// (core/concepts.hpp). Each backend implements them in its own file
/// (backend/cpu/basis.hpp, backend/cuda/basis.hpp) and `static_assert`s
/// `basis_backend_for` where its `ops` are assembled (docs/architecture.md,
/// "Backends").

#include <cstdint>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

/// The operations the basis family adds to `backend_for`. C is the
/// orthonormal DCT-II matrix of the transform's length n (basis/dct.hpp):
/// C[k, j] = s_k cos(pi k (2j + 1) / (2n)), s_0 = sqrt(1/n), s_k = sqrt(2/n).
/// - `dct_fft(ctx, x, y, along_columns, inverse)`: the O(n log n) route of
///   the transform (Makhoul's reordering and a real FFT of length n, in
///   T): Y = C X (every column, length n = rows) or Y = X C^T (every
///   row, length n = cols); `inverse` applies C^T (DCT-III) instead. X and Y
///   have one shape and do not overlap. Bits independent of the threads.
/// - `dct_basis_fill(ctx, idx, out)`: Out(j, i) = C[idx_i, j] for n =
///   out.rows(): the selected basis vectors as columns, each entry computed in
///   double (s_k times cos of the exactly reduced angle) and rounded once.
/// - `gather_columns(ctx, x, idx, scale, out)`: Out(:, i) = s_i X(:, idx_i),
///   s_i = scale_i, or 1 when `scale` is empty; repeated indices allowed.
/// - `scatter_add_columns(ctx, alpha, src, idx, scale, y)`: Y(:, idx_i) +=
///   alpha s_i Src(:, i) for i = 0, 1, ... in that order (repeated indices add
///   up; the order of the additions is fixed, so the bits do not depend on
///   the threads); s_i as in gather_columns.
/// - `sampled_dots(ctx, a, b, ia, ib, out)`: out_i = sum_n A(n, ia_i)
///   B(n, ib_i) in double (A, B with the same rows): the entries at (ia_i,
///   ib_i) of A^T B without forming it (an SDDMM).
/// - `abs_sums(ctx, x, per_row, out)`: out_j = sum_i |X(i, j)| per column (or
///   per row), in double.
template <class Backend, class T>
concept basis_backend_for = backend_for<Backend, T> &&
    requires(context<Backend>& ctx, matrix_view<T, Backend> x, matrix_view<const T, Backend> cx,
             vector_view<const T, Backend> cv, vector_view<const index_t, Backend> idx,
             vector_view<double, Backend> dv, T alpha) {
  ops<Backend>::dct_fft(ctx, cx, x, true, false);
  ops<Backend>::dct_basis_fill(ctx, idx, x);
  ops<Backend>::gather_columns(ctx, cx, idx, cv, x);
  ops<Backend>::scatter_add_columns(ctx, alpha, cx, idx, cv, x);
  ops<Backend>::sampled_dots(ctx, cx, cx, idx, idx, dv);
  ops<Backend>::abs_sums(ctx, cx, true, dv);
};

}  // namespace lowrank
