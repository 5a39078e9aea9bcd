#pragma once
/// @file
/// The core part of the CUDA operation table (internal; assembled into
/// `lowrank::ops<lowrank::cuda>` by backend/cuda/ops.hpp): the operations of
/// `backend_for` (core/concepts.hpp) through cuBLAS (products), cuSOLVER
/// (Householder QR, the larger Cholesky factors, the SVD's fallbacks) and
/// lowrank's kernels (backend/cuda/kernels/: the one-block Cholesky and
/// Jacobi kernels, the Philox fills, element-wise maps, deterministic
/// reductions). Every operation is queued on the context's stream; those that
/// return host values (squared_norm, find_non_finite, download, and the
/// cuSOLVER calls, whose devInfo is read) or read host memory (upload,
/// upload_indices) synchronise it. Element-wise results carry the CPU
/// backend's bits (kernels/elementwise.cuh). Every status is checked
/// (backend/cuda/error.hpp). Scratch memory comes from the context's
/// workspace frames (core/workspace.hpp).

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "lowrank/backend/cuda/blas.hpp"
#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/device.hpp"
#include "lowrank/backend/cuda/error.hpp"
#include "lowrank/backend/cuda/kernels/cholesky.cuh"
#include "lowrank/backend/cuda/kernels/elementwise.cuh"
#include "lowrank/backend/cuda/kernels/jacobi.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/backend/cuda/kernels/random.cuh"
#include "lowrank/backend/cuda/kernels/reduce.cuh"
#include "lowrank/backend/cuda/matrix.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank::detail {

/// The core operations of the CUDA backend (see the file comment).
struct cuda_core_ops {
  /// A read-only operand whose element type is deduced from the other arguments.
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cuda>;
  template <class T>
  using vector_input = vector_view<const std::type_identity_t<T>, cuda>;

  /// C = alpha op(A) op(B) + beta C (cuBLAS gemm; beta = 0 ignores C).
  template <scalar T>
  static void gemm(context<cuda>& ctx, transpose ta, transpose tb, T alpha, input<T> a, input<T> b,
                   T beta, matrix_view<T, cuda> c) {
    if (c.empty()) return;
    const index_t k = ta == transpose::no ? a.cols() : a.rows();
    check(cuda_blas::gemm(ctx.blas(), cuda_blas::op(ta), cuda_blas::op(tb), c.rows(), c.cols(), k,
                          &alpha, a.data(), a.ld(), b.data(), b.ld(), &beta, c.data(), c.ld()),
          "lowrank::ops<cuda>::gemm: cublas<t>gemm_64");
  }

  /// C = A^T A (a cuBLAS gemm, both triangles: cuBLAS's float syrk is
  /// several times slower than gemm for the algorithms' tall, thin A;
  /// bench/README.md).
  template <scalar T>
  static void gram(context<cuda>& ctx, input<T> a, matrix_view<T, cuda> c) {
    gemm<T>(ctx, transpose::yes, transpose::no, T(1), a, a, T(0), c);
  }

  /// Y = Y R in place (a product into the context's workspace, copied back).
  template <scalar T>
  static void multiply_right(context<cuda>& ctx, input<T> r, matrix_view<T, cuda> y) {
    if (y.empty()) return;
    auto ws = ctx.workspace();
    T* product = ws.take<T>(std::size_t(y.size()));
    gemm<T>(ctx, transpose::no, transpose::no, T(1), y, r, T(0), {product, y.rows(), y.cols()});
    copy_2d(product, y.rows(), y.data(), y.ld(), y.rows(), y.cols(), cudaMemcpyDeviceToDevice,
            ctx.stream(), "lowrank::ops<cuda>::multiply_right: cudaMemcpy2DAsync");
  }

  /// Householder QR Y = Q R (cuSOLVER geqrf, then orgqr): Y becomes the thin
  /// Q, r receives R.
  template <scalar T>
  static void householder_orthonormalize(context<cuda>& ctx, matrix_view<T, cuda> y,
                                         matrix_view<T, cuda> r) {
    namespace cb = cuda_blas;
    const char* fn = "lowrank::ops<cuda>::householder_orthonormalize";
    const int m = cb::to_int(y.rows(), fn, "y.rows()");
    const int n = cb::to_int(y.cols(), fn, "y.cols()");
    const int ld = cb::to_int(y.ld(), fn, "y.ld()");
    LOWRANK_ASSERT(m >= n && r.rows() == n && r.cols() == n);
    if (n == 0) return;
    int lwork_qr = 0;
    int lwork_q = 0;
    check(cb::geqrf_buffer(ctx.solver(), m, n, y.data(), ld, &lwork_qr),
          "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>geqrf_bufferSize");
    auto ws = ctx.workspace();
    T* tau = ws.take<T>(std::size_t(n));
    // orgqr's size query reads tau's address only.
    check(cb::orgqr_buffer(ctx.solver(), m, n, y.data(), ld, tau, &lwork_q),
          "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>orgqr_bufferSize");
    const int lwork = std::max({lwork_qr, lwork_q, 1});
    T* work = ws.take<T>(std::size_t(lwork));
    check(cb::geqrf(ctx.solver(), m, n, y.data(), ld, tau, work, lwork, ctx.info()),
          "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>geqrf");
    check_info(ctx, "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>geqrf");
    kernels::upper_triangle<<<kernels::grid_for(index_t(n) * n), kernels::block_threads, 0,
                              ctx.stream()>>>(y.data(), y.ld(), r.data(), r.ld(), index_t(n));
    check(cudaGetLastError(), "lowrank::ops<cuda>::householder_orthonormalize: upper_triangle");
    check(cb::orgqr(ctx.solver(), m, n, y.data(), ld, tau, work, lwork, ctx.info()),
          "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>orgqr");
    check_info(ctx, "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>orgqr");
  }

  /// The factor of one Cholesky QR pass (backend_for), on the device, in
  /// double (kernels/cholesky.cuh), then one download of the status (the only
  /// synchronisation):
  /// - n <= 128 (when the device has the shared memory: 133 KB at n = 128):
  ///   one kernel, `cholesky_fused`, does it all in shared memory;
  /// - otherwise G's lower triangle is symmetrised by a kernel, then cuSOLVER
  ///   potrf (upper: R itself) and trtri give R and R^{-1}.
  template <scalar T>
  static cholesky_status cholesky_factor(context<cuda>& ctx, matrix_view<const T, cuda> g,
                                         double shift, matrix_view<double, cuda> r,
                                         matrix_view<double, cuda> r_inv,
                                         bool /*estimate_condition*/ = false) {
    namespace k = kernels;
    const char* fn = "lowrank::ops<cuda>::cholesky_factor";
    const index_t n = g.rows();
    LOWRANK_ASSERT(g.cols() == n && r.rows() == n && r.cols() == n && r_inv.rows() == n &&
                   r_inv.cols() == n);
    cholesky_status result;
    if (n == 0) {
      result.ok = true;
      return result;
    }
    // Y R^{-1} is formed in precision T: an entry of R^{-1} that overflows
    // there would turn Y into Inf.
    const double limit = double(std::numeric_limits<T>::max());
    const auto finish = [&](const k::cholesky_device_status* status) {
      const auto host =
          download_value(ctx, status, "lowrank::ops<cuda>::cholesky_factor: cudaMemcpyAsync");
      result.deviation = host.deviation;
      result.ok = host.input_finite != 0 && host.potrf_info == 0 && host.diagonal_ok != 0 &&
                  host.trtri_info == 0 && host.inverse_ok != 0;
      return result;
    };
    auto ws = ctx.workspace();
    auto* status = ws.take<k::cholesky_device_status>(1);
    if (n <= k::fused_cholesky_max) {
      const std::size_t bytes = k::fused_cholesky_shared_bytes(n);
      if (fits_in_shared_memory(ctx, bytes)) {
        allow_shared_memory(ctx, k::cholesky_fused<T>,
                            "lowrank::ops<cuda>::cholesky_factor: cudaFuncSetAttribute");
        k::cholesky_fused<T><<<1, k::cholesky_threads, bytes, ctx.stream()>>>(
            g.data(), g.ld(), n, shift, limit, r.data(), r.ld(), r_inv.data(), r_inv.ld(), status);
        check(cudaGetLastError(), "lowrank::ops<cuda>::cholesky_factor: cholesky_fused");
        return finish(status);
      }
    }
    const int ni = cuda_blas::to_int(n, fn, "g.rows()");
    const int ldr = cuda_blas::to_int(r.ld(), fn, "r.ld()");
    int potrf_work = 0;
    check(cusolverDnDpotrf_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_UPPER, ni, r.data(), ldr,
                                      &potrf_work),
          "lowrank::ops<cuda>::cholesky_factor: cusolverDnDpotrf_bufferSize");
    std::size_t trtri_device = 0;
    std::size_t trtri_host = 0;
    check(cusolverDnXtrtri_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, n,
                                      CUDA_R_64F, r_inv.data(), r_inv.ld(), &trtri_device,
                                      &trtri_host),
          "lowrank::ops<cuda>::cholesky_factor: cusolverDnXtrtri_bufferSize");
    // potrf's and trtri's work, one after the other in one piece.
    const std::size_t work_bytes =
        std::max(sizeof(double) * std::size_t(std::max(potrf_work, 1)), trtri_device);
    void* work = ws.take<std::byte>(work_bytes);
    std::vector<char> host_work(std::max<std::size_t>(trtri_host, 1));

    k::cholesky_prepare<T><<<1, k::block_threads, 0, ctx.stream()>>>(g.data(), g.ld(), n, shift,
                                                                     r.data(), r.ld(), status);
    check(cudaGetLastError(), "lowrank::ops<cuda>::cholesky_factor: cholesky_prepare");
    check(
        cusolverDnDpotrf(ctx.solver(), CUBLAS_FILL_MODE_UPPER, ni, r.data(), ldr,
                         static_cast<double*>(work), std::max(potrf_work, 1), &status->potrf_info),
        "lowrank::ops<cuda>::cholesky_factor: cusolverDnDpotrf");
    k::cholesky_split<<<1, k::block_threads, 0, ctx.stream()>>>(r.data(), r.ld(), n, r_inv.data(),
                                                                r_inv.ld(), status);
    check(cudaGetLastError(), "lowrank::ops<cuda>::cholesky_factor: cholesky_split");
    check(cusolverDnXtrtri(ctx.solver(), CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, n,
                           CUDA_R_64F, r_inv.data(), r_inv.ld(), work, trtri_device,
                           host_work.data(), trtri_host, &status->trtri_info),
          "lowrank::ops<cuda>::cholesky_factor: cusolverDnXtrtri");
    k::cholesky_check_inverse<<<1, k::block_threads, 0, ctx.stream()>>>(r_inv.data(), r_inv.ld(), n,
                                                                        limit, status);
    check(cudaGetLastError(), "lowrank::ops<cuda>::cholesky_factor: cholesky_check_inverse");
    return finish(status);
  }

  /// dst = src rounded to dst's element type.
  template <class S, scalar D>
  requires scalar<std::remove_const_t<S>>
  static void convert(context<cuda>& ctx, matrix_view<S, cuda> src, matrix_view<D, cuda> dst) {
    LOWRANK_ASSERT(src.rows() == dst.rows() && src.cols() == dst.cols());
    if (dst.empty()) return;
    kernels::convert<<<kernels::grid_for(dst.size()), kernels::block_threads, 0, ctx.stream()>>>(
        src.data(), src.ld(), dst.data(), dst.ld(), dst.rows(), dst.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::convert");
  }

  /// The sweeps `svd`'s Jacobi method makes before giving up (it converges
  /// in 6 to 10 on the matrices of the randomized SVDs).
  static constexpr int jacobi_max_sweeps = 30;

  /// Whether `svd` of an m x n matrix tries its Jacobi kernel first: the tall
  /// one of A and A^T has at most `jacobi_svd_max` rows and fits in the
  /// shared memory of ctx's device.
  [[nodiscard]] static bool svd_by_jacobi(const context<cuda>& ctx, index_t m, index_t n) {
    const index_t mt = std::max(m, n);
    const index_t nt = std::min(m, n);
    return mt <= kernels::jacobi_svd_max &&
           fits_in_shared_memory(ctx, kernels::jacobi_svd_shared_bytes(mt, nt));
  }

  /// Whether `svd` of an m x n matrix of T takes its small-float path
  /// (syevd + QR in double, below) rather than gesvd, after the Jacobi kernel
  /// when it does not apply or hands X on.
  template <scalar T>
  [[nodiscard]] static constexpr bool svd_by_eigen(index_t m, index_t n) noexcept {
    return std::is_same_v<T, float> && m * n <= 512 * 512;
  }

  /// Thin SVD A = U diag(s) V^T (A m x n, r = min(m, n) columns): the
  /// Jacobi kernel, syevd + QR in double (small float) or gesvd, as
  /// backend/cuda/svd.hpp describes; `ctx.svd_report()` tells afterwards
  /// which route ran. Defined in backend/cuda/svd.hpp.
  /// @throws lowrank::numerical_error if the method does not converge.
  template <scalar T>
  static void svd(context<cuda>& ctx, input<T> a, matrix_view<T, cuda> u, vector_view<T, cuda> s,
                  matrix_view<T, cuda> v);

  /// X = the block at (row0, col0) of the random matrix of `stream`.
  /// @throws lowrank::invalid_argument if the block is outside the generator's range.
  template <scalar T>
  static void fill_random(context<cuda>& ctx, distribution d, random_stream stream,
                          matrix_view<T, cuda> x, index_t row0 = 0, index_t col0 = 0) {
    require_random_range<T>("lowrank::ops<cuda>::fill_random", d, x.rows(), x.cols(), row0, col0);
    const index_t r = (d == distribution::rademacher || sizeof(T) == 4) ? 4 : 2;
    if (x.empty()) return;
    const index_t first = row0 / r;
    const index_t blocks = (row0 + x.rows() + r - 1) / r - first;
    const unsigned grid = kernels::grid_for(blocks * x.cols());
    constexpr int threads = kernels::block_threads;
    switch (d) {
      case distribution::gaussian:
        kernels::fill_random<T, distribution::gaussian><<<grid, threads, 0, ctx.stream()>>>(
            stream, x.data(), x.rows(), x.cols(), x.ld(), row0, col0, first, blocks);
        break;
      case distribution::uniform:
        kernels::fill_random<T, distribution::uniform><<<grid, threads, 0, ctx.stream()>>>(
            stream, x.data(), x.rows(), x.cols(), x.ld(), row0, col0, first, blocks);
        break;
      case distribution::rademacher:
        kernels::fill_random<T, distribution::rademacher><<<grid, threads, 0, ctx.stream()>>>(
            stream, x.data(), x.rows(), x.cols(), x.ld(), row0, col0, first, blocks);
        break;
    }
    check(cudaGetLastError(), "lowrank::ops<cuda>::fill_random: kernel launch");
  }

  /// X = value everywhere.
  template <scalar T>
  static void fill(context<cuda>& ctx, matrix_view<T, cuda> x, T value) {
    if (x.empty()) return;
    kernels::fill<<<kernels::grid_for(x.size()), kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.rows(), x.cols(), x.ld(), value);
    check(cudaGetLastError(), "lowrank::ops<cuda>::fill: kernel launch");
  }

  /// dst = src (same shape).
  template <scalar T>
  static void copy(context<cuda>& ctx, input<T> src, matrix_view<T, cuda> dst) {
    LOWRANK_ASSERT(src.rows() == dst.rows() && src.cols() == dst.cols());
    copy_2d(src.data(), src.ld(), dst.data(), dst.ld(), src.rows(), src.cols(),
            cudaMemcpyDeviceToDevice, ctx.stream(), "lowrank::ops<cuda>::copy: cudaMemcpy2DAsync");
  }

  /// X = X diag(d).
  template <scalar T>
  static void scale_columns(context<cuda>& ctx, vector_input<T> d, matrix_view<T, cuda> x) {
    LOWRANK_ASSERT(d.size() == x.cols());
    if (x.empty()) return;
    kernels::
        scale_columns<<<kernels::grid_for(x.size()), kernels::block_threads, 0, ctx.stream()>>>(
            d.data(), x.data(), x.rows(), x.cols(), x.ld());
    check(cudaGetLastError(), "lowrank::ops<cuda>::scale_columns: kernel launch");
  }

  /// ||scale X||_F^2 in double (scale a power of two, 1 by default): a
  /// fixed-grid two-pass reduction (deterministic). Synchronises the stream.
  template <scalar T>
  static double squared_norm(context<cuda>& ctx, matrix_view<const T, cuda> x, double scale = 1) {
    if (x.empty()) return 0;
    auto ws = ctx.workspace();
    auto* partial = ws.take<double>(kernels::reduce_blocks + 1);
    kernels::
        squared_norm_partials<<<kernels::reduce_blocks, kernels::block_threads, 0, ctx.stream()>>>(
            x.data(), x.rows(), x.cols(), x.ld(), scale, partial);
    check(cudaGetLastError(), "lowrank::ops<cuda>::squared_norm: kernel launch");
    kernels::sum_partials<><<<1, kernels::block_threads, 0, ctx.stream()>>>(
        partial, kernels::reduce_blocks, partial + kernels::reduce_blocks);
    check(cudaGetLastError(), "lowrank::ops<cuda>::squared_norm: kernel launch");
    return download_value(ctx, partial + kernels::reduce_blocks,
                          "lowrank::ops<cuda>::squared_norm: cudaMemcpyAsync");
  }
  template <scalar T>
  static double squared_norm(context<cuda>& ctx, matrix_view<T, cuda> x, double scale = 1) {
    return squared_norm(ctx, as_const(x), scale);
  }

  /// out_j = ||X(:, j)||^2, accumulated in double.
  template <scalar T>
  static void column_squared_norms(context<cuda>& ctx, matrix_view<const T, cuda> x,
                                   vector_view<double, cuda> out) {
    LOWRANK_ASSERT(out.size() == x.cols());
    if (x.cols() == 0) return;
    const auto grid = static_cast<unsigned>(std::min<index_t>(x.cols(), 65535));
    kernels::column_squared_norms<<<grid, kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.rows(), x.cols(), x.ld(), out.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::column_squared_norms: kernel launch");
  }

  /// The largest |X(i, j)| in double, NaN when X holds a non-finite entry, 0
  /// when empty: a fixed-grid two-pass reduction. Synchronises the stream.
  template <scalar T>
  static double max_abs(context<cuda>& ctx, matrix_view<const T, cuda> x) {
    if (x.empty()) return 0;
    auto ws = ctx.workspace();
    auto* partial = ws.take<double>(kernels::reduce_blocks + 1);
    kernels::max_abs_partials<<<kernels::reduce_blocks, kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.rows(), x.cols(), x.ld(), partial);
    check(cudaGetLastError(), "lowrank::ops<cuda>::max_abs: kernel launch");
    kernels::max_partials<><<<1, kernels::block_threads, 0, ctx.stream()>>>(
        partial, kernels::reduce_blocks, partial + kernels::reduce_blocks);
    check(cudaGetLastError(), "lowrank::ops<cuda>::max_abs: kernel launch");
    return download_value(ctx, partial + kernels::reduce_blocks,
                          "lowrank::ops<cuda>::max_abs: cudaMemcpyAsync");
  }
  template <scalar T>
  static double max_abs(context<cuda>& ctx, matrix_view<T, cuda> x) {
    return max_abs(ctx, as_const(x));
  }

  /// The column-major linear index of the first non-finite entry, or -1.
  /// Synchronises the stream.
  template <scalar T>
  static index_t find_non_finite(context<cuda>& ctx, matrix_view<const T, cuda> x) {
    if (x.empty()) return -1;
    auto ws = ctx.workspace();
    auto* first = ws.take<unsigned long long>(1);
    check(cudaMemsetAsync(first, 0xFF, sizeof(unsigned long long), ctx.stream()),
          "lowrank::ops<cuda>::find_non_finite: cudaMemsetAsync");
    kernels::
        find_non_finite<<<kernels::grid_for(x.size()), kernels::block_threads, 0, ctx.stream()>>>(
            x.data(), x.rows(), x.cols(), x.ld(), first);
    check(cudaGetLastError(), "lowrank::ops<cuda>::find_non_finite: kernel launch");
    const unsigned long long host =
        download_value(ctx, first, "lowrank::ops<cuda>::find_non_finite: cudaMemcpyAsync");
    return host == ~0ull ? -1 : static_cast<index_t>(host);
  }
  template <scalar T>
  static index_t find_non_finite(context<cuda>& ctx, matrix_view<T, cuda> x) {
    return find_non_finite(ctx, as_const(x));
  }

  /// out_j = the sign of the largest-magnitude entry of column j (the first
  /// on ties; +1 for a zero column).
  template <scalar T>
  static void signs_of_largest(context<cuda>& ctx, input<T> x, vector_view<T, cuda> out) {
    LOWRANK_ASSERT(out.size() == x.cols());
    if (x.cols() == 0) return;
    const auto grid = static_cast<unsigned>(std::min<index_t>(x.cols(), 65535));
    kernels::signs_of_largest<<<grid, kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.rows(), x.cols(), x.ld(), out.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::signs_of_largest: kernel launch");
  }

  /// Host view dst = device view src (synchronises the stream).
  template <scalar T>
  static void download(context<cuda>& ctx, input<T> src, matrix_view<T, cpu> dst) {
    LOWRANK_ASSERT(src.rows() == dst.rows() && src.cols() == dst.cols());
    copy_2d(src.data(), src.ld(), dst.data(), dst.ld(), src.rows(), src.cols(),
            cudaMemcpyDeviceToHost, ctx.stream(),
            "lowrank::ops<cuda>::download: cudaMemcpy2DAsync");
    ctx.synchronize();
  }

  /// Device view dst = host view src (synchronises the stream, so that the
  /// host memory may be reused at once).
  template <scalar T>
  static void upload(context<cuda>& ctx, matrix_view<const std::type_identity_t<T>, cpu> src,
                     matrix_view<T, cuda> dst) {
    LOWRANK_ASSERT(src.rows() == dst.rows() && src.cols() == dst.cols());
    copy_2d(src.data(), src.ld(), dst.data(), dst.ld(), src.rows(), src.cols(),
            cudaMemcpyHostToDevice, ctx.stream(), "lowrank::ops<cuda>::upload: cudaMemcpy2DAsync");
    ctx.synchronize();
  }

  /// X = alpha X + beta.
  template <scalar T>
  static void affine(context<cuda>& ctx, T alpha, T beta, matrix_view<T, cuda> x) {
    if (x.empty()) return;
    kernels::affine<<<kernels::grid_for(x.size()), kernels::block_threads, 0, ctx.stream()>>>(
        alpha, beta, x.data(), x.rows(), x.cols(), x.ld());
    check(cudaGetLastError(), "lowrank::ops<cuda>::affine: kernel launch");
  }

  /// Y = alpha X + beta Y (beta = 0 ignores Y's previous content).
  template <scalar T>
  static void axpby(context<cuda>& ctx, T alpha, input<T> x, T beta, matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols());
    if (y.empty()) return;
    kernels::axpby<<<kernels::grid_for(y.size()), kernels::block_threads, 0, ctx.stream()>>>(
        alpha, x.data(), x.ld(), beta, y.data(), y.ld(), y.rows(), y.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::axpby: kernel launch");
  }

  /// Y(i, :) += alpha v^T for every row i (a bias added to a batch).
  template <scalar T>
  static void add_row_vector(context<cuda>& ctx, T alpha, vector_input<T> v,
                             matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(v.size() == y.cols());
    if (y.empty()) return;
    kernels::
        add_row_vector<<<kernels::grid_for(y.size()), kernels::block_threads, 0, ctx.stream()>>>(
            alpha, v.data(), y.data(), y.rows(), y.cols(), y.ld());
    check(cudaGetLastError(), "lowrank::ops<cuda>::add_row_vector: kernel launch");
  }

  /// y_j += alpha sum_i X(i, j), each sum accumulated in double (a fixed
  /// tree per column: deterministic).
  template <scalar T>
  static void add_column_sums(context<cuda>& ctx, T alpha, input<T> x, vector_view<T, cuda> y) {
    LOWRANK_ASSERT(y.size() == x.cols());
    if (x.cols() == 0) return;
    const auto grid = static_cast<unsigned>(std::min<index_t>(x.cols(), 65535));
    kernels::add_column_sums<<<grid, kernels::block_threads, 0, ctx.stream()>>>(
        alpha, x.data(), x.rows(), x.cols(), x.ld(), y.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::add_column_sums: kernel launch");
  }

  /// out_i = sum_j X(i, j) Y(i, j), accumulated in double (X, Y of one
  /// shape): one thread per row, the columns in order (the CPU's sum).
  template <scalar T>
  static void row_dots(context<cuda>& ctx, matrix_view<const T, cuda> x, input<T> y,
                       vector_view<double, cuda> out) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && out.size() == x.rows());
    if (x.rows() == 0) return;
    kernels::row_dots<<<kernels::grid_for(x.rows()), kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.ld(), y.data(), y.ld(), x.rows(), x.cols(), out.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::row_dots: kernel launch");
  }

  /// out_j = sum_i X(i, j) Y(i, j), accumulated in double (X, Y of one
  /// shape): a fixed tree per column (deterministic).
  template <scalar T>
  static void column_dots(context<cuda>& ctx, matrix_view<const T, cuda> x, input<T> y,
                          vector_view<double, cuda> out) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && out.size() == x.cols());
    if (x.cols() == 0) return;
    const auto grid = static_cast<unsigned>(std::min<index_t>(x.cols(), 65535));
    kernels::column_dots<<<grid, kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.ld(), y.data(), y.ld(), x.rows(), x.cols(), out.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::column_dots: kernel launch");
  }

  /// y_i = x_i / d_i + beta y_i in double, rounded once to y's type (beta = 0
  /// ignores y): the CPU's bits.
  template <scalar U, scalar V>
  static void divide(context<cuda>& ctx, vector_view<const U, cuda> x,
                     vector_view<const double, cuda> d, double beta, vector_view<V, cuda> y) {
    LOWRANK_ASSERT(x.size() == y.size() && d.size() == y.size());
    if (y.empty()) return;
    kernels::divide<<<kernels::grid_for(y.size()), kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), d.data(), beta, y.data(), y.size());
    check(cudaGetLastError(), "lowrank::ops<cuda>::divide: kernel launch");
  }

  /// Out(k, :) = X(rows[k], :) for k < rows.size() (rows in device memory;
  /// out is rows.size() x x.cols(); every rows[k] in [0, x.rows())).
  template <scalar T>
  static void gather_rows(context<cuda>& ctx, input<T> x, vector_view<const index_t, cuda> rows,
                          matrix_view<T, cuda> out) {
    LOWRANK_ASSERT(out.rows() == rows.size() && out.cols() == x.cols());
    if (out.empty()) return;
    kernels::
        gather_rows<<<kernels::grid_for(out.size()), kernels::block_threads, 0, ctx.stream()>>>(
            x.data(), x.ld(), rows.data(), out.data(), out.ld(), out.rows(), out.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::gather_rows: kernel launch");
  }

  /// Y(rows[k], :) += alpha Src(k, :) for k < rows.size() (rows in device
  /// memory, distinct and in [0, y.rows()); src is rows.size() x y.cols()).
  template <scalar T>
  static void scatter_add_rows(context<cuda>& ctx, T alpha, input<T> src,
                               vector_view<const index_t, cuda> rows, matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(src.rows() == rows.size() && src.cols() == y.cols());
    if (src.empty()) return;
    kernels::scatter_add_rows<<<kernels::grid_for(src.size()), kernels::block_threads, 0,
                                ctx.stream()>>>(alpha, src.data(), src.ld(), rows.data(), y.data(),
                                                y.ld(), src.rows(), src.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::scatter_add_rows: kernel launch");
  }

  /// Device index vector dst = host index vector src (same size). An upload
  /// that is complete when the call returns (it synchronises the stream), so
  /// that the caller may reuse src at once.
  static void upload_indices(context<cuda>& ctx, vector_view<const index_t, cpu> src,
                             vector_view<index_t, cuda> dst) {
    LOWRANK_ASSERT(src.size() == dst.size());
    if (src.empty()) return;
    copy_2d(src.data(), src.size(), dst.data(), dst.size(), src.size(), index_t{1},
            cudaMemcpyHostToDevice, ctx.stream(),
            "lowrank::ops<cuda>::upload_indices: cudaMemcpy2DAsync");
    ctx.synchronize();
  }
};

}  // namespace lowrank::detail

// The SVD's routes, which call the operations above.
#include "lowrank/backend/cuda/svd.hpp"
