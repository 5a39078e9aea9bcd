#pragma once
/// @file
/// Compressing a trained weight W (m x n) into a low-rank part plus a sparse
/// part, W ~ L + S (docs/algorithms.md, "Factors"):
///
/// - `low_rank_plus_sparse(ctx, W, rank, nnz)`: L = the rank-r truncation of
///   W (truncated SVD, or randomized with `options.power_iterations` >= 0),
///   S = the nnz largest-magnitude entries of the residual W - L (ties to the
///   lower row-major position). Given L, that S is the best nnz-sparse
///   correction in the Frobenius norm; the pair is not jointly optimal.
///   Cost: the SVD, one GEMM for W - L, an O(m n) selection on the host
///   (the residual is downloaded once on GPU backends).
/// - `robust_pca(ctx, W, options)`: principal component pursuit, min ||L||_*
///   + lambda ||S||_1 subject to L + S = W, by the inexact augmented
///   Lagrangian method (Lin, Chen, Ma, "The augmented Lagrange multiplier
///   method for exact recovery of corrupted low-rank matrices", 2010,
///   Algorithm 5): Y0 = W / max(||W||_2, ||W||_max / lambda), mu0 = 1.25 /
///   ||W||_2, rho = 1.5, mu capped at 1e7 mu0; per iteration L = the singular
///   value thresholding of W - S + Y / mu at 1 / mu (a thin SVD), S = the
///   soft thresholding of W - L + Y / mu at lambda / mu, Y += mu (W - L - S),
///   until ||W - L - S||_F <= tolerance ||W||_F or max_iterations. lambda =
///   1 / sqrt(max(m, n)) by default (Candes et al.). Cost per iteration: one
///   thin SVD of an m x n matrix, two GEMM-sized updates.
///
/// Both return a `sparse_low_rank_factor`: L as U diag(s) V^T, S as a
/// support and values, the relative error ||W - L - S||_F / ||W||_F (in
/// double), and the parameter count r (m + n) + nnz (L stored as U diag(s)^(1/2)
/// and diag(s)^(1/2) V^T, S's values; its int32 positions, nnz + m + 1,
/// are index memory, not parameters). robust_pca also reports its
/// iterations, whether it met the tolerance, and the constraint residual.
///
/// **Errors.** lowrank::invalid_argument for an empty W, a rank outside [0,
/// min(m, n)], nnz outside [0, m n], lambda < 0, tolerance <= 0 or
/// max_iterations < 1; lowrank::numerical_error for a non-finite entry of W.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
#include "lowrank/decomp/low_rank.hpp"
#include "lowrank/decomp/randomized_svd.hpp"
#include "lowrank/decomp/truncated_svd.hpp"
#include "lowrank/factors/backend.hpp"
#include "lowrank/factors/sparse.hpp"

namespace lowrank {

/// W ~ L + S: a low-rank part and a sparse part (see the file comment).
template <class T, class Backend>
struct sparse_low_rank_factor {
  low_rank<T, Backend> low;         ///< L = U diag(s) V^T
  sparse_support<Backend> support;  ///< S's positions
  vector<T, Backend> values;        ///< S's values, in the support's order
  double error = 0;                 ///< ||W - L - S||_F / ||W||_F
  index_t parameters = 0;           ///< r (m + n) + nnz

  /// L + S as a dense m x n matrix.
  void to_dense(context<Backend>& ctx, matrix_view<T, Backend> out) const {
    detail::require_shape("lowrank::sparse_low_rank_factor::to_dense", "out", out, low.u.rows(),
                          low.v.rows());
    if (low.rank() == 0) {
      ops<Backend>::fill(ctx, out, T(0));
    } else {
      matrix<T, Backend> us(ctx, low.u.rows(), low.rank());
      ops<Backend>::copy(ctx, low.u.view(), us.view());
      ops<Backend>::scale_columns(ctx, low.s.view(), us.view());
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1), as_const(us.view()),
                         low.v.view(), T(0), out);
    }
    ops<Backend>::sparse_to_dense(ctx, T(1), support.view(), values.view(), out);
  }
};

/// Options of low_rank_plus_sparse.
struct low_rank_plus_sparse_options {
  /// < 0: the exact truncated SVD; q >= 0: the randomized SVD with q power
  /// iterations (decomp/randomized_svd.hpp), oversampling 10.
  index_t power_iterations = -1;
  std::uint64_t seed = 0;  ///< the randomized SVD's sketch
};

/// Options of robust_pca.
struct robust_pca_options {
  double lambda = 0;        ///< the weight of ||S||_1; 0 means 1 / sqrt(max(m, n))
  double tolerance = 1e-7;  ///< stop when ||W - L - S||_F <= tolerance ||W||_F
  index_t max_iterations = 500;
};

/// robust_pca's result: the factor and how the iteration ended.
template <class T, class Backend>
struct robust_pca_result {
  sparse_low_rank_factor<T, Backend> factor;
  index_t iterations = 0;
  bool converged = false;
  double residual = 0;  ///< ||W - L - S||_F / ||W||_F at the last iteration
};

namespace detail {

/// The CSR support of the entries of a host matrix (column-major, m x n)
/// for which keep(i, j) holds, and their values in the support's order.
template <class T, class Backend, class Keep>
sparse_low_rank_factor<T, Backend> with_sparse_part(context<Backend>& ctx, low_rank<T, Backend> low,
                                                    const Eigen::Matrix<T, -1, -1>& residual,
                                                    Keep&& keep) {
  const index_t m = residual.rows(), n = residual.cols();
  std::vector<std::int32_t> offsets(std::size_t(m) + 1, 0), columns;
  Eigen::Matrix<T, -1, 1> values_h;
  std::vector<T> picked;
  for (index_t i = 0; i < m; ++i) {
    for (index_t j = 0; j < n; ++j) {
      if (keep(i, j)) {
        columns.push_back(static_cast<std::int32_t>(j));
        picked.push_back(residual(i, j));
      }
    }
    offsets[std::size_t(i) + 1] = static_cast<std::int32_t>(columns.size());
  }
  sparse_low_rank_factor<T, Backend> f{
      std::move(low), sparse_support<Backend>::from_csr(ctx, m, n, offsets, columns),
      vector<T, Backend>(ctx, index_t(picked.size())), 0, 0};
  if (!picked.empty()) {
    ops<Backend>::upload(ctx, matrix_view<const T, cpu>(picked.data(), index_t(picked.size()), 1),
                         f.values.view().as_matrix());
  }
  f.parameters = f.low.rank() * (m + n) + index_t(picked.size());
  return f;
}

/// W - U diag(s) V^T into a new matrix.
template <class T, class Backend>
matrix<T, Backend> residual_of(context<Backend>& ctx, matrix_view<const T, Backend> w,
                               const low_rank<T, Backend>& low) {
  matrix<T, Backend> r(ctx, w.rows(), w.cols());
  ops<Backend>::copy(ctx, w, r.view());
  if (low.rank() > 0) {
    matrix<T, Backend> us(ctx, w.rows(), low.rank());
    ops<Backend>::copy(ctx, low.u.view(), us.view());
    ops<Backend>::scale_columns(ctx, low.s.view(), us.view());
    ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(-1), as_const(us.view()), low.v.view(),
                       T(1), r.view());
  }
  return r;
}

template <class T, class Backend>
Eigen::Matrix<T, -1, -1> to_host_matrix(context<Backend>& ctx, matrix_view<const T, Backend> x) {
  Eigen::Matrix<T, -1, -1> h(x.rows(), x.cols());
  ops<Backend>::download(ctx, x, view(h));
  return h;
}

}  // namespace detail

/// W ~ L + S with L of rank `rank` and S of `nnz` entries (file comment).
/// @throws see the file comment.
template <scalar T, class Backend>
requires factors_backend_for<Backend, T>
[[nodiscard]] sparse_low_rank_factor<T, Backend> low_rank_plus_sparse(
    context<Backend>& ctx, matrix_view<const T, Backend> w, index_t rank, index_t nnz,
    const low_rank_plus_sparse_options& options = {}) {
  const char* fn = "lowrank::low_rank_plus_sparse";
  detail::require_non_empty(fn, "w", w);
  const index_t m = w.rows(), n = w.cols();
  detail::require_in_range(fn, "rank", rank, 0, std::min(m, n));
  detail::require_in_range(fn, "nnz", nnz, 0, m * n);
  detail::require_finite(ctx, fn, "w", w);
  low_rank<T, Backend> low =
      rank == 0 ? low_rank<T, Backend>{matrix<T, Backend>(ctx, m, 0), vector<T, Backend>(ctx, 0),
                                       matrix<T, Backend>(ctx, n, 0)}
      : options.power_iterations < 0
          ? truncated_svd(ctx, w, rank)
          : randomized_svd(ctx, w, rank,
                           randomized_svd_options{.oversampling = 10,
                                                  .power_iterations = options.power_iterations,
                                                  .seed = options.seed});
  const auto residual =
      detail::to_host_matrix(ctx, as_const(detail::residual_of(ctx, w, low).view()));
  // The nnz largest |R(i, j)|, ties to the lower row-major position p = i n + j.
  std::vector<std::int64_t> order(std::size_t(m * n));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  auto at = [&](std::int64_t p) { return std::abs(residual(p / n, p % n)); };
  auto before = [&](std::int64_t a, std::int64_t b) {
    const T x = at(a), y = at(b);
    return x > y || (x == y && a < b);
  };
  if (nnz < m * n) std::nth_element(order.begin(), order.begin() + nnz, order.end(), before);
  std::vector<char> keep(std::size_t(m * n), 0);
  for (index_t k = 0; k < nnz; ++k) keep[std::size_t(order[std::size_t(k)])] = 1;
  double dropped = 0, total = double(ops<Backend>::squared_norm(ctx, w));
  for (index_t p = nnz; p < m * n; ++p) {
    const double r = double(at(order[std::size_t(p)]));
    dropped += r * r;
  }
  auto f = detail::with_sparse_part(ctx, std::move(low), residual, [&](index_t i, index_t j) {
    return keep[std::size_t(i * n + j)] != 0;
  });
  f.error = total > 0 ? std::sqrt(dropped / total) : 0.0;
  return f;
}

/// Robust PCA by the inexact augmented Lagrangian method (file comment).
/// @throws see the file comment.
template <scalar T, class Backend>
requires factors_backend_for<Backend, T>
[[nodiscard]] robust_pca_result<T, Backend> robust_pca(context<Backend>& ctx,
                                                       matrix_view<const T, Backend> w,
                                                       const robust_pca_options& options = {}) {
  const char* fn = "lowrank::robust_pca";
  detail::require_non_empty(fn, "w", w);
  if (!(options.lambda >= 0) || !std::isfinite(options.lambda)) {
    detail::throw_invalid_argument(fn, "options.lambda", options.lambda, ">= 0 and finite");
  }
  if (!(options.tolerance > 0)) {
    detail::throw_invalid_argument(fn, "options.tolerance", options.tolerance, "> 0");
  }
  if (options.max_iterations < 1) {
    detail::throw_invalid_argument(fn, "options.max_iterations", options.max_iterations, ">= 1");
  }
  detail::require_finite(ctx, fn, "w", w);
  const index_t m = w.rows(), n = w.cols(), k = std::min(m, n);
  const double lambda = options.lambda > 0 ? options.lambda : 1 / std::sqrt(double(std::max(m, n)));
  const double w_norm = std::sqrt(ops<Backend>::squared_norm(ctx, w));
  robust_pca_result<T, Backend> out;
  if (w_norm == 0) {
    out.factor = detail::with_sparse_part(
        ctx,
        low_rank<T, Backend>{matrix<T, Backend>(ctx, m, 0), vector<T, Backend>(ctx, 0),
                             matrix<T, Backend>(ctx, n, 0)},
        Eigen::Matrix<T, -1, -1>(Eigen::Matrix<T, -1, -1>::Zero(m, n)),
        [](index_t, index_t) { return false; });
    out.converged = true;
    return out;
  }
  matrix<T, Backend> u(ctx, m, k), v(ctx, n, k), z(ctx, m, n), l(ctx, m, n), s(ctx, m, n),
      y(ctx, m, n);
  vector<T, Backend> sv(ctx, k);
  Eigen::Matrix<T, -1, 1> host_s(k);
  auto singular_values = [&](matrix_view<const T, Backend> a) {
    ops<Backend>::svd(ctx, a, u.view(), sv.view(), v.view());
    ops<Backend>::download(ctx, as_const(sv.view()).as_matrix(), view(host_s));
  };
  singular_values(w);
  const double spectral = double(host_s(0));
  const double dual = std::max(spectral, ops<Backend>::max_abs(ctx, w) / lambda);
  // Y = W / J(W), S = 0.
  ops<Backend>::copy(ctx, w, y.view());
  ops<Backend>::affine(ctx, T(1 / dual), T(0), y.view());
  ops<Backend>::fill(ctx, s.view(), T(0));
  double mu = 1.25 / spectral;
  const double mu_max = mu * 1e7;
  const double rho = 1.5;
  index_t rank = 0;
  for (index_t it = 1; it <= options.max_iterations; ++it) {
    // L = SVT_{1/mu}(W - S + Y / mu).
    ops<Backend>::copy(ctx, w, z.view());
    ops<Backend>::axpby(ctx, T(-1), as_const(s.view()), T(1), z.view());
    ops<Backend>::axpby(ctx, T(1 / mu), as_const(y.view()), T(1), z.view());
    singular_values(as_const(z.view()));
    rank = 0;
    for (index_t i = 0; i < k; ++i) {
      host_s(i) = std::max(host_s(i) - T(1 / mu), T(0));
      if (host_s(i) > 0) rank = i + 1;
    }
    ops<Backend>::upload(ctx, matrix_view<const T, cpu>(host_s.data(), k, 1),
                         sv.view().as_matrix());
    ops<Backend>::scale_columns(ctx, as_const(sv.view()), u.view());
    if (rank == 0) {
      ops<Backend>::fill(ctx, l.view(), T(0));
    } else {
      ops<Backend>::gemm(ctx, transpose::no, transpose::yes, T(1),
                         as_const(u.view().middle_cols(0, rank)),
                         as_const(v.view().middle_cols(0, rank)), T(0), l.view());
    }
    // S = shrink_{lambda/mu}(W - L + Y / mu).
    ops<Backend>::copy(ctx, w, z.view());
    ops<Backend>::axpby(ctx, T(-1), as_const(l.view()), T(1), z.view());
    ops<Backend>::axpby(ctx, T(1 / mu), as_const(y.view()), T(1), z.view());
    ops<Backend>::soft_threshold(ctx, T(lambda / mu), as_const(z.view()), s.view());
    // Z = W - L - S; Y += mu Z.
    ops<Backend>::copy(ctx, w, z.view());
    ops<Backend>::axpby(ctx, T(-1), as_const(l.view()), T(1), z.view());
    ops<Backend>::axpby(ctx, T(-1), as_const(s.view()), T(1), z.view());
    ops<Backend>::axpby(ctx, T(mu), as_const(z.view()), T(1), y.view());
    mu = std::min(mu * rho, mu_max);
    out.iterations = it;
    out.residual = std::sqrt(ops<Backend>::squared_norm(ctx, as_const(z.view()))) / w_norm;
    if (out.residual <= options.tolerance) {
      out.converged = true;
      break;
    }
  }
  // L = U diag(s) V^T of the last SVT (u's columns hold U diag(s) now).
  low_rank<T, Backend> low{matrix<T, Backend>(ctx, m, rank), vector<T, Backend>(ctx, rank),
                           matrix<T, Backend>(ctx, n, rank)};
  if (rank > 0) {
    Eigen::Matrix<T, -1, 1> inv = host_s.head(rank).cwiseInverse();
    vector<T, Backend> scale(ctx, rank);
    ops<Backend>::upload(ctx, matrix_view<const T, cpu>(inv.data(), rank, 1),
                         scale.view().as_matrix());
    ops<Backend>::copy(ctx, as_const(u.view().middle_cols(0, rank)), low.u.view());
    ops<Backend>::scale_columns(ctx, as_const(scale.view()), low.u.view());
    ops<Backend>::copy(ctx, as_const(v.view().middle_cols(0, rank)), low.v.view());
    ops<Backend>::upload(ctx, matrix_view<const T, cpu>(host_s.data(), rank, 1),
                         low.s.view().as_matrix());
  }
  const auto s_host = detail::to_host_matrix(ctx, as_const(s.view()));
  out.factor = detail::with_sparse_part(ctx, std::move(low), s_host,
                                        [&](index_t i, index_t j) { return s_host(i, j) != T(0); });
  // The error of L + S as stored.
  matrix<T, Backend> approx(ctx, m, n);
  out.factor.to_dense(ctx, approx.view());
  ops<Backend>::axpby(ctx, T(1), w, T(-1), approx.view());
  out.factor.error = std::sqrt(ops<Backend>::squared_norm(ctx, as_const(approx.view()))) / w_norm;
  return out;
}

}  // namespace lowrank
