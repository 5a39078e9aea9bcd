#pragma once
/// @file
/// The CUDA backend's thin SVD, `ops<cuda>::svd` (internal; defined here,
/// declared in backend/cuda/core.hpp). A = U diag(s) V^T is computed on the
/// tall one of A and A^T (X, mt x nt) by the first route that applies:
/// - **Jacobi** (`svd_jacobi`): X up to `jacobi_svd_max` rows whose
///   one-block kernel fits the device's shared memory: one-sided Jacobi in
///   double in one block (kernels/jacobi.cuh; rotation threshold sqrt(mt)
///   eps_T, as LAPACK's sgesvj and dgesvj; a square A is rotated by rows,
///   X = A^T, which for the graded triangular factors of the randomized SVDs
///   takes fewer sweeps), rounded to T: accurate to the last digits without
///   squaring X, one launch and one status download. A zero singular value
///   (U's column undefined) or no convergence in `jacobi_max_sweeps` sweeps
///   hands X on to the routes below.
/// - **eigen** (`svd_eigen`): float, X with mt nt <= 512^2: in double,
///   X^T X = V diag(s^2) V^T by syevd, then U = the Q of a Householder QR of
///   X V (signs from R's diagonal), s = sqrt(max(eigenvalue, 0)); rounded to
///   float. Squaring X costs nothing at float's precision: an eigenvalue
///   errs by eps_double s_1^2, so every singular value errs by less than
///   sqrt(eps_double) s_1 = 1.5e-8 s_1 (float's own rounding: 6e-8 s_1), and
///   V and U are orthonormal to double precision.
/// - **gesvd** (`svd_gesvd`): cuSOLVER's QR-iteration SVD in T.
/// `ctx.svd_report()` tells afterwards which route ran and how many sweeps
/// the Jacobi kernel made. bench/README.md has the routes' timings.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "lowrank/backend/cuda/blas.hpp"
#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/core.hpp"
#include "lowrank/backend/cuda/device.hpp"
#include "lowrank/backend/cuda/kernels/elementwise.cuh"
#include "lowrank/backend/cuda/kernels/jacobi.cuh"
#include "lowrank/backend/cuda/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail {

/// X = A (tall) or A^T (wide), mt x nt, into x (leading dimension mt).
template <class T>
void load_tall(context<cuda>& ctx, matrix_view<const T, cuda> a, bool wide, T* x) {
  const index_t mt = wide ? a.cols() : a.rows();
  const index_t nt = wide ? a.rows() : a.cols();
  if (wide) {
    check(cuda_blas::transpose_into(ctx.blas(), a.rows(), a.cols(), a.data(), a.ld(), x, mt),
          "lowrank::ops<cuda>::svd: cublas<t>geam_64");
  } else {
    copy_2d(a.data(), a.ld(), x, mt, mt, nt, cudaMemcpyDeviceToDevice, ctx.stream(),
            "lowrank::ops<cuda>::svd: cudaMemcpy2DAsync");
  }
}

/// The Jacobi route into U, s, V; false when the kernel handed X on.
template <class T>
bool svd_jacobi(context<cuda>& ctx, matrix_view<const T, cuda> a, matrix_view<T, cuda> u,
                vector_view<T, cuda> s, matrix_view<T, cuda> v) {
  namespace k = kernels;
  const index_t mt = std::max(a.rows(), a.cols());
  const index_t nt = std::min(a.rows(), a.cols());
  // A square A is rotated by rows (X = A^T), as a wide one (see the file comment).
  const bool by_rows = a.rows() <= a.cols();
  const matrix_view<T, cuda> jl = by_rows ? v : u;
  const matrix_view<T, cuda> jr = by_rows ? u : v;
  const std::size_t bytes = k::jacobi_svd_shared_bytes(mt, nt);
  allow_shared_memory(ctx, k::jacobi_svd<T>, "lowrank::ops<cuda>::svd: cudaFuncSetAttribute");
  auto ws = ctx.workspace();
  auto* status = ws.take<k::jacobi_svd_status>(1);
  // LAPACK's threshold for T (sgesvj, dgesvj): a rotation below it changes
  // nothing T can hold, and float data needs fewer sweeps.
  const double tol = std::sqrt(double(mt)) * double(std::numeric_limits<T>::epsilon());
  k::jacobi_svd<T><<<1, k::jacobi_threads, bytes, ctx.stream()>>>(
      a.data(), a.ld(), by_rows, mt, nt, tol, cuda_core_ops::jacobi_max_sweeps, jl.data(), jl.ld(),
      s.data(), jr.data(), jr.ld(), status);
  check(cudaGetLastError(), "lowrank::ops<cuda>::svd: jacobi_svd");
  const auto host = download_value(ctx, status, "lowrank::ops<cuda>::svd: cudaMemcpyAsync");
  ctx.svd_report().jacobi_sweeps = host.sweeps;
  return host.converged != 0 && host.zero_columns == 0;
}

/// The eigen route (float): left (mt x nt) and right (nt x nt) factors of X.
template <class T>
void svd_eigen(context<cuda>& ctx, matrix_view<const T, cuda> a, bool wide,
               matrix_view<T, cuda> left, vector_view<T, cuda> s, matrix_view<T, cuda> right) {
  namespace k = kernels;
  using core = cuda_core_ops;
  const char* fn = "lowrank::ops<cuda>::svd";
  const index_t mt = wide ? a.cols() : a.rows();
  const index_t nt = wide ? a.rows() : a.cols();
  const int m = cuda_blas::to_int(mt, fn, "rows");
  const int n = cuda_blas::to_int(nt, fn, "cols");
  matrix<double, cuda> xd(ctx, mt, nt);
  matrix<double, cuda> e(ctx, nt, nt);   // X^T X, then its eigenvectors
  matrix<double, cuda> vd(ctx, nt, nt);  // V (descending)
  vector<double, cuda> w(ctx, nt);       // the eigenvalues (ascending)
  vector<double, cuda> sd(ctx, nt);
  vector<double, cuda> tau(ctx, nt);
  int lwork = 0;
  check(cusolverDnDsyevd_bufferSize(ctx.solver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                    n, e.view().data(), n, w.view().data(), &lwork),
        "lowrank::ops<cuda>::svd: cusolverDnDsyevd_bufferSize");
  int lwork_qr = 0;
  int lwork_q = 0;
  check(cuda_blas::geqrf_buffer(ctx.solver(), m, n, xd.view().data(), m, &lwork_qr),
        "lowrank::ops<cuda>::svd: cusolverDnDgeqrf_bufferSize");
  check(
      cuda_blas::orgqr_buffer(ctx.solver(), m, n, xd.view().data(), m, tau.view().data(), &lwork_q),
      "lowrank::ops<cuda>::svd: cusolverDnDorgqr_bufferSize");
  lwork = std::max({lwork, lwork_qr, lwork_q, 1});
  auto ws = ctx.workspace();
  T* x = ws.take<T>(std::size_t(mt * nt));
  auto* work = ws.take<double>(std::size_t(lwork));
  load_tall(ctx, a, wide, x);
  core::convert(ctx, matrix_view<const T, cuda>(x, mt, nt), xd.view());
  core::gram<double>(ctx, xd.view(), e.view());
  check(cusolverDnDsyevd(ctx.solver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                         e.view().data(), n, w.view().data(), work, lwork, ctx.info()),
        "lowrank::ops<cuda>::svd: cusolverDnDsyevd");
  check_info(ctx, "lowrank::ops<cuda>::svd: cusolverDnDsyevd");
  k::descending_singular_pairs<<<k::grid_for(nt * nt), k::block_threads, 0, ctx.stream()>>>(
      e.view().data(), nt, w.view().data(), nt, vd.view().data(), nt, sd.view().data());
  check(cudaGetLastError(), "lowrank::ops<cuda>::svd: descending_singular_pairs");
  // X V = Q R: U = Q diag(sign(R_jj)) (R_jj is +-s_j to rounding).
  matrix<double, cuda> q(ctx, mt, nt);
  core::gemm<double>(ctx, transpose::no, transpose::no, 1.0, xd.view(), vd.view(), 0.0, q.view());
  check(cuda_blas::geqrf(ctx.solver(), m, n, q.view().data(), m, tau.view().data(), work, lwork,
                         ctx.info()),
        "lowrank::ops<cuda>::svd: cusolverDnDgeqrf");
  check_info(ctx, "lowrank::ops<cuda>::svd: cusolverDnDgeqrf");
  vector<double, cuda> signs(ctx, nt);
  k::diagonal_signs<<<k::grid_for(nt), k::block_threads, 0, ctx.stream()>>>(q.view().data(), mt, nt,
                                                                            signs.view().data());
  check(cudaGetLastError(), "lowrank::ops<cuda>::svd: diagonal_signs");
  check(cuda_blas::orgqr(ctx.solver(), m, n, q.view().data(), m, tau.view().data(), work, lwork,
                         ctx.info()),
        "lowrank::ops<cuda>::svd: cusolverDnDorgqr");
  check_info(ctx, "lowrank::ops<cuda>::svd: cusolverDnDorgqr");
  core::scale_columns<double>(ctx, signs.view(), q.view());
  core::convert(ctx, as_const(q.view()), left);
  core::convert(ctx, as_const(vd.view()), right);
  core::convert(ctx, as_const(sd.view().as_matrix()), s.as_matrix());
}

/// The gesvd route: left (mt x nt) and right (nt x nt) factors of X.
template <class T>
void svd_gesvd(context<cuda>& ctx, matrix_view<const T, cuda> a, bool wide,
               matrix_view<T, cuda> left, vector_view<T, cuda> s, matrix_view<T, cuda> right) {
  const char* fn = "lowrank::ops<cuda>::svd";
  const index_t mt = wide ? a.cols() : a.rows();
  const index_t nt = wide ? a.rows() : a.cols();
  const int m = cuda_blas::to_int(mt, fn, "rows");
  const int n = cuda_blas::to_int(nt, fn, "cols");
  int lwork = 0;
  check(cuda_blas::gesvd_buffer(ctx.solver(), m, n, T(0), &lwork),
        "lowrank::ops<cuda>::svd: cusolverDn<t>gesvd_bufferSize");
  lwork = std::max(lwork, 1);
  auto ws = ctx.workspace();
  T* x = ws.take<T>(std::size_t(mt * nt));
  T* up = ws.take<T>(std::size_t(mt * nt));   // U'
  T* vpt = ws.take<T>(std::size_t(nt * nt));  // V'^T
  T* rwork = ws.take<T>(std::size_t(nt));
  T* work = ws.take<T>(std::size_t(lwork));
  load_tall(ctx, a, wide, x);
  check(cuda_blas::gesvd(ctx.solver(), m, n, x, m, s.data(), up, m, vpt, n, work, lwork, rwork,
                         ctx.info()),
        "lowrank::ops<cuda>::svd: cusolverDn<t>gesvd");
  check_info(ctx, "lowrank::ops<cuda>::svd: cusolverDn<t>gesvd");
  copy_2d(up, mt, left.data(), left.ld(), mt, nt, cudaMemcpyDeviceToDevice, ctx.stream(),
          "lowrank::ops<cuda>::svd: cudaMemcpy2DAsync");
  check(cuda_blas::transpose_into(ctx.blas(), nt, nt, vpt, nt, right.data(), right.ld()),
        "lowrank::ops<cuda>::svd: cublas<t>geam_64");
}

template <scalar T>
void cuda_core_ops::svd(context<cuda>& ctx, input<T> a, matrix_view<T, cuda> u,
                        vector_view<T, cuda> s, matrix_view<T, cuda> v) {
  const char* fn = "lowrank::ops<cuda>::svd";
  const bool wide = a.rows() < a.cols();
  const index_t mt = wide ? a.cols() : a.rows();
  const index_t nt = wide ? a.rows() : a.cols();
  auto& report = ctx.svd_report();
  report = {};
  if (nt == 0) return;
  cuda_blas::to_int(mt, fn, "rows");
  cuda_blas::to_int(nt, fn, "cols");
  if (svd_by_jacobi(ctx, mt, nt) && svd_jacobi<T>(ctx, a, u, s, v)) {
    report.method = cuda_svd_method::jacobi;
    return;
  }
  // A = U' S V'^T (tall) or A^T = U' S V'^T, i.e. A = V' S U'^T (wide).
  const matrix_view<T, cuda> left = wide ? v : u;
  const matrix_view<T, cuda> right = wide ? u : v;
  if (svd_by_eigen<T>(mt, nt)) {
    report.method = cuda_svd_method::eigen;
    svd_eigen<T>(ctx, a, wide, left, s, right);
  } else {
    report.method = cuda_svd_method::gesvd;
    svd_gesvd<T>(ctx, a, wide, left, s, right);
  }
}

}  // namespace lowrank::detail
