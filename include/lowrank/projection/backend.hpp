#pragma once
/// @file
/// The projection family's contract with the backends: the element-wise
/// operations of the projected optimizers (projection/projected_adam.hpp)
/// beyond the core ones of `backend_for` (core/concepts.hpp). Each backend
/// implements them in its own file (backend/cpu/projection.hpp,
/// backend/cuda/projection.hpp) and `static_assert`s
/// `projection_backend_for` where its `ops` are assembled
/// (docs/architecture.md, "Backends").

#include <cstdint>

#include "lowrank/basis/backend.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

/// The operations the projected optimizers add to `backend_for`. The first
/// five compute every element in double from their inputs and round it once
/// to T; all of them give bits that depend neither on the threads nor on the
/// split:
/// - `adam_moments(ctx, b1, b2, g, m, v)`: M = b1 M + (1 - b1) G and
///   V = b2 V + (1 - b2) G (.) G (G, M, V of one shape);
/// - `adam_direction(ctx, ms, vs, eps, m, v, alpha, beta, y)`:
///   Y = alpha ms M / (vs sqrt(V) + eps) + beta Y (beta = 0 ignores Y), the
///   Adam direction with the bias corrections folded into ms and vs;
/// - `norm_ratio(ctx, num, den, eps, out)`: out_i = sqrt(num_i) /
///   (sqrt(den_i) + eps) from squared norms in double (Fira's scaling);
/// - `scale_rows(ctx, d, x)`: X = diag(d) X;
/// - `abs_values(ctx, x)`: X = |X| element-wise;
/// - `quantize_groups(ctx, x, row_major, group, bits, codes, scales, zeros)`:
///   Q-GaLore's asymmetric quantisation of X in groups of `group` consecutive
///   elements of its flattening (row-major or column-major), in T: per group
///   s = max(max - min, 1e-5) / (2^bits - 1), z = clamp(-round(min / s), 0,
///   2^bits - 1), q = clamp(round(x / s) + z, 0, 2^bits - 1), rounding half
///   to even; bits 4 packs two codes a byte (element k in byte k / 2, the low
///   nibble for even k), bits 8 one; the last group may be shorter;
/// - `dequantize_groups(ctx, codes, scales, zeros, group, bits, row_major, x)`:
///   X = s (q - z) element-wise, the inverse layout. Both run in T's
///   arithmetic, as the reference's.
/// The DCT projector also needs the basis family's operations
/// (`basis_backend_for`, basis/backend.hpp).
template <class Backend, class T>
concept projection_backend_for = backend_for<Backend, T> && basis_backend_for<Backend, T> &&
    requires(context<Backend>& ctx, matrix_view<T, Backend> x, matrix_view<const T, Backend> cx,
             vector_view<T, Backend> v, vector_view<const T, Backend> cv,
             vector_view<const double, Backend> cdv, T alpha,
             vector_view<std::uint8_t, Backend> codes,
             vector_view<const std::uint8_t, Backend> ccodes) {
  ops<Backend>::adam_moments(ctx, 0.9, 0.999, cx, x, x);
  ops<Backend>::adam_direction(ctx, 1.0, 1.0, 1e-8, cx, cx, alpha, alpha, x);
  ops<Backend>::norm_ratio(ctx, cdv, cdv, 1e-8, v);
  ops<Backend>::scale_rows(ctx, cv, x);
  ops<Backend>::abs_values(ctx, x);
  ops<Backend>::quantize_groups(ctx, cx, true, index_t{256}, 4, codes, v, v);
  ops<Backend>::dequantize_groups(ctx, ccodes, cv, cv, index_t{256}, 4, true, x);
};

}  // namespace lowrank
