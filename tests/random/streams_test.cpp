// The streams of a model's random matrices (random/streams.hpp): the
// adapters' streams keep the exact values they had before the kind field was
// widened (pinned below), and kinds of later families get streams of their
// own without layer bits.

#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <utility>

#include "lowrank/lowrank.hpp"

namespace lowrank {
namespace streams_tests {
namespace {

// The adapters' four kinds: stream number layer << 34 | kind << 32 | index
// mod 2^32, key = seed, and the values drawn from them, as computed by the
// code before the widening (commit ef3cda2).
TEST(streams, adapter_streams_keep_their_values) {
  constexpr std::uint64_t seed = 0x0123456789abcdefull;
  constexpr std::uint64_t layer = 1000;
  constexpr std::uint64_t index = 0x1234567890ull;
  struct pinned {
    adapter_stream_kind kind;
    std::uint64_t stream;
    float uniform;
    double gaussian;
    float sign;
  };
  const pinned expected[] = {
      {adapter_stream_kind::init, 17180747266192ull, 0x1.423a06p-1f, -0x1.0297f70d9df14p+1, 1},
      {adapter_stream_kind::dropout, 17185042233488ull, 0x1.c03398p-1f, -0x1.e2ebcf577d0a6p+0, 1},
      {adapter_stream_kind::nola_a, 17189337200784ull, 0x1.a1f764p-2f, -0x1.44eb432a94e27p-1, -1},
      {adapter_stream_kind::nola_b, 17193632168080ull, 0x1.903908p-1f, -0x1.c3492b72964ap-2, 1},
  };
  for (const auto& e : expected) {
    const random_stream s = adapter_stream(seed, layer, e.kind, index);
    EXPECT_EQ(s.seed, seed);
    EXPECT_EQ(s.stream, (layer << 34) | (std::uint64_t(e.kind) << 32) | (index & 0xffffffffu));
    EXPECT_EQ(s.stream, e.stream);
    EXPECT_EQ((random_element<float, distribution::uniform>(s, 5, 7)), e.uniform);
    EXPECT_EQ((random_element<double, distribution::gaussian>(s, 1000001, 3)), e.gaussian);
    EXPECT_EQ((random_element<float, distribution::rademacher>(s, 9, 0)), e.sign);
  }
}

// Kinds 4 and above: the stream number holds the kind's two low bits where
// kinds 0-3 hold theirs (layer bits untouched), and the key is the seed
// folded with kind >> 2, so no two (kind, layer, index) share a stream.
TEST(streams, wider_kinds_get_keys_of_their_own) {
  constexpr std::uint64_t seed = 42;
  std::set<std::pair<std::uint64_t, std::uint64_t>> seen;
  for (stream_kind kind = 0; kind < 64; ++kind) {
    for (const std::uint64_t layer : {std::uint64_t{0}, std::uint64_t{7}, max_stream_layers - 1}) {
      for (const std::uint64_t index : {std::uint64_t{0}, std::uint64_t{0xffffffffu}}) {
        const random_stream s = layer_stream(seed, layer, kind, index);
        EXPECT_EQ(s.stream >> 34, layer);
        EXPECT_EQ((s.stream >> 32) & 3u, kind & 3u);
        EXPECT_EQ(s.stream & 0xffffffffu, index);
        EXPECT_EQ(s.seed, kind < 4 ? seed : fold_key(seed, kind >> 2));
        EXPECT_TRUE(seen.insert({s.seed, s.stream}).second) << "kind " << kind;
      }
    }
  }
  // The fold is Philox4x32-10 of (data, 0, 0, "lran") under the seed's key:
  // pinned, so that a later family's streams never change either.
  EXPECT_EQ(fold_key(0, 1), 0x4eb43978d6af53abull);
  EXPECT_EQ(fold_key(42, 3), 0x2b1952eca16da856ull);
  static_assert(layer_stream(3, 2, 1, 9).stream ==
                adapter_stream(3, 2, adapter_stream_kind::dropout, 9).stream);
}

}  // namespace
}  // namespace streams_tests
}  // namespace lowrank
