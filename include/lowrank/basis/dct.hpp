#pragma once
/// @file
/// The orthonormal discrete cosine transform (DCT-II and its inverse, the
/// DCT-III) of every row or every column of a matrix, the 2-D transform, and
/// selected basis vectors (docs/algorithms.md, "DCT bases").
///
/// **Definition.** For length n >= 1, C is the n x n orthonormal DCT-II
/// matrix
///
///     C[k, j] = s_k cos(pi k (2j + 1) / (2n)),   s_0 = sqrt(1/n), s_k = sqrt(2/n) (k > 0),
///
/// so that C C^T = I, C x = scipy.fft.dct(x, type=2, norm='ortho') and
/// C^T y = scipy.fft.idct(y, type=2, norm='ortho'). **Basis vector k is row k
/// of C** (the cosine of frequency k sampled at the n points), everywhere in
/// lowrank: `dct_basis(n, idx)` returns those rows as columns (n x |idx|),
/// the DCT projector (projection/projector.hpp) selects among them and LoCA
/// (adapters/loca.hpp) places its coefficients on them. (IST-DASLab's DCT
/// projector uses the columns of C in its default `matmul` mode and the rows
/// in its `makhoul` mode: two different bases; ours is the second.)
///
/// | call                      | computes          | shape of X (m x n)          |
/// |---------------------------|-------------------|-----------------------------|
/// | dct(X, Y, dct_axis::rows) | Y = X C_n^T       | every row, length n         |
/// | dct(X, Y, columns)        | Y = C_m X         | every column, length m      |
/// | idct(X, Y, rows / columns)| Y = X C_n, C_m^T X| the inverses (DCT-III)      |
/// | dct2(X, Y)                | Y = C_m X C_n^T   | 2-D, scipy.fft.dctn(ortho)  |
/// | idct2(X, Y)               | Y = C_m^T X C_n   | 2-D inverse                 |
///
/// **Two routes**, the same result to rounding:
/// - `gemm`: one product with C (or C^T), cached per length and backend in
///   the context (basis vectors computed in double with the angle reduced
///   exactly, rounded once to T): 2 n^2 flops per vector at GEMM speed, n^2
///   scalars of cache per length used.
/// - `fft`: Makhoul's reordering (v = x_0, x_2, x_4, ..., x_3, x_1), a real
///   FFT of length n and a twiddle, X_k = s_k Re(exp(-i pi k / 2n) V_k); the
///   inverse reverses each step. O(n sum(p)) flops per vector for the prime
///   factors p of n, in T: on the CPU our mixed-radix FFT over eight vectors
///   at a time (backend/cpu/fft.hpp; within 2x of FFTW's REDFT10), on CUDA
///   cuFFT (a plan cached in the context); no n x n matrix.
/// - `automatic` (the default) follows the cost model `dct_route_for`: the
///   FFT route when sum(p) * kappa < n (kappa = 20 on the CPU, see
///   dct_fft_kappa; 4 on CUDA, estimated), else the GEMM route; so
///   small lengths and lengths with a large prime factor (127, 4099) take the
///   GEMM, powers of two and smooth lengths from about 400 on take the FFT.
/// Both routes agree to a few ulp times log2(n) (tests/basis/dct_test.cpp).
///
/// **Errors.** lowrank::invalid_argument (the message names the function,
/// the argument, its value and what was expected) for an empty X, a Y of
/// another shape or overlapping X, basis indices outside [0, n), n < 1.
/// Non-finite entries propagate (a NaN in a row makes that row's output NaN).

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "lowrank/basis/backend.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/core/validate.hpp"
#include "lowrank/decomp/detail/common.hpp"

namespace lowrank {

/// Which vectors of a matrix a transform applies to.
enum class dct_axis {
  rows,     ///< every row (length = cols): Y = X C^T
  columns,  ///< every column (length = rows): Y = C X
};

/// How a transform is computed (see the file comment).
enum class dct_route { automatic, gemm, fft };

namespace detail {

/// The sum of the prime factors of n (with multiplicity; 4 counts as one
/// radix-4 pass of cost 4), the FFT's cost per element up to a constant.
[[nodiscard]] inline index_t fft_factor_cost(index_t n) noexcept {
  index_t cost = 0;
  while (n % 4 == 0) {
    cost += 4;
    n /= 4;
  }
  for (index_t p = 2; p * p <= n; ++p) {
    while (n % p == 0) {
      cost += p;
      n /= p;
    }
  }
  if (n > 1) cost += n;
  return cost;
}

/// The context's cached C^T per length (a resource): column k is basis vector k.
template <scalar T, class Backend>
class dct_matrix_cache {
 public:
  explicit dct_matrix_cache(context<Backend>& /*ctx*/) {}

  /// Q = C^T (n x n) of length n, made on first use.
  [[nodiscard]] matrix_view<const T, Backend> get(context<Backend>& ctx, index_t n) {
    auto it = cache_.find(n);
    if (it == cache_.end()) {
      matrix<T, Backend> q(ctx, n, n);
      vector<index_t, Backend> all(ctx, n);
      std::vector<index_t> host(static_cast<std::size_t>(n));
      for (index_t k = 0; k < n; ++k) host[std::size_t(k)] = k;
      ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(host.data(), n),
                                   all.view());
      ops<Backend>::dct_basis_fill(ctx, as_const(all.view()), q.view());
      it = cache_.emplace(n, std::move(q)).first;
    }
    return it->second.view();
  }

 private:
  std::map<index_t, matrix<T, Backend>> cache_;
};

/// The cost model's kappa (see the file comment). CPU: chosen when the FFT
/// route was kissfft (the GEMM 2x faster at n = 256, the FFT 1.5x faster at
/// n = 512, 512 float rows, this project's 2-core AVX-512 machine). Our own
/// FFT moved the cross-over down: at -O2 the GEMM is ahead at n = 128 (by
/// 12%), the FFT from n = 192 (1.6x there, a tie at 256, 1.7x at 320); with
/// -march=native the FFT is ahead from n = 128. A kappa near 10 would fit;
/// 20 keeps the GEMM up to n of about 384, where it is at most 1.7x slower
/// (bench/README.md; LoCA's route model uses this kappa too). CUDA:
/// not measured yet (no device); cuFFT is memory-bound where the GEMM is
/// compute-bound, so the FFT wins earlier: 4 is an estimate.
template <class Backend>
inline constexpr double dct_fft_kappa = 20;
template <>
inline constexpr double dct_fft_kappa<cuda> = 4;

}  // namespace detail

/// The route `dct_route::automatic` takes for `count` vectors of length n on
/// Backend (see the file comment).
template <class Backend>
[[nodiscard]] dct_route dct_route_for(index_t n, index_t /*count*/) noexcept {
  if (n <= 2) return dct_route::gemm;
  return double(detail::fft_factor_cost(n)) * detail::dct_fft_kappa<Backend> < double(n)
             ? dct_route::fft
             : dct_route::gemm;
}

namespace detail {

template <scalar T, class Backend>
void dct_apply(context<Backend>& ctx, const char* fn, matrix_view<const T, Backend> x,
               matrix_view<T, Backend> y, dct_axis axis, dct_route route, bool inverse) {
  require_non_empty(fn, "x", x);
  require_shape(fn, "y", y, x.rows(), x.cols());
  require_apart(fn, "y", y, "x", x);
  const bool columns = axis == dct_axis::columns;
  const index_t n = columns ? x.rows() : x.cols();
  if (route == dct_route::automatic) {
    route = dct_route_for<Backend>(n, columns ? x.cols() : x.rows());
  }
  if (route == dct_route::fft) {
    ops<Backend>::dct_fft(ctx, x, y, columns, inverse);
    return;
  }
  const auto q = ctx.template resource<dct_matrix_cache<T, Backend>>().get(ctx, n);
  // Q = C^T. rows: X C^T = X Q, X C = X Q^T; columns: C X = Q^T X, C^T X = Q X.
  if (columns) {
    ops<Backend>::gemm(ctx, inverse ? transpose::no : transpose::yes, transpose::no, T(1), q, x,
                       T(0), y);
  } else {
    ops<Backend>::gemm(ctx, transpose::no, inverse ? transpose::yes : transpose::no, T(1), x, q,
                       T(0), y);
  }
}

}  // namespace detail

/// Y = X C^T (every row, `rows`) or C X (every column), the orthonormal
/// DCT-II; X and Y m x n, apart.
/// @throws lowrank::invalid_argument for an empty X, a Y of another shape or overlapping X.
template <scalar T, class Backend>
requires basis_backend_for<Backend, T>
void dct(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y,
         dct_axis axis = dct_axis::rows, dct_route route = dct_route::automatic) {
  detail::dct_apply(ctx, "lowrank::dct", x, y, axis, route, false);
}

/// Y = X C (every row) or C^T X (every column), the orthonormal DCT-III, the
/// inverse of dct().
/// @throws as dct().
template <scalar T, class Backend>
requires basis_backend_for<Backend, T>
void idct(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y,
          dct_axis axis = dct_axis::rows, dct_route route = dct_route::automatic) {
  detail::dct_apply(ctx, "lowrank::idct", x, y, axis, route, true);
}

namespace detail {

template <scalar T, class Backend>
void dct2_apply(context<Backend>& ctx, const char* fn, matrix_view<const T, Backend> x,
                matrix_view<T, Backend> y, dct_route route, bool inverse) {
  require_non_empty(fn, "x", x);
  require_shape(fn, "y", y, x.rows(), x.cols());
  require_apart(fn, "y", y, "x", x);
  auto ws = ctx.workspace();
  matrix_view<T, Backend> t(ws.template take<T>(std::size_t(x.size())), x.rows(), x.cols());
  dct_apply(ctx, fn, x, t, dct_axis::columns, route, inverse);
  dct_apply(ctx, fn, as_const(t), y, dct_axis::rows, route, inverse);
}

}  // namespace detail

/// Y = C_m X C_n^T (X m x n), the 2-D orthonormal DCT-II (scipy.fft.dctn
/// with norm='ortho').
/// @throws as dct().
template <scalar T, class Backend>
requires basis_backend_for<Backend, T>
void dct2(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y,
          dct_route route = dct_route::automatic) {
  detail::dct2_apply(ctx, "lowrank::dct2", x, y, route, false);
}

/// Y = C_m^T X C_n, the inverse of dct2().
/// @throws as dct().
template <scalar T, class Backend>
requires basis_backend_for<Backend, T>
void idct2(context<Backend>& ctx, matrix_view<const T, Backend> x, matrix_view<T, Backend> y,
           dct_route route = dct_route::automatic) {
  detail::dct2_apply(ctx, "lowrank::idct2", x, y, route, true);
}

/// Out(:, i) = basis vector idx_i of length n = out.rows() (row idx_i of C),
/// for a backend index vector; n |idx| entries computed, never all of C.
/// @throws lowrank::invalid_argument if out has not |idx| columns or no rows.
template <scalar T, class Backend>
requires basis_backend_for<Backend, T>
void dct_basis(context<Backend>& ctx, vector_view<const index_t, Backend> idx,
               matrix_view<T, Backend> out) {
  const char* fn = "lowrank::dct_basis";
  detail::require_non_empty(fn, "out", out);
  detail::require_shape(fn, "out", out, out.rows(), idx.size());
  ops<Backend>::dct_basis_fill(ctx, idx, out);
}

/// The basis vectors idx (host indices, each in [0, n)) of length n as the
/// columns of an n x |idx| matrix: `dct_basis<float>(ctx, 4096, {0, 5, 17})`.
/// @throws lowrank::invalid_argument for n < 1 or an index outside [0, n).
template <scalar T, class Backend>
requires basis_backend_for<Backend, T>
[[nodiscard]] matrix<T, Backend> dct_basis(context<Backend>& ctx, index_t n,
                                           std::span<const index_t> idx) {
  const char* fn = "lowrank::dct_basis";
  if (n < 1) detail::throw_invalid_argument(fn, "n", n, ">= 1");
  for (std::size_t i = 0; i < idx.size(); ++i) {
    if (idx[i] < 0 || idx[i] >= n) {
      detail::throw_invalid_argument(fn, "idx[" + std::to_string(i) + "]", idx[i],
                                     "an index in [0, n) = [0, " + std::to_string(n) + ")");
    }
  }
  const auto k = static_cast<index_t>(idx.size());
  matrix<T, Backend> out(ctx, n, k);
  if (k == 0) return out;
  vector<index_t, Backend> d(ctx, k);
  ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(idx.data(), k), d.view());
  ops<Backend>::dct_basis_fill(ctx, as_const(d.view()), out.view());
  return out;
}

// --- The CPU with Eigen ------------------------------------------------------------

/// dct() of an Eigen matrix on the CPU: `Eigen::MatrixXf y = lowrank::dct(x);`.
template <class Derived>
requires scalar<typename Derived::Scalar>
[[nodiscard]] Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, Eigen::Dynamic> dct(
    const Eigen::MatrixBase<Derived>& x, dct_axis axis = dct_axis::rows,
    dct_route route = dct_route::automatic) {
  using T = typename Derived::Scalar;
  const eigen_input<T> input(x.derived());
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> y(x.rows(), x.cols());
  detail::host_context<Derived> ctx;
  dct(ctx, view(input), view(y), axis, route);
  return y;
}

/// idct() of an Eigen matrix on the CPU.
template <class Derived>
requires scalar<typename Derived::Scalar>
[[nodiscard]] Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, Eigen::Dynamic> idct(
    const Eigen::MatrixBase<Derived>& x, dct_axis axis = dct_axis::rows,
    dct_route route = dct_route::automatic) {
  using T = typename Derived::Scalar;
  const eigen_input<T> input(x.derived());
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> y(x.rows(), x.cols());
  detail::host_context<Derived> ctx;
  idct(ctx, view(input), view(y), axis, route);
  return y;
}

}  // namespace lowrank
