#pragma once
/// @file
/// The projection family's part of the CPU operation table (internal; the
/// operations of `projection_backend_for`, projection/backend.hpp), assembled
/// into `lowrank::ops<lowrank::cpu>` by backend/cpu/ops.hpp.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/partition.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/projection/backend.hpp"

namespace lowrank::detail {

/// The projection family's operations of the CPU backend.
struct cpu_projection_ops {
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cpu>;

  /// M = b1 M + (1 - b1) G, V = b2 V + (1 - b2) G (.) G, in double.
  template <scalar T>
  static void adam_moments(context<cpu>& ctx, double b1, double b2, input<T> g,
                           matrix_view<T, cpu> m, matrix_view<T, cpu> v) {
    LOWRANK_ASSERT(g.rows() == m.rows() && g.cols() == m.cols() && g.rows() == v.rows() &&
                   g.cols() == v.cols());
    const double c1 = 1 - b1;
    const double c2 = 1 - b2;
    for_each_column(ctx, g.rows(), g.cols(), 32768, [&](index_t j) {
      const T* gc = g.data() + j * g.ld();
      T* mc = m.data() + j * m.ld();
      T* vc = v.data() + j * v.ld();
      for (index_t i = 0; i < g.rows(); ++i) {
        const double x = gc[i];
        mc[i] = static_cast<T>(b1 * double(mc[i]) + c1 * x);
        vc[i] = static_cast<T>(b2 * double(vc[i]) + c2 * (x * x));
      }
    });
  }

  /// Y = alpha ms M / (vs sqrt(V) + eps) + beta Y (beta = 0 ignores Y), in double.
  template <scalar T>
  static void adam_direction(context<cpu>& ctx, double ms, double vs, double eps, input<T> m,
                             input<T> v, T alpha, T beta, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(m.rows() == y.rows() && m.cols() == y.cols() && v.rows() == y.rows() &&
                   v.cols() == y.cols());
    const double a = double(alpha) * ms;
    for_each_column(ctx, y.rows(), y.cols(), 32768, [&](index_t j) {
      const T* mc = m.data() + j * m.ld();
      const T* vc = v.data() + j * v.ld();
      T* yc = y.data() + j * y.ld();
      for (index_t i = 0; i < y.rows(); ++i) {
        const double d = a * double(mc[i]) / (vs * std::sqrt(double(vc[i])) + eps);
        yc[i] = static_cast<T>(beta == T(0) ? d : d + double(beta) * double(yc[i]));
      }
    });
  }

  /// out_i = sqrt(num_i) / (sqrt(den_i) + eps), in double.
  template <scalar T>
  static void norm_ratio(context<cpu>& /*ctx*/, vector_view<const double, cpu> num,
                         vector_view<const double, cpu> den, double eps, vector_view<T, cpu> out) {
    LOWRANK_ASSERT(num.size() == out.size() && den.size() == out.size());
    for (index_t i = 0; i < out.size(); ++i) {
      out[i] = static_cast<T>(std::sqrt(num[i]) / (std::sqrt(den[i]) + eps));
    }
  }

  /// X = diag(d) X.
  template <scalar T>
  static void scale_rows(context<cpu>& ctx, vector_view<const std::type_identity_t<T>, cpu> d,
                         matrix_view<T, cpu> x) {
    LOWRANK_ASSERT(d.size() == x.rows());
    for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      T* c = x.data() + j * x.ld();
      for (index_t i = 0; i < x.rows(); ++i) c[i] *= d[i];
    });
  }

  /// X = |X|.
  template <scalar T>
  static void abs_values(context<cpu>& ctx, matrix_view<T, cpu> x) {
    for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
      T* c = x.data() + j * x.ld();
      for (index_t i = 0; i < x.rows(); ++i) c[i] = std::abs(c[i]);
    });
  }

  /// Q-GaLore's group quantisation of X (projection/backend.hpp), in T.
  template <scalar T>
  static void quantize_groups(context<cpu>& ctx, input<T> x, bool row_major, index_t group,
                              int bits, vector_view<std::uint8_t, cpu> codes,
                              vector_view<T, cpu> scales, vector_view<T, cpu> zeros) {
    const index_t n = x.size();
    const index_t groups = (n + group - 1) / group;
    LOWRANK_ASSERT((bits == 4 || bits == 8) && scales.size() == groups && zeros.size() == groups &&
                   codes.size() == (bits == 4 ? (n + 1) / 2 : n));
    const T top = T((1 << bits) - 1);
    const auto at = [&](index_t k) {
      return row_major ? x(k / x.cols(), k % x.cols()) : x(k % x.rows(), k / x.rows());
    };
    const index_t parts = std::clamp<index_t>(n / 65536, 1, 64);
    ctx.pool().run(std::min(parts, groups), [&](index_t t) {
      const auto r = part(groups, std::min(parts, groups), t);
      for (index_t g = r.begin; g < r.begin + r.size; ++g) {
        const index_t first = g * group;
        const index_t last = std::min(first + group, n);
        T lo = at(first);
        T hi = lo;
        for (index_t k = first + 1; k < last; ++k) {
          lo = std::min(lo, at(k));
          hi = std::max(hi, at(k));
        }
        const T s = std::max(T(hi - lo), T(1e-5)) / top;
        const T z = std::clamp(T(-std::nearbyint(lo / s)), T(0), top);
        scales[g] = s;
        zeros[g] = z;
        for (index_t k = first; k < last; ++k) {
          const auto q =
              static_cast<std::uint8_t>(std::clamp(T(std::nearbyint(at(k) / s) + z), T(0), top));
          if (bits == 8) {
            codes[k] = q;
          } else if (k % 2 == 0) {
            codes[k / 2] = q;  // the low nibble; the high one follows
          } else {
            codes[k / 2] = static_cast<std::uint8_t>(codes[k / 2] | (q << 4));
          }
        }
      }
    });
  }

  /// X = s (q - z): the inverse of quantize_groups' layout, in T.
  template <scalar T>
  static void dequantize_groups(context<cpu>& ctx, vector_view<const std::uint8_t, cpu> codes,
                                vector_view<const std::type_identity_t<T>, cpu> scales,
                                vector_view<const std::type_identity_t<T>, cpu> zeros,
                                index_t group, int bits, bool row_major, matrix_view<T, cpu> x) {
    LOWRANK_ASSERT(bits == 4 || bits == 8);
    for_each_column(ctx, x.rows(), x.cols(), 32768, [&](index_t j) {
      for (index_t i = 0; i < x.rows(); ++i) {
        const index_t k = row_major ? i * x.cols() + j : i + j * x.rows();
        const unsigned q = bits == 8 ? codes[k] : (codes[k / 2] >> (4 * (k % 2))) & 15u;
        x(i, j) = scales[k / group] * (T(q) - zeros[k / group]);
      }
    });
  }
};

}  // namespace lowrank::detail
