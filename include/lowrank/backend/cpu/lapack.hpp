#pragma once
/// @file
/// The few BLAS and LAPACK routines the CPU backend calls directly: gemm and
/// trmm when the build uses a BLAS (`EIGEN_USE_BLAS`; Eigen's own product would zero C
/// before accumulating into it), and gesdd (divide-and-conquer SVD), geqrf and
/// orgqr (Householder QR and its explicit Q), gesvd (QR-iteration SVD, the
/// fallback when gesdd's result fails its check), trtri (triangular inverse) when
/// it links a LAPACK (`LOWRANK_HAS_LAPACK`). Declared here with the Fortran
/// ABI (32-bit INTEGER, trailing hidden lengths of character arguments) so
/// that neither CBLAS nor LAPACKE is needed.

#include <climits>
#include <cstddef>

#include "lowrank/core/config.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"

#if defined(EIGEN_USE_BLAS)

// sgemm_ and dgemm_ are declared by Eigen (Eigen/src/misc/blas.h) under EIGEN_USE_BLAS.
#include <Eigen/Core>

namespace lowrank::detail::blas {

/// The largest dimension or leading dimension the BLAS's 32-bit INTEGER takes.
inline constexpr index_t int_max = 2147483647;

/// C = alpha op(A) op(B) + beta C through the BLAS (beta = 0 ignores C).
/// The shapes are those of a view, so they fit the BLAS's 32-bit INTEGER
/// unless a dimension exceeds 2^31 - 1 (then the caller uses Eigen).
template <class T>
void gemm(bool ta, bool tb, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda,
          const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  const int mi = static_cast<int>(m);
  const int ni = static_cast<int>(n);
  const int ki = static_cast<int>(k);
  const int ldai = static_cast<int>(lda);
  const int ldbi = static_cast<int>(ldb);
  const int ldci = static_cast<int>(ldc);
  const char* opa = ta ? "T" : "N";
  const char* opb = tb ? "T" : "N";
  if constexpr (sizeof(T) == 4) {
    sgemm_(opa, opb, &mi, &ni, &ki, &alpha, a, &ldai, b, &ldbi, &beta, c, &ldci);
  } else {
    dgemm_(opa, opb, &mi, &ni, &ki, &alpha, a, &ldai, b, &ldbi, &beta, c, &ldci);
  }
}

/// B = B A in place, for B m x n and an upper-triangular n x n A (trmm, side
/// right; what lies below A's diagonal is not read). Same shape limit as gemm.
template <class T>
void trmm_right_upper(index_t m, index_t n, const T* a, index_t lda, T* b, index_t ldb) {
  const int mi = static_cast<int>(m);
  const int ni = static_cast<int>(n);
  const int ldai = static_cast<int>(lda);
  const int ldbi = static_cast<int>(ldb);
  const T one = 1;
  if constexpr (sizeof(T) == 4) {
    strmm_("R", "U", "N", "N", &mi, &ni, &one, a, &ldai, b, &ldbi);
  } else {
    dtrmm_("R", "U", "N", "N", &mi, &ni, &one, a, &ldai, b, &ldbi);
  }
}

}  // namespace lowrank::detail::blas

#endif  // EIGEN_USE_BLAS

#if LOWRANK_HAS_LAPACK

extern "C" {
void dtrtri_(const char* uplo, const char* diag, const int* n, double* a, const int* lda, int* info,
             std::size_t uplo_len, std::size_t diag_len);
void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda, float* s,
             float* u, const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork,
             int* iwork, int* info, std::size_t jobz_len);
void dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda, double* s,
             double* u, const int* ldu, double* vt, const int* ldvt, double* work, const int* lwork,
             int* iwork, int* info, std::size_t jobz_len);
void sgesvd_(const char* jobu, const char* jobvt, const int* m, const int* n, float* a,
             const int* lda, float* s, float* u, const int* ldu, float* vt, const int* ldvt,
             float* work, const int* lwork, int* info, std::size_t jobu_len, std::size_t jobvt_len);
void dgesvd_(const char* jobu, const char* jobvt, const int* m, const int* n, double* a,
             const int* lda, double* s, double* u, const int* ldu, double* vt, const int* ldvt,
             double* work, const int* lwork, int* info, std::size_t jobu_len,
             std::size_t jobvt_len);
void sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau, float* work,
             const int* lwork, int* info);
void dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work,
             const int* lwork, int* info);
void sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda, const float* tau,
             float* work, const int* lwork, int* info);
void dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau,
             double* work, const int* lwork, int* info);
}

namespace lowrank::detail::lapack {

/// A dimension as LAPACK's 32-bit INTEGER.
/// @throws lowrank::invalid_argument past INT_MAX.
inline int to_int(index_t value, const char* function, const char* what) {
  if (value > INT_MAX) throw_invalid_argument(function, what, value, "<= 2^31 - 1 for LAPACK");
  return static_cast<int>(value);
}

inline void gesdd(const char* jobz, const int* m, const int* n, float* a, const int* lda, float* s,
                  float* u, const int* ldu, float* vt, const int* ldvt, float* work,
                  const int* lwork, int* iwork, int* info) {
  sgesdd_(jobz, m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, iwork, info, 1);
}
inline void gesdd(const char* jobz, const int* m, const int* n, double* a, const int* lda,
                  double* s, double* u, const int* ldu, double* vt, const int* ldvt, double* work,
                  const int* lwork, int* iwork, int* info) {
  dgesdd_(jobz, m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, iwork, info, 1);
}
inline void gesvd(const int* m, const int* n, float* a, const int* lda, float* s, float* u,
                  const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork,
                  int* info) {
  sgesvd_("S", "S", m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, info, 1, 1);
}
inline void gesvd(const int* m, const int* n, double* a, const int* lda, double* s, double* u,
                  const int* ldu, double* vt, const int* ldvt, double* work, const int* lwork,
                  int* info) {
  dgesvd_("S", "S", m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, info, 1, 1);
}
inline void geqrf(const int* m, const int* n, float* a, const int* lda, float* tau, float* work,
                  const int* lwork, int* info) {
  sgeqrf_(m, n, a, lda, tau, work, lwork, info);
}
inline void geqrf(const int* m, const int* n, double* a, const int* lda, double* tau, double* work,
                  const int* lwork, int* info) {
  dgeqrf_(m, n, a, lda, tau, work, lwork, info);
}
inline void orgqr(const int* m, const int* n, const int* k, float* a, const int* lda,
                  const float* tau, float* work, const int* lwork, int* info) {
  sorgqr_(m, n, k, a, lda, tau, work, lwork, info);
}
inline void orgqr(const int* m, const int* n, const int* k, double* a, const int* lda,
                  const double* tau, double* work, const int* lwork, int* info) {
  dorgqr_(m, n, k, a, lda, tau, work, lwork, info);
}

}  // namespace lowrank::detail::lapack

#endif  // LOWRANK_HAS_LAPACK
