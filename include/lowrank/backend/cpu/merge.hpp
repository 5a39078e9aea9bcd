#pragma once
/// @file
/// The exact merge of a low-rank update into a weight on the CPU (internal;
/// `ops<cpu>::merge_low_rank` / `unmerge_low_rank`, which the CUDA backend
/// runs on host copies too, so merges are bit-identical on both backends):
///   W'(i, j) = fl(c_i (W(i, j) + s (B A)(i, j)))
/// in extended precision (double for float, long double for double), one
/// rounding per element, and the inverse W = fl(W' / c_i - s (B A)(i, j)),
/// with a record of the elements whose rounding the inverse cannot undo.
/// s (B A)(:, j) and the inverse are each computed by one non-inlined
/// function, so that merge and unmerge produce the same bits.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/partition.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail {

enum class merge_pass_kind { check, merge, unmerge };

/// The precision of a merge: double for float, long double for double.
template <class T>
using extended = std::conditional_t<std::is_same_v<T, float>, double, long double>;

/// d = s (B A)(:, j) in extended precision: one fixed loop order, not
/// inlined, so that merge and unmerge compute the same bits.
template <class T>
[[gnu::noinline]] void low_rank_column(const extended<T>* bx, index_t rows, index_t r,
                                       matrix_view<const T, cpu> a, index_t j, extended<T> s,
                                       extended<T>* d) {
  for (index_t i = 0; i < rows; ++i) d[i] = 0;
  for (index_t k = 0; k < r; ++k) {
    const extended<T> akj = a(k, j);
    const extended<T>* bk = bx + k * rows;
    for (index_t i = 0; i < rows; ++i) d[i] += bk[i] * akj;
  }
  for (index_t i = 0; i < rows; ++i) d[i] *= s;
}

/// One element of unmerge: fl(w / c - d), in one function for the same reason.
template <class T>
[[gnu::noinline]] void unmerge_column(const T* w, const extended<T>* c, const extended<T>* d,
                                      index_t rows, T* out) {
  for (index_t i = 0; i < rows; ++i) {
    const extended<T> x = c != nullptr ? extended<T>(w[i]) / c[i] : extended<T>(w[i]);
    out[i] = static_cast<T>(x - d[i]);
  }
}

template <class T>
index_t merge_pass(context<cpu>& ctx, double s, matrix_view<const T, cpu> b,
                   matrix_view<const T, cpu> a, vector_view<const double, cpu> row_scale,
                   matrix_view<T, cpu> w, merge_pass_kind mode,
                   std::vector<merge_exception<T>>* record) {
  using E = extended<T>;
  const index_t m = w.rows();
  const index_t n = w.cols();
  const index_t r = a.rows();
  LOWRANK_ASSERT(b.rows() == m && b.cols() == r && a.cols() == n);
  LOWRANK_ASSERT(row_scale.empty() || row_scale.size() == m);
  Eigen::Matrix<E, Eigen::Dynamic, Eigen::Dynamic> bx = as_eigen(b).template cast<E>();
  Eigen::Matrix<E, Eigen::Dynamic, 1> c;
  if (!row_scale.empty()) c = as_eigen(row_scale).template cast<E>();
  const E* cp = row_scale.empty() ? nullptr : c.data();
  const index_t parts =
      std::min(parts_of(m * n * std::max<index_t>(r, 1), 1 << 18, 64), std::max<index_t>(n, 1));
  std::vector<index_t> first_bad(static_cast<std::size_t>(parts), -1);
  std::vector<std::vector<merge_exception<T>>> found(static_cast<std::size_t>(parts));
  ctx.pool().run(parts, [&](index_t t) {
    const auto range = part(n, parts, t);
    std::vector<E> d(static_cast<std::size_t>(m));
    std::vector<T> merged(static_cast<std::size_t>(m));
    std::vector<T> back(static_cast<std::size_t>(m));
    auto& bad = first_bad[static_cast<std::size_t>(t)];
    for (index_t j = range.begin; j < range.begin + range.size; ++j) {
      T* col = w.data() + j * w.ld();
      low_rank_column<T>(bx.data(), m, r, a, j, E(s), d.data());
      if (mode == merge_pass_kind::unmerge) {
        unmerge_column<T>(col, cp, d.data(), m, col);
        continue;
      }
      for (index_t i = 0; i < m; ++i) {
        const E x = E(col[i]) + d[static_cast<std::size_t>(i)];
        merged[static_cast<std::size_t>(i)] = static_cast<T>(cp != nullptr ? cp[i] * x : x);
        if (bad < 0 && !std::isfinite(merged[static_cast<std::size_t>(i)])) bad = i + j * m;
      }
      if (mode == merge_pass_kind::check) continue;
      if (record != nullptr) {
        unmerge_column<T>(merged.data(), cp, d.data(), m, back.data());
        for (index_t i = 0; i < m; ++i) {
          if (!same_bits(back[static_cast<std::size_t>(i)], col[i])) {
            found[static_cast<std::size_t>(t)].push_back({i + j * m, col[i]});
          }
        }
      }
      std::copy(merged.begin(), merged.end(), col);
    }
  });
  if (record != nullptr) {
    record->clear();
    for (auto& f : found) record->insert(record->end(), f.begin(), f.end());
  }
  for (const index_t bad : first_bad) {
    if (bad >= 0) return bad;
  }
  return -1;
}

}  // namespace lowrank::detail
