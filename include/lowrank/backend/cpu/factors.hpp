#pragma once
/// @file
/// The factors family's part of the CPU operation table (internal; the
/// operations of `factors_backend_for`, factors/backend.hpp), assembled into
/// `lowrank::ops<lowrank::cpu>` by backend/cpu/ops.hpp.
///
/// The sparse products work on blocks of `sparse_block` = 64 batch rows. The
/// operand the support walks at random is first packed into panels (block b,
/// column c: 64 contiguous values, zero past N; a workspace of N n values,
/// rounded up), so that a block of it is contiguous and stays in the L2 cache:
/// - X S^T: per block and row i of S, a 64-entry accumulator gathers v_k
///   X(block, c_k) over the row's entries, then Y(block, i) += alpha acc;
///   tasks are (block, group of S's rows) pairs;
/// - X S: per block (a task), a zeroed panel of Y's block takes (alpha v_k)
///   X(block, r_k) at column c_k in the support's order, then is added to Y;
/// - the SDDMM: per S row group (a task), per block, 8-lane dots of G(block,
///   r_k) and X(block, c_k), summed over the blocks in order.
/// The block boundaries depend on N only, so the bits do not depend on the
/// threads. Loops over a whole block have a constant trip count, which GCC
/// and Clang vectorise at -O2; the blocks are Eigen fixed-size arrays, because
/// GCC turned plain loops over a 64-entry accumulator into scalar code. At N =
/// 512, 4096 x 4096, density 0.03, float, 2 threads (bench/factors_bench.cpp):
/// X S^T 6.5 ms (25 ms reading X in place, 52 ms with plain loops), X S 15
/// ms, the SDDMM 15 ms (32 ms before packing), against 2.7 ms for the GEMM X
/// A^T at r = 128: 2.4, 5.8 and 5.7 GEMM flops per sparse flop.
/// No column copy of the support is needed (`needs_columns` is false).

#include <Eigen/Core>
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
    auto ws = ctx.workspace();
    if (op == transpose::no) {
      // Panels of X; per (block, group of S's rows) task, a register-sized
      // accumulator per row of S. Enough tasks for the threads when the
      // batch has few blocks.
      T* panels = ws.take<T>(std::size_t(blocks * sparse_block * x.cols()));
      pack_panels(ctx, x, panels);
      const index_t groups = std::clamp<index_t>(4 * ctx.threads() / blocks, 1, s.rows);
      ctx.pool().run(blocks * groups, [&](index_t t) {
        const index_t b = t / groups;
        const auto rows_of_s = part(s.rows, groups, t % groups);
        const T* panel = panels + b * sparse_block * x.cols();
        const index_t r0 = b * sparse_block;
        const index_t len = std::min(sparse_block, n_rows - r0);
        for (index_t i = rows_of_s.begin; i < rows_of_s.begin + rows_of_s.size; ++i) {
          block<T> acc = block<T>::Zero();
          for (std::int32_t k = s.row_offsets[i]; k < s.row_offsets[i + 1]; ++k) {
            acc += v[k] * block_of(panel + index_t(s.col_indices[k]) * sparse_block);
          }
          T* yi = y.data() + r0 + i * y.ld();
          for (index_t q = 0; q < len; ++q) yi[q] += alpha * acc[q];
        }
      });
    } else {
      // Per block (a task), the block of Y accumulates in a zeroed panel,
      // scattered to in the support's order, then added to Y.
      T* panels = ws.take<T>(std::size_t(blocks * sparse_block * y.cols()));
      ctx.pool().run(blocks, [&](index_t b) {
        T* panel = panels + b * sparse_block * y.cols();
        std::fill(panel, panel + sparse_block * y.cols(), T(0));
        const index_t r0 = b * sparse_block;
        const index_t len = std::min(sparse_block, n_rows - r0);
        for (index_t i = 0; i < s.rows; ++i) {
          if (s.row_offsets[i] == s.row_offsets[i + 1]) continue;
          block<T> xi = block<T>::Zero();
          std::copy(x.data() + r0 + i * x.ld(), x.data() + r0 + i * x.ld() + len, xi.data());
          for (std::int32_t k = s.row_offsets[i]; k < s.row_offsets[i + 1]; ++k) {
            block_of(panel + index_t(s.col_indices[k]) * sparse_block) += (alpha * v[k]) * xi;
          }
        }
        for (index_t c = 0; c < y.cols(); ++c) {
          T* yc = y.data() + r0 + c * y.ld();
          const T* pc = panel + c * sparse_block;
          for (index_t q = 0; q < len; ++q) yc[q] += pc[q];
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
    const index_t blocks = (n_rows + sparse_block - 1) / sparse_block;
    auto ws = ctx.workspace();
    T* panels = ws.take<T>(std::size_t(std::max<index_t>(blocks, 1) * sparse_block * x.cols()));
    T* sums = ws.take<T>(std::size_t(s.nnz));
    pack_panels(ctx, x, panels);
    const index_t groups = std::min(4 * index_t(ctx.threads()), s.rows);
    ctx.pool().run(groups, [&](index_t t) {
      const auto rows_of_s = part(s.rows, groups, t);
      const std::int32_t k0 = s.row_offsets[rows_of_s.begin];
      const std::int32_t k1 = s.row_offsets[rows_of_s.begin + rows_of_s.size];
      std::fill(sums + k0, sums + k1, T(0));
      for (index_t b = 0; b < blocks; ++b) {
        const T* panel = panels + b * sparse_block * x.cols();
        const index_t r0 = b * sparse_block;
        const index_t len = std::min(sparse_block, n_rows - r0);
        for (index_t i = rows_of_s.begin; i < rows_of_s.begin + rows_of_s.size; ++i) {
          if (s.row_offsets[i] == s.row_offsets[i + 1]) continue;
          block<T> gi = block<T>::Zero();
          std::copy(g.data() + r0 + i * g.ld(), g.data() + r0 + i * g.ld() + len, gi.data());
          for (std::int32_t k = s.row_offsets[i]; k < s.row_offsets[i + 1]; ++k) {
            sums[k] += dot_block(gi, block_of(panel + index_t(s.col_indices[k]) * sparse_block));
          }
        }
      }
      for (std::int32_t k = k0; k < k1; ++k) {
        const T d = alpha * sums[k];
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
  /// Packs X (N x n) into panels of sparse_block rows: panel b's column c
  /// at out + (b n + c) sparse_block, the rows past N zero.
  template <class T>
  static void pack_panels(context<cpu>& ctx, input<T> x, T* out) {
    const index_t blocks = (x.rows() + sparse_block - 1) / sparse_block;
    const index_t parts = std::min(parts_of(blocks * x.cols(), 256, 64), blocks * x.cols());
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = part(blocks * x.cols(), parts, t);
      for (index_t e = r.begin; e < r.begin + r.size; ++e) {
        const index_t b = e / x.cols(), c = e % x.cols();
        const index_t r0 = b * sparse_block;
        const index_t len = std::min(sparse_block, x.rows() - r0);
        const T* in = x.data() + r0 + c * x.ld();
        T* o = out + e * sparse_block;
        std::copy(in, in + len, o);
        std::fill(o + len, o + sparse_block, T(0));
      }
    });
  }

  /// One block of a column: sparse_block values, through Eigen's fixed-size
  /// packets. Panels come from the workspace (256-byte aligned pieces), so
  /// every block is 64-byte aligned: no element ever takes a scalar path.
  template <class T>
  using block = Eigen::Array<T, sparse_block, 1>;
  template <class T>
  static Eigen::Map<block<T>, Eigen::Aligned64> block_of(T* p) {
    return Eigen::Map<block<T>, Eigen::Aligned64>(p);
  }
  template <class T>
  static Eigen::Map<const block<T>, Eigen::Aligned64> block_of(const T* p) {
    return Eigen::Map<const block<T>, Eigen::Aligned64>(p);
  }

  /// sum_q a_q b_q over a block: 8 lanes (element-wise products and sums of
  /// 8-value slices, in order), then the lanes in a fixed tree.
  template <class T>
  static T dot_block(const block<T>& a, const Eigen::Map<const block<T>, Eigen::Aligned64>& b) {
    Eigen::Array<T, 8, 1> lane = a.template head<8>() * b.template head<8>();
    for (index_t q = 8; q < sparse_block; q += 8) {
      lane += a.template segment<8>(q) * b.template segment<8>(q);
    }
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
           ((lane[4] + lane[5]) + (lane[6] + lane[7]));
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
