#pragma once
/// @file
/// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as
/// easy as 1, 2, 3", SC'11) and the element-wise random matrices lowrank draws
/// from it, for host and device code alike.
///
/// **The mapping.** A `random_stream` is a 64-bit seed (the Philox key) and a
/// 64-bit stream number. A random matrix drawn from it is infinite in both
/// directions; element (i, j) depends only on (seed, stream, i, j). One Philox
/// call with key (seed_lo, seed_hi) and counter (g, j, stream_lo, stream_hi)
/// yields four 32-bit words, which fill rows g*R ... g*R + R - 1 of column j,
/// where R = `rows_per_block<T, Distribution>` (4 words per call: R = 4 for
/// float Gaussians / uniforms and for Rademacher signs, R = 2 for double
/// Gaussians and uniforms, which use 53 bits per value). Hence drawing a
/// sub-block alone gives the same values as drawing it inside a larger matrix,
/// and the result depends on neither thread count, blocking nor backend.
/// Limits: i < 2^32 * R, j < 2^32 (checked by the fill operations).
///
/// **Distributions.**
/// - uniform: float u = (w >> 8) 2^-24, double u = (w_hi:w_lo >> 11) 2^-53, in [0, 1);
/// - gaussian: Box-Muller, z0 = r cos(2 pi u2), z1 = r sin(2 pi u2),
///   r = sqrt(-2 log u1) with u1 in (0, 1] (never log 0). Double uses 53-bit
///   uniforms and the C library's log, sin and cos. Float uses 24-bit uniforms
///   and float arithmetic, vectorised on the host (Eigen's packet math, always
///   through full packets, so every element takes the same path wherever it
///   lies in a fill); a device's float log / sin / cos may differ from the
///   host's by a few ulp, never more, and so may a host build with FMA
///   enabled (-mfma, -march=native) from one without: Eigen's packet math
///   then fuses its multiply-adds;
/// - rademacher: +1 or -1 with equal probability (the top bit of one word).
///
/// Known-answer tests pin `philox4x32_10` to Random123's published vectors.

#include <cmath>
#include <cstdint>
#include <string>

#include <Eigen/Core>

#include "lowrank/core/config.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"

// The host's Philox runs eight counters at once with AVX2 where the CPU has it
// (chosen at run time, so a portable build uses it too); the words are the
// same on every path (integer arithmetic).
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(__CUDACC__)
#define LOWRANK_PHILOX_AVX2 1
#include <immintrin.h>
#else
#define LOWRANK_PHILOX_AVX2 0
#endif

namespace lowrank {

/// Philox's 128-bit counter.
struct philox_counter {
  std::uint32_t v[4];
};

/// Philox's 64-bit key.
struct philox_key {
  std::uint32_t v[2];
};

/// The Philox4x32 block function with 10 rounds (Random123's philox4x32_R<10>).
LOWRANK_HOST_DEVICE constexpr philox_counter philox4x32_10(philox_counter ctr,
                                                           philox_key key) noexcept {
  constexpr std::uint32_t m0 = 0xD2511F53u;
  constexpr std::uint32_t m1 = 0xCD9E8D57u;
  constexpr std::uint32_t w0 = 0x9E3779B9u;
  constexpr std::uint32_t w1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key.v[0] += w0;
      key.v[1] += w1;
    }
    const std::uint64_t p0 = std::uint64_t{m0} * ctr.v[0];
    const std::uint64_t p1 = std::uint64_t{m1} * ctr.v[2];
    ctr = philox_counter{{static_cast<std::uint32_t>(p1 >> 32) ^ ctr.v[1] ^ key.v[0],
                          static_cast<std::uint32_t>(p1),
                          static_cast<std::uint32_t>(p0 >> 32) ^ ctr.v[3] ^ key.v[1],
                          static_cast<std::uint32_t>(p0)}};
  }
  return ctr;
}

/// A reproducible source of random matrices: (seed, stream). Passed by value;
/// `next()` is the advanced state, which draws independent numbers.
struct random_stream {
  std::uint64_t seed = 0;
  std::uint64_t stream = 0;

  /// The stream after this one (same seed).
  [[nodiscard]] constexpr random_stream next() const noexcept { return {seed, stream + 1}; }
  /// The stream `n` places further (same seed).
  [[nodiscard]] constexpr random_stream advance(std::uint64_t n) const noexcept {
    return {seed, stream + n};
  }
};

/// The distributions of the fill operations.
enum class distribution { gaussian, uniform, rademacher };

/// How many consecutive rows of one column a single Philox call fills.
template <class T, distribution D>
inline constexpr int rows_per_block = (D == distribution::rademacher || sizeof(T) == 4) ? 4 : 2;

namespace detail {

inline constexpr double two_pi = 6.283185307179586476925286766559;

LOWRANK_HOST_DEVICE constexpr philox_counter random_words(random_stream s, std::uint64_t block,
                                                          std::uint64_t col) noexcept {
  const philox_key key{
      {static_cast<std::uint32_t>(s.seed), static_cast<std::uint32_t>(s.seed >> 32)}};
  const philox_counter ctr{{static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(col),
                            static_cast<std::uint32_t>(s.stream),
                            static_cast<std::uint32_t>(s.stream >> 32)}};
  return philox4x32_10(ctr, key);
}

/// 24-bit uniform in [0, 1) (exact in float).
LOWRANK_HOST_DEVICE constexpr double u24(std::uint32_t w) noexcept {
  return static_cast<double>(w >> 8) * 0x1p-24;
}
/// 24-bit uniform in (0, 1].
LOWRANK_HOST_DEVICE constexpr double u24_open0(std::uint32_t w) noexcept {
  return static_cast<double>((w >> 8) + 1u) * 0x1p-24;
}
/// 53-bit uniform in [0, 1) from two words (hi, lo).
LOWRANK_HOST_DEVICE constexpr double u53(std::uint32_t hi, std::uint32_t lo) noexcept {
  return static_cast<double>(((std::uint64_t{hi} << 32) | lo) >> 11) * 0x1p-53;
}
/// 53-bit uniform in (0, 1].
LOWRANK_HOST_DEVICE constexpr double u53_open0(std::uint32_t hi, std::uint32_t lo) noexcept {
  return static_cast<double>((((std::uint64_t{hi} << 32) | lo) >> 11) + 1u) * 0x1p-53;
}

LOWRANK_HOST_DEVICE inline void box_muller(double u1, double u2, double& z0, double& z1) noexcept {
  using std::cos;
  using std::log;
  using std::sin;
  using std::sqrt;
  const double r = sqrt(-2.0 * log(u1));
  const double theta = two_pi * u2;
  z0 = r * cos(theta);
  z1 = r * sin(theta);
}

// Host-only helpers (no LOWRANK_HOST_DEVICE): declared in every compilation
// pass, so host code can use them when nvcc compiles for the device too.

/// random_words for the 16 consecutive blocks block0, ..., block0 + 15 of one
/// column, as four arrays (word w of block block0 + t in out[w][t]), one
/// block after another: the portable path of random_words_16.
inline void random_words_16_portable(random_stream s, std::uint64_t block0, std::uint64_t col,
                                     std::uint32_t (&out)[4][16]) noexcept {
  for (int t = 0; t < 16; ++t) {
    const philox_counter w = random_words(s, block0 + static_cast<std::uint64_t>(t), col);
    for (int v = 0; v < 4; ++v) out[v][t] = w.v[v];
  }
}

#if LOWRANK_PHILOX_AVX2
/// The 64-bit products m a of the eight 32-bit lanes of `a`: their low
/// halves in `lo`, their high halves in `hi`, lane by lane.
__attribute__((target("avx2"))) inline void multiply_wide_8(const __m256i& a, std::uint32_t m,
                                                            __m256i& lo, __m256i& hi) noexcept {
  const __m256i factor = _mm256_set1_epi64x(static_cast<long long>(m));
  const __m256i even = _mm256_mul_epu32(a, factor);                        // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), factor);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

/// random_words_16 with AVX2: the rounds of Philox on eight counters at a
/// time (GCC does not vectorise the portable loop: x86 has no 32-bit
/// high-half multiply, which _mm256_mul_epu32 on even and odd lanes gives).
__attribute__((target("avx2"))) inline void random_words_16_avx2(
    random_stream s, std::uint64_t block0, std::uint64_t col,
    std::uint32_t (&out)[4][16]) noexcept {
  for (int half = 0; half < 2; ++half) {
    // Counter word 0 is the block's low 32 bits: block0 + t modulo 2^32.
    const auto first = static_cast<std::uint32_t>(block0 + static_cast<std::uint64_t>(8 * half));
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first)),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(col)));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(s.stream)));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(s.stream >> 32)));
    std::uint32_t k0 = static_cast<std::uint32_t>(s.seed);
    std::uint32_t k1 = static_cast<std::uint32_t>(s.seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m256i lo0;
      __m256i hi0;
      __m256i lo1;
      __m256i hi1;
      multiply_wide_8(c0, 0xD2511F53u, lo0, hi0);
      multiply_wide_8(c2, 0xCD9E8D57u, lo1, hi1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const int at = 8 * half;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[0][at]), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[1][at]), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[2][at]), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[3][at]), c3);
  }
}

/// Whether this CPU runs AVX2 (asked once).
inline bool cpu_has_avx2() noexcept {
#if defined(__AVX2__)
  return true;
#else
  static const bool has = __builtin_cpu_supports("avx2") != 0;
  return has;
#endif
}
#endif

/// random_words for the 16 consecutive blocks block0, ..., block0 + 15 of one
/// column, as four arrays (word w of block block0 + t in out[w][t]): eight
/// blocks at a time with AVX2 where the CPU has it (the Philox part of a
/// 2048 x 74 float Gaussian fill: 0.74 -> 0.13 ms on one core of a 2-core
/// EPYC), the same words either way.
inline void random_words_16(random_stream s, std::uint64_t block0, std::uint64_t col,
                            std::uint32_t (&out)[4][16]) noexcept {
#if LOWRANK_PHILOX_AVX2
  if (cpu_has_avx2()) {
    random_words_16_avx2(s, block0, col, out);
    return;
  }
#endif
  random_words_16_portable(s, block0, col, out);
}

/// The number of Box-Muller pairs the host transforms at once.
inline constexpr int gaussian_batch = 32;

/// Float Box-Muller on `gaussian_batch` pairs of words (w1, w2), vectorised
/// with Eigen's packet math: z0 = r cos(2 pi u2), z1 = r sin(2 pi u2),
/// r = sqrt(-2 log u1), u1 = u24_open0(w1), u2 = u24(w2). The batch has a
/// fixed size, a multiple of every packet size, so each lane takes the same
/// (packet) path and its result does not depend on its neighbours.
inline void box_muller_float_batch(const std::uint32_t* w1, const std::uint32_t* w2, float* z0,
                                   float* z1) noexcept {
  using batch = Eigen::Array<float, gaussian_batch, 1>;
  batch u1;
  batch u2;
  for (int t = 0; t < gaussian_batch; ++t) {
    u1[t] = static_cast<float>((w1[t] >> 8) + 1u) * 0x1p-24f;
    u2[t] = static_cast<float>(w2[t] >> 8) * 0x1p-24f;
  }
  const batch r = (-2.0f * u1.log()).sqrt();
  const batch theta = static_cast<float>(two_pi) * u2;
  Eigen::Map<batch> out0(z0);
  Eigen::Map<batch> out1(z1);
  out0 = r * theta.cos();
  out1 = r * theta.sin();
}

}  // namespace detail

/// The `rows_per_block<T, D>` values of column `col`, rows
/// block * R ... block * R + R - 1, of the random matrix of stream `s`.
/// Only the first R entries of `out` are written.
template <class T, distribution D>
LOWRANK_HOST_DEVICE inline void random_block(random_stream s, std::uint64_t block,
                                             std::uint64_t col, T (&out)[4]) noexcept {
  const philox_counter w = detail::random_words(s, block, col);
  if constexpr (D == distribution::rademacher) {
    for (int t = 0; t < 4; ++t) out[t] = (w.v[t] >> 31) != 0u ? T(-1) : T(1);
  } else if constexpr (D == distribution::uniform) {
    if constexpr (sizeof(T) == 4) {
      for (int t = 0; t < 4; ++t) out[t] = static_cast<T>(detail::u24(w.v[t]));
    } else {
      out[0] = static_cast<T>(detail::u53(w.v[0], w.v[1]));
      out[1] = static_cast<T>(detail::u53(w.v[2], w.v[3]));
    }
  } else {
    if constexpr (sizeof(T) == 4) {
#if defined(__CUDA_ARCH__)
      for (int pair = 0; pair < 2; ++pair) {
        // The host's operations in the host's order: only logf / sincosf may
        // differ from the host's packet math, by a few ulp.
        const float r = sqrtf(-2.0f * logf(static_cast<float>(detail::u24_open0(w.v[2 * pair]))));
        const float theta =
            static_cast<float>(detail::two_pi) * static_cast<float>(detail::u24(w.v[2 * pair + 1]));
        float sin_theta;
        float cos_theta;
        sincosf(theta, &sin_theta, &cos_theta);
        out[2 * pair] = r * cos_theta;
        out[2 * pair + 1] = r * sin_theta;
      }
#else
      // The host's batch path, for bit-identical results with the fills.
      std::uint32_t w1[detail::gaussian_batch] = {w.v[0], w.v[2]};
      std::uint32_t w2[detail::gaussian_batch] = {w.v[1], w.v[3]};
      float z0[detail::gaussian_batch];
      float z1[detail::gaussian_batch];
      detail::box_muller_float_batch(w1, w2, z0, z1);
      out[0] = z0[0];
      out[1] = z1[0];
      out[2] = z0[1];
      out[3] = z1[1];
#endif
    } else {
      double z[2];
      detail::box_muller(detail::u53_open0(w.v[0], w.v[1]), detail::u53(w.v[2], w.v[3]), z[0],
                         z[1]);
      out[0] = static_cast<T>(z[0]);
      out[1] = static_cast<T>(z[1]);
    }
  }
}

namespace detail {

/// Throws lowrank::invalid_argument unless rows [row0, row0 + rows) and
/// columns [col0, col0 + cols) of a random matrix of T and D lie within the
/// generator's range: rows below 2^32 R (R = rows_per_block<T, D>), columns
/// below 2^32. `fn` names the caller.
template <class T>
void require_random_range(const char* fn, distribution d, index_t rows, index_t cols,
                          index_t row0 = 0, index_t col0 = 0) {
  const index_t r = (d == distribution::rademacher || sizeof(T) == 4) ? 4 : 2;
  constexpr index_t counter_limit = index_t{1} << 32;
  if (row0 < 0) throw_invalid_argument(fn, "row0", row0, ">= 0");
  if (col0 < 0) throw_invalid_argument(fn, "col0", col0, ">= 0");
  if (row0 + rows > counter_limit * r) {
    throw_invalid_argument(fn, "row0 + x.rows()", row0 + rows,
                           "<= 2^32 * " + std::to_string(r) + " (the generator's row range)");
  }
  if (col0 + cols > counter_limit) {
    throw_invalid_argument(fn, "col0 + x.cols()", col0 + cols,
                           "<= 2^32 (the generator's column range)");
  }
}

}  // namespace detail

/// Element (i, j) of the random matrix of stream `s` (convenient, and the
/// definition the fills must reproduce; a fill computes whole blocks instead).
template <class T, distribution D>
LOWRANK_HOST_DEVICE inline T random_element(random_stream s, std::uint64_t i,
                                            std::uint64_t j) noexcept {
  constexpr int r = rows_per_block<T, D>;
  T out[4];
  random_block<T, D>(s, i / r, j, out);
  return out[i % r];
}

}  // namespace lowrank
