#pragma once
/// @file
/// The factors family's part of the CPU operation table (internal; the
/// operations of `factors_backend_for`, factors/backend.hpp), assembled into
/// `lowrank::ops<lowrank::cpu>` by backend/cpu/ops.hpp.
///
/// The sparse products work on blocks of `sparse_block` = 64 batch rows (a
/// block of X, 64 x n, stays in the L2 cache while the support walks it):
/// - X S^T: per block and row i of S, a 64-entry accumulator gathers v_k
///   X(block, c_k) over the row's entries, then Y(block, i) += alpha acc;
///   tasks are (block, group of S's rows) pairs;
/// - X S: per block, in the support's order, Y(block, c_k) += (alpha v_k)
///   X(block, r_k); tasks are blocks (each Y entry is one task's);
/// - the SDDMM: per S row group (a task), per block, 8-lane dots of G(block,
///   r_k) and X(block, c_k), summed over the blocks in order.
/// The block boundaries depend on N only, so the bits do not depend on the
/// threads. Loops over a whole block have a constant trip count, which GCC
/// and Clang vectorise at -O2.
/// No column copy of the support is needed (`needs_columns` is false).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/partition.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/factors/backend.hpp"
#include "lowrank/random/permutation.hpp"

namespace lowrank::detail {

/// The batch rows of one block of the CPU sparse products.
inline constexpr index_t sparse_block = 64;

/// The factors family's operations of the CPU backend.
struct cpu_factor_ops {
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cpu>;

  static constexpr bool needs_columns = false;

  /// Y += alpha X S^T (op no) or Y += alpha X S (op yes).
  template <scalar T>
  static void sparse_times(context<cpu>& ctx, transpose op, T alpha, support_view<cpu> s,
                           vector_view<const std::type_identity_t<T>, cpu> v, input<T> x,
                           matrix_view<T, cpu> y) {
    const index_t n_rows = x.rows();
    LOWRANK_ASSERT(y.rows() == n_rows && v.size() == s.nnz);
    LOWRANK_ASSERT(op == transpose::no ? (x.cols() == s.cols && y.cols() == s.rows)
                                       : (x.cols() == s.rows && y.cols() == s.cols));
    if (n_rows == 0 || s.nnz == 0) return;
    const index_t blocks = (n_rows + sparse_block - 1) / sparse_block;
    if (op == transpose::no) {
      // Enough tasks for the threads when the batch has few blocks.
      const index_t groups = std::clamp<index_t>(4 * ctx.threads() / blocks, 1, s.rows);
      ctx.pool().run(blocks * groups, [&](index_t t) {
        const index_t b = t / groups;
        const auto rows_of_s = part(s.rows, groups, t % groups);
        const index_t r0 = b * sparse_block;
        const index_t len = std::min(sparse_block, n_rows - r0);
        for (index_t i = rows_of_s.begin; i < rows_of_s.begin + rows_of_s.size; ++i) {
          gather_row(len, alpha, s, v, i, x.data() + r0, x.ld(), y.data() + r0 + i * y.ld());
        }
      });
    } else {
      ctx.pool().run(blocks, [&](index_t b) {
        const index_t r0 = b * sparse_block;
        const index_t len = std::min(sparse_block, n_rows - r0);
        for (index_t i = 0; i < s.rows; ++i) {
          const T* xi = x.data() + r0 + i * x.ld();
          for (std::int32_t k = s.row_offsets[i]; k < s.row_offsets[i + 1]; ++k) {
            T* yc = y.data() + r0 + index_t(s.col_indices[k]) * y.ld();
            const T a = alpha * v[k];
            if (len == sparse_block) {
              for (index_t q = 0; q < sparse_block; ++q) yc[q] += a * xi[q];
            } else {
              for (index_t q = 0; q < len; ++q) yc[q] += a * xi[q];
            }
          }
        }
      });
    }
  }

  /// v_k = alpha sum_i G(i, r_k) X(i, c_k) + beta v_k.
  template <scalar T>
  static void sampled_product(context<cpu>& ctx, T alpha, input<T> g, input<T> x,
                              support_view<cpu> s, T beta, vector_view<T, cpu> v) {
    const index_t n_rows = x.rows();
    LOWRANK_ASSERT(g.rows() == n_rows && g.cols() == s.rows && x.cols() == s.cols &&
                   v.size() == s.nnz);
    if (s.nnz == 0) return;
    const index_t groups = parts_of(s.nnz * std::max<index_t>(n_rows, 1), 1 << 16, 64);
    ctx.pool().run(std::min(groups, s.rows), [&](index_t t) {
      const auto rows_of_s = part(s.rows, std::min(groups, s.rows), t);
      const std::int32_t k0 = s.row_offsets[rows_of_s.begin];
      const std::int32_t k1 = s.row_offsets[rows_of_s.begin + rows_of_s.size];
      std::vector<T> sum(std::size_t(k1 - k0), T(0));
      for (index_t r0 = 0; r0 < n_rows; r0 += sparse_block) {
        const index_t len = std::min(sparse_block, n_rows - r0);
        for (index_t i = rows_of_s.begin; i < rows_of_s.begin + rows_of_s.size; ++i) {
          const T* gi = g.data() + r0 + i * g.ld();
          for (std::int32_t k = s.row_offsets[i]; k < s.row_offsets[i + 1]; ++k) {
            const T* xc = x.data() + r0 + index_t(s.col_indices[k]) * x.ld();
            sum[std::size_t(k - k0)] += len == sparse_block ? dot_block(gi, xc) : dot(len, gi, xc);
          }
        }
      }
      for (std::int32_t k = k0; k < k1; ++k) {
        const T d = alpha * sum[std::size_t(k - k0)];
        v[k] = beta == T(0) ? d : d + beta * v[k];
      }
    });
  }

  /// W(r_k, c_k) += alpha v_k.
  template <scalar T>
  static void sparse_to_dense(context<cpu>& ctx, T alpha, support_view<cpu> s,
                              vector_view<const std::type_identity_t<T>, cpu> v,
                              matrix_view<T, cpu> w) {
    LOWRANK_ASSERT(w.rows() == s.rows && w.cols() == s.cols && v.size() == s.nnz);
    for_each_support_row(ctx, s, [&](index_t i, std::int32_t k) {
      w.data()[i + index_t(s.col_indices[k]) * w.ld()] += alpha * v[k];
    });
  }

  /// v_k = alpha W(r_k, c_k) + beta v_k.
  template <scalar T>
  static void dense_to_sparse(context<cpu>& ctx, T alpha, support_view<cpu> s, input<T> w, T beta,
                              vector_view<T, cpu> v) {
    LOWRANK_ASSERT(w.rows() == s.rows && w.cols() == s.cols && v.size() == s.nnz);
    for_each_support_row(ctx, s, [&](index_t i, std::int32_t k) {
      const T d = alpha * w.data()[i + index_t(s.col_indices[k]) * w.ld()];
      v[k] = beta == T(0) ? d : d + beta * v[k];
    });
  }

  /// The CSR of the first nnz values of a random permutation of [0, m n).
  static void random_support(context<cpu>& ctx, random_stream stream, index_t cols, index_t nnz,
                             vector_view<std::int32_t, cpu> row_offsets,
                             vector_view<std::int32_t, cpu> col_indices) {
    const index_t rows = row_offsets.size() - 1;
    LOWRANK_ASSERT(rows >= 0 && col_indices.size() == nnz && nnz <= rows * cols);
    std::fill(row_offsets.data(), row_offsets.data() + rows + 1, 0);
    if (nnz == 0) return;
    const random_permutation p(stream, std::uint64_t(rows) * std::uint64_t(cols));
    std::vector<std::uint64_t> flat(static_cast<std::size_t>(nnz));
    const index_t parts = parts_of(nnz, 1 << 14, 64);
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = part(nnz, parts, t);
      for (index_t k = r.begin; k < r.begin + r.size; ++k) {
        flat[std::size_t(k)] = p(std::uint64_t(k));
      }
    });
    const auto n = std::uint64_t(cols);
    for (const std::uint64_t f : flat) ++row_offsets[index_t(f / n) + 1];
    for (index_t i = 0; i < rows; ++i) row_offsets[i + 1] += row_offsets[i];
    std::vector<std::int32_t> next(row_offsets.data(), row_offsets.data() + rows);
    for (const std::uint64_t f : flat) {
      col_indices[next[std::size_t(f / n)]++] = static_cast<std::int32_t>(f % n);
    }
    const index_t sort_parts = parts_of(nnz, 1 << 14, 64);
    ctx.pool().run(std::min(sort_parts, std::max<index_t>(rows, 1)), [&](index_t t) {
      const auto r = part(rows, std::min(sort_parts, std::max<index_t>(rows, 1)), t);
      for (index_t i = r.begin; i < r.begin + r.size; ++i) {
        std::sort(col_indices.data() + row_offsets[i], col_indices.data() + row_offsets[i + 1]);
      }
    });
  }

  /// The CSC copy of a CSR support (stable: rows increase within a column).
  static void support_columns(context<cpu>& /*ctx*/, support_view<cpu> s,
                              vector_view<std::int32_t, cpu> col_offsets,
                              vector_view<std::int32_t, cpu> row_indices,
                              vector_view<std::int32_t, cpu> positions) {
    LOWRANK_ASSERT(col_offsets.size() == s.cols + 1 && row_indices.size() == s.nnz &&
                   positions.size() == s.nnz);
    std::fill(col_offsets.data(), col_offsets.data() + s.cols + 1, 0);
    for (index_t k = 0; k < s.nnz; ++k) ++col_offsets[index_t(s.col_indices[k]) + 1];
    for (index_t j = 0; j < s.cols; ++j) col_offsets[j + 1] += col_offsets[j];
    std::vector<std::int32_t> next(col_offsets.data(), col_offsets.data() + s.cols);
    for (index_t i = 0; i < s.rows; ++i) {
      for (std::int32_t k = s.row_offsets[i]; k < s.row_offsets[i + 1]; ++k) {
        const std::int32_t slot = next[std::size_t(s.col_indices[k])]++;
        row_indices[slot] = static_cast<std::int32_t>(i);
        positions[slot] = k;
      }
    }
  }

  /// Y = sign(X) max(|X| - tau, 0).
  template <scalar T>
  static void soft_threshold(context<cpu>& ctx, T tau, input<T> x, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols());
    for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      const T* in = x.data() + j * x.ld();
      T* out = y.data() + j * y.ld();
      for (index_t i = 0; i < x.rows(); ++i) {
        const T m = std::abs(in[i]) - tau;
        out[i] = m > T(0) ? std::copysign(m, in[i]) : T(0);
      }
    });
  }

  static void upload_int32(context<cpu>& /*ctx*/, vector_view<const std::int32_t, cpu> src,
                           vector_view<std::int32_t, cpu> dst) {
    LOWRANK_ASSERT(src.size() == dst.size());
    std::copy(src.data(), src.data() + src.size(), dst.data());
  }
  static void download_int32(context<cpu>& /*ctx*/, vector_view<const std::int32_t, cpu> src,
                             vector_view<std::int32_t, cpu> dst) {
    LOWRANK_ASSERT(src.size() == dst.size());
    std::copy(src.data(), src.data() + src.size(), dst.data());
  }

 private:
  /// Y(block, i) += alpha sum_k v_k X(block, c_k) over row i of S.
  template <class T>
  static void gather_row(index_t len, T alpha, support_view<cpu> s, vector_view<const T, cpu> v,
                         index_t i, const T* x, index_t ldx, T* y) {
    alignas(64) T acc[sparse_block] = {};
    for (std::int32_t k = s.row_offsets[i]; k < s.row_offsets[i + 1]; ++k) {
      const T* xc = x + index_t(s.col_indices[k]) * ldx;
      const T a = v[k];
      if (len == sparse_block) {
        for (index_t q = 0; q < sparse_block; ++q) acc[q] += a * xc[q];
      } else {
        for (index_t q = 0; q < len; ++q) acc[q] += a * xc[q];
      }
    }
    for (index_t q = 0; q < len; ++q) y[q] += alpha * acc[q];
  }

  /// sum_q a_q b_q over a whole block: 8 lanes, then the lanes in order.
  template <class T>
  static T dot_block(const T* a, const T* b) {
    T lane[8] = {};
    for (index_t q = 0; q < sparse_block; q += 8) {
      for (int l = 0; l < 8; ++l) lane[l] += a[q + l] * b[q + l];
    }
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
           ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
  template <class T>
  static T dot(index_t len, const T* a, const T* b) {
    T s = 0;
    for (index_t q = 0; q < len; ++q) s += a[q] * b[q];
    return s;
  }

  /// f(i, k) for every entry k of every row i: row groups on the threads.
  template <class F>
  static void for_each_support_row(context<cpu>& ctx, support_view<cpu> s, F&& f) {
    if (s.nnz == 0) return;
    const index_t parts = std::min(parts_of(s.nnz, 1 << 15, 64), std::max<index_t>(s.rows, 1));
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = part(s.rows, parts, t);
      for (index_t i = r.begin; i < r.begin + r.size; ++i) {
        for (std::int32_t k = s.row_offsets[i]; k < s.row_offsets[i + 1]; ++k) f(i, k);
      }
    });
  }
};

}  // namespace lowrank::detail
