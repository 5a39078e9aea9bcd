#pragma once
/// @file
/// The adapters' contract with the backends: the operations the adapters
/// (adapters/) need beyond the core ones of `backend_for` (core/concepts.hpp),
/// and the types those operations exchange. Each backend implements them in
/// its own file (backend/cpu/adapters.hpp, backend/cuda/adapters.hpp) and
/// `static_assert`s `adapter_backend_for` where its `ops` are assembled
/// (docs/architecture.md, "Backends").

#include <concepts>
#include <vector>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// One element of a weight that an unmerge cannot recompute exactly: its
/// column-major index and its value before the merge (ops::merge_low_rank).
template <class T>
struct merge_exception {
  index_t index;
  T value;
};

/// The operations the adapters add to `backend_for`:
/// - `dropout(ctx, stream, p, alpha, x, beta, y)`: Y = alpha (X (.) M) / (1 - p)
///   + beta Y with the keep mask M(i, j) = [u(i, j) >= p], u the float uniform
///   matrix of `stream` (the same mask for float and double, CPU and GPU);
/// - `factored_row_norms(ctx, s, floor, w, b, c, n)`: n_i = max(sqrt(max(w_i +
///   2 s b_i + s^2 c_i, 0)), floor), in double (DoRA's row norms);
/// - `merge_low_rank(ctx, s, b, a, c, w, check_only, record)` /
///   `unmerge_low_rank(ctx, s, b, a, c, w, record)`: W' = fl(c_i (W + s B A))
///   in extended precision and its exact inverse (backend/cpu/merge.hpp).
template <class Backend, class T>
concept adapter_backend_for = backend_for<Backend, T> &&
    requires(context<Backend>& ctx, matrix_view<T, Backend> x, matrix_view<const T, Backend> cx,
             vector_view<double, Backend> dv, vector_view<const double, Backend> cdv, T alpha,
             random_stream s, std::vector<merge_exception<T>>* record) {
  ops<Backend>::dropout(ctx, s, 0.5, alpha, cx, alpha, x);
  ops<Backend>::factored_row_norms(ctx, 1.0, 1.0, cdv, cdv, cdv, dv);
  { ops<Backend>::merge_low_rank(ctx, 1.0, cx, cx, cdv, x, true, record) } -> std::same_as<index_t>;
  ops<Backend>::unmerge_low_rank(ctx, 1.0, cx, cx, cdv, x, *record);
};

}  // namespace lowrank
