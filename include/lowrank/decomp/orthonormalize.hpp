#pragma once
/// @file
/// Orthonormalising a tall block of columns: the step that dominates the
/// overhead of randomized range finders (docs/algorithms.md, "Decompositions").
///
/// `orthonormalize(ctx, y, accuracy)` replaces Y (m x l, m >= l) by Q with
/// span(Q) = span(Y) (up to rounding) using Cholesky QR (CholQR: R = chol(Y^T Y),
/// Q = Y R^{-1}), which costs two BLAS-3 products of m l^2 flops and is the
/// fastest method on every backend:
/// - `orth_accuracy::basis`: one CholQR pass. Q is a well-conditioned basis of
///   span(Y), orthonormal up to about eps cond(Y)^2: what the intermediate
///   steps of a power iteration need.
/// - `orth_accuracy::orthonormal`: CholQR2 (two passes; Yamamoto et al. 2015):
///   ||Q^T Q - I|| = O(eps) whenever eps cond(Y)^2 < 1/2. The second pass
///   runs only when the first may have lost orthogonality: one pass leaves
///   ||Q^T Q - I|| at about eps cond(Y)^2 above the rounding floor of the Gram
///   matrix itself (which a second pass has too), so when the backend's
///   estimate of cond(Y) (from the first pass's R, `cholesky_status`) is at
///   most 2, one pass is as orthonormal as two (measured in float at 2048 x
///   74: 1.1e-6 to 1.2e-6 in the Frobenius norm, one pass or two, for cond(Y)
///   up to 2; 2.4e-6 against 1.2e-6 at 4, 3.3e-5 against 1.1e-6 at 30). The
///   randomized SVDs' final blocks have cond(Y) = s_1 / s_l of the sketched
///   spectrum, 1.2 for a Gaussian matrix, about 10 for s_i = i^(-1/2): the
///   second pass is skipped for the first and runs for the second.
///
/// CholQR breaks down when Y is numerically rank-deficient (the Cholesky
/// factorisation fails) or too ill-conditioned for the second pass to repair
/// (detected from the Gram matrix of that pass, ||Q1^T Q1 - I||_F >= 1/2). It
/// then falls back to shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa,
/// Yamamoto, Yanagisawa, SISC 2020: R = chol(Y^T Y + s I) with s = 11 (m l
/// + l (l + 1)) eps ||Y||_F^2, then CholQR2), which handles cond(Y) up to
/// about 1/eps, and finally to
/// Householder QR, which always succeeds (for exactly rank-deficient Y, Q spans
/// span(Y) plus orthonormal directions of the QR's choosing).
///
/// The small l x l steps (the Cholesky factorisation in double, R^{-1}, the
/// products of the factors) run on the backend as well (`ops::cholesky_factor`):
/// on a GPU nothing crosses to the host but the pass's status (one
/// synchronisation a pass).
/// Cost: 3 m l^2 flops a pass (4 on CUDA, whose Gram matrix is a full gemm; 2
/// passes for `orthonormal`, 1 where cond(Y) <= 2 on the CPU); memory: 4 l^2 (two of them in
/// double; + an m x l copy only on the Householder path without LAPACK).

#include <limits>
#include <utility>

#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/decomp/detail/common.hpp"

namespace lowrank {

/// How orthonormal the result of `orthonormalize` must be.
enum class orth_accuracy {
  basis,        ///< a well-conditioned basis of the span (one CholQR pass)
  orthonormal,  ///< Q^T Q = I to working precision (CholQR2)
};

/// Which method `orthonormalize` ended up using.
enum class orth_method {
  cholesky_qr,          ///< CholQR / CholQR2 succeeded
  shifted_cholesky_qr,  ///< fell back to shifted CholeskyQR3
  householder,          ///< fell back to Householder QR
};

namespace detail {

/// The largest kappa_2(Y) (as the backend estimates it from the first pass's
/// R) for which `orth_accuracy::orthonormal` stops after one CholQR pass.
inline constexpr double one_pass_condition = 2;

/// The small matrices of the Cholesky QR passes, on the backend.
template <class T, class Backend>
struct cholqr_workspace {
  cholqr_workspace(context<Backend>& ctx, index_t l)
      : gram(ctx, l, l), r(ctx, l, l), r_inv(ctx, l, l), r_inv_t(ctx, l, l) {}
  matrix<T, Backend> gram;        ///< Y^T Y (lower triangle)
  matrix<double, Backend> r;      ///< the pass's R
  matrix<double, Backend> r_inv;  ///< R^{-1}
  matrix<T, Backend> r_inv_t;     ///< R^{-1} rounded to T
};

/// One CholQR factor of Y (R^T R = Y^T Y, + shift I if `shifted`) into the
/// workspace's r and r_inv (and kappa_2(R) when `estimate_condition`).
template <class T, class Backend>
cholesky_status cholesky_qr_factor(context<Backend>& ctx, matrix_view<T, Backend> y,
                                   cholqr_workspace<T, Backend>& w, bool shifted,
                                   bool estimate_condition = false) {
  const index_t m = y.rows();
  const index_t l = y.cols();
  ops<Backend>::gram(ctx, as_const(y), w.gram.view());
  const double shift =
      shifted ? 11.0 * double(m * l + l * (l + 1)) * std::numeric_limits<T>::epsilon() : 0.0;
  return ops<Backend>::cholesky_factor(ctx, as_const(w.gram.view()), shift, w.r.view(),
                                       w.r_inv.view(), estimate_condition);
}

/// A B for small matrices on the backend, in double.
template <class Backend>
matrix<double, Backend> times(context<Backend>& ctx, matrix_view<const double, Backend> a,
                              matrix_view<const double, Backend> b) {
  matrix<double, Backend> product(ctx, a.rows(), b.cols());
  ops<Backend>::gemm(ctx, transpose::no, transpose::no, 1.0, a, b, 0.0, product.view());
  return product;
}

/// acc = f acc for l x l matrices on the backend (acc empty: acc = f).
template <class Backend>
void accumulate_factor(context<Backend>& ctx, matrix_view<const double, Backend> f,
                       matrix<double, Backend>& acc) {
  if (acc.rows() != 0) {
    acc = times(ctx, f, as_const(acc.view()));
    return;
  }
  acc = matrix<double, Backend>(ctx, f.rows(), f.cols());
  ops<Backend>::copy(ctx, f, acc.view());
}

/// orthonormalize (below), also giving (l x l, on the backend, in double):
/// - R (when `r` is not null): Y as given = Q R, upper triangular;
/// - a deferred last step (when `c` is not null and accuracy is orthonormal):
///   the last CholQR pass (the second; the only one where cond(Y) <= 2) is
///   not applied to Y but returned as C (upper triangular): Y (as returned)
///   C has orthonormal columns. The caller folds C into the small matrices it
///   multiplies Y by next, saving one m x l product. C is left empty (0 x 0,
///   meaning the identity) when a fallback applied everything.
template <class T, class Backend>
orth_method orthonormalize(context<Backend>& ctx, matrix_view<T, Backend> y, orth_accuracy accuracy,
                           matrix<double, Backend>* r, matrix<double, Backend>* c) {
  LOWRANK_ASSERT(y.rows() >= y.cols());
  const index_t l = y.cols();
  if (r != nullptr) *r = matrix<double, Backend>();
  if (c != nullptr) *c = matrix<double, Backend>();
  if (l == 0) return orth_method::cholesky_qr;
  cholqr_workspace<T, Backend> w(ctx, l);
  auto apply = [&] {
    ops<Backend>::convert(ctx, as_const(w.r_inv.view()), w.r_inv_t.view());
    ops<Backend>::multiply_right(ctx, as_const(w.r_inv_t.view()), y);
    if (r != nullptr) accumulate_factor(ctx, as_const(w.r.view()), *r);
  };

  if (const auto first =
          cholesky_qr_factor(ctx, y, w, false, accuracy == orth_accuracy::orthonormal);
      first.ok) {
    if (accuracy == orth_accuracy::orthonormal && first.condition <= one_pass_condition) {
      // With kappa_2(Y) <= 2 one pass is as orthonormal as two (see the file
      // comment), and that pass is the one deferred when the caller takes C.
      if (c == nullptr) {
        apply();
      } else {
        *c = std::move(w.r_inv);
        if (r != nullptr) accumulate_factor(ctx, as_const(w.r.view()), *r);
      }
      return orth_method::cholesky_qr;
    }
    apply();
    if (accuracy == orth_accuracy::basis) return orth_method::cholesky_qr;
    // The second pass's Gram matrix measures the first pass's orthogonality:
    // below 1/2 the second pass restores it to working precision.
    const auto second = cholesky_qr_factor(ctx, y, w, false);
    if (second.ok && second.deviation < 0.5) {
      if (c != nullptr) {
        *c = std::move(w.r_inv);
        if (r != nullptr) accumulate_factor(ctx, as_const(w.r.view()), *r);
      } else {
        apply();
      }
      return orth_method::cholesky_qr;
    }
  }
  // Shifted CholeskyQR3 on what Y is now (Y itself, or Y R1^{-1}: same span),
  // applied in full.
  if (cholesky_qr_factor(ctx, y, w, true).ok) {
    apply();
    if (cholesky_qr_factor(ctx, y, w, false).ok) {
      apply();
      if (accuracy == orth_accuracy::basis) return orth_method::shifted_cholesky_qr;
      const auto second = cholesky_qr_factor(ctx, y, w, false);
      if (second.ok && second.deviation < 0.5) {
        apply();
        return orth_method::shifted_cholesky_qr;
      }
    }
  }
  ops<Backend>::householder_orthonormalize(ctx, y, w.gram.view());
  if (r != nullptr) {
    ops<Backend>::convert(ctx, as_const(w.gram.view()), w.r.view());
    accumulate_factor(ctx, as_const(w.r.view()), *r);
  }
  return orth_method::householder;
}

}  // namespace detail

/// Replaces Y (m x l, m >= l) by Q with orthonormal columns spanning span(Y):
/// CholQR / CholQR2, falling back to shifted CholeskyQR3 and then Householder
/// QR (see the file comment). Returns the method that produced Q.
/// Precondition (asserted): y.rows() >= y.cols().
template <scalar T, class Backend>
requires backend_for<Backend, T> orth_method
orthonormalize(context<Backend>& ctx, matrix_view<T, Backend> y,
               orth_accuracy accuracy = orth_accuracy::orthonormal) {
  return detail::orthonormalize<T, Backend>(ctx, y, accuracy, nullptr, nullptr);
}

}  // namespace lowrank
