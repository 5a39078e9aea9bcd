#pragma once
/// @file
/// The CPU backend's thin SVD (internal), `ops<cpu>::svd`'s routes: LAPACK
/// gesdd when linked, Eigen's BDCSVD otherwise (after a Householder QR when
/// one side is at least twice the other), each result checked by
/// `svd_is_accurate` and, when the check fails, recomputed by the robust
/// method (LAPACK gesvd, or Eigen's Jacobi SVD after a column-pivoted QR).

#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "lowrank/backend/cpu/lapack.hpp"
#include "lowrank/backend/cpu/partition.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail {

/// Thin SVD of a tall matrix (m >= n) held in `work`, which it overwrites:
/// Householder QR first when m >= 2n, so that the bidiagonalisation runs on
/// the n x n factor R (LAPACK's gesdd does the same internally). `accurate`
/// selects one-sided Jacobi (after a column-pivoted QR) instead of BDCSVD.
template <class T>
void svd_tall_eigen(host_matrix<T>& work, eigen_map<T> u, eigen_vector_map<T> s, eigen_map<T> v,
                    bool accurate) {
  const index_t m = work.rows();
  const index_t n = work.cols();
  auto take = [&](const auto& svd, auto&& u_part) {
    if (svd.info() != Eigen::Success) {
      throw_numerical_error("lowrank::ops<cpu>::svd", "a", "not decomposable", "finite entries");
    }
    u_part = svd.matrixU();
    s = svd.singularValues();
    v = svd.matrixV();
  };
  if (accurate) {
    take(Eigen::JacobiSVD<host_matrix<T>, Eigen::ColPivHouseholderQRPreconditioner>(
             work, Eigen::ComputeThinU | Eigen::ComputeThinV),
         u);
  } else if (m >= 2 * n) {
    Eigen::HouseholderQR<Eigen::Ref<host_matrix<T>>> qr(work);
    const host_matrix<T> r = work.topRows(n).template triangularView<Eigen::Upper>();
    take(Eigen::BDCSVD<host_matrix<T>>(r, Eigen::ComputeFullU | Eigen::ComputeFullV), u.topRows(n));
    u.bottomRows(m - n).setZero();
    qr.householderQ().applyThisOnTheLeft(u);
  } else {
    take(Eigen::BDCSVD<host_matrix<T>>(work, Eigen::ComputeThinU | Eigen::ComputeThinV), u);
  }
}

/// Whether A = U diag(s) V^T holds to working precision: finite, s
/// non-increasing and >= 0, U and V orthonormal and ||A V - U diag(s)||_F
/// small, each within 64 sqrt(max(m, n)) eps (relative to ||A||_F for the
/// residual). Divide-and-conquer SVDs (LAPACK gesdd, Eigen's BDCSVD) can miss
/// that on clusters of nearly equal singular values (Eigen 3.4's BDCSVD
/// returned values off by 1e-6 relative on a 90 x 200 matrix with 65 equal
/// ones); the check costs about one product with A.
template <class T>
bool svd_is_accurate(eigen_map<const T> a, eigen_map<T> u, eigen_vector_map<T> s, eigen_map<T> v) {
  const double tol = 64.0 * std::sqrt(double(std::max(a.rows(), a.cols()))) *
                     double(std::numeric_limits<T>::epsilon());
  if (!u.allFinite() || !v.allFinite() || !s.allFinite()) return false;
  for (index_t i = 0; i < s.size(); ++i) {
    if (s(i) < 0 || (i > 0 && s(i) > s(i - 1))) return false;
  }
  const auto identity = host_matrix<T>::Identity(s.size(), s.size());
  if ((u.transpose() * u - identity).cwiseAbs().maxCoeff() > tol) return false;
  if ((v.transpose() * v - identity).cwiseAbs().maxCoeff() > tol) return false;
  const host_matrix<T> residual = a * v - u * s.asDiagonal();
  return double(residual.norm()) <= tol * double(a.norm());
}

#if LOWRANK_HAS_LAPACK
/// gesdd (divide and conquer) or, when `robust`, gesvd (QR iteration).
template <class T>
void lapack_svd(matrix_view<const T, cpu> a, matrix_view<T, cpu> u, vector_view<T, cpu> s,
                matrix_view<T, cpu> v, bool robust) {
  using namespace lapack;
  const char* fn = "lowrank::ops<cpu>::svd";
  const index_t m = a.rows();
  const index_t n = a.cols();
  const index_t r = std::min(m, n);
  host_matrix<T> work = as_eigen(a);
  host_matrix<T> vt(r, n);
  const int mi = to_int(m, fn, "a.rows()");
  const int ni = to_int(n, fn, "a.cols()");
  const int ldu = to_int(u.ld(), fn, "u.ld()");
  const int ldvt = static_cast<int>(std::max<index_t>(r, 1));
  std::vector<int> iwork(static_cast<std::size_t>(8 * r));
  int info = 0;
  int lwork = -1;
  T query{};
  auto call = [&](T* buffer) {
    if (robust) {
      gesvd(&mi, &ni, work.data(), &mi, s.data(), u.data(), &ldu, vt.data(), &ldvt, buffer, &lwork,
            &info);
    } else {
      gesdd("S", &mi, &ni, work.data(), &mi, s.data(), u.data(), &ldu, vt.data(), &ldvt, buffer,
            &lwork, iwork.data(), &info);
    }
  };
  call(&query);
  // LAPACK returns the size as a floating-point number; round it up.
  lwork = static_cast<int>(
      std::ceil(std::max(query, T(1)) * (1 + 4 * std::numeric_limits<T>::epsilon())));
  std::vector<T> buffer(static_cast<std::size_t>(lwork));
  call(buffer.data());
  if (info != 0) {
    throw_numerical_error(fn, "info", info, robust ? "0 from LAPACK gesvd" : "0 from LAPACK gesdd");
  }
  as_eigen(v) = vt.transpose();
}
#endif

/// Thin SVD: A (m x n) = U diag(s) V^T with r = min(m, n) columns.
/// LAPACK gesdd when linked, otherwise Eigen's BDCSVD (after a Householder
/// QR when one side is at least twice the other); the result is checked and,
/// if it fails, recomputed by LAPACK gesvd or Eigen's Jacobi SVD.
/// @throws lowrank::numerical_error if the SVD does not converge.
template <class T>
void cpu_svd(matrix_view<const T, cpu> a, matrix_view<T, cpu> u, vector_view<T, cpu> s,
             matrix_view<T, cpu> v) {
  const index_t m = a.rows();
  const index_t n = a.cols();
  const index_t r = std::min(m, n);
  LOWRANK_ASSERT(u.rows() == m && u.cols() == r && s.size() == r && v.rows() == n && v.cols() == r);
  if (r == 0) return;
  // The fast divide-and-conquer SVD, checked; the slower, robust one when
  // the check fails (see svd_is_accurate).
  for (const bool robust : {false, true}) {
#if LOWRANK_HAS_LAPACK
    lapack_svd(a, u, s, v, robust);
#else
    if (m >= n) {
      host_matrix<T> work = as_eigen(a);
      svd_tall_eigen<T>(work, as_eigen(u), as_eigen(s), as_eigen(v), robust);
    } else {
      host_matrix<T> work = as_eigen(a).transpose();
      svd_tall_eigen<T>(work, as_eigen(v), as_eigen(s), as_eigen(u), robust);
    }
#endif
    if (robust || svd_is_accurate<T>(as_eigen(a), as_eigen(u), as_eigen(s), as_eigen(v))) {
      return;
    }
  }
}

}  // namespace lowrank::detail
