#pragma once
/// @file
/// The cuBLAS and cuSOLVER routines the CUDA backend calls, overloaded on
/// float and double (internal), and the conversion of a dimension to
/// cuSOLVER's 32-bit int.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstdint>
#include <limits>

#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail::cuda_blas {

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

}  // namespace lowrank::detail::cuda_blas
