#pragma once
/// @file
/// `lowrank::sparse_support<Backend>`: the fixed positions of the non-zeros of
/// an m x n sparse matrix S (SLTrain's support), and the random supports of
/// the factors family (docs/algorithms.md, "Factors").
///
/// **Storage.** CSR by rows, int32: `row_offsets` (m + 1) and `col_indices`
/// (nnz), columns strictly increasing within a row; entry k is the k-th
/// non-zero in row-major order, which is the order of SLTrain's sorted flat
/// indices (p = r n + c, `sparse_index`), so values stored in that order are
/// SLTrain's `sparse_value`. Dense matrices stay column-major (lowrank's
/// layout); only the support's order is row-major. Backends that need it
/// (CUDA, for deterministic products with S) also keep the CSC copy: 2 nnz +
/// n + 1 more int32. Limits: m, n and nnz below 2^31, m n below 2^62.
///
/// **Random supports.** `sparse_support::random(ctx, m, n, nnz, stream)` is
/// {p(0), ..., p(nnz - 1)} sorted, p the `random_permutation` of [0, m n)
/// drawn from `stream` (random/permutation.hpp): exactly nnz distinct
/// positions, a uniformly random subset as far as the permutation is random,
/// the same bits on every backend and thread count. SLTrain draws
/// `sort(randperm(m n)[:nnz])` from torch's generator instead, which no other
/// implementation reproduces; its supports load with `from_flat_indices`.
/// Drawing costs about 6 mixes per candidate (under 4 candidates per entry)
/// and a per-row sort: O(nnz log(nnz / m)), a few ms per million entries.
/// Since the support is a function of (stream, m, n, nnz), a layer may keep
/// only its seed and draw the support again when it needs it
/// (`support_storage::seed`, factors/sparse_plus_low_rank.hpp).
///
/// **Errors.** lowrank::invalid_argument naming the function, the argument,
/// its value and what was expected: a density outside (0, 1), nnz outside
/// [0, m n], shapes out of the limits, and, on load, offsets that do not
/// start at 0, decrease or end elsewhere than nnz, and column or flat indices
/// out of range, unsorted or repeated. Nothing is built when a check fails.

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/factors/backend.hpp"
#include "lowrank/random/philox.hpp"
#include "lowrank/random/streams.hpp"

namespace lowrank {

/// The kinds of random matrix the factors family draws (random/streams.hpp):
/// the support (8), the initial A (9), the initial sparse values (10) and
/// the initial bias (11).
enum class factor_stream_kind : stream_kind { support = 8, init_a = 9, values = 10, bias = 11 };

/// The Philox stream of one random matrix of a factor layer:
/// `layer_stream(seed, layer, kind, 0)`.
[[nodiscard]] constexpr random_stream factor_stream(std::uint64_t seed, std::uint64_t layer,
                                                    factor_stream_kind kind) noexcept {
  return layer_stream(seed, layer, static_cast<stream_kind>(kind), 0);
}

/// SLTrain's support size: floor(density m n), as Python's int(sp_ratio * m * n).
/// @throws lowrank::invalid_argument for a density outside (0, 1) (or not finite).
[[nodiscard]] inline index_t support_size(const char* fn, index_t rows, index_t cols,
                                          double density) {
  if (!(density > 0 && density < 1)) {
    detail::throw_invalid_argument(fn, "density", density, "in (0, 1)");
  }
  return static_cast<index_t>(std::floor(density * double(rows * cols)));
}

template <class Backend>
requires requires { ops<Backend>::needs_columns; }
class sparse_support {
 public:
  sparse_support() = default;

  /// The random support of exactly `nnz` entries of an m x n matrix drawn
  /// from `stream` (see the file comment).
  /// @throws lowrank::invalid_argument for m, n outside [1, 2^31), m n >=
  ///   2^62, or nnz outside [0, min(m n, 2^31 - 1)].
  [[nodiscard]] static sparse_support random(context<Backend>& ctx, index_t rows, index_t cols,
                                             index_t nnz, random_stream stream) {
    const char* fn = "lowrank::sparse_support::random";
    check_shape(fn, rows, cols);
    check_nnz(fn, rows, cols, nnz);
    sparse_support s(ctx, rows, cols, nnz);
    ops<Backend>::random_support(ctx, stream, cols, nnz, s.row_offsets_.view(),
                                 s.col_indices_.view());
    s.add_columns(ctx);
    return s;
  }

  /// A support from its CSR arrays (host memory), checked.
  /// @throws lowrank::invalid_argument for shapes out of the limits, offsets
  ///   of another size than m + 1, not starting at 0, decreasing or not ending
  ///   at col_indices' size, and column indices out of [0, n) or not strictly
  ///   increasing within a row.
  [[nodiscard]] static sparse_support from_csr(context<Backend>& ctx, index_t rows, index_t cols,
                                               std::span<const std::int32_t> row_offsets,
                                               std::span<const std::int32_t> col_indices) {
    const char* fn = "lowrank::sparse_support::from_csr";
    check_shape(fn, rows, cols);
    const auto nnz = static_cast<index_t>(col_indices.size());
    check_nnz(fn, rows, cols, nnz);
    if (static_cast<index_t>(row_offsets.size()) != rows + 1) {
      detail::throw_invalid_argument(fn, "row_offsets.size()", row_offsets.size(),
                                     "rows + 1 = " + std::to_string(rows + 1));
    }
    if (row_offsets[0] != 0 || row_offsets[std::size_t(rows)] != nnz) {
      detail::throw_invalid_argument(
          fn, "row_offsets",
          "offsets from " + std::to_string(row_offsets[0]) + " to " +
              std::to_string(row_offsets[std::size_t(rows)]),
          "offsets from 0 to col_indices.size() = " + std::to_string(nnz));
    }
    for (index_t i = 0; i < rows; ++i) {
      const std::int32_t b = row_offsets[std::size_t(i)];
      const std::int32_t e = row_offsets[std::size_t(i) + 1];
      if (e < b) {
        detail::throw_invalid_argument(fn, "row_offsets",
                                       "offset " + std::to_string(e) + " after " +
                                           std::to_string(b) + " (row " + std::to_string(i) + ")",
                                       "non-decreasing offsets");
      }
      for (std::int32_t k = b; k < e; ++k) {
        const std::int32_t c = col_indices[std::size_t(k)];
        if (c < 0 || c >= cols || (k > b && c <= col_indices[std::size_t(k) - 1])) {
          detail::throw_invalid_argument(
              fn, "col_indices",
              "column " + std::to_string(c) + " at entry " + std::to_string(k) + " (row " +
                  std::to_string(i) + ")",
              "columns in [0, " + std::to_string(cols) + "), strictly increasing within a row");
        }
      }
    }
    sparse_support s(ctx, rows, cols, nnz);
    ops<Backend>::upload_int32(ctx, host_view(row_offsets), s.row_offsets_.view());
    ops<Backend>::upload_int32(ctx, host_view(col_indices), s.col_indices_.view());
    s.add_columns(ctx);
    return s;
  }

  /// A support from SLTrain's `sparse_index`: flat row-major positions p = r
  /// n + c, strictly increasing.
  /// @throws lowrank::invalid_argument for shapes out of the limits or a
  ///   position out of [0, m n), repeated or out of order.
  [[nodiscard]] static sparse_support from_flat_indices(context<Backend>& ctx, index_t rows,
                                                        index_t cols,
                                                        std::span<const std::int64_t> flat) {
    const char* fn = "lowrank::sparse_support::from_flat_indices";
    check_shape(fn, rows, cols);
    const auto nnz = static_cast<index_t>(flat.size());
    check_nnz(fn, rows, cols, nnz);
    std::vector<std::int32_t> offsets(std::size_t(rows) + 1, 0);
    std::vector<std::int32_t> columns(flat.size());
    for (std::size_t k = 0; k < flat.size(); ++k) {
      const std::int64_t p = flat[k];
      if (p < 0 || p >= rows * cols || (k > 0 && p <= flat[k - 1])) {
        detail::throw_invalid_argument(
            fn, "flat", "position " + std::to_string(p) + " at entry " + std::to_string(k),
            "positions in [0, rows cols = " + std::to_string(rows * cols) +
                "), strictly increasing");
      }
      ++offsets[std::size_t(p / cols) + 1];
      columns[k] = static_cast<std::int32_t>(p % cols);
    }
    for (index_t i = 0; i < rows; ++i) offsets[std::size_t(i) + 1] += offsets[std::size_t(i)];
    sparse_support s(ctx, rows, cols, nnz);
    ops<Backend>::upload_int32(ctx, host_view(std::span<const std::int32_t>(offsets)),
                               s.row_offsets_.view());
    ops<Backend>::upload_int32(ctx, host_view(std::span<const std::int32_t>(columns)),
                               s.col_indices_.view());
    s.add_columns(ctx);
    return s;
  }

  sparse_support(sparse_support&&) noexcept = default;
  sparse_support& operator=(sparse_support&&) noexcept = default;
  sparse_support(const sparse_support&) = delete;
  sparse_support& operator=(const sparse_support&) = delete;

  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t cols() const noexcept { return cols_; }
  [[nodiscard]] index_t nnz() const noexcept { return nnz_; }

  /// The arrays, for the backend's operations.
  [[nodiscard]] support_view<Backend> view() const noexcept {
    return {rows_,
            cols_,
            nnz_,
            row_offsets_.view().data(),
            col_indices_.view().data(),
            col_offsets_.size() == 0 ? nullptr : col_offsets_.view().data(),
            row_indices_.size() == 0 ? nullptr : row_indices_.view().data(),
            positions_.size() == 0 ? nullptr : positions_.view().data()};
  }

  /// The CSR arrays in host memory.
  [[nodiscard]] std::vector<std::int32_t> row_offsets(context<Backend>& ctx) const {
    return download(ctx, row_offsets_);
  }
  [[nodiscard]] std::vector<std::int32_t> col_indices(context<Backend>& ctx) const {
    return download(ctx, col_indices_);
  }

  /// SLTrain's `sparse_index`: the flat row-major positions r n + c, increasing.
  [[nodiscard]] std::vector<std::int64_t> flat_indices(context<Backend>& ctx) const {
    const std::vector<std::int32_t> offsets = row_offsets(ctx);
    const std::vector<std::int32_t> columns = col_indices(ctx);
    std::vector<std::int64_t> flat(columns.size());
    for (index_t i = 0; i < rows_; ++i) {
      for (std::int32_t k = offsets[std::size_t(i)]; k < offsets[std::size_t(i) + 1]; ++k) {
        flat[std::size_t(k)] = std::int64_t(i) * cols_ + columns[std::size_t(k)];
      }
    }
    return flat;
  }

  /// The bytes of index memory held (CSR, plus CSC where the backend keeps it).
  [[nodiscard]] std::size_t bytes() const noexcept {
    return sizeof(std::int32_t) *
           std::size_t(row_offsets_.size() + col_indices_.size() + col_offsets_.size() +
                       row_indices_.size() + positions_.size());
  }

  /// Checks that a support of nnz entries of an m x n matrix is within the
  /// limits (the checks random() makes), without drawing it.
  /// @throws lowrank::invalid_argument as random().
  static void check_limits(const char* fn, index_t rows, index_t cols, index_t nnz) {
    check_shape(fn, rows, cols);
    check_nnz(fn, rows, cols, nnz);
  }

 private:
  sparse_support(context<Backend>& ctx, index_t rows, index_t cols, index_t nnz)
      : rows_(rows), cols_(cols), nnz_(nnz), row_offsets_(ctx, rows + 1), col_indices_(ctx, nnz) {}

  static void check_shape(const char* fn, index_t rows, index_t cols) {
    constexpr index_t limit = std::numeric_limits<std::int32_t>::max();
    if (rows < 1 || rows > limit) {
      detail::throw_invalid_argument(fn, "rows", rows, "in [1, 2^31)");
    }
    if (cols < 1 || cols > limit) {
      detail::throw_invalid_argument(fn, "cols", cols, "in [1, 2^31)");
    }
    if (rows > (index_t{1} << 62) / cols) {
      detail::throw_invalid_argument(fn, "rows * cols",
                                     std::to_string(rows) + " x " + std::to_string(cols),
                                     "below 2^62 entries");
    }
  }
  static void check_nnz(const char* fn, index_t rows, index_t cols, index_t nnz) {
    const index_t most = std::min<index_t>(rows * cols, std::numeric_limits<std::int32_t>::max());
    if (nnz < 0 || nnz > most) {
      detail::throw_invalid_argument(
          fn, "nnz", nnz, "in [0, min(rows cols, 2^31 - 1)] = [0, " + std::to_string(most) + "]");
    }
  }

  static vector_view<const std::int32_t, cpu> host_view(std::span<const std::int32_t> s) {
    return {s.data(), static_cast<index_t>(s.size())};
  }

  static std::vector<std::int32_t> download(context<Backend>& ctx,
                                            const vector<std::int32_t, Backend>& v) {
    std::vector<std::int32_t> out(static_cast<std::size_t>(v.size()));
    ops<Backend>::download_int32(ctx, v.view(),
                                 vector_view<std::int32_t, cpu>(out.data(), v.size()));
    return out;
  }

  void add_columns(context<Backend>& ctx) {
    if constexpr (ops<Backend>::needs_columns) {
      col_offsets_ = vector<std::int32_t, Backend>(ctx, cols_ + 1);
      row_indices_ = vector<std::int32_t, Backend>(ctx, nnz_);
      positions_ = vector<std::int32_t, Backend>(ctx, nnz_);
      ops<Backend>::support_columns(ctx, view(), col_offsets_.view(), row_indices_.view(),
                                    positions_.view());
    } else {
      (void)ctx;
    }
  }

  index_t rows_ = 0;
  index_t cols_ = 0;
  index_t nnz_ = 0;
  vector<std::int32_t, Backend> row_offsets_, col_indices_;
  vector<std::int32_t, Backend> col_offsets_, row_indices_, positions_;
};

}  // namespace lowrank
