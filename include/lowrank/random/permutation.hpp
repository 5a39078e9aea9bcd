#pragma once
/// @file
/// `lowrank::random_permutation`: a pseudo-random bijection of [0, D) computed
/// element by element, for host and device code alike, so that a uniformly
/// random subset of exact size k ({p(0), ..., p(k - 1)}) needs no memory and
/// no communication between threads (factors/sparse.hpp draws SLTrain's
/// random supports with it).
///
/// **Construction.** A balanced Feistel network on b = 2h bits (h = half the
/// bits of D - 1, rounded up, at least 1), six rounds, each R' = L xor
/// F_j(R), L' = R, with F_j(R) = the low h bits of a 64-bit mixer (murmur3's
/// fmix64) of R xor K_j; cycle walking maps it onto [0, D): p(x) = the first
/// of f(x), f(f(x)), ... below D (2^b < 4 D, so under 4 steps on average, and
/// a bijection because f is one and every cycle through [0, D) returns to
/// it). The round keys K_0..K_5 are the six 64-bit words of three Philox
/// calls of the given stream, so the permutation depends only on (stream, D),
/// on every backend. It is a statistical, not a cryptographic, permutation.

#include <cstdint>

#include "lowrank/core/config.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

class random_permutation {
 public:
  static constexpr int rounds = 6;

  /// The permutation of [0, domain) drawn from `stream` (domain >= 1, < 2^62).
  LOWRANK_HOST_DEVICE constexpr random_permutation(random_stream stream,
                                                   std::uint64_t domain) noexcept
      : domain_(domain) {
    int bits = 1;
    while (bits < 62 && (std::uint64_t{1} << bits) < domain) ++bits;
    half_ = (bits + 1) / 2;
    mask_ = (std::uint64_t{1} << half_) - 1;
    for (int j = 0; j < rounds / 2; ++j) {
      const philox_counter w = detail::random_words(stream, std::uint64_t(j), 0xfe15ee1ull);
      keys_[2 * j] = (std::uint64_t{w.v[1]} << 32) | w.v[0];
      keys_[2 * j + 1] = (std::uint64_t{w.v[3]} << 32) | w.v[2];
    }
  }

  [[nodiscard]] LOWRANK_HOST_DEVICE constexpr std::uint64_t domain() const noexcept {
    return domain_;
  }

  /// p(x) for x in [0, domain).
  [[nodiscard]] LOWRANK_HOST_DEVICE constexpr std::uint64_t operator()(
      std::uint64_t x) const noexcept {
    do {
      x = round_trip(x);
    } while (x >= domain_);
    return x;
  }

 private:
  [[nodiscard]] LOWRANK_HOST_DEVICE static constexpr std::uint64_t mix(std::uint64_t z) noexcept {
    z ^= z >> 33;
    z *= 0xff51afd7ed558ccdull;
    z ^= z >> 33;
    z *= 0xc4ceb9fe1a85ec53ull;
    z ^= z >> 33;
    return z;
  }

  /// One pass of the Feistel network over [0, 2^(2h)).
  [[nodiscard]] LOWRANK_HOST_DEVICE constexpr std::uint64_t round_trip(
      std::uint64_t x) const noexcept {
    std::uint64_t left = x >> half_;
    std::uint64_t right = x & mask_;
    for (int j = 0; j < rounds; ++j) {
      const std::uint64_t next = left ^ (mix(right ^ keys_[j]) & mask_);
      left = right;
      right = next;
    }
    return (left << half_) | right;
  }

  std::uint64_t domain_;
  int half_ = 1;
  std::uint64_t mask_ = 1;
  std::uint64_t keys_[rounds] = {};
};

}  // namespace lowrank
