#pragma once
/// @file
/// The adapters' part of the CPU operation table (internal; the operations of
/// `adapter_backend_for`, adapters/backend.hpp), assembled into
/// `lowrank::ops<lowrank::cpu>` by backend/cpu/ops.hpp.

#include <cstdint>
#include <type_traits>
#include <vector>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/merge.hpp"
#include "lowrank/backend/cpu/partition.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank::detail {

/// The adapters' operations of the CPU backend.
struct cpu_adapter_ops {
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cpu>;

  /// Y = alpha (X (.) M) / (1 - p) + beta Y: inverted dropout with keep mask
  /// M(i, j) = [u(i, j) >= p], u the float uniform matrix of `stream`
  /// (random/philox.hpp), so the mask is one function of (stream, i, j)
  /// whatever T, the split or the backend. p in [0, 1).
  template <scalar T>
  static void dropout(context<cpu>& ctx, random_stream stream, double p, T alpha, input<T> x,
                      T beta, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && p >= 0 && p < 1);
    // The mask is the float uniform matrix of `stream`: its index range.
    require_random_range<float>("lowrank::ops<cpu>::dropout", distribution::uniform, x.rows(),
                                x.cols());
    const T keep = alpha / static_cast<T>(1.0 - p);
    for_each_column(ctx, x.rows(), x.cols(), 16384, [&](index_t j) {
      const T* in = x.data() + j * x.ld();
      T* out = y.data() + j * y.ld();
      for (index_t i0 = 0; i0 < x.rows(); i0 += 4) {
        const philox_counter w =
            random_words(stream, static_cast<std::uint64_t>(i0 / 4), static_cast<std::uint64_t>(j));
        for (index_t lane = 0; lane < 4 && i0 + lane < x.rows(); ++lane) {
          const index_t i = i0 + lane;
          const T kept = u24(w.v[lane]) >= p ? keep * in[i] : T(0);
          out[i] = beta == T(0) ? kept : kept + beta * out[i];
        }
      }
    });
  }

  /// n_i = max(sqrt(max(w_i + 2 s b_i + s^2 c_i, 0)), floor): the row norms
  /// of W + s B A from w_i = ||W_i||^2, b_i = <B_i, (W A^T)_i> and
  /// c_i = <B_i, (B A A^T)_i> (DoRA's factored norm). A NaN stays NaN.
  static void factored_row_norms(context<cpu>& /*ctx*/, double s, double floor,
                                 vector_view<const double, cpu> w, vector_view<const double, cpu> b,
                                 vector_view<const double, cpu> c, vector_view<double, cpu> n) {
    LOWRANK_ASSERT(w.size() == n.size() && b.size() == n.size() && c.size() == n.size());
    const double two_s = 2 * s;
    const double s2 = s * s;
    for (index_t i = 0; i < n.size(); ++i) {
      const double sq = w[i] + two_s * b[i] + s2 * c[i];
      const double norm = std::sqrt(sq < 0 ? 0.0 : sq);
      n[i] = norm < floor ? floor : norm;
    }
  }

  /// The merge of a low-rank update into a weight, in extended precision
  /// (double for float, long double for double) and rounded once per element:
  ///   W'(i, j) = fl(c_i (W(i, j) + s (B A)(i, j))),
  /// c = `row_scale` (empty: c = 1). W is out x in, B out x r, A r x in.
  /// Returns the column-major index of the first non-finite W', or -1. With
  /// `check_only`, W is not written. Otherwise W becomes W' (all of it, even
  /// when some W' is non-finite) and, when `record` is not null, it receives
  /// (index, old value) of every element that unmerge_low_rank() with the same
  /// arguments would not restore bit for bit, in index order.
  template <scalar T>
  static index_t merge_low_rank(context<cpu>& ctx, double s, input<T> b, input<T> a,
                                vector_view<const double, cpu> row_scale, matrix_view<T, cpu> w,
                                bool check_only,
                                std::vector<merge_exception<std::type_identity_t<T>>>* record) {
    return merge_pass(ctx, s, b, a, row_scale, w,
                      check_only ? merge_pass_kind::check : merge_pass_kind::merge, record);
  }

  /// The inverse of merge_low_rank(): W(i, j) = fl(W'(i, j) / c_i - s (B A)(i, j))
  /// in extended precision, then the recorded elements restored; with the
  /// record of the merge, W is the pre-merge weight bit for bit.
  template <scalar T>
  static void unmerge_low_rank(
      context<cpu>& ctx, double s, input<T> b, input<T> a, vector_view<const double, cpu> row_scale,
      matrix_view<T, cpu> w, const std::vector<merge_exception<std::type_identity_t<T>>>& record) {
    merge_pass<T>(ctx, s, b, a, row_scale, w, merge_pass_kind::unmerge, nullptr);
    for (const auto& e : record)
      w.data()[e.index % w.rows() + (e.index / w.rows()) * w.ld()] = e.value;
  }
};

}  // namespace lowrank::detail
