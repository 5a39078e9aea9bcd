#pragma once
/// @file
/// The CPU backend's FFT (internal): complex transforms of any length n over
/// a block of `fft_lanes` vectors at once, for the DCT's FFT route
/// (backend/cpu/basis.hpp).
///
/// Stockham's autosort formulation, decimation in frequency, mixed radix: as
/// many radix-4 stages as 4 divides n, then 2, then the odd prime factors
/// (radix 3, 5, ... by a direct O(p^2) butterfly, so a length with a large
/// prime factor p costs O(n p): the DCT's cost model sends those to the GEMM
/// route). Stage t with radix p and current length n_t = n / s (s the product
/// of the earlier radices) maps, for pp < n_t / p and every q < s,
///
///     a_r = x[q + s (pp + r n_t / p)],  y[q + s (p pp + k)] = w^(pp k) sum_r a_r omega_p^(r k),
///
/// w = exp(-2 pi i / n_t): the output is in natural order after the last
/// stage. The data of a block are split into real and imaginary planes,
/// element j of lane l at [j * fft_lanes + l], so that every butterfly is a
/// loop over the lanes that the compiler vectorises. Twiddles are computed
/// in double with the angle reduced exactly in integers and rounded once to
/// T; the arithmetic is T's, so a float transform has errors of a few ulp
/// times log2(n) relative to the vector's norm.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail {

/// Vectors transformed together (the lanes of every butterfly).
inline constexpr index_t fft_lanes = 8;

/// cos(pi m / (2n)) in double for any integer m, the angle reduced exactly
/// (m mod 4n) and folded into [0, pi/4] so that the library's cos and sin
/// see small arguments.
[[nodiscard]] inline double dct_cos(std::int64_t m, std::int64_t n) noexcept {
  const std::int64_t period = 4 * n;
  m %= period;
  if (m < 0) m += period;
  double sign = 1;
  if (m > 2 * n) m = period - m;  // cos(2 pi - a) = cos(a)
  if (m > n) {                    // cos(pi - a) = -cos(a)
    m = 2 * n - m;
    sign = -1;
  }
  // m in [0, n]: the angle is in [0, pi/2].
  constexpr double pi = 3.14159265358979323846;
  if (2 * m <= n) return sign * std::cos(pi * double(m) / double(2 * n));
  return sign * std::sin(pi * double(n - m) / double(2 * n));  // cos(pi/2 - a) = sin(a)
}

/// exp(-2 pi i a / n) = cos(2 pi a / n) - i sin(2 pi a / n), in double.
[[nodiscard]] inline std::pair<double, double> unit_root(std::int64_t a, std::int64_t n) noexcept {
  return {dct_cos(4 * a, n), -dct_cos(4 * a - n, n)};
}

/// A complex FFT of length n over blocks of fft_lanes vectors.
template <class T>
class fft_plan {
 public:
  explicit fft_plan(index_t n) : n_(n) {
    index_t rest = n;
    std::vector<index_t> radices;
    while (rest % 4 == 0) {
      radices.push_back(4);
      rest /= 4;
    }
    while (rest % 2 == 0) {
      radices.push_back(2);
      rest /= 2;
    }
    for (index_t p = 3; p * p <= rest; p += 2) {
      while (rest % p == 0) {
        radices.push_back(p);
        rest /= p;
      }
    }
    if (rest > 1) radices.push_back(rest);
    index_t s = 1;
    for (const index_t p : radices) {
      stage st;
      st.p = p;
      st.s = s;
      st.m = n / s / p;
      const index_t length = n / s;
      st.wr.resize(std::size_t(length));
      st.wi.resize(std::size_t(length));
      for (index_t pp = 0; pp < st.m; ++pp) {
        for (index_t k = 0; k < p; ++k) {
          const auto [c, si] = unit_root((pp * k) % length, length);
          st.wr[std::size_t(pp * p + k)] = static_cast<T>(c);
          st.wi[std::size_t(pp * p + k)] = static_cast<T>(si);
        }
      }
      if (p != 2 && p != 4) {
        st.or_.resize(std::size_t(p));
        st.oi.resize(std::size_t(p));
        for (index_t j = 0; j < p; ++j) {
          const auto [c, si] = unit_root(j, p);
          st.or_[std::size_t(j)] = static_cast<T>(c);
          st.oi[std::size_t(j)] = static_cast<T>(si);
        }
      }
      stages_.push_back(std::move(st));
      s *= p;
    }
  }

  [[nodiscard]] index_t size() const noexcept { return n_; }

  /// The forward transform (exp(-2 pi i j k / n)) of the block in (xr, xi),
  /// n * fft_lanes each; (yr, yi) is scratch of the same size. The result is
  /// left in (xr, xi).
  void forward(T* xr, T* xi, T* yr, T* yi) const {
    constexpr index_t L = fft_lanes;
    T* ar = xr;
    T* ai = xi;
    T* br = yr;
    T* bi = yi;
    for (const stage& st : stages_) {
      const index_t p = st.p;
      const index_t m = st.m;
      const index_t s = st.s;
      for (index_t pp = 0; pp < m; ++pp) {
        const T* wr = st.wr.data() + pp * p;
        const T* wi = st.wi.data() + pp * p;
        for (index_t q = 0; q < s; ++q) {
          const index_t in = (q + s * pp) * L;       // a_r at in + r s m L
          const index_t out = (q + s * p * pp) * L;  // b_k at out + k s L
          const index_t step_in = s * m * L;
          const index_t step_out = s * L;
          if (p == 4) {
            radix4(ar + in, ai + in, step_in, br + out, bi + out, step_out, wr, wi);
          } else if (p == 2) {
            radix2(ar + in, ai + in, step_in, br + out, bi + out, step_out, wr, wi);
          } else {
            radix_any(st, ar + in, ai + in, step_in, br + out, bi + out, step_out, wr, wi);
          }
        }
      }
      std::swap(ar, br);
      std::swap(ai, bi);
    }
    if (ar != xr) {
      for (index_t i = 0; i < n_ * L; ++i) {
        xr[i] = ar[i];
        xi[i] = ai[i];
      }
    }
  }

 private:
  struct stage {
    index_t p = 0, m = 0, s = 0;
    std::vector<T> wr, wi;   // w^(pp k) at pp p + k
    std::vector<T> or_, oi;  // omega_p^j (generic radices)
  };

  // A lane vector of the block (Eigen vectorises the fixed-size arrays).
  using lane = Eigen::Array<T, fft_lanes, 1>;
  using lane_in = Eigen::Map<const lane>;
  using lane_out = Eigen::Map<lane>;
  static lane_out at(T* p) { return lane_out(p); }

  static void radix2(const T* xr, const T* xi, index_t si, T* yr, T* yi, index_t so, const T* wr,
                     const T* wi) {
    const lane a0r = lane_in(xr), a0i = lane_in(xi);
    const lane a1r = lane_in(xr + si), a1i = lane_in(xi + si);
    at(yr) = a0r + a1r;
    at(yi) = a0i + a1i;
    const lane dr = a0r - a1r, di = a0i - a1i;
    at(yr + so) = dr * wr[1] - di * wi[1];
    at(yi + so) = dr * wi[1] + di * wr[1];
  }

  static void radix4(const T* xr, const T* xi, index_t si, T* yr, T* yi, index_t so, const T* wr,
                     const T* wi) {
    const lane a0r = lane_in(xr), a0i = lane_in(xi);
    const lane a1r = lane_in(xr + si), a1i = lane_in(xi + si);
    const lane a2r = lane_in(xr + 2 * si), a2i = lane_in(xi + 2 * si);
    const lane a3r = lane_in(xr + 3 * si), a3i = lane_in(xi + 3 * si);
    const lane s02r = a0r + a2r, s02i = a0i + a2i, d02r = a0r - a2r, d02i = a0i - a2i;
    const lane s13r = a1r + a3r, s13i = a1i + a3i, d13r = a1r - a3r, d13i = a1i - a3i;
    // b0 = s02 + s13, b2 = s02 - s13, b1 = d02 - i d13, b3 = d02 + i d13.
    const lane b1r = d02r + d13i, b1i = d02i - d13r;
    const lane b2r = s02r - s13r, b2i = s02i - s13i;
    const lane b3r = d02r - d13i, b3i = d02i + d13r;
    at(yr) = s02r + s13r;
    at(yi) = s02i + s13i;
    at(yr + so) = b1r * wr[1] - b1i * wi[1];
    at(yi + so) = b1r * wi[1] + b1i * wr[1];
    at(yr + 2 * so) = b2r * wr[2] - b2i * wi[2];
    at(yi + 2 * so) = b2r * wi[2] + b2i * wr[2];
    at(yr + 3 * so) = b3r * wr[3] - b3i * wi[3];
    at(yi + 3 * so) = b3r * wi[3] + b3i * wr[3];
  }

  /// An odd radix p: with s_r = a_r + a_{p-r}, d_r = a_r - a_{p-r} (r <=
  /// (p-1)/2), b_k = a_0 + sum_r s_r cos(2 pi r k / p) - i sum_r d_r
  /// sin(2 pi r k / p) and b_{p-k} its mirror with +i: a quarter of the
  /// multiplications of the direct sum.
  static void radix_any(const stage& st, const T* xr, const T* xi, index_t si, T* yr, T* yi,
                        index_t so, const T* wr, const T* wi) {
    const index_t p = st.p;
    const index_t h = (p - 1) / 2;
    for (index_t k = 0; k <= h; ++k) {
      lane ar = lane_in(xr), ai = lane_in(xi);
      lane br = lane::Zero(), bi = lane::Zero();
      index_t j = 0;  // r k mod p, incrementally
      for (index_t r = 1; r <= h; ++r) {
        j += k;
        if (j >= p) j -= p;
        const T c = st.or_[std::size_t(j)];
        const T sn = -st.oi[std::size_t(j)];  // or_ + i oi = exp(-2 pi i j / p)
        const lane pr = lane_in(xr + r * si), pi = lane_in(xi + r * si);
        const lane qr = lane_in(xr + (p - r) * si), qi = lane_in(xi + (p - r) * si);
        ar += c * (pr + qr);
        ai += c * (pi + qi);
        br += sn * (pr - qr);
        bi += sn * (pi - qi);
      }
      // b_k = A - i B = (Ar + Bi, Ai - Br); b_{p-k} = A + i B = (Ar - Bi, Ai + Br).
      {
        const lane vr = ar + bi, vi = ai - br;
        at(yr + k * so) = vr * wr[k] - vi * wi[k];
        at(yi + k * so) = vr * wi[k] + vi * wr[k];
      }
      if (k == 0) continue;
      const lane vr = ar - bi, vi = ai + br;
      at(yr + (p - k) * so) = vr * wr[p - k] - vi * wi[p - k];
      at(yi + (p - k) * so) = vr * wi[p - k] + vi * wr[p - k];
    }
  }

  index_t n_;
  std::vector<stage> stages_;
};

}  // namespace lowrank::detail
