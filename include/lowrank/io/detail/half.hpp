#pragma once
/// @file
/// The 16-bit float conversions of lowrank/io (internal): IEEE-754 binary16 and bfloat16 to
/// double and float exactly, and double to either with one rounding to nearest even
/// (overflow to +-inf, subnormals and signed zeros kept, a NaN quiet with its sign and its
/// leading payload bits). Used by the safetensors reader and writer and by the PEFT writer.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>

namespace lowrank::io::detail {

// The conversions assume IEEE-754 binary32 / binary64.
static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4);
static_assert(std::numeric_limits<double>::is_iec559 && sizeof(double) == 8);

/// IEEE-754 binary16 -> double, exactly (a NaN keeps its sign and payload).
inline double half_to_double(std::uint16_t h) {
  const std::uint64_t sign = static_cast<std::uint64_t>(h >> 15) << 63;
  const unsigned exponent = (h >> 10) & 0x1fU;
  const std::uint64_t mantissa = h & 0x3ffU;
  if (exponent == 0x1f) return std::bit_cast<double>(sign | (0x7ffULL << 52) | (mantissa << 42));
  if (exponent == 0) {
    // Subnormal (or zero): mantissa * 2^-24, exact in double.
    const double magnitude = static_cast<double>(mantissa) * 0x1p-24;
    return sign != 0 ? -magnitude : magnitude;
  }
  return std::bit_cast<double>(sign | (static_cast<std::uint64_t>(exponent - 15 + 1023) << 52) |
                               (mantissa << 42));
}

/// bfloat16 (the upper half of a binary32) -> float, exactly.
inline float bfloat16_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// double -> a 16-bit binary format with `exponent_bits` and `mantissa_bits` (binary16: 5
/// and 10; bfloat16: 8 and 7), rounded once to nearest, ties to even. Overflow gives +-inf,
/// values below half the smallest subnormal give +-0, a NaN gives a quiet NaN with the same
/// sign and the leading payload bits.
inline std::uint16_t round_to_16_bits(double x, int exponent_bits, int mantissa_bits) {
  const auto bits = std::bit_cast<std::uint64_t>(x);
  const auto sign = static_cast<std::uint16_t>((bits >> 63) << 15);
  const int biased = static_cast<int>((bits >> 52) & 0x7ff);
  std::uint64_t significand = bits & ((1ULL << 52) - 1);
  const auto all_ones = static_cast<std::uint16_t>(((1U << exponent_bits) - 1) << mantissa_bits);
  if (biased == 0x7ff) {
    if (significand == 0) return sign | all_ones;
    const auto payload = static_cast<std::uint16_t>(significand >> (52 - mantissa_bits));
    return static_cast<std::uint16_t>(sign | all_ones | (1U << (mantissa_bits - 1)) | payload);
  }
  if (biased == 0 && significand == 0) return sign;

  // x = significand * 2^(e - 52) with the significand's leading 1 at bit 52.
  int e = biased - 1023;
  if (biased == 0) {
    e = -1022;
    while ((significand & (1ULL << 52)) == 0) {
      significand <<= 1;
      --e;
    }
  } else {
    significand |= 1ULL << 52;
  }
  const int bias = (1 << (exponent_bits - 1)) - 1;
  if (e > bias) return sign | all_ones;  // at least 2^(emax + 1): overflow
  // Below the normal range the quantum stays that of the smallest normal: subnormals.
  const int target_e = std::max(e, 1 - bias);
  const int shift = 52 - mantissa_bits + (target_e - e);
  if (shift > 60) return sign;  // x < 2^-8 quanta: rounds to zero
  std::uint64_t q = significand >> shift;
  const std::uint64_t rest = significand & ((1ULL << shift) - 1);
  const std::uint64_t half = 1ULL << (shift - 1);
  if (rest > half || (rest == half && (q & 1) != 0)) ++q;
  // q counts quanta of 2^(target_e - mantissa_bits): a normal q in [2^m, 2^(m+1)] gives the
  // exponent field target_e + bias (q = 2^(m+1), a carry, moves to the next binade), and a
  // subnormal q < 2^m gives the exponent field 0; both are this one sum.
  const std::uint64_t magnitude =
      (static_cast<std::uint64_t>(target_e + bias - 1) << mantissa_bits) + q;
  if (magnitude >= all_ones) return sign | all_ones;
  return static_cast<std::uint16_t>(sign | magnitude);
}

inline std::uint16_t double_to_half(double x) { return round_to_16_bits(x, 5, 10); }
inline std::uint16_t double_to_bfloat16(double x) { return round_to_16_bits(x, 8, 7); }

}  // namespace lowrank::io::detail
