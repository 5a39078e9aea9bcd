#pragma once
/// @file
/// The projection family's part of the CUDA operation table (internal; the
/// operations of `projection_backend_for`, projection/backend.hpp),
/// assembled into `lowrank::ops<lowrank::cuda>` by backend/cuda/ops.hpp.
/// Element-wise kernels with the CPU backend's bits
/// (kernels/projection.cuh); none synchronises the stream.

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/error.hpp"
#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/backend/cuda/kernels/projection.cuh"
#include "lowrank/backend/cuda/matrix.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/projection/backend.hpp"

namespace lowrank::detail {

/// The projection family's operations of the CUDA backend.
struct cuda_projection_ops {
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cuda>;

  /// M = b1 M + (1 - b1) G, V = b2 V + (1 - b2) G (.) G, in double.
  template <scalar T>
  static void adam_moments(context<cuda>& ctx, double b1, double b2, input<T> g,
                           matrix_view<T, cuda> m, matrix_view<T, cuda> v) {
    LOWRANK_ASSERT(g.rows() == m.rows() && g.cols() == m.cols() && g.rows() == v.rows() &&
                   g.cols() == v.cols());
    if (g.empty()) return;
    kernels::adam_moments<<<kernels::grid_for(g.size()), kernels::block_threads, 0, ctx.stream()>>>(
        b1, 1 - b1, b2, 1 - b2, g.data(), g.ld(), m.data(), m.ld(), v.data(), v.ld(), g.rows(),
        g.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::adam_moments: kernel launch");
  }

  /// Y = alpha ms M / (vs sqrt(V) + eps) + beta Y (beta = 0 ignores Y), in double.
  template <scalar T>
  static void adam_direction(context<cuda>& ctx, double ms, double vs, double eps, input<T> m,
                             input<T> v, T alpha, T beta, matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(m.rows() == y.rows() && m.cols() == y.cols() && v.rows() == y.rows() &&
                   v.cols() == y.cols());
    if (y.empty()) return;
    kernels::
        adam_direction<<<kernels::grid_for(y.size()), kernels::block_threads, 0, ctx.stream()>>>(
            double(alpha) * ms, vs, eps, m.data(), m.ld(), v.data(), v.ld(), beta, y.data(), y.ld(),
            y.rows(), y.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::adam_direction: kernel launch");
  }

  /// out_i = sqrt(num_i) / (sqrt(den_i) + eps), in double.
  template <scalar T>
  static void norm_ratio(context<cuda>& ctx, vector_view<const double, cuda> num,
                         vector_view<const double, cuda> den, double eps,
                         vector_view<T, cuda> out) {
    LOWRANK_ASSERT(num.size() == out.size() && den.size() == out.size());
    if (out.empty()) return;
    kernels::norm_ratio<<<kernels::grid_for(out.size()), kernels::block_threads, 0, ctx.stream()>>>(
        num.data(), den.data(), eps, out.size(), out.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::norm_ratio: kernel launch");
  }

  /// X = diag(d) X.
  template <scalar T>
  static void scale_rows(context<cuda>& ctx, vector_view<const std::type_identity_t<T>, cuda> d,
                         matrix_view<T, cuda> x) {
    LOWRANK_ASSERT(d.size() == x.rows());
    if (x.empty()) return;
    kernels::scale_rows<<<kernels::grid_for(x.size()), kernels::block_threads, 0, ctx.stream()>>>(
        d.data(), x.data(), x.ld(), x.rows(), x.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::scale_rows: kernel launch");
  }

  /// X = |X|.
  template <scalar T>
  static void abs_values(context<cuda>& ctx, matrix_view<T, cuda> x) {
    if (x.empty()) return;
    kernels::abs_values<<<kernels::grid_for(x.size()), kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.ld(), x.rows(), x.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::abs_values: kernel launch");
  }

  /// Q-GaLore's group quantisation of X (projection/backend.hpp), in T: the
  /// CPU's bits, one thread per group.
  template <scalar T>
  static void quantize_groups(context<cuda>& ctx, input<T> x, bool row_major, index_t group,
                              int bits, vector_view<std::uint8_t, cuda> codes,
                              vector_view<T, cuda> scales, vector_view<T, cuda> zeros) {
    const index_t groups = (x.size() + group - 1) / group;
    LOWRANK_ASSERT((bits == 4 || bits == 8) && (bits == 8 || group % 2 == 0) &&
                   scales.size() == groups && zeros.size() == groups);
    if (x.empty()) return;
    kernels::
        quantize_groups<<<kernels::grid_for(groups), kernels::block_threads, 0, ctx.stream()>>>(
            x.data(), x.ld(), x.rows(), x.cols(), row_major, group, bits, codes.data(),
            scales.data(), zeros.data(), groups);
    check(cudaGetLastError(), "lowrank::ops<cuda>::quantize_groups: kernel launch");
  }

  /// X = s (q - z): the inverse of quantize_groups' layout, in T.
  template <scalar T>
  static void dequantize_groups(context<cuda>& ctx, vector_view<const std::uint8_t, cuda> codes,
                                vector_view<const std::type_identity_t<T>, cuda> scales,
                                vector_view<const std::type_identity_t<T>, cuda> zeros,
                                index_t group, int bits, bool row_major, matrix_view<T, cuda> x) {
    if (x.empty()) return;
    kernels::
        dequantize_groups<<<kernels::grid_for(x.size()), kernels::block_threads, 0, ctx.stream()>>>(
            codes.data(), scales.data(), zeros.data(), group, bits, row_major, x.data(), x.ld(),
            x.rows(), x.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::dequantize_groups: kernel launch");
  }
};

}  // namespace lowrank::detail
