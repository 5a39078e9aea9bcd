#pragma once
/// @file
/// How the CPU backend splits its work (internal): pieces decided from the
/// shapes alone, never from the thread count, each one a single-threaded
/// computation, so that the result does not depend on how many threads run
/// them (docs/architecture.md, "Backends").
///
/// - `part(n, parts, i)`: part i of an even split of n;
/// - `for_each_column`: column panels of an element-wise or per-column loop;
/// - `blas_pieces`: how many pieces a BLAS-3 operation splits into;
/// - `run_blas_tasks`: runs BLAS pieces on the context's threads, or in turn
///   when the BLAS parallelises each call itself (OpenBLAS with more than one
///   thread; see backend/cpu/context.hpp).

#include <Eigen/Core>
#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail {

template <class T>
using host_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

/// Bitwise equality (so that -0 differs from +0 and a NaN equals itself).
template <class T>
[[nodiscard]] bool same_bits(T a, T b) noexcept {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

/// [begin, begin + size) of part `i` of an even split of n into `parts`.
struct span_of {
  index_t begin;
  index_t size;
};
[[nodiscard]] inline span_of part(index_t n, index_t parts, index_t i) noexcept {
  const index_t begin = i * n / parts;
  return {begin, (i + 1) * n / parts - begin};
}
/// How many parts of at least `grain` elements n splits into, at most `most`.
[[nodiscard]] inline index_t parts_of(index_t n, index_t grain, index_t most) noexcept {
  return std::clamp<index_t>(n / grain, 1, most);
}
/// How many column panels of at least `grain` elements a rows x cols operand
/// splits into (at most 64, at most one per column).
[[nodiscard]] inline index_t column_parts(index_t rows, index_t cols, index_t grain) noexcept {
  return std::min(parts_of(rows * cols, grain, 64), std::max<index_t>(cols, 1));
}

/// Runs f(j) for every column j of a rows x cols operand: column panels of at
/// least `grain` elements (at most 64) on the context's threads. Each column is
/// one task's, so the result does not depend on the thread count.
template <class F>
void for_each_column(context<cpu>& ctx, index_t rows, index_t cols, index_t grain, F&& f) {
  const index_t parts = column_parts(rows, cols, grain);
  ctx.pool().run(parts, [&](index_t t) {
    const auto r = part(cols, parts, t);
    for (index_t j = r.begin; j < r.begin + r.size; ++j) f(j);
  });
}

/// How many pieces a BLAS-3 operation of `flops` splits into, at most `most`,
/// when each piece computes `span` rows (or columns) of the output and all of
/// them share (and each repacks) an operand of `shared` elements. Measured with
/// OpenBLAS on AVX-512: pieces that share a large operand need at least 512
/// rows to keep OpenBLAS's kernels on full panels (16 pieces of a
/// 2048 x 2048 x 74 product cost 20% more than 4); otherwise pieces of about
/// 32 Mflop (a 2048 x 138 x 138 product runs fastest in 2 pieces, 25% slower
/// in 8: each single-threaded call repacks and pays some 20 us), but an
/// operation of 8 Mflop or more in at least min(4, flops / 4 Mflop) pieces:
/// the Cholesky QR products of a randomized SVD at l = 74 (11 to 22 Mflop) ran
/// on one thread, and on a 2-core AVX2 EPYC 2 to 4 pieces take them a third
/// faster (bench/README.md, "Smaller BLAS pieces").
[[nodiscard]] inline index_t blas_pieces(double flops, index_t span, double shared,
                                         index_t most) noexcept {
  const bool large = shared >= double(1 << 17);
  const index_t by_span = std::max<index_t>(1, span / (large ? 512 : 32));
  const auto by_work =
      std::max({index_t{1}, static_cast<index_t>(flops / double(1 << 25)),
                std::min<index_t>(4, static_cast<index_t>(flops / double(1 << 22)))});
  return std::clamp<index_t>(std::min(by_span, by_work), 1, most);
}

/// True when the BLAS parallelises its own calls (OpenBLAS with more than one
/// thread), found at run time so that no BLAS header is needed.
[[nodiscard]] inline bool blas_is_threaded() noexcept {
#if defined(EIGEN_USE_BLAS) && (defined(__unix__) || defined(__APPLE__))
  using getter = int (*)();
  static const auto get = reinterpret_cast<getter>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get != nullptr && get() > 1;
#else
  return false;
#endif
}

/// Runs f(0), ..., f(tasks - 1): on the context's threads, or in turn when
/// each task is a BLAS call that the BLAS parallelises itself.
template <class F>
void run_blas_tasks(context<cpu>& ctx, index_t tasks, F&& f) {
  if (blas_is_threaded()) {
    for (index_t t = 0; t < tasks; ++t) f(t);
  } else {
    ctx.pool().run(tasks, f);
  }
}

/// Runs f(j) for every column of a rows x cols operand in fixed column
/// panels and returns the sum of the panels' results, added in panel order:
/// a reduction whose bits do not depend on the thread count.
template <class F>
[[nodiscard]] double sum_over_columns(context<cpu>& ctx, index_t rows, index_t cols, index_t grain,
                                      F&& f) {
  const index_t parts = column_parts(rows, cols, grain);
  auto ws = ctx.workspace();  // no allocation once warm
  double* partial = ws.take<double>(static_cast<std::size_t>(parts));
  ctx.pool().run(parts, [&](index_t t) {
    const auto r = part(cols, parts, t);
    double sum = 0;
    for (index_t j = r.begin; j < r.begin + r.size; ++j) sum += f(j);
    partial[t] = sum;
  });
  double total = 0;
  for (index_t t = 0; t < parts; ++t) total += partial[t];
  return total;
}

}  // namespace lowrank::detail
