#pragma once
/// @file
/// The projection family's part of the CPU operation table (internal; the
/// operations of `projection_backend_for`, projection/backend.hpp), assembled
/// into `lowrank::ops<lowrank::cpu>` by backend/cpu/ops.hpp.

#include <cmath>
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
};

}  // namespace lowrank::detail
