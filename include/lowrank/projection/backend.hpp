#pragma once
/// @file
/// The projection family's contract with the backends: the element-wise
/// operations of the projected optimizers (projection/projected_adam.hpp)
/// beyond the core ones of `backend_for` (core/concepts.hpp). Each backend
/// implements them in its own file (backend/cpu/projection.hpp,
/// backend/cuda/projection.hpp) and `static_assert`s
/// `projection_backend_for` where its `ops` are assembled
/// (docs/architecture.md, "Backends").

#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

/// The operations the projected optimizers add to `backend_for`. Each one
/// computes every element in double from its inputs and rounds it once to T,
/// so that its bits depend neither on the threads nor on the split:
/// - `adam_moments(ctx, b1, b2, g, m, v)`: M = b1 M + (1 - b1) G and
///   V = b2 V + (1 - b2) G (.) G (G, M, V of one shape);
/// - `adam_direction(ctx, ms, vs, eps, m, v, alpha, beta, y)`:
///   Y = alpha ms M / (vs sqrt(V) + eps) + beta Y (beta = 0 ignores Y), the
///   Adam direction with the bias corrections folded into ms and vs;
/// - `norm_ratio(ctx, num, den, eps, out)`: out_i = sqrt(num_i) /
///   (sqrt(den_i) + eps) from squared norms in double (Fira's scaling);
/// - `scale_rows(ctx, d, x)`: X = diag(d) X;
/// - `abs_values(ctx, x)`: X = |X| element-wise.
template <class Backend, class T>
concept projection_backend_for = backend_for<Backend, T> &&
    requires(context<Backend>& ctx, matrix_view<T, Backend> x, matrix_view<const T, Backend> cx,
             vector_view<T, Backend> v, vector_view<const T, Backend> cv,
             vector_view<const double, Backend> cdv, T alpha) {
  ops<Backend>::adam_moments(ctx, 0.9, 0.999, cx, x, x);
  ops<Backend>::adam_direction(ctx, 1.0, 1.0, 1e-8, cx, cx, alpha, alpha, x);
  ops<Backend>::norm_ratio(ctx, cdv, cdv, 1e-8, v);
  ops<Backend>::scale_rows(ctx, cv, x);
  ops<Backend>::abs_values(ctx, x);
};

}  // namespace lowrank
