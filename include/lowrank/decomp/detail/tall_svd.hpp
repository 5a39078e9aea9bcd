#pragma once
/// @file
/// Thin SVD of a tall block on any backend (internal): the last step of the
/// randomized SVDs.
///
/// X (rows x l, rows >= l) = W diag(s) V^T, destroying X:
/// ```
/// Q R = X        orthonormalize X in place (CholQR2 with its fallbacks, the
///                second pass deferred: Q = X' C); R is the product of the
///                passes' triangular factors, in double
/// R = U S V^T    the l x l SVD, in precision T (R's entries carry T's
///                rounding already)
/// W = Q U = X' (C U)
/// ```
/// Every step runs on the backend (on a GPU, only the passes' status and the
/// SVD's status cross to the host). Only products and Cholesky QR touch the rows x l
/// data, so this runs at BLAS-3 speed on every backend (a direct SVD of X
/// would first do a Householder QR with level-2 panels).
/// Cost: about 8 rows l^2 flops plus O(l^3); memory rows x keep + O(l^2).

#include <utility>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/decomp/detail/common.hpp"
#include "lowrank/decomp/orthonormalize.hpp"

namespace lowrank::detail {

/// The leading `keep` singular triplets of X P (see tall_svd), on the backend.
template <class T, class Backend>
struct tall_svd_factors {
  matrix<T, Backend> w;       ///< rows x keep, orthonormal columns
  vector<T, Backend> s;       ///< keep values, descending
  matrix<double, Backend> v;  ///< l x keep, orthonormal columns
};

/// X P = W diag(s) V^T truncated to `keep` triplets, for X (rows x l,
/// destroyed) and a small l x l matrix P on the backend (the identity when
/// null or empty): X = Q R by CholQR2 with its last pass deferred (Q = X' C),
/// then the SVD of the l x l R P, W = X' (C U).
template <class T, class Backend>
tall_svd_factors<T, Backend> tall_svd(context<Backend>& ctx, matrix_view<T, Backend> x,
                                      index_t keep, const matrix<double, Backend>* p = nullptr) {
  const index_t rows = x.rows();
  const index_t l = x.cols();
  LOWRANK_ASSERT(rows >= l && keep >= 0 && keep <= l);
  matrix<double, Backend> r;
  matrix<double, Backend> c;
  orthonormalize(ctx, x, orth_accuracy::orthonormal, &r, &c);
  if (p != nullptr && p->rows() != 0) r = times(ctx, as_const(r.view()), p->view());

  matrix<T, Backend> rt(ctx, l, l);
  ops<Backend>::convert(ctx, as_const(r.view()), rt.view());
  matrix<T, Backend> u(ctx, l, l);
  matrix<T, Backend> v(ctx, l, l);
  vector<T, Backend> s(ctx, l);
  ops<Backend>::svd(ctx, as_const(rt.view()), u.view(), s.view(), v.view());

  tall_svd_factors<T, Backend> out{matrix<T, Backend>(ctx, rows, keep),
                                   vector<T, Backend>(ctx, keep),
                                   matrix<double, Backend>(ctx, l, keep)};
  ops<Backend>::copy(ctx, as_const(s.view().segment(0, keep).as_matrix()),
                     out.s.view().as_matrix());
  ops<Backend>::convert(ctx, as_const(v.view().left_cols(keep)), out.v.view());
  // C U, rounded to T once.
  matrix<T, Backend> cu(ctx, l, keep);
  if (c.rows() == 0) {
    ops<Backend>::copy(ctx, as_const(u.view().left_cols(keep)), cu.view());
  } else {
    matrix<double, Backend> uk(ctx, l, keep);
    ops<Backend>::convert(ctx, as_const(u.view().left_cols(keep)), uk.view());
    ops<Backend>::convert(ctx, as_const(times(ctx, as_const(c.view()), as_const(uk.view())).view()),
                          cu.view());
  }
  ops<Backend>::gemm(ctx, transpose::no, transpose::no, T(1), as_const(x), as_const(cu.view()),
                     T(0), out.w.view());
  return out;
}

}  // namespace lowrank::detail
