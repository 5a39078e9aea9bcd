#pragma once
/// @file
/// Thin SVD of a tall block on any backend (internal): the last step of the
/// randomized SVDs.
///
/// X (rows x l, rows >= l) = W diag(s) V^T, destroying X:
/// ```
/// Q R = X        orthonormalize X in place (CholQR2 with its fallbacks, the
///                second pass deferred: Q = X' C); R is the product of the
///                passes' triangular factors, kept on the host
/// R = U S V^T    the l x l SVD, on the host
/// W = Q U = X' (C U)
/// ```
/// Only products and Cholesky QR touch the rows x l data, so this runs at
/// BLAS-3 speed on every backend (a direct SVD of X would first do a
/// Householder QR with level-2 panels).
/// Cost: about 8 rows l^2 flops plus O(l^3) on the host; memory rows x keep + 2 l^2.

#include <Eigen/Core>
#include <type_traits>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/decomp/detail/common.hpp"
#include "lowrank/decomp/orthonormalize.hpp"

namespace lowrank::detail {

/// The leading `keep` singular triplets of X P (see tall_svd).
template <class T, class Backend>
struct tall_svd_factors {
  matrix<T, Backend> w;                   ///< rows x keep, orthonormal columns
  Eigen::Matrix<T, Eigen::Dynamic, 1> s;  ///< keep values, descending (host)
  Eigen::MatrixXd v;                      ///< l x keep, orthonormal columns (host)
};

/// X P = W diag(s) V^T truncated to `keep` triplets, for X (rows x l,
/// destroyed) and a small l x l matrix P on the host (the identity when null):
/// X = Q R by CholQR2 with its last pass deferred (Q = X' C), then the SVD of
/// the l x l R P on the host, W = X' (C U).
template <class T, class Backend>
tall_svd_factors<T, Backend> tall_svd(context<Backend>& ctx, matrix_view<T, Backend> x,
                                      index_t keep, const Eigen::MatrixXd* p = nullptr) {
  const index_t rows = x.rows();
  const index_t l = x.cols();
  LOWRANK_ASSERT(rows >= l && keep >= 0 && keep <= l);
  Eigen::MatrixXd r;
  Eigen::MatrixXd c;
  orthonormalize(ctx, x, orth_accuracy::orthonormal, &r, &c);
  if (p != nullptr) r = r * *p;

  // The l x l SVD in precision T: R's entries carry T's rounding already.
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> rt = r.template cast<T>();
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> u(l, l);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> v(l, l);
  Eigen::Matrix<T, Eigen::Dynamic, 1> s(l);
  host_context<T> host(1);
  host_ops<T>::svd(host, view(rt), view(u), vector_view<T, cpu>(s.data(), l), view(v));

  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> cu =
      (c * u.leftCols(keep).template cast<double>()).template cast<T>();
  matrix<T, Backend> cu_device(ctx, l, keep);
  ops<Backend>::upload(ctx, view(cu), cu_device.view());
  tall_svd_factors<T, Backend> out{matrix<T, Backend>(ctx, rows, keep), s.head(keep),
                                   v.leftCols(keep).template cast<double>()};
  ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), as_const(x),
                     as_const(cu_device.view()), T(0), out.w.view());
  return out;
}

}  // namespace lowrank::detail
