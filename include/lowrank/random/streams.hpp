#pragma once
/// @file
/// The streams of a model's random matrices (docs/algorithms.md, "Random
/// numbers"): every random matrix that a layer of a model draws (an initial
/// factor, a dropout mask, a random basis, ...) is the Philox matrix
/// (random/philox.hpp) of `layer_stream(seed, layer, kind, index)`, so that
/// element (i, j) depends only on (seed, layer, kind, index, i, j), on every
/// backend, whatever the threads.
///
/// **Layout.** The stream number is `layer << 34 | (kind & 3) << 32 | index`
/// (layer < 2^30, index taken modulo 2^32). The kind's higher bits select the
/// key: kinds 0 to 3 use the seed itself, kind k >= 4 the seed folded with
/// k >> 2 (`fold_key`, as JAX's fold_in derives keys: one Philox call). So a
/// kind is a 32-bit number, each family takes kinds of its own
/// (docs/architecture.md lists them: the adapters have 0 to 3), and no family
/// needs layer bits or changes another's streams.

#include <cstdint>

#include "lowrank/core/config.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// The kind of a random matrix of a layer (see the file comment): a number
/// each family assigns to its own matrices.
using stream_kind = std::uint32_t;

/// The layers `layer_stream` distinguishes: indices below 2^30.
inline constexpr std::uint64_t max_stream_layers = std::uint64_t{1} << 30;

/// The key of seed `seed` folded with `data`: the first two words of
/// Philox4x32-10 with key `seed` and counter (data, 0, 0, "lran").
[[nodiscard]] LOWRANK_HOST_DEVICE constexpr std::uint64_t fold_key(std::uint64_t seed,
                                                                   std::uint32_t data) noexcept {
  const philox_counter c = philox4x32_10(
      philox_counter{{data, 0u, 0u, 0x6c72616eu}},
      philox_key{{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}});
  return (std::uint64_t{c.v[1]} << 32) | c.v[0];
}

/// The Philox stream of random matrix `index` of kind `kind` of layer
/// `layer` (< 2^30) of a model seeded with `seed` (see the file comment).
[[nodiscard]] LOWRANK_HOST_DEVICE constexpr random_stream layer_stream(
    std::uint64_t seed, std::uint64_t layer, stream_kind kind, std::uint64_t index) noexcept {
  return {kind < 4 ? seed : fold_key(seed, kind >> 2),
          (layer << 34) | (std::uint64_t{kind & 3u} << 32) | (index & 0xffffffffu)};
}

}  // namespace lowrank
