#pragma once
/// @file
/// The basis family's part of the CPU operation table (internal; the
/// operations of `basis_backend_for`, basis/backend.hpp), assembled into
/// `lowrank::ops<lowrank::cpu>` by backend/cpu/ops.hpp.
///
/// The FFT route of the DCT is Makhoul's algorithm over our own FFT
/// (backend/cpu/fft.hpp), in T, eight vectors at a time. It replaced Eigen's
/// FFT module (kissfft, one vector at a time) after measurement: 512 vectors
/// of length 4096 in float took 66 ms with kissfft in double, 2.6x FFTW's
/// REDFT10 (bench/dct_bench.cpp has today's figures).

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <map>
#include <memory>
#include <type_traits>
#include <vector>

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/fft.hpp"
#include "lowrank/backend/cpu/partition.hpp"
#include "lowrank/basis/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail {

/// s_k of the orthonormal DCT-II of length n.
[[nodiscard]] inline double dct_scale(std::int64_t k, std::int64_t n) noexcept {
  return k == 0 ? std::sqrt(1.0 / double(n)) : std::sqrt(2.0 / double(n));
}

/// Makhoul's DCT of length n in T over blocks of fft_lanes vectors: the
/// complex FFT (of length n / 2 for even n, two real samples a complex
/// number; of length n for odd n) and the twiddles.
template <class T>
class dct_plan {
  using lane = Eigen::Array<T, fft_lanes, 1>;
  using lane_in = Eigen::Map<const lane>;
  using lane_out = Eigen::Map<lane>;

 public:
  explicit dct_plan(index_t n)
      : n_(n), even_(n % 2 == 0), fft_(even_ ? n / 2 : n), c_(n), s_(n), scale_(n), inv_scale_(n) {
    for (index_t k = 0; k < n; ++k) {
      c_[std::size_t(k)] = static_cast<T>(dct_cos(k, n));      // cos(pi k / 2n)
      s_[std::size_t(k)] = static_cast<T>(dct_cos(k - n, n));  // sin(pi k / 2n)
      scale_[std::size_t(k)] = static_cast<T>(dct_scale(k, n));
      inv_scale_[std::size_t(k)] = static_cast<T>(1 / dct_scale(k, n));
    }
    if (even_) {
      wr_.resize(std::size_t(n / 2 + 1));
      wi_.resize(std::size_t(n / 2 + 1));
      for (index_t k = 0; k <= n / 2; ++k) {
        const auto [c, si] = unit_root(k, n);  // exp(-2 pi i k / n)
        wr_[std::size_t(k)] = static_cast<T>(c);
        wi_[std::size_t(k)] = static_cast<T>(si);
      }
    }
  }

  /// Scalars of each of the six planes a block needs.
  [[nodiscard]] std::size_t plane() const noexcept { return std::size_t((n_ + 1) * fft_lanes); }

  /// The DCT-II of a block: x[i * fft_lanes + l] is element i of lane l's
  /// vector, y[k * fft_lanes + l] receives its coefficient k (x and y n
  /// fft_lanes each, apart from `buf`, which holds four planes).
  void forward(const T* x, T* y, T* buf) const {
    constexpr index_t L = fft_lanes;
    const index_t n = n_;
    const index_t h = n / 2;
    T* zr = buf;
    T* zi = buf + plane();
    T* tr = buf + 2 * plane();
    T* ti = buf + 3 * plane();
    const auto in = [](const T* p, index_t i) { return lane_in(p + i * L); };
    const auto out = [](T* p, index_t i) { return lane_out(p + i * L); };
    // v = (x_0, x_2, x_4, ..., x_3, x_1): v_t = x_{2t} (2t < n), else x_{2n - 2t - 1}.
    const auto v_index = [n](index_t t) { return 2 * t < n ? 2 * t : 2 * n - 2 * t - 1; };
    if (even_) {
      for (index_t j = 0; j < h; ++j) {
        out(zr, j) = in(x, v_index(2 * j));
        out(zi, j) = in(x, v_index(2 * j + 1));
      }
    } else {
      for (index_t j = 0; j < n; ++j) {
        out(zr, j) = in(x, v_index(j));
        out(zi, j) = lane::Zero();
      }
    }
    fft_.forward(zr, zi, tr, ti);
    for (index_t k = 0; k <= h; ++k) {
      const std::size_t kk = std::size_t(k);
      lane vr, vi;
      if (even_) {
        // V_k = E_k + w^k O_k from A = Z_k and B = conj(Z_{h - k}) (Z_h = Z_0).
        const index_t m = k == 0 || k == h ? 0 : h - k;
        const index_t kz = k == h ? 0 : k;
        const lane ar = in(zr, kz), ai = in(zi, kz);
        const lane br = in(zr, m), bi = -in(zi, m);
        const lane er = (ar + br) * T(0.5), ei = (ai + bi) * T(0.5);
        const lane orr = (ai - bi) * T(0.5), oi = (br - ar) * T(0.5);  // -i (A - B) / 2
        vr = er + wr_[kk] * orr - wi_[kk] * oi;
        vi = ei + wr_[kk] * oi + wi_[kk] * orr;
      } else {
        vr = in(zr, k);
        vi = in(zi, k);
      }
      // X_k = s_k Re(exp(-i pi k / 2n) V_k); X_{n-k} with V_{n-k} = conj(V_k).
      out(y, k) = scale_[kk] * (c_[kk] * vr + s_[kk] * vi);
      const std::size_t nk = std::size_t(n - k);
      if (k > 0 && n - k > h) out(y, n - k) = scale_[nk] * (c_[nk] * vr - s_[nk] * vi);
    }
  }

  /// The DCT-III of a block (the inverse of forward), same conventions;
  /// `buf` holds six planes.
  void inverse(const T* x, T* y, T* buf) const {
    constexpr index_t L = fft_lanes;
    const index_t n = n_;
    const index_t h = n / 2;
    T* vr = buf;
    T* vi = buf + plane();
    T* zr = buf + 2 * plane();
    T* zi = buf + 3 * plane();
    T* tr = buf + 4 * plane();
    T* ti = buf + 5 * plane();
    const auto in = [](const T* p, index_t i) { return lane_in(p + i * L); };
    const auto out = [](T* p, index_t i) { return lane_out(p + i * L); };
    // V_k = exp(i pi k / 2n) (c_k - i c_{n-k}), c_k = y_k / s_k, c_n = 0, k <= n / 2.
    for (index_t k = 0; k <= h; ++k) {
      const std::size_t kk = std::size_t(k);
      const lane ck = in(x, k) * inv_scale_[kk];
      const lane cn =
          k == 0 ? lane(lane::Zero()) : lane(in(x, n - k) * inv_scale_[std::size_t(n - k)]);
      out(vr, k) = c_[kk] * ck + s_[kk] * cn;
      out(vi, k) = s_[kk] * ck - c_[kk] * cn;
    }
    // The inverse FFT as conj(FFT(conj(.))): conj(Z) goes into (zr, zi).
    if (even_) {
      // E_k = (V_k + conj(V_{h-k})) / 2, O_k = (V_k - conj(V_{h-k})) / 2 w^{-k},
      // Z_k = E_k + i O_k, k < h.
      for (index_t k = 0; k < h; ++k) {
        const std::size_t kk = std::size_t(k);
        const lane ar = in(vr, k), ai = in(vi, k);
        const lane br = in(vr, h - k), bi = -in(vi, h - k);
        const lane er = (ar + br) * T(0.5), ei = (ai + bi) * T(0.5);
        const lane dr = (ar - br) * T(0.5), di = (ai - bi) * T(0.5);
        const lane orr = dr * wr_[kk] + di * wi_[kk];  // O = d conj(w^k)
        const lane oi = di * wr_[kk] - dr * wi_[kk];
        out(zr, k) = er - oi;      // Re(E + i O)
        out(zi, k) = -(ei + orr);  // -Im(E + i O)
      }
    } else {
      for (index_t k = 0; k < n; ++k) {
        const bool upper = k > h;
        const index_t m = upper ? n - k : k;
        out(zr, k) = in(vr, m);
        out(zi, k) = upper ? lane(in(vi, m)) : lane(-in(vi, m));
      }
    }
    fft_.forward(zr, zi, tr, ti);
    // z = conj(result) / length: v_{2j} = Re z_j, v_{2j+1} = Im z_j (even n).
    const T norm = static_cast<T>(even_ ? 2.0 / double(n) : 1.0 / double(n));
    const auto x_index = [n](index_t t) { return 2 * t < n ? 2 * t : 2 * n - 2 * t - 1; };
    if (even_) {
      for (index_t j = 0; j < h; ++j) {
        out(y, x_index(2 * j)) = in(zr, j) * norm;
        out(y, x_index(2 * j + 1)) = in(zi, j) * -norm;
      }
    } else {
      for (index_t j = 0; j < n; ++j) out(y, x_index(j)) = in(zr, j) * norm;
    }
  }

 private:
  index_t n_;
  bool even_;
  fft_plan<T> fft_;
  std::vector<T> c_, s_, scale_, inv_scale_;  // per k < n
  std::vector<T> wr_, wi_;                    // exp(-2 pi i k / n), k <= n / 2 (even n)
};

/// The CPU backend's DCT plans (a context resource): a plan per length and
/// scalar, and the buffers of each task of the split.
class cpu_dct_plans {
 public:
  explicit cpu_dct_plans(context<cpu>& /*ctx*/) {}

  /// The plan of length n in T (made on first use; call before the parallel part).
  template <class T>
  const dct_plan<T>& plan(index_t n) {
    auto& map = plans<T>();
    auto it = map.find(n);
    if (it == map.end()) it = map.emplace(n, std::make_unique<dct_plan<T>>(n)).first;
    return *it->second;
  }
  /// Task t's buffer of at least `size` T (made before the parallel part).
  template <class T>
  void reserve(index_t tasks, std::size_t size) {
    auto& b = buffers<T>();
    if (index_t(b.size()) < tasks) b.resize(std::size_t(tasks));
    for (index_t t = 0; t < tasks; ++t) {
      if (b[std::size_t(t)].size() < size) b[std::size_t(t)].resize(size);
    }
  }
  template <class T>
  T* buffer(index_t t) {
    return buffers<T>()[std::size_t(t)].data();
  }

 private:
  template <class T>
  std::map<index_t, std::unique_ptr<dct_plan<T>>>& plans() {
    if constexpr (std::is_same_v<T, float>) {
      return float_plans_;
    } else {
      return double_plans_;
    }
  }
  template <class T>
  std::vector<std::vector<T>>& buffers() {
    if constexpr (std::is_same_v<T, float>) {
      return float_buffers_;
    } else {
      return double_buffers_;
    }
  }
  std::map<index_t, std::unique_ptr<dct_plan<float>>> float_plans_;
  std::map<index_t, std::unique_ptr<dct_plan<double>>> double_plans_;
  std::vector<std::vector<float>> float_buffers_;
  std::vector<std::vector<double>> double_buffers_;
};

/// The basis family's operations of the CPU backend.
struct cpu_basis_ops {
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cpu>;

  /// Y = C X (every column) or X C^T (every row); C^T with `inverse`:
  /// blocks of fft_lanes vectors, the split fixed by the shape.
  template <scalar T>
  static void dct_fft(context<cpu>& ctx, input<T> x, matrix_view<T, cpu> y, bool along_columns,
                      bool inverse) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols());
    const index_t n = along_columns ? x.rows() : x.cols();
    const index_t count = along_columns ? x.cols() : x.rows();
    if (n == 0 || count == 0) return;
    if (n == 1) {
      for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
        for (index_t i = 0; i < x.rows(); ++i) y.data()[j * y.ld() + i] = x.data()[j * x.ld() + i];
      });
      return;
    }
    constexpr index_t L = fft_lanes;
    auto& plans = ctx.resource<cpu_dct_plans>();
    const dct_plan<T>& plan = plans.plan<T>(n);
    const index_t blocks = (count + L - 1) / L;
    const index_t parts = std::min(parts_of(blocks * L * n, 1 << 15, 64), blocks);
    plans.reserve<T>(parts, 8 * plan.plane());
    const T* xd = x.data();
    T* yd = y.data();
    const index_t xld = x.ld();
    const index_t yld = y.ld();
    ctx.pool().run(parts, [&](index_t t) {
      T* in = plans.buffer<T>(t);
      T* out = in + plan.plane();
      T* buf = out + plan.plane();
      const auto r = part(blocks, parts, t);
      for (index_t b = r.begin; b < r.begin + r.size; ++b) {
        const index_t v0 = b * L;
        const index_t lanes = std::min(L, count - v0);
        // Stage the block lane-major: in[i L + l] = element i of vector
        // v0 + l, X(i, v0 + l) (columns) or X(v0 + l, i) (rows); missing
        // lanes are zeros and are not written back.
        if (along_columns) {
          for (index_t l = 0; l < L; ++l) {
            if (l < lanes) {
              const T* xc = xd + (v0 + l) * xld;
              for (index_t i = 0; i < n; ++i) in[i * L + l] = xc[i];
            } else {
              for (index_t i = 0; i < n; ++i) in[i * L + l] = T(0);
            }
          }
        } else {
          for (index_t i = 0; i < n; ++i) {
            const T* xr = xd + i * xld + v0;
            for (index_t l = 0; l < L; ++l) in[i * L + l] = l < lanes ? xr[l] : T(0);
          }
        }
        if (inverse) {
          plan.inverse(in, out, buf);
        } else {
          plan.forward(in, out, buf);
        }
        if (along_columns) {
          for (index_t l = 0; l < lanes; ++l) {
            T* yc = yd + (v0 + l) * yld;
            for (index_t i = 0; i < n; ++i) yc[i] = out[i * L + l];
          }
        } else {
          for (index_t i = 0; i < n; ++i) {
            T* yr = yd + i * yld + v0;
            for (index_t l = 0; l < lanes; ++l) yr[l] = out[i * L + l];
          }
        }
      }
    });
  }

  /// Out(j, i) = C[idx_i, j], n = out.rows().
  template <scalar T>
  static void dct_basis_fill(context<cpu>& ctx, vector_view<const index_t, cpu> idx,
                             matrix_view<T, cpu> out) {
    LOWRANK_ASSERT(out.cols() == idx.size());
    const index_t n = out.rows();
    for_each_column(ctx, out.rows(), out.cols(), 16384, [&](index_t i) {
      const std::int64_t k = idx[i];
      const double s = dct_scale(k, n);
      T* o = out.data() + i * out.ld();
      for (index_t j = 0; j < n; ++j) o[j] = static_cast<T>(s * dct_cos(k * (2 * j + 1), n));
    });
  }

  /// Out(:, i) = s_i X(:, idx_i), s_i = scale_i or 1 when scale is empty.
  template <scalar T>
  static void gather_columns(context<cpu>& ctx, input<T> x, vector_view<const index_t, cpu> idx,
                             vector_view<const T, cpu> scale, matrix_view<T, cpu> out) {
    LOWRANK_ASSERT(out.cols() == idx.size() && out.rows() == x.rows() &&
                   (scale.size() == 0 || scale.size() == idx.size()));
    for_each_column(ctx, out.rows(), out.cols(), 65536, [&](index_t i) {
      const T* in = x.data() + idx[i] * x.ld();
      T* o = out.data() + i * out.ld();
      const T s = scale.size() == 0 ? T(1) : scale[i];
      for (index_t r = 0; r < out.rows(); ++r) o[r] = s * in[r];
    });
  }

  /// Y(:, idx_i) += alpha s_i Src(:, i), i in order (panels of rows).
  template <scalar T>
  static void scatter_add_columns(context<cpu>& ctx, T alpha, input<T> src,
                                  vector_view<const index_t, cpu> idx,
                                  vector_view<const T, cpu> scale, matrix_view<T, cpu> y) {
    LOWRANK_ASSERT(src.cols() == idx.size() && src.rows() == y.rows() &&
                   (scale.size() == 0 || scale.size() == idx.size()));
    const index_t rows = y.rows();
    if (rows == 0) return;
    const index_t parts = std::min(parts_of(rows * idx.size(), 65536, 64), rows);
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = part(rows, parts, t);
      for (index_t i = 0; i < idx.size(); ++i) {
        const T a = scale.size() == 0 ? alpha : alpha * scale[i];
        const T* s = src.data() + i * src.ld() + r.begin;
        T* o = y.data() + idx[i] * y.ld() + r.begin;
        for (index_t q = 0; q < r.size; ++q) o[q] += a * s[q];
      }
    });
  }

  /// out_i = sum_n A(n, ia_i) B(n, ib_i), in double.
  template <scalar T>
  static void sampled_dots(context<cpu>& ctx, matrix_view<const T, cpu> a, input<T> b,
                           vector_view<const index_t, cpu> ia, vector_view<const index_t, cpu> ib,
                           vector_view<double, cpu> out) {
    LOWRANK_ASSERT(a.rows() == b.rows() && ia.size() == ib.size() && out.size() == ia.size());
    const index_t rows = a.rows();
    for_each_column(ctx, rows, ia.size(), 16384, [&](index_t i) {
      const T* x = a.data() + ia[i] * a.ld();
      const T* z = b.data() + ib[i] * b.ld();
      double sum = 0;
      for (index_t r = 0; r < rows; ++r) sum += double(x[r]) * double(z[r]);
      out[i] = sum;
    });
  }

  /// out_j = sum_i |X(i, j)| (per column) or out_i = sum_j |X(i, j)| (per row), in double.
  template <scalar T>
  static void abs_sums(context<cpu>& ctx, matrix_view<const T, cpu> x, bool per_row,
                       vector_view<double, cpu> out) {
    LOWRANK_ASSERT(out.size() == (per_row ? x.rows() : x.cols()));
    if (!per_row) {
      for_each_column(ctx, x.rows(), x.cols(), 65536, [&](index_t j) {
        const T* c = x.data() + j * x.ld();
        double sum = 0;
        for (index_t i = 0; i < x.rows(); ++i) sum += std::abs(double(c[i]));
        out[j] = sum;
      });
      return;
    }
    const index_t rows = x.rows();
    if (rows == 0) return;
    const index_t parts = std::min(parts_of(rows * x.cols(), 65536, 64), rows);
    ctx.pool().run(parts, [&](index_t t) {
      const auto r = part(rows, parts, t);
      for (index_t i = r.begin; i < r.begin + r.size; ++i) out[i] = 0;
      for (index_t j = 0; j < x.cols(); ++j) {
        const T* c = x.data() + j * x.ld();
        for (index_t i = r.begin; i < r.begin + r.size; ++i) out[i] += std::abs(double(c[i]));
      }
    });
  }
};

}  // namespace lowrank::detail
