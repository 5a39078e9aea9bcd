#pragma once
/// @file
/// The CUDA operation table, `lowrank::ops<lowrank::cuda>`: cuBLAS for the
/// products, cuSOLVER for Householder QR and the SVD, lowrank's kernels
/// (backend/cuda/kernels/) for the random fills, element-wise maps and
/// reductions. The semantics are those of `lowrank::backend_for` and
/// `lowrank::adapter_backend_for` (core/concepts.hpp); every operation is
/// queued on the context's stream, and those that return host values
/// (squared_norm, find_non_finite, download, and the cuSOLVER calls, whose
/// devInfo is read) or read host memory (upload, upload_indices) synchronise
/// it. merge_low_rank / unmerge_low_rank run the CPU backend's merge on host
/// copies (bit-identical merges on both backends; W crosses PCIe twice), so
/// they synchronise too. Every status is checked (backend/cuda/error.hpp).

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/ops.hpp"
#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/error.hpp"
#include "lowrank/backend/cuda/kernels/adapters.cuh"
#include "lowrank/backend/cuda/kernels/cholesky.cuh"
#include "lowrank/backend/cuda/kernels/elementwise.cuh"
#include "lowrank/backend/cuda/kernels/jacobi.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/backend/cuda/kernels/random.cuh"
#include "lowrank/backend/cuda/kernels/reduce.cuh"
#include "lowrank/backend/cuda/matrix.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

namespace detail::cuda_blas {

inline cublasOperation_t op(transpose t) noexcept {
  return t == transpose::no ? CUBLAS_OP_N : CUBLAS_OP_T;
}

inline cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                           int64_t n, int64_t k, const float* alpha, const float* a, int64_t lda,
                           const float* b, int64_t ldb, const float* beta, float* c, int64_t ldc) {
  return cublasSgemm_64(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                           int64_t n, int64_t k, const double* alpha, const double* a, int64_t lda,
                           const double* b, int64_t ldb, const double* beta, double* c,
                           int64_t ldc) {
  return cublasDgemm_64(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
/// C = A^T (A m x n, C n x m).
inline cublasStatus_t transpose_into(cublasHandle_t h, int64_t m, int64_t n, const float* a,
                                     int64_t lda, float* c, int64_t ldc) {
  const float one = 1;
  const float zero = 0;
  return cublasSgeam_64(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, &one, a, lda, &zero, c, ldc, c, ldc);
}
inline cublasStatus_t transpose_into(cublasHandle_t h, int64_t m, int64_t n, const double* a,
                                     int64_t lda, double* c, int64_t ldc) {
  const double one = 1;
  const double zero = 0;
  return cublasDgeam_64(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, &one, a, lda, &zero, c, ldc, c, ldc);
}

inline cusolverStatus_t geqrf_buffer(cusolverDnHandle_t h, int m, int n, float* a, int lda,
                                     int* lwork) {
  return cusolverDnSgeqrf_bufferSize(h, m, n, a, lda, lwork);
}
inline cusolverStatus_t geqrf_buffer(cusolverDnHandle_t h, int m, int n, double* a, int lda,
                                     int* lwork) {
  return cusolverDnDgeqrf_bufferSize(h, m, n, a, lda, lwork);
}
inline cusolverStatus_t geqrf(cusolverDnHandle_t h, int m, int n, float* a, int lda, float* tau,
                              float* work, int lwork, int* info) {
  return cusolverDnSgeqrf(h, m, n, a, lda, tau, work, lwork, info);
}
inline cusolverStatus_t geqrf(cusolverDnHandle_t h, int m, int n, double* a, int lda, double* tau,
                              double* work, int lwork, int* info) {
  return cusolverDnDgeqrf(h, m, n, a, lda, tau, work, lwork, info);
}
inline cusolverStatus_t orgqr_buffer(cusolverDnHandle_t h, int m, int n, const float* a, int lda,
                                     const float* tau, int* lwork) {
  return cusolverDnSorgqr_bufferSize(h, m, n, n, a, lda, tau, lwork);
}
inline cusolverStatus_t orgqr_buffer(cusolverDnHandle_t h, int m, int n, const double* a, int lda,
                                     const double* tau, int* lwork) {
  return cusolverDnDorgqr_bufferSize(h, m, n, n, a, lda, tau, lwork);
}
inline cusolverStatus_t orgqr(cusolverDnHandle_t h, int m, int n, float* a, int lda,
                              const float* tau, float* work, int lwork, int* info) {
  return cusolverDnSorgqr(h, m, n, n, a, lda, tau, work, lwork, info);
}
inline cusolverStatus_t orgqr(cusolverDnHandle_t h, int m, int n, double* a, int lda,
                              const double* tau, double* work, int lwork, int* info) {
  return cusolverDnDorgqr(h, m, n, n, a, lda, tau, work, lwork, info);
}
inline cusolverStatus_t gesvd_buffer(cusolverDnHandle_t h, int m, int n, float, int* lwork) {
  return cusolverDnSgesvd_bufferSize(h, m, n, lwork);
}
inline cusolverStatus_t gesvd_buffer(cusolverDnHandle_t h, int m, int n, double, int* lwork) {
  return cusolverDnDgesvd_bufferSize(h, m, n, lwork);
}
inline cusolverStatus_t gesvd(cusolverDnHandle_t h, int m, int n, float* a, int lda, float* s,
                              float* u, int ldu, float* vt, int ldvt, float* work, int lwork,
                              float* rwork, int* info) {
  return cusolverDnSgesvd(h, 'S', 'S', m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, rwork, info);
}
inline cusolverStatus_t gesvd(cusolverDnHandle_t h, int m, int n, double* a, int lda, double* s,
                              double* u, int ldu, double* vt, int ldvt, double* work, int lwork,
                              double* rwork, int* info) {
  return cusolverDnDgesvd(h, 'S', 'S', m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, rwork, info);
}

/// A dimension as cuSOLVER's legacy 32-bit int.
inline int to_int(index_t value, const char* function, const char* what) {
  if (value > std::numeric_limits<int>::max()) {
    throw_invalid_argument(function, what, value, "<= 2^31 - 1 for cuSOLVER");
  }
  return static_cast<int>(value);
}

}  // namespace detail::cuda_blas

template <>
struct ops<cuda> {
  using backend = cuda;

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
    detail::check(
        detail::cuda_blas::gemm(ctx.blas(), detail::cuda_blas::op(ta), detail::cuda_blas::op(tb),
                                c.rows(), c.cols(), k, &alpha, a.data(), a.ld(), b.data(), b.ld(),
                                &beta, c.data(), c.ld()),
        "lowrank::ops<cuda>::gemm: cublas<t>gemm_64");
  }

  /// C = A^T A (a cuBLAS gemm, both triangles: cuBLAS's float syrk is slow
  /// for the algorithms' tall, thin A, 0.36 ms for 4096 x 74 on an H200
  /// against 0.05 ms for its double syrk).
  template <scalar T>
  static void gram(context<cuda>& ctx, input<T> a, matrix_view<T, cuda> c) {
    gemm<T>(ctx, transpose::yes, transpose::no, T(1), a, a, T(0), c);
  }

  /// Y = Y R in place (a product into the context's workspace, copied back).
  template <scalar T>
  static void multiply_right(context<cuda>& ctx, input<T> r, matrix_view<T, cuda> y) {
    if (y.empty()) return;
    T* product = static_cast<T*>(ctx.workspace(sizeof(T) * std::size_t(y.size())));
    gemm<T>(ctx, transpose::no, transpose::no, T(1), y, r, T(0), {product, y.rows(), y.cols()});
    detail::copy_2d(product, y.rows(), y.data(), y.ld(), y.rows(), y.cols(),
                    cudaMemcpyDeviceToDevice, ctx.stream(),
                    "lowrank::ops<cuda>::multiply_right: cudaMemcpy2DAsync");
  }

  /// Householder QR Y = Q R (cuSOLVER geqrf, then orgqr): Y becomes the thin
  /// Q, r receives R.
  template <scalar T>
  static void householder_orthonormalize(context<cuda>& ctx, matrix_view<T, cuda> y,
                                         matrix_view<T, cuda> r) {
    namespace cb = detail::cuda_blas;
    const char* fn = "lowrank::ops<cuda>::householder_orthonormalize";
    const int m = cb::to_int(y.rows(), fn, "y.rows()");
    const int n = cb::to_int(y.cols(), fn, "y.cols()");
    const int ld = cb::to_int(y.ld(), fn, "y.ld()");
    LOWRANK_ASSERT(m >= n && r.rows() == n && r.cols() == n);
    if (n == 0) return;
    int lwork_qr = 0;
    int lwork_q = 0;
    detail::check(cb::geqrf_buffer(ctx.solver(), m, n, y.data(), ld, &lwork_qr),
                  "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>geqrf_bufferSize");
    T* tau = static_cast<T*>(
        ctx.workspace(sizeof(T) * std::size_t(n + std::max(lwork_qr, 1))));  // sized again below
    detail::check(cb::orgqr_buffer(ctx.solver(), m, n, y.data(), ld, tau, &lwork_q),
                  "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>orgqr_bufferSize");
    const int lwork = std::max({lwork_qr, lwork_q, 1});
    tau = static_cast<T*>(ctx.workspace(sizeof(T) * std::size_t(n + lwork)));
    T* work = tau + n;
    detail::check(cb::geqrf(ctx.solver(), m, n, y.data(), ld, tau, work, lwork, ctx.info()),
                  "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>geqrf");
    check_info(ctx, "lowrank::ops<cuda>::householder_orthonormalize: cusolverDn<t>geqrf");
    detail::kernels::upper_triangle<<<detail::kernels::grid_for(index_t(n) * n),
                                      detail::kernels::block_threads, 0, ctx.stream()>>>(
        y.data(), y.ld(), r.data(), r.ld(), index_t(n));
    detail::check(cudaGetLastError(),
                  "lowrank::ops<cuda>::householder_orthonormalize: upper_triangle");
    detail::check(cb::orgqr(ctx.solver(), m, n, y.data(), ld, tau, work, lwork, ctx.info()),
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
                                         matrix_view<double, cuda> r_inv) {
    namespace k = detail::kernels;
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
    if (n <= k::fused_cholesky_max) {
      const std::size_t bytes = k::fused_cholesky_shared_bytes(n);
      if (fits_in_shared_memory(ctx, bytes)) {
        allow_shared_memory(ctx, k::cholesky_fused<T>,
                            "lowrank::ops<cuda>::cholesky_factor: cudaFuncSetAttribute");
        auto* status = static_cast<k::cholesky_device_status*>(ctx.workspace(256));
        k::cholesky_fused<T><<<1, k::cholesky_threads, bytes, ctx.stream()>>>(
            g.data(), g.ld(), n, shift, limit, r.data(), r.ld(), r_inv.data(), r_inv.ld(), status);
        detail::check(cudaGetLastError(), "lowrank::ops<cuda>::cholesky_factor: cholesky_fused");
        return finish(status);
      }
    }
    const int ni = detail::cuda_blas::to_int(n, fn, "g.rows()");
    const int ldr = detail::cuda_blas::to_int(r.ld(), fn, "r.ld()");
    int potrf_work = 0;
    detail::check(cusolverDnDpotrf_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_UPPER, ni, r.data(),
                                              ldr, &potrf_work),
                  "lowrank::ops<cuda>::cholesky_factor: cusolverDnDpotrf_bufferSize");
    std::size_t trtri_device = 0;
    std::size_t trtri_host = 0;
    detail::check(cusolverDnXtrtri_bufferSize(ctx.solver(), CUBLAS_FILL_MODE_UPPER,
                                              CUBLAS_DIAG_NON_UNIT, n, CUDA_R_64F, r_inv.data(),
                                              r_inv.ld(), &trtri_device, &trtri_host),
                  "lowrank::ops<cuda>::cholesky_factor: cusolverDnXtrtri_bufferSize");
    // Workspace: the status, then potrf's and trtri's work (one at a time).
    constexpr std::size_t head = 256;
    const std::size_t work_bytes =
        std::max(sizeof(double) * std::size_t(std::max(potrf_work, 1)), trtri_device);
    auto* base = static_cast<char*>(ctx.workspace(head + work_bytes));
    auto* status = reinterpret_cast<k::cholesky_device_status*>(base);
    void* work = base + head;
    std::vector<char> host_work(std::max<std::size_t>(trtri_host, 1));

    k::cholesky_prepare<T><<<1, k::block_threads, 0, ctx.stream()>>>(g.data(), g.ld(), n, shift,
                                                                     r.data(), r.ld(), status);
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::cholesky_factor: cholesky_prepare");
    detail::check(
        cusolverDnDpotrf(ctx.solver(), CUBLAS_FILL_MODE_UPPER, ni, r.data(), ldr,
                         static_cast<double*>(work), std::max(potrf_work, 1), &status->potrf_info),
        "lowrank::ops<cuda>::cholesky_factor: cusolverDnDpotrf");
    k::cholesky_split<<<1, k::block_threads, 0, ctx.stream()>>>(r.data(), r.ld(), n, r_inv.data(),
                                                                r_inv.ld(), status);
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::cholesky_factor: cholesky_split");
    detail::check(cusolverDnXtrtri(ctx.solver(), CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, n,
                                   CUDA_R_64F, r_inv.data(), r_inv.ld(), work, trtri_device,
                                   host_work.data(), trtri_host, &status->trtri_info),
                  "lowrank::ops<cuda>::cholesky_factor: cusolverDnXtrtri");
    k::cholesky_check_inverse<<<1, k::block_threads, 0, ctx.stream()>>>(r_inv.data(), r_inv.ld(), n,
                                                                        limit, status);
    detail::check(cudaGetLastError(),
                  "lowrank::ops<cuda>::cholesky_factor: cholesky_check_inverse");
    return finish(status);
  }

  /// dst = src rounded to dst's element type.
  template <class S, scalar D>
  requires scalar<std::remove_const_t<S>>
  static void convert(context<cuda>& ctx, matrix_view<S, cuda> src, matrix_view<D, cuda> dst) {
    LOWRANK_ASSERT(src.rows() == dst.rows() && src.cols() == dst.cols());
    if (dst.empty()) return;
    detail::kernels::convert<<<detail::kernels::grid_for(dst.size()),
                               detail::kernels::block_threads, 0, ctx.stream()>>>(
        src.data(), src.ld(), dst.data(), dst.ld(), dst.rows(), dst.cols());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::convert");
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
    return mt <= detail::kernels::jacobi_svd_max &&
           fits_in_shared_memory(ctx, detail::kernels::jacobi_svd_shared_bytes(mt, nt));
  }

  /// Whether `svd` of an m x n matrix of T takes its small-float path
  /// (syevd + QR in double, below) rather than gesvd, after the Jacobi kernel
  /// when it does not apply or hands X on.
  template <scalar T>
  [[nodiscard]] static constexpr bool svd_by_eigen(index_t m, index_t n) noexcept {
    return std::is_same_v<T, float> && m * n <= 512 * 512;
  }

  /// Thin SVD A = U diag(s) V^T, on the tall one of A and A^T (X, mt x nt).
  /// - X up to 128 x 128 (when the device has the shared memory: 201 KB at
  ///   112 x 112; all of 128 x 128 does not fit an H200): one-sided Jacobi
  ///   in double in one block (kernels/jacobi.cuh; rotation threshold
  ///   sqrt(mt) eps_T, as LAPACK's sgesvj and dgesvj; a square A is rotated
  ///   by rows, X = A^T), rounded to T: accurate to
  ///   the last digits without squaring X, one launch and one status download.
  ///   On an H200 it took 1.5 ms at 74 x 74 (float data, commit 0428e30,
  ///   before the threshold and orientation above), as the syevd route below
  ///   did; for double data it replaces gesvd (7 ms at 74 x 74). A zero
  ///   singular value (U's column undefined) or no convergence in
  ///   `jacobi_max_sweeps` sweeps hands X to the methods below.
  /// - float, small X (mt nt <= 512^2, such as the l x l factors of the
  ///   randomized SVDs): in double, X^T X = V diag(s^2) V^T by syevd, then
  ///   U = the Q of a Householder QR of X V (signs from R's diagonal), s =
  ///   sqrt(max(eigenvalue, 0)); rounded to float. Squaring X costs nothing
  ///   at float's precision: an eigenvalue errs by eps_double s_1^2, so every
  ///   singular value errs by less than sqrt(eps_double) s_1 = 1.5e-8 s_1
  ///   (float's own rounding: 6e-8 s_1), and V and U are orthonormal to double
  ///   precision. On an H200 (CUDA 13) syevd takes 1.0 ms at 74 x 74 and 2.4
  ///   ms at 266 x 266, against 2.4 and 12 ms for gesvdj in double and 6.5
  ///   and 20 ms for gesvd (gesvdj in float gives factors orthonormal only to
  ///   about n eps / 2; gesvdp gave wrong singular values for ill-conditioned
  ///   matrices).
  /// - otherwise gesvd (QR iteration) in T.
  /// `ctx.svd_report()` tells afterwards which method ran and how many sweeps
  /// the Jacobi kernel made.
  /// @throws lowrank::numerical_error if the method does not converge.
  template <scalar T>
  static void svd(context<cuda>& ctx, input<T> a, matrix_view<T, cuda> u, vector_view<T, cuda> s,
                  matrix_view<T, cuda> v) {
    namespace cb = detail::cuda_blas;
    const char* fn = "lowrank::ops<cuda>::svd";
    const bool wide = a.rows() < a.cols();
    // X (mt x nt) = U' S V'^T with X = A (tall) or A^T (wide).
    const index_t mt = wide ? a.cols() : a.rows();
    const index_t nt = wide ? a.rows() : a.cols();
    auto& report = ctx.svd_report();
    report = {};
    if (nt == 0) return;
    const int m = cb::to_int(mt, fn, "rows");
    const int n = cb::to_int(nt, fn, "cols");
    // A = U' S V'^T (tall) or A^T = U' S V'^T, i.e. A = V' S U'^T (wide).
    matrix_view<T, cuda> left = wide ? v : u;
    matrix_view<T, cuda> right = wide ? u : v;
    const auto load = [&](T* x) {
      if (wide) {
        detail::check(cb::transpose_into(ctx.blas(), a.rows(), a.cols(), a.data(), a.ld(), x, mt),
                      "lowrank::ops<cuda>::svd: cublas<t>geam_64");
      } else {
        detail::copy_2d(a.data(), a.ld(), x, mt, mt, nt, cudaMemcpyDeviceToDevice, ctx.stream(),
                        "lowrank::ops<cuda>::svd: cudaMemcpy2DAsync");
      }
    };

    namespace k = detail::kernels;
    if (svd_by_jacobi(ctx, mt, nt)) {
      // A square A is rotated by rows (X = A^T), as a wide one: for the
      // triangular factor of a QR (the l x l SVD of the randomized SVDs),
      // whose rows are graded like its singular values, that takes 8 sweeps
      // where the columns take 18 (s_i = 0.85^i) or 25 (s over 12 decades),
      // and 6 instead of 7 for a randomized SVD's R (tools/jacobi_sweeps.py).
      const bool by_rows = a.rows() <= a.cols();
      const matrix_view<T, cuda> jl = by_rows ? v : u;
      const matrix_view<T, cuda> jr = by_rows ? u : v;
      const std::size_t bytes = k::jacobi_svd_shared_bytes(mt, nt);
      allow_shared_memory(ctx, k::jacobi_svd<T>, "lowrank::ops<cuda>::svd: cudaFuncSetAttribute");
      auto* status = static_cast<k::jacobi_svd_status*>(ctx.workspace(256));
      // LAPACK's threshold for T (sgesvj, dgesvj): a rotation below it
      // changes nothing T can hold, and float data needs fewer sweeps
      // (tools/jacobi_sweeps.py: 8 -> 6 at l = 74 for a randomized SVD's R,
      // by rows).
      const double tol = std::sqrt(double(mt)) * double(std::numeric_limits<T>::epsilon());
      k::jacobi_svd<T><<<1, k::jacobi_threads, bytes, ctx.stream()>>>(
          a.data(), a.ld(), by_rows, mt, nt, tol, jacobi_max_sweeps, jl.data(), jl.ld(), s.data(),
          jr.data(), jr.ld(), status);
      detail::check(cudaGetLastError(), "lowrank::ops<cuda>::svd: jacobi_svd");
      const auto host = download_value(ctx, status, "lowrank::ops<cuda>::svd: cudaMemcpyAsync");
      report.jacobi_sweeps = host.sweeps;
      if (host.converged != 0 && host.zero_columns == 0) {
        report.method = cuda_svd_method::jacobi;
        return;
      }
      // A zero singular value leaves U's column undefined, and the sweeps
      // rarely fail to converge: both go on to the methods below.
    }
    if (svd_by_eigen<T>(mt, nt)) {
      report.method = cuda_svd_method::eigen;
      matrix<double, cuda> xd(ctx, mt, nt);
      matrix<double, cuda> e(ctx, nt, nt);   // X^T X, then its eigenvectors
      matrix<double, cuda> vd(ctx, nt, nt);  // V (descending)
      vector<double, cuda> w(ctx, nt);       // the eigenvalues (ascending)
      vector<double, cuda> sd(ctx, nt);
      vector<double, cuda> tau(ctx, nt);
      T* x = static_cast<T*>(ctx.workspace(sizeof(T) * std::size_t(mt * nt)));
      load(x);
      convert(ctx, matrix_view<const T, cuda>(x, mt, nt), xd.view());
      gram<double>(ctx, xd.view(), e.view());
      int lwork = 0;
      detail::check(cusolverDnDsyevd_bufferSize(ctx.solver(), CUSOLVER_EIG_MODE_VECTOR,
                                                CUBLAS_FILL_MODE_LOWER, n, e.view().data(), n,
                                                w.view().data(), &lwork),
                    "lowrank::ops<cuda>::svd: cusolverDnDsyevd_bufferSize");
      int lwork_qr = 0;
      int lwork_q = 0;
      detail::check(cb::geqrf_buffer(ctx.solver(), m, n, xd.view().data(), m, &lwork_qr),
                    "lowrank::ops<cuda>::svd: cusolverDnDgeqrf_bufferSize");
      detail::check(
          cb::orgqr_buffer(ctx.solver(), m, n, xd.view().data(), m, tau.view().data(), &lwork_q),
          "lowrank::ops<cuda>::svd: cusolverDnDorgqr_bufferSize");
      lwork = std::max({lwork, lwork_qr, lwork_q, 1});
      auto* work = static_cast<double*>(ctx.workspace(sizeof(double) * std::size_t(lwork)));
      detail::check(
          cusolverDnDsyevd(ctx.solver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                           e.view().data(), n, w.view().data(), work, lwork, ctx.info()),
          "lowrank::ops<cuda>::svd: cusolverDnDsyevd");
      check_info(ctx, "lowrank::ops<cuda>::svd: cusolverDnDsyevd");
      k::descending_singular_pairs<<<k::grid_for(nt * nt), k::block_threads, 0, ctx.stream()>>>(
          e.view().data(), nt, w.view().data(), nt, vd.view().data(), nt, sd.view().data());
      detail::check(cudaGetLastError(), "lowrank::ops<cuda>::svd: descending_singular_pairs");
      // X V = Q R: U = Q diag(sign(R_jj)) (R_jj is +-s_j to rounding).
      matrix<double, cuda> q(ctx, mt, nt);
      gemm<double>(ctx, transpose::no, transpose::no, 1.0, xd.view(), vd.view(), 0.0, q.view());
      detail::check(cb::geqrf(ctx.solver(), m, n, q.view().data(), m, tau.view().data(), work,
                              lwork, ctx.info()),
                    "lowrank::ops<cuda>::svd: cusolverDnDgeqrf");
      check_info(ctx, "lowrank::ops<cuda>::svd: cusolverDnDgeqrf");
      vector<double, cuda> signs(ctx, nt);
      k::diagonal_signs<<<k::grid_for(nt), k::block_threads, 0, ctx.stream()>>>(
          q.view().data(), mt, nt, signs.view().data());
      detail::check(cudaGetLastError(), "lowrank::ops<cuda>::svd: diagonal_signs");
      detail::check(cb::orgqr(ctx.solver(), m, n, q.view().data(), m, tau.view().data(), work,
                              lwork, ctx.info()),
                    "lowrank::ops<cuda>::svd: cusolverDnDorgqr");
      check_info(ctx, "lowrank::ops<cuda>::svd: cusolverDnDorgqr");
      scale_columns<double>(ctx, signs.view(), q.view());
      convert(ctx, as_const(q.view()), left);
      convert(ctx, as_const(vd.view()), right);
      convert(ctx, as_const(sd.view().as_matrix()), s.as_matrix());
      return;
    }

    report.method = cuda_svd_method::gesvd;
    int lwork = 0;
    detail::check(cb::gesvd_buffer(ctx.solver(), m, n, T(0), &lwork),
                  "lowrank::ops<cuda>::svd: cusolverDn<t>gesvd_bufferSize");
    lwork = std::max(lwork, 1);
    // Workspace: X (mt x nt), U' (mt x nt), V'^T (nt x nt), rwork (nt), work.
    const std::size_t count =
        std::size_t(mt * nt) * 2 + std::size_t(nt * nt) + std::size_t(nt) + std::size_t(lwork);
    T* x = static_cast<T*>(ctx.workspace(sizeof(T) * count));
    T* up = x + mt * nt;
    T* vpt = up + mt * nt;
    T* rwork = vpt + nt * nt;
    T* work = rwork + nt;
    load(x);
    detail::check(cb::gesvd(ctx.solver(), m, n, x, m, s.data(), up, m, vpt, n, work, lwork, rwork,
                            ctx.info()),
                  "lowrank::ops<cuda>::svd: cusolverDn<t>gesvd");
    check_info(ctx, "lowrank::ops<cuda>::svd: cusolverDn<t>gesvd");
    detail::copy_2d(up, mt, left.data(), left.ld(), mt, nt, cudaMemcpyDeviceToDevice, ctx.stream(),
                    "lowrank::ops<cuda>::svd: cudaMemcpy2DAsync");
    detail::check(cb::transpose_into(ctx.blas(), nt, nt, vpt, nt, right.data(), right.ld()),
                  "lowrank::ops<cuda>::svd: cublas<t>geam_64");
  }

  /// X = the block at (row0, col0) of the random matrix of `stream`.
  /// @throws lowrank::invalid_argument if the block is outside the generator's range.
  template <scalar T>
  static void fill_random(context<cuda>& ctx, distribution d, random_stream stream,
                          matrix_view<T, cuda> x, index_t row0 = 0, index_t col0 = 0) {
    const index_t r = (d == distribution::rademacher || sizeof(T) == 4) ? 4 : 2;
    constexpr index_t counter_limit = index_t{1} << 32;
    const char* fn = "lowrank::ops<cuda>::fill_random";
    if (row0 < 0 || (row0 + x.rows()) > counter_limit * r) {
      detail::throw_invalid_argument(fn, "row0", row0,
                                     "rows [row0, row0 + rows) within [0, 2^32 * R)");
    }
    if (col0 < 0 || col0 + x.cols() > counter_limit) {
      detail::throw_invalid_argument(fn, "col0", col0,
                                     "columns [col0, col0 + cols) within [0, 2^32)");
    }
    if (x.empty()) return;
    const index_t first = row0 / r;
    const index_t blocks = (row0 + x.rows() + r - 1) / r - first;
    const unsigned grid = detail::kernels::grid_for(blocks * x.cols());
    constexpr int threads = detail::kernels::block_threads;
    switch (d) {
      case distribution::gaussian:
        detail::kernels::fill_random<T, distribution::gaussian><<<grid, threads, 0, ctx.stream()>>>(
            stream, x.data(), x.rows(), x.cols(), x.ld(), row0, col0, first, blocks);
        break;
      case distribution::uniform:
        detail::kernels::fill_random<T, distribution::uniform><<<grid, threads, 0, ctx.stream()>>>(
            stream, x.data(), x.rows(), x.cols(), x.ld(), row0, col0, first, blocks);
        break;
      case distribution::rademacher:
        detail::kernels::fill_random<T, distribution::rademacher>
            <<<grid, threads, 0, ctx.stream()>>>(stream, x.data(), x.rows(), x.cols(), x.ld(), row0,
                                                 col0, first, blocks);
        break;
    }
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::fill_random: kernel launch");
  }

  /// X = value everywhere.
  template <scalar T>
  static void fill(context<cuda>& ctx, matrix_view<T, cuda> x, T value) {
    if (x.empty()) return;
    detail::kernels::fill<<<detail::kernels::grid_for(x.size()), detail::kernels::block_threads, 0,
                            ctx.stream()>>>(x.data(), x.rows(), x.cols(), x.ld(), value);
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::fill: kernel launch");
  }

  /// dst = src (same shape).
  template <scalar T>
  static void copy(context<cuda>& ctx, input<T> src, matrix_view<T, cuda> dst) {
    LOWRANK_ASSERT(src.rows() == dst.rows() && src.cols() == dst.cols());
    detail::copy_2d(src.data(), src.ld(), dst.data(), dst.ld(), src.rows(), src.cols(),
                    cudaMemcpyDeviceToDevice, ctx.stream(),
                    "lowrank::ops<cuda>::copy: cudaMemcpy2DAsync");
  }

  /// X = X diag(d).
  template <scalar T>
  static void scale_columns(context<cuda>& ctx, vector_input<T> d, matrix_view<T, cuda> x) {
    LOWRANK_ASSERT(d.size() == x.cols());
    if (x.empty()) return;
    detail::kernels::scale_columns<<<detail::kernels::grid_for(x.size()),
                                     detail::kernels::block_threads, 0, ctx.stream()>>>(
        d.data(), x.data(), x.rows(), x.cols(), x.ld());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::scale_columns: kernel launch");
  }

  /// ||X||_F^2 in double: a fixed-grid two-pass reduction (deterministic).
  /// Synchronises the stream.
  template <scalar T>
  static double squared_norm(context<cuda>& ctx, matrix_view<const T, cuda> x) {
    if (x.empty()) return 0;
    constexpr unsigned blocks = 256;
    auto* partial = static_cast<double*>(ctx.workspace(sizeof(double) * (blocks + 1)));
    detail::kernels::
        squared_norm_partials<<<blocks, detail::kernels::block_threads, 0, ctx.stream()>>>(
            x.data(), x.rows(), x.cols(), x.ld(), partial);
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::squared_norm: kernel launch");
    detail::kernels::sum_partials<>
        <<<1, detail::kernels::block_threads, 0, ctx.stream()>>>(partial, blocks, partial + blocks);
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::squared_norm: kernel launch");
    return download_value(ctx, partial + blocks,
                          "lowrank::ops<cuda>::squared_norm: cudaMemcpyAsync");
  }
  template <scalar T>
  static double squared_norm(context<cuda>& ctx, matrix_view<T, cuda> x) {
    return squared_norm(ctx, as_const(x));
  }

  /// out_j = ||X(:, j)||^2, accumulated in double.
  template <scalar T>
  static void column_squared_norms(context<cuda>& ctx, input<T> x, vector_view<T, cuda> out) {
    LOWRANK_ASSERT(out.size() == x.cols());
    if (x.cols() == 0) return;
    const auto grid = static_cast<unsigned>(std::min<index_t>(x.cols(), 65535));
    detail::kernels::
        column_squared_norms<<<grid, detail::kernels::block_threads, 0, ctx.stream()>>>(
            x.data(), x.rows(), x.cols(), x.ld(), out.data());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::column_squared_norms: kernel launch");
  }

  /// The column-major linear index of the first non-finite entry, or -1.
  /// Synchronises the stream.
  template <scalar T>
  static index_t find_non_finite(context<cuda>& ctx, matrix_view<const T, cuda> x) {
    if (x.empty()) return -1;
    auto* first = static_cast<unsigned long long*>(ctx.workspace(sizeof(unsigned long long)));
    detail::check(cudaMemsetAsync(first, 0xFF, sizeof(unsigned long long), ctx.stream()),
                  "lowrank::ops<cuda>::find_non_finite: cudaMemsetAsync");
    detail::kernels::find_non_finite<<<detail::kernels::grid_for(x.size()),
                                       detail::kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.rows(), x.cols(), x.ld(), first);
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::find_non_finite: kernel launch");
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
    detail::kernels::signs_of_largest<<<grid, detail::kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.rows(), x.cols(), x.ld(), out.data());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::signs_of_largest: kernel launch");
  }

  /// Host view dst = device view src (synchronises the stream).
  template <scalar T>
  static void download(context<cuda>& ctx, input<T> src, matrix_view<T, cpu> dst) {
    LOWRANK_ASSERT(src.rows() == dst.rows() && src.cols() == dst.cols());
    detail::copy_2d(src.data(), src.ld(), dst.data(), dst.ld(), src.rows(), src.cols(),
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
    detail::copy_2d(src.data(), src.ld(), dst.data(), dst.ld(), src.rows(), src.cols(),
                    cudaMemcpyHostToDevice, ctx.stream(),
                    "lowrank::ops<cuda>::upload: cudaMemcpy2DAsync");
    ctx.synchronize();
  }

  // --- Operations of the adapters (adapter_backend_for) -------------------------
  // Element-wise results carry the CPU backend's bits (kernels/adapters.cuh);
  // nothing here synchronises the stream except merge_low_rank,
  // unmerge_low_rank and upload_indices.

  /// X = alpha X + beta.
  template <scalar T>
  static void affine(context<cuda>& ctx, T alpha, T beta, matrix_view<T, cuda> x) {
    if (x.empty()) return;
    detail::kernels::affine<<<detail::kernels::grid_for(x.size()), detail::kernels::block_threads,
                              0, ctx.stream()>>>(alpha, beta, x.data(), x.rows(), x.cols(), x.ld());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::affine: kernel launch");
  }

  /// Y = alpha X + beta Y (beta = 0 ignores Y's previous content).
  template <scalar T>
  static void axpby(context<cuda>& ctx, T alpha, input<T> x, T beta, matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols());
    if (y.empty()) return;
    detail::kernels::axpby<<<detail::kernels::grid_for(y.size()), detail::kernels::block_threads, 0,
                             ctx.stream()>>>(alpha, x.data(), x.ld(), beta, y.data(), y.ld(),
                                             y.rows(), y.cols());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::axpby: kernel launch");
  }

  /// Y = alpha (X (.) M) / (1 - p) + beta Y, the keep mask M(i, j) = [u(i, j)
  /// >= p] from the float uniform matrix of `stream`: the CPU backend's mask,
  /// bit for bit (one thread per Philox block). p in [0, 1).
  /// @throws lowrank::invalid_argument if X is beyond the generator's range
  ///   (more than 2^34 rows or 2^32 columns).
  template <scalar T>
  static void dropout(context<cuda>& ctx, random_stream stream, double p, T alpha, input<T> x,
                      T beta, matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && p >= 0 && p < 1);
    constexpr index_t counter_limit = index_t{1} << 32;
    const char* fn = "lowrank::ops<cuda>::dropout";
    if (x.rows() > counter_limit * 4) {
      detail::throw_invalid_argument(fn, "x.rows()", x.rows(), "<= 2^34 (the generator's range)");
    }
    if (x.cols() > counter_limit) {
      detail::throw_invalid_argument(fn, "x.cols()", x.cols(), "<= 2^32 (the generator's range)");
    }
    if (y.empty()) return;
    const T keep = alpha / static_cast<T>(1.0 - p);  // as the CPU computes it
    const index_t blocks = (x.rows() + 3) / 4;
    detail::kernels::dropout<<<detail::kernels::grid_for(blocks * x.cols()),
                               detail::kernels::block_threads, 0, ctx.stream()>>>(
        stream, p, keep, x.data(), x.ld(), beta, y.data(), y.ld(), x.rows(), x.cols(), blocks);
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::dropout: kernel launch");
  }

  /// Y(i, :) += alpha v^T for every row i (a bias added to a batch).
  template <scalar T>
  static void add_row_vector(context<cuda>& ctx, T alpha, vector_input<T> v,
                             matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(v.size() == y.cols());
    if (y.empty()) return;
    detail::kernels::add_row_vector<<<detail::kernels::grid_for(y.size()),
                                      detail::kernels::block_threads, 0, ctx.stream()>>>(
        alpha, v.data(), y.data(), y.rows(), y.cols(), y.ld());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::add_row_vector: kernel launch");
  }

  /// y_j += alpha sum_i X(i, j), each sum accumulated in double (a fixed
  /// tree per column: deterministic).
  template <scalar T>
  static void add_column_sums(context<cuda>& ctx, T alpha, input<T> x, vector_view<T, cuda> y) {
    LOWRANK_ASSERT(y.size() == x.cols());
    if (x.cols() == 0) return;
    const auto grid = static_cast<unsigned>(std::min<index_t>(x.cols(), 65535));
    detail::kernels::add_column_sums<<<grid, detail::kernels::block_threads, 0, ctx.stream()>>>(
        alpha, x.data(), x.rows(), x.cols(), x.ld(), y.data());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::add_column_sums: kernel launch");
  }

  /// out_i = sum_j X(i, j) Y(i, j), accumulated in double (X, Y of one
  /// shape): one thread per row, the columns in order (the CPU's sum).
  template <scalar T>
  static void row_dots(context<cuda>& ctx, matrix_view<const T, cuda> x, input<T> y,
                       vector_view<double, cuda> out) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && out.size() == x.rows());
    if (x.rows() == 0) return;
    detail::kernels::row_dots<<<detail::kernels::grid_for(x.rows()), detail::kernels::block_threads,
                                0, ctx.stream()>>>(x.data(), x.ld(), y.data(), y.ld(), x.rows(),
                                                   x.cols(), out.data());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::row_dots: kernel launch");
  }

  /// out_j = sum_i X(i, j) Y(i, j), accumulated in double (X, Y of one
  /// shape): a fixed tree per column (deterministic).
  template <scalar T>
  static void column_dots(context<cuda>& ctx, matrix_view<const T, cuda> x, input<T> y,
                          vector_view<double, cuda> out) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && out.size() == x.cols());
    if (x.cols() == 0) return;
    const auto grid = static_cast<unsigned>(std::min<index_t>(x.cols(), 65535));
    detail::kernels::column_dots<<<grid, detail::kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.ld(), y.data(), y.ld(), x.rows(), x.cols(), out.data());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::column_dots: kernel launch");
  }

  /// n_i = max(sqrt(max(w_i + 2 s b_i + s^2 c_i, 0)), floor) in double (DoRA's
  /// row norms): the CPU's bits.
  static void factored_row_norms(context<cuda>& ctx, double s, double floor,
                                 vector_view<const double, cuda> w,
                                 vector_view<const double, cuda> b,
                                 vector_view<const double, cuda> c, vector_view<double, cuda> n) {
    LOWRANK_ASSERT(w.size() == n.size() && b.size() == n.size() && c.size() == n.size());
    if (n.empty()) return;
    detail::kernels::factored_row_norms<<<detail::kernels::grid_for(n.size()),
                                          detail::kernels::block_threads, 0, ctx.stream()>>>(
        s, floor, w.data(), b.data(), c.data(), n.size(), n.data());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::factored_row_norms: kernel launch");
  }

  /// y_i = x_i / d_i + beta y_i in double, rounded once to y's type (beta = 0
  /// ignores y): the CPU's bits.
  template <scalar U, scalar V>
  static void divide(context<cuda>& ctx, vector_view<const U, cuda> x,
                     vector_view<const double, cuda> d, double beta, vector_view<V, cuda> y) {
    LOWRANK_ASSERT(x.size() == y.size() && d.size() == y.size());
    if (y.empty()) return;
    detail::kernels::divide<<<detail::kernels::grid_for(y.size()), detail::kernels::block_threads,
                              0, ctx.stream()>>>(x.data(), d.data(), beta, y.data(), y.size());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::divide: kernel launch");
  }

  /// Out(k, :) = X(rows[k], :) for k < rows.size() (rows in device memory;
  /// out is rows.size() x x.cols(); every rows[k] in [0, x.rows())).
  template <scalar T>
  static void gather_rows(context<cuda>& ctx, input<T> x, vector_view<const index_t, cuda> rows,
                          matrix_view<T, cuda> out) {
    LOWRANK_ASSERT(out.rows() == rows.size() && out.cols() == x.cols());
    if (out.empty()) return;
    detail::kernels::gather_rows<<<detail::kernels::grid_for(out.size()),
                                   detail::kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.ld(), rows.data(), out.data(), out.ld(), out.rows(), out.cols());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::gather_rows: kernel launch");
  }

  /// Y(rows[k], :) += alpha Src(k, :) for k < rows.size() (rows in device
  /// memory, distinct and in [0, y.rows()); src is rows.size() x y.cols()).
  template <scalar T>
  static void scatter_add_rows(context<cuda>& ctx, T alpha, input<T> src,
                               vector_view<const index_t, cuda> rows, matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(src.rows() == rows.size() && src.cols() == y.cols());
    if (src.empty()) return;
    detail::kernels::scatter_add_rows<<<detail::kernels::grid_for(src.size()),
                                        detail::kernels::block_threads, 0, ctx.stream()>>>(
        alpha, src.data(), src.ld(), rows.data(), y.data(), y.ld(), src.rows(), src.cols());
    detail::check(cudaGetLastError(), "lowrank::ops<cuda>::scatter_add_rows: kernel launch");
  }

  /// Device index vector dst = host index vector src (same size). An upload
  /// that is complete when the call returns (it synchronises the stream), so
  /// that the caller may reuse src at once.
  static void upload_indices(context<cuda>& ctx, vector_view<const index_t, cpu> src,
                             vector_view<index_t, cuda> dst) {
    LOWRANK_ASSERT(src.size() == dst.size());
    if (src.empty()) return;
    detail::copy_2d(src.data(), src.size(), dst.data(), dst.size(), src.size(), index_t{1},
                    cudaMemcpyHostToDevice, ctx.stream(),
                    "lowrank::ops<cuda>::upload_indices: cudaMemcpy2DAsync");
    ctx.synchronize();
  }

  /// The merge of a low-rank update into a weight, W'(i, j) = fl(c_i (W(i, j)
  /// + s (B A)(i, j))) in extended precision: ops<cpu>::merge_low_rank on host
  /// copies of W, B, A and c, so the merged bits, the returned index of the
  /// first non-finite W' (or -1), the `record` and hence the exact unmerge
  /// are the CPU backend's. Not a hot path: it synchronises the stream,
  /// downloads W, B, A and c, and (unless `check_only`, which leaves W
  /// untouched) uploads W' back: two transfers of W over PCIe and a host
  /// copy of W (plus one of B A's column) in memory.
  template <scalar T>
  static index_t merge_low_rank(context<cuda>& ctx, double s, input<T> b, input<T> a,
                                vector_view<const double, cuda> row_scale, matrix_view<T, cuda> w,
                                bool check_only,
                                std::vector<merge_exception<std::type_identity_t<T>>>* record) {
    auto host =
        host_operands(ctx, b, a, row_scale, as_const(w), "lowrank::ops<cuda>::merge_low_rank");
    context<cpu> cpu_ctx;
    const index_t bad = ops<cpu>::merge_low_rank<T>(cpu_ctx, s, view(std::as_const(host.b)),
                                                    view(std::as_const(host.a)), host.scale(),
                                                    view(host.w), check_only, record);
    if (!check_only) {
      upload<T>(ctx, view(std::as_const(host.w)), w);
    }
    return bad;
  }

  /// The inverse of merge_low_rank() (ops<cpu>::unmerge_low_rank on host
  /// copies, the record applied there): with the record of the merge, W is
  /// the pre-merge weight bit for bit. Synchronises the stream and moves W
  /// over PCIe twice, as merge_low_rank().
  template <scalar T>
  static void unmerge_low_rank(
      context<cuda>& ctx, double s, input<T> b, input<T> a,
      vector_view<const double, cuda> row_scale, matrix_view<T, cuda> w,
      const std::vector<merge_exception<std::type_identity_t<T>>>& record) {
    auto host =
        host_operands(ctx, b, a, row_scale, as_const(w), "lowrank::ops<cuda>::unmerge_low_rank");
    context<cpu> cpu_ctx;
    ops<cpu>::unmerge_low_rank<T>(cpu_ctx, s, view(std::as_const(host.b)),
                                  view(std::as_const(host.a)), host.scale(), view(host.w), record);
    upload<T>(ctx, view(std::as_const(host.w)), w);
  }

 private:
  /// Host copies of the operands of a merge (contiguous).
  template <class T>
  struct merge_operands {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> w, b, a;
    Eigen::VectorXd c;
    [[nodiscard]] vector_view<const double, cpu> scale() const noexcept {
      return {c.data(), c.size()};
    }
  };

  /// Downloads W, B, A and the row scale c (queued, then one synchronisation).
  template <class T>
  static merge_operands<T> host_operands(context<cuda>& ctx, matrix_view<const T, cuda> b,
                                         matrix_view<const T, cuda> a,
                                         vector_view<const double, cuda> row_scale,
                                         matrix_view<const T, cuda> w, const char* call) {
    merge_operands<T> host;
    host.w.resize(w.rows(), w.cols());
    host.b.resize(b.rows(), b.cols());
    host.a.resize(a.rows(), a.cols());
    host.c.resize(row_scale.size());
    const auto down = [&](const auto* src, index_t ld, auto* dst, index_t rows, index_t cols) {
      detail::copy_2d(src, ld, dst, rows, rows, cols, cudaMemcpyDeviceToHost, ctx.stream(), call);
    };
    down(w.data(), w.ld(), host.w.data(), w.rows(), w.cols());
    down(b.data(), b.ld(), host.b.data(), b.rows(), b.cols());
    down(a.data(), a.ld(), host.a.data(), a.rows(), a.cols());
    down(row_scale.data(), row_scale.size(), host.c.data(), row_scale.size(), index_t{1});
    ctx.synchronize();
    return host;
  }

  /// The dynamic shared memory a one-block kernel may use on ctx's device:
  /// all of it but 8 KB for the kernel's static shared memory (ptxas, sm_90:
  /// cholesky_fused 4 KB, jacobi_svd none).
  static std::size_t dynamic_shared_memory(const context<cuda>& ctx) {
    constexpr std::size_t static_reserve = 8192;
    const std::size_t total = ctx.shared_memory_per_block();
    return total > static_reserve ? total - static_reserve : 0;
  }

  /// Whether a one-block kernel that needs `bytes` of dynamic shared memory
  /// fits on ctx's device.
  static bool fits_in_shared_memory(const context<cuda>& ctx, std::size_t bytes) {
    return bytes <= dynamic_shared_memory(ctx);
  }

  /// Allows `kernel` all the dynamic shared memory ctx's device has. The
  /// value depends only on the device, never on a call's size, so threads
  /// sharing a device cannot lower the limit under one another's launches.
  template <class Kernel>
  static void allow_shared_memory(const context<cuda>& ctx, Kernel kernel, const char* call) {
    detail::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(dynamic_shared_memory(ctx))),
                  call);
  }

  /// The value at `device` (a status a kernel or cuSOLVER wrote), after
  /// everything queued on the stream: one download, one synchronisation.
  template <class S>
  static S download_value(context<cuda>& ctx, const S* device, const char* call) {
    S host{};
    detail::check(cudaMemcpyAsync(&host, device, sizeof host, cudaMemcpyDeviceToHost, ctx.stream()),
                  call);
    ctx.synchronize();
    return host;
  }

  static void check_info(context<cuda>& ctx, const char* call) {
    detail::check_info(download_value(ctx, ctx.info(), call), call);
  }
};

static_assert(backend_for<cuda, float>);
static_assert(backend_for<cuda, double>);
static_assert(adapter_backend_for<cuda, float>);
static_assert(adapter_backend_for<cuda, double>);

}  // namespace lowrank
