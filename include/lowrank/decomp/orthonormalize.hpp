#pragma once
/// @file
/// Orthonormalising a tall block of columns: the step that dominates the
/// overhead of randomized range finders (ALGORITHMS.md section 1).
///
/// `orthonormalize(ctx, y, accuracy)` replaces Y (m x l, m >= l) by Q with
/// span(Q) = span(Y) (up to rounding) using Cholesky QR (CholQR: R = chol(Y^T Y),
/// Q = Y R^{-1}), which costs two BLAS-3 products of m l^2 flops and is the
/// fastest method on every backend:
/// - `orth_accuracy::basis`: one CholQR pass. Q is a well-conditioned basis of
///   span(Y), orthonormal up to about eps cond(Y)^2: what the intermediate
///   steps of a power iteration need.
/// - `orth_accuracy::orthonormal`: CholQR2 (two passes; Yamamoto et al. 2015):
///   ||Q^T Q - I|| = O(eps) whenever eps cond(Y)^2 < 1/2.
///
/// CholQR breaks down when Y is numerically rank-deficient (the Cholesky
/// factorisation fails) or too ill-conditioned for the second pass to repair
/// (detected from the Gram matrix of that pass, ||Q1^T Q1 - I||_F >= 1/2). It
/// then falls back to shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa, Zhang,
/// Yamamoto 2020: R = chol(Y^T Y + s I) with s = 11 (m l + l (l + 1)) eps ||Y||_F^2,
/// then CholQR2), which handles cond(Y) up to about 1/eps, and finally to
/// Householder QR, which always succeeds (for exactly rank-deficient Y, Q spans
/// span(Y) plus orthonormal directions of the QR's choosing).
///
/// The small l x l Cholesky factorisations (and the inverse of R) run on the
/// host in double precision; the Gram matrix (syrk) and Y R^{-1} (a product)
/// run on the backend.
/// Cost: 3 m l^2 flops a pass (2 passes for `orthonormal`); memory: 2 l^2 (+ an
/// m x l copy only on the Householder path without LAPACK).

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <cmath>
#include <limits>

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

/// The factor of one CholQR pass, computed on the host.
struct cholqr_factor {
  bool ok = false;        ///< the Cholesky factorisation succeeded
  double deviation = 0;   ///< ||Y^T Y - I||_F
  Eigen::MatrixXd r;      ///< R, upper triangular: R^T R = Y^T Y (+ shift I)
  Eigen::MatrixXd r_inv;  ///< R^{-1}
};

/// R with R^T R = Y^T Y + shift I (shift only if `shifted`), from the Gram
/// matrix on the backend and a Cholesky factorisation on the host in double.
/// Fails (ok = false) when the factorisation breaks down or R^{-1} would
/// overflow in precision T.
template <class T, class Backend>
cholqr_factor cholesky_qr_factor(context<Backend>& ctx, matrix_view<T, Backend> y,
                                 matrix<T, Backend>& gram, bool shifted) {
  const index_t m = y.rows();
  const index_t l = y.cols();
  ops<Backend>::gram(ctx, as_const(y), gram.view());
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> host(l, l);
  ops<Backend>::download(ctx, as_const(gram.view()), view(host));
  Eigen::MatrixXd g = host.template cast<double>().template selfadjointView<Eigen::Lower>();

  cholqr_factor f;
  f.deviation = (g - Eigen::MatrixXd::Identity(l, l)).norm();
  const double trace = g.trace();
  if (!std::isfinite(trace) || !std::isfinite(f.deviation)) return f;
  if (shifted) {
    const double eps = std::numeric_limits<T>::epsilon();
    g.diagonal().array() += 11.0 * double(m * l + l * (l + 1)) * eps * trace;
  }
  Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>, Eigen::Lower> llt(g);
  if (llt.info() != Eigen::Success) return f;
  const auto diagonal = g.diagonal();
  if (!(diagonal.minCoeff() > 0) || !std::isfinite(diagonal.maxCoeff())) return f;
  f.r = g.template triangularView<Eigen::Lower>().transpose();
  f.r_inv = f.r;
  host_ops<T>::invert_upper(f.r_inv);
  // Y R^{-1} is formed in precision T: an entry of R^{-1} that overflows
  // there would turn Y into Inf.
  f.ok = f.r_inv.cwiseAbs().maxCoeff() < double(std::numeric_limits<T>::max());
  return f;
}

/// Y = Y R^{-1}, as a product (twice a triangular solve's flops, at more than
/// twice its speed).
template <class T, class Backend>
void apply_inverse(context<Backend>& ctx, matrix_view<T, Backend> y, matrix<T, Backend>& scratch,
                   const Eigen::MatrixXd& r_inv) {
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> host = r_inv.template cast<T>();
  ops<Backend>::upload(ctx, view(host), scratch.view());
  ops<Backend>::multiply_right(ctx, as_const(scratch.view()), y);
}

/// orthonormalize (below), also giving
/// - R (when `r` is not null): Y as given = Q R, l x l upper triangular, in double;
/// - a deferred last step (when `c` is not null and accuracy is orthonormal):
///   the second CholQR pass is not applied to Y but returned as C (l x l,
///   upper triangular): Y (as returned) C has orthonormal columns. The caller
///   folds C into the small matrices it multiplies Y by next, saving one
///   m x l product. C is the identity when a fallback applied everything.
template <class T, class Backend>
orth_method orthonormalize(context<Backend>& ctx, matrix_view<T, Backend> y, orth_accuracy accuracy,
                           Eigen::MatrixXd* r, Eigen::MatrixXd* c) {
  LOWRANK_ASSERT(y.rows() >= y.cols());
  const index_t l = y.cols();
  if (r != nullptr) r->setIdentity(l, l);
  if (c != nullptr) c->setIdentity(l, l);
  if (l == 0) return orth_method::cholesky_qr;
  matrix<T, Backend> gram(ctx, l, l);
  auto apply = [&](const cholqr_factor& f) {
    apply_inverse(ctx, y, gram, f.r_inv);
    if (r != nullptr) *r = f.r.template triangularView<Eigen::Upper>() * *r;
  };

  if (const auto first = cholesky_qr_factor(ctx, y, gram, false); first.ok) {
    apply(first);
    if (accuracy == orth_accuracy::basis) return orth_method::cholesky_qr;
    // The second pass's Gram matrix measures the first pass's orthogonality:
    // below 1/2 the second pass restores it to working precision.
    const auto second = cholesky_qr_factor(ctx, y, gram, false);
    if (second.ok && second.deviation < 0.5) {
      if (c != nullptr) {
        *c = second.r_inv;
        if (r != nullptr) *r = second.r.template triangularView<Eigen::Upper>() * *r;
      } else {
        apply(second);
      }
      return orth_method::cholesky_qr;
    }
  }
  // Shifted CholeskyQR3 on what Y is now (Y itself, or Y R1^{-1}: same span),
  // applied in full.
  if (const auto shifted = cholesky_qr_factor(ctx, y, gram, true); shifted.ok) {
    apply(shifted);
    const auto first = cholesky_qr_factor(ctx, y, gram, false);
    if (first.ok) {
      apply(first);
      if (accuracy == orth_accuracy::basis) return orth_method::shifted_cholesky_qr;
      const auto second = cholesky_qr_factor(ctx, y, gram, false);
      if (second.ok && second.deviation < 0.5) {
        apply(second);
        return orth_method::shifted_cholesky_qr;
      }
    }
  }
  ops<Backend>::householder_orthonormalize(ctx, y, gram.view());
  if (r != nullptr) {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> host(l, l);
    ops<Backend>::download(ctx, as_const(gram.view()), view(host));
    *r = host.template cast<double>() * *r;
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
  return detail::orthonormalize(ctx, y, accuracy, nullptr, nullptr);
}

}  // namespace lowrank
