// Philox4x32-10 and the random matrices drawn from it: Random123's
// known-answer vectors, the documented element mapping, distribution sanity,
// and the defining property that element (i, j) depends only on
// (seed, stream, i, j).

#include "lowrank/random/philox.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/ops.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"

#if defined(LOWRANK_TEST_HAVE_RANDOM123)
#include <Random123/philox.h>
#endif

namespace philox_tests {
namespace {

using lowrank::cpu;
using lowrank::distribution;
using lowrank::index_t;
using lowrank::philox_counter;
using lowrank::philox_key;
using lowrank::random_stream;

// ------------------------------------------------------------ the generator

struct known_answer {
  philox_counter ctr;
  philox_key key;
  philox_counter expected;
};

// Random123's kat_vectors for philox4x32_10: counter words, key words, output.
constexpr known_answer known_answers[] = {
    {{{0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u}},
     {{0x00000000u, 0x00000000u}},
     {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
    {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
     {{0xffffffffu, 0xffffffffu}},
     {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
    {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
     {{0xa4093822u, 0x299f31d0u}},
     {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
};

constexpr bool same(philox_counter a, philox_counter b) {
  return a.v[0] == b.v[0] && a.v[1] == b.v[1] && a.v[2] == b.v[2] && a.v[3] == b.v[3];
}

// The block function is usable in constant expressions (and so in device code
// without a runtime table).
static_assert(same(lowrank::philox4x32_10(known_answers[0].ctr, known_answers[0].key),
                   known_answers[0].expected));

TEST(Philox, Random123KnownAnswers) {
  for (const auto& kat : known_answers) {
    const philox_counter out = lowrank::philox4x32_10(kat.ctr, kat.key);
    for (int t = 0; t < 4; ++t) {
      EXPECT_EQ(out.v[t], kat.expected.v[t])
          << "word " << t << " of KAT with counter word 0 " << std::hex << kat.ctr.v[0];
    }
  }
}

#if defined(LOWRANK_TEST_HAVE_RANDOM123)
TEST(Philox, MatchesRandom123OnRandomInputs) {
  using generator = r123::Philox4x32_R<10>;
  generator reference;
  std::mt19937 engine(20240601u);
  for (int trial = 0; trial < 4000; ++trial) {
    generator::ctr_type ctr;
    generator::key_type key;
    philox_counter c{};
    philox_key k{};
    for (int t = 0; t < 4; ++t) c.v[t] = ctr.v[t] = static_cast<std::uint32_t>(engine());
    for (int t = 0; t < 2; ++t) k.v[t] = key.v[t] = static_cast<std::uint32_t>(engine());
    const generator::ctr_type expected = reference(ctr, key);
    const philox_counter out = lowrank::philox4x32_10(c, k);
    for (int t = 0; t < 4; ++t) ASSERT_EQ(out.v[t], expected.v[t]) << "trial " << trial;
  }
}
#endif

// The 16-block batch the CPU fills use (random_words_16): every path it may
// take (AVX2 where this CPU has it, the portable loop) gives the words of
// philox4x32_10, including counters whose low word wraps inside the batch and
// streams and seeds with both halves set.
TEST(Philox, SixteenBlockBatchesMatchTheBlockFunction) {
  std::mt19937_64 engine(20261207u);
  std::vector<std::uint64_t> firsts = {
      0, 1, 8, 0xFFFFFFF0ull, 0xFFFFFFF8ull, 0xFFFFFFFFull, 0x1FFFFFFF9ull};
  for (int t = 0; t < 200; ++t) firsts.push_back(engine());
  for (const std::uint64_t block0 : firsts) {
    const random_stream s{engine(), engine()};
    const std::uint64_t col = engine() % 5 == 0 ? 0xFFFFFFFFull : engine() & 0xFFFFFFFFull;
    std::uint32_t expected[4][16];
    for (int t = 0; t < 16; ++t) {
      const philox_counter w = lowrank::detail::random_words(s, block0 + std::uint64_t(t), col);
      for (int v = 0; v < 4; ++v) expected[v][t] = w.v[v];
    }
    std::uint32_t out[4][16];
    lowrank::detail::random_words_16(s, block0, col, out);
    ASSERT_EQ(std::memcmp(out, expected, sizeof out), 0) << "dispatched, block0 " << block0;
    lowrank::detail::random_words_16_portable(s, block0, col, out);
    ASSERT_EQ(std::memcmp(out, expected, sizeof out), 0) << "portable, block0 " << block0;
#if LOWRANK_PHILOX_AVX2
    if (lowrank::detail::cpu_has_avx2()) {
      lowrank::detail::random_words_16_avx2(s, block0, col, out);
      ASSERT_EQ(std::memcmp(out, expected, sizeof out), 0) << "AVX2, block0 " << block0;
    }
#endif
  }
}

// --------------------------------------------------------- random streams

static_assert(random_stream{7, 3}.next().seed == 7 && random_stream{7, 3}.next().stream == 4);
static_assert(random_stream{7, 3}.advance(10).seed == 7 &&
              random_stream{7, 3}.advance(10).stream == 13);
static_assert(random_stream{7, 3}.advance(0).stream == 3);
static_assert(random_stream{7, 3}.advance(1).stream == random_stream{7, 3}.next().stream);
static_assert(random_stream{1, 0xFFFFFFFFull}.next().stream == 0x100000000ull);

static_assert(lowrank::rows_per_block<float, distribution::gaussian> == 4);
static_assert(lowrank::rows_per_block<float, distribution::uniform> == 4);
static_assert(lowrank::rows_per_block<float, distribution::rademacher> == 4);
static_assert(lowrank::rows_per_block<double, distribution::gaussian> == 2);
static_assert(lowrank::rows_per_block<double, distribution::uniform> == 2);
static_assert(lowrank::rows_per_block<double, distribution::rademacher> == 4);

TEST(RandomStream, AdvanceIsRepeatedNext) {
  random_stream s{0x0123456789ABCDEFull, 5};
  for (int n = 0; n < 10; ++n) {
    const random_stream a = random_stream{0x0123456789ABCDEFull, 5}.advance(std::uint64_t(n));
    EXPECT_EQ(a.seed, s.seed);
    EXPECT_EQ(a.stream, s.stream);
    s = s.next();
  }
}

// ------------------------------------------------ the documented mapping
//
// Recomputed here from philox4x32_10 and the formulas of random/philox.hpp,
// independently of the library's helpers: this is the contract every backend
// must reproduce.

philox_counter words(random_stream s, std::uint64_t block, std::uint64_t col) {
  const philox_key key{{std::uint32_t(s.seed & 0xFFFFFFFFu), std::uint32_t(s.seed >> 32)}};
  const philox_counter ctr{{std::uint32_t(block), std::uint32_t(col),
                            std::uint32_t(s.stream & 0xFFFFFFFFu), std::uint32_t(s.stream >> 32)}};
  return lowrank::philox4x32_10(ctr, key);
}

template <class T>
T documented_uniform(random_stream s, std::uint64_t i, std::uint64_t j) {
  if constexpr (sizeof(T) == 4) {
    const std::uint32_t w = words(s, i / 4, j).v[i % 4];
    return static_cast<T>(std::ldexp(double(w >> 8), -24));
  } else {
    const philox_counter w = words(s, i / 2, j);
    const std::uint64_t bits = (std::uint64_t{w.v[2 * (i % 2)]} << 32) | w.v[2 * (i % 2) + 1];
    return static_cast<T>(std::ldexp(double(bits >> 11), -53));
  }
}

template <class T>
T documented_rademacher(random_stream s, std::uint64_t i, std::uint64_t j) {
  const std::uint32_t w = words(s, i / 4, j).v[i % 4];
  return (w & 0x80000000u) != 0 ? T(-1) : T(1);
}

/// The exact Box-Muller value of element (i, j), evaluated in double, and its
/// radius r = sqrt(-2 log u1).
struct box_muller_value {
  double z;
  double r;
};

template <class T>
box_muller_value documented_gaussian(random_stream s, std::uint64_t i, std::uint64_t j) {
  const double two_pi = 6.283185307179586476925286766559;
  double u1 = 0;  // in (0, 1]
  double u2 = 0;  // in [0, 1)
  if constexpr (sizeof(T) == 4) {
    const philox_counter w = words(s, i / 4, j);
    const std::uint64_t pair = (i % 4) / 2;
    u1 = std::ldexp(double((w.v[2 * pair] >> 8) + 1), -24);
    u2 = std::ldexp(double(w.v[2 * pair + 1] >> 8), -24);
  } else {
    const philox_counter w = words(s, i / 2, j);
    u1 = std::ldexp(double((((std::uint64_t{w.v[0]} << 32) | w.v[1]) >> 11) + 1), -53);
    u2 = std::ldexp(double(((std::uint64_t{w.v[2]} << 32) | w.v[3]) >> 11), -53);
  }
  const double r = std::sqrt(-2.0 * std::log(u1));
  const bool second = (i % 2) == 1;
  return {second ? r * std::sin(two_pi * u2) : r * std::cos(two_pi * u2), r};
}

/// Whether a drawn Gaussian matches the documented Box-Muller value. Double
/// evaluates the formula with the C library in double: bit for bit. Float
/// evaluates it in float arithmetic (vectorised on the host, a device's own
/// functions there): theta = fl(fl(2 pi) u2) errs by up to 2 pi 2^-23 = 6.3 eps,
/// float log / sin / cos by a few ulp each, and r's relative error halves
/// log's; so |z - z_exact| <= 16 eps r covers the sum with room, while any
/// error in the mapping (a wrong word, a swapped sin / cos, a lost factor) is
/// O(r).
template <class T>
::testing::AssertionResult matches_box_muller(T z, box_muller_value exact) {
  if constexpr (sizeof(T) == 8) {
    if (z == exact.z) return ::testing::AssertionSuccess();
  } else {
    const double tolerance = 16.0 * double(std::numeric_limits<float>::epsilon()) * exact.r;
    if (std::abs(double(z) - exact.z) <= tolerance) return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "drawn " << z << ", exact " << exact.z << " (r " << exact.r << ")";
}

template <class T>
bool bit_equal(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <class T>
class RandomTyped : public ::testing::Test {};
using scalar_types = ::testing::Types<float, double>;
struct scalar_names {
  template <class T>
  static std::string GetName(int /*index*/) {
    return std::is_same_v<T, float> ? "float" : "double";
  }
};
TYPED_TEST_SUITE(RandomTyped, scalar_types, scalar_names);

TYPED_TEST(RandomTyped, ElementsFollowTheDocumentedMapping) {
  using T = TypeParam;
  // Seed and stream with all 64 bits in use; rows up to 2^33 - 3 (the last
  // blocks for R = 2), columns up to 2^32 - 1.
  const random_stream s{0xDEADBEEF01234567ull, 0x00000001FFFFFFF3ull};
  const std::uint64_t rows[] = {0, 1, 2, 3, 4, 5, 6, 7, 1000001, (std::uint64_t{1} << 33) - 3};
  const std::uint64_t cols[] = {0, 1, 17, 0xFFFFFFFFull};
  for (const std::uint64_t i : rows) {
    for (const std::uint64_t j : cols) {
      EXPECT_TRUE(bit_equal(lowrank::random_element<T, distribution::uniform>(s, i, j),
                            documented_uniform<T>(s, i, j)))
          << "uniform (" << i << ", " << j << ")";
      EXPECT_TRUE(bit_equal(lowrank::random_element<T, distribution::rademacher>(s, i, j),
                            documented_rademacher<T>(s, i, j)))
          << "rademacher (" << i << ", " << j << ")";
      EXPECT_TRUE(matches_box_muller(lowrank::random_element<T, distribution::gaussian>(s, i, j),
                                     documented_gaussian<T>(s, i, j)))
          << "gaussian (" << i << ", " << j << ")";
    }
  }
}

TEST(RandomMapping, ExtremeWordsStayInRange) {
  // The largest uniform is 1 - 2^-24 (float) / 1 - 2^-53 (double): both exact,
  // so [0, 1) holds after the cast. The smallest u1 fed to Box-Muller is 2^-24
  // (float) / 2^-53 (double), which bounds |z| by sqrt(-2 ln 2^-24) = 5.77 and
  // sqrt(-2 ln 2^-53) = 8.57.
  EXPECT_LT(static_cast<float>(lowrank::detail::u24(0xFFFFFFFFu)), 1.0f);
  EXPECT_EQ(lowrank::detail::u24(0u), 0.0);
  EXPECT_LT(lowrank::detail::u53(0xFFFFFFFFu, 0xFFFFFFFFu), 1.0);
  EXPECT_EQ(lowrank::detail::u53(0u, 0u), 0.0);
  EXPECT_EQ(lowrank::detail::u24_open0(0xFFFFFFFFu), 1.0);
  EXPECT_GT(lowrank::detail::u24_open0(0u), 0.0);
  EXPECT_EQ(lowrank::detail::u53_open0(0xFFFFFFFFu, 0xFFFFFFFFu), 1.0);
  EXPECT_GT(lowrank::detail::u53_open0(0u, 0u), 0.0);
  // Float: the host's batch transform at the extreme words (w1 = 0 gives the
  // smallest u1, w1 = 2^32 - 1 gives u1 = 1 and r = 0; w2 = 0 gives theta = 0).
  std::uint32_t w1[lowrank::detail::gaussian_batch] = {0u, 0xFFFFFFFFu};
  std::uint32_t w2[lowrank::detail::gaussian_batch] = {0u, 0u};
  float f0[lowrank::detail::gaussian_batch];
  float f1[lowrank::detail::gaussian_batch];
  lowrank::detail::box_muller_float_batch(w1, w2, f0, f1);
  const double r24 = std::sqrt(48.0 * std::log(2.0));
  EXPECT_NEAR(f0[0], r24, 16.0 * double(std::numeric_limits<float>::epsilon()) * r24);
  EXPECT_LT(std::abs(f0[0]), 6.5f);
  EXPECT_EQ(f1[0], 0.0f);
  EXPECT_EQ(f0[1], 0.0f);
  for (int t = 0; t < lowrank::detail::gaussian_batch; ++t) {
    EXPECT_TRUE(std::isfinite(f0[t]) && std::isfinite(f1[t])) << t;
  }
  // Double: the C library's transform.
  double z0 = 0;
  double z1 = 0;
  lowrank::detail::box_muller(lowrank::detail::u53_open0(0u, 0u), 0.0, z0, z1);
  EXPECT_NEAR(z0, std::sqrt(106.0 * std::log(2.0)), 1e-12);
  EXPECT_LT(std::abs(z0), 9.0);
}

// --------------------------------------------------------- fills through ops

template <class T>
using host_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

template <class T>
host_matrix<T> draw(distribution d, random_stream s, index_t rows, index_t cols, index_t row0 = 0,
                    index_t col0 = 0) {
  lowrank::context<cpu> ctx;
  host_matrix<T> x(rows, cols);
  lowrank::ops<cpu>::fill_random(ctx, d, s, lowrank::view(x), row0, col0);
  return x;
}

const char* name(distribution d) {
  switch (d) {
    case distribution::gaussian:
      return "gaussian";
    case distribution::uniform:
      return "uniform";
    case distribution::rademacher:
      return "rademacher";
  }
  return "?";
}

constexpr distribution all_distributions[] = {distribution::gaussian, distribution::uniform,
                                              distribution::rademacher};

// Distribution sanity on N = 2000 x 50 = 1e5 draws. Each statistic is checked
// to within 6 standard errors of its expectation: a correct generator fails
// one such check with probability ~2e-9, so a failure is a bug, while the
// checks still catch any error of the mapping larger than ~0.02 in the mean.
constexpr index_t stat_rows = 2000;
constexpr index_t stat_cols = 50;
constexpr double stat_n = double(stat_rows * stat_cols);
constexpr double sigmas = 6;

double standard_error(double variance_of_term) { return std::sqrt(variance_of_term / stat_n); }

template <class T>
void expect_all_finite(const host_matrix<T>& x) {
  EXPECT_TRUE(x.allFinite());
}

TYPED_TEST(RandomTyped, GaussianMoments) {
  using T = TypeParam;
  const host_matrix<T> x = draw<T>(distribution::gaussian, {42, 0}, stat_rows, stat_cols);
  expect_all_finite(x);
  const Eigen::ArrayXXd z = x.template cast<double>().array();
  const double mean = z.mean();
  const double var = (z - mean).square().mean();
  const double m4 = z.pow(4).mean();
  EXPECT_LT(std::abs(mean), sigmas * standard_error(1.0));     // Var z = 1
  EXPECT_LT(std::abs(var - 1), sigmas * standard_error(2.0));  // Var z^2 = 3 - 1
  EXPECT_LT(std::abs(m4 - 3), sigmas * standard_error(96.0));  // Var z^4 = 105 - 9
  // P(z < 0) = 1/2 and P(|z| < 1) = 0.6826894921: a wrong Box-Muller (a
  // missing factor 2, sqrt or the wrong angle) moves these far.
  const double negative = (z < 0).template cast<double>().mean();
  EXPECT_LT(std::abs(negative - 0.5), sigmas * standard_error(0.25));
  const double p1 = 0.6826894921370859;
  const double within_one = (z.abs() < 1).template cast<double>().mean();
  EXPECT_LT(std::abs(within_one - p1), sigmas * standard_error(p1 * (1 - p1)));
  // Neighbours in a column (the two outputs of one Box-Muller pair, and
  // neighbouring Philox calls) and neighbouring columns are uncorrelated:
  // E[z z'] = 0 with Var = 1.
  const double lag_row = (z.topRows(stat_rows - 1) * z.bottomRows(stat_rows - 1)).mean();
  const double lag_col = (z.leftCols(stat_cols - 1) * z.rightCols(stat_cols - 1)).mean();
  EXPECT_LT(std::abs(lag_row), sigmas * standard_error(1.0));
  EXPECT_LT(std::abs(lag_col), sigmas * standard_error(1.0));
  // Bounded tails: the 24-bit (float) / 53-bit (double) u1 in (0, 1] gives
  // |z| <= sqrt(-2 ln 2^-24) = 5.77 / sqrt(-2 ln 2^-53) = 8.57; yet the tail is
  // there: P(max |z| < 3.5 over 1e5 draws) = (1 - 4.7e-4)^1e5 ~ e^-46.
  const double max_abs = z.abs().maxCoeff();
  EXPECT_LT(max_abs, sizeof(T) == 4 ? 6.5 : 9.0);
  EXPECT_GT(max_abs, 3.5);
}

TYPED_TEST(RandomTyped, GaussianFillMatchesBoxMuller) {
  using T = TypeParam;
  // Every element of a large fill (all four lanes of the float batches, angles
  // over the whole circle) against the exact formula (see matches_box_muller).
  const random_stream s{46, 9};
  const host_matrix<T> x = draw<T>(distribution::gaussian, s, stat_rows, 25, 1, 2);
  for (index_t j = 0; j < x.cols(); ++j) {
    for (index_t i = 0; i < x.rows(); ++i) {
      ASSERT_TRUE(matches_box_muller(
          x(i, j), documented_gaussian<T>(s, std::uint64_t(i + 1), std::uint64_t(j + 2))))
          << "(" << i << ", " << j << ")";
    }
  }
}

TYPED_TEST(RandomTyped, UniformMomentsAndRange) {
  using T = TypeParam;
  const host_matrix<T> x = draw<T>(distribution::uniform, {43, 0}, stat_rows, stat_cols);
  expect_all_finite(x);
  // [0, 1) strictly, in T itself (no rounding up to 1 on the way).
  EXPECT_GE(x.minCoeff(), T(0));
  EXPECT_LT(x.maxCoeff(), T(1));
  const Eigen::ArrayXXd u = x.template cast<double>().array();
  const double mean = u.mean();
  const double var = (u - mean).square().mean();
  EXPECT_LT(std::abs(mean - 0.5), sigmas * standard_error(1.0 / 12));
  // Var (u - 1/2)^2 = 1/80 - 1/144 = 1/180.
  EXPECT_LT(std::abs(var - 1.0 / 12), sigmas * standard_error(1.0 / 180));
  // Ten equal bins, each with probability 1/10.
  for (int bin = 0; bin < 10; ++bin) {
    const double lo = bin / 10.0;
    const double hi = (bin + 1) / 10.0;
    const double p = ((u >= lo) && (u < hi)).template cast<double>().mean();
    EXPECT_LT(std::abs(p - 0.1), sigmas * standard_error(0.09)) << "bin " << bin;
  }
  // Both ends are reached: P(min >= 1e-3) = 0.999^1e5 ~ e^-100.
  EXPECT_LT(u.minCoeff(), 1e-3);
  EXPECT_GT(u.maxCoeff(), 1 - 1e-3);
  const double lag_row =
      ((u.topRows(stat_rows - 1) - 0.5) * (u.bottomRows(stat_rows - 1) - 0.5)).mean();
  EXPECT_LT(std::abs(lag_row), sigmas * standard_error(1.0 / 144));
}

TYPED_TEST(RandomTyped, RademacherSignsAndBalance) {
  using T = TypeParam;
  const host_matrix<T> x = draw<T>(distribution::rademacher, {44, 0}, stat_rows, stat_cols);
  EXPECT_TRUE(((x.array() == T(1)) || (x.array() == T(-1))).all());
  const Eigen::ArrayXXd r = x.template cast<double>().array();
  EXPECT_LT(std::abs(r.mean()), sigmas * standard_error(1.0));
  const double lag_row = (r.topRows(stat_rows - 1) * r.bottomRows(stat_rows - 1)).mean();
  const double lag_col = (r.leftCols(stat_cols - 1) * r.rightCols(stat_cols - 1)).mean();
  EXPECT_LT(std::abs(lag_row), sigmas * standard_error(1.0));
  EXPECT_LT(std::abs(lag_col), sigmas * standard_error(1.0));
}

// -------------------------------------- element (i, j) = f(seed, stream, i, j)

template <class T>
::testing::AssertionResult columns_bit_equal(lowrank::matrix_view<const T, cpu> a,
                                             lowrank::matrix_view<const T, cpu> b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) {
    return ::testing::AssertionFailure() << "shapes differ";
  }
  for (index_t j = 0; j < a.cols(); ++j) {
    if (std::memcmp(a.data() + j * a.ld(), b.data() + j * b.ld(),
                    static_cast<std::size_t>(a.rows()) * sizeof(T)) != 0) {
      return ::testing::AssertionFailure() << "column " << j << " differs";
    }
  }
  return ::testing::AssertionSuccess();
}

TYPED_TEST(RandomTyped, SubBlockEqualsBlockOfLargerDraw) {
  using T = TypeParam;
  const random_stream s{2024, 7};
  // Base offsets: the origin, and a large unaligned origin.
  const index_t bases[][2] = {{0, 0}, {1000001, 4}};
  for (const distribution d : all_distributions) {
    for (const auto& base : bases) {
      const host_matrix<T> big = draw<T>(d, s, 41, 12, base[0], base[1]);
      // Row offsets not aligned to rows_per_block (2 or 4), sizes neither.
      for (const index_t row0 : {index_t{0}, index_t{1}, index_t{3}, index_t{5}, index_t{7}}) {
        for (const index_t rows : {index_t{1}, index_t{2}, index_t{13}}) {
          const index_t col0 = 3;
          const index_t cols = 5;
          const host_matrix<T> small = draw<T>(d, s, rows, cols, base[0] + row0, base[1] + col0);
          EXPECT_TRUE(columns_bit_equal<T>(lowrank::view(small),
                                           lowrank::view(big).block(row0, col0, rows, cols)))
              << name(d) << " base row " << base[0] << " row0 " << row0 << " rows " << rows;
        }
      }
    }
  }
}

TYPED_TEST(RandomTyped, FillEqualsRandomElement) {
  using T = TypeParam;
  const random_stream s{0xA5A5A5A55A5A5A5Aull, 0x123456789ull};
  const index_t row0 = 5;
  const index_t col0 = 9;
  for (const distribution d : all_distributions) {
    const host_matrix<T> x = draw<T>(d, s, 23, 6, row0, col0);
    for (index_t j = 0; j < x.cols(); ++j) {
      for (index_t i = 0; i < x.rows(); ++i) {
        const auto gi = std::uint64_t(row0 + i);
        const auto gj = std::uint64_t(col0 + j);
        T expected{};
        switch (d) {
          case distribution::gaussian:
            expected = lowrank::random_element<T, distribution::gaussian>(s, gi, gj);
            break;
          case distribution::uniform:
            expected = lowrank::random_element<T, distribution::uniform>(s, gi, gj);
            break;
          case distribution::rademacher:
            expected = lowrank::random_element<T, distribution::rademacher>(s, gi, gj);
            break;
        }
        ASSERT_TRUE(bit_equal(x(i, j), expected)) << name(d) << " (" << i << ", " << j << ")";
      }
    }
  }
}

TYPED_TEST(RandomTyped, ThreadedFillEqualsSingleThreadFill) {
  using T = TypeParam;
  const random_stream s{99, 1};
  const index_t rows = 1003;
  const index_t cols = 17;
  for (const distribution d : all_distributions) {
    const host_matrix<T> reference = draw<T>(d, s, rows, cols);

    // Half the columns each (col0 via the sub-view and the column offset).
    host_matrix<T> by_cols(rows, cols);
    {
      const auto v = lowrank::view(by_cols);
      const index_t half = cols / 2;
      std::thread left([&] {
        lowrank::context<cpu> ctx;
        lowrank::ops<cpu>::fill_random(ctx, d, s, v.left_cols(half), 0, 0);
      });
      std::thread right([&] {
        lowrank::context<cpu> ctx;
        lowrank::ops<cpu>::fill_random(ctx, d, s, v.middle_cols(half, cols - half), 0, half);
      });
      left.join();
      right.join();
    }
    EXPECT_TRUE(columns_bit_equal<T>(lowrank::view(by_cols), lowrank::view(reference)))
        << name(d) << " split by columns";

    // Half the rows each, split at a row not aligned to rows_per_block; each
    // thread writes a view with ld > rows.
    host_matrix<T> by_rows(rows, cols);
    {
      const auto v = lowrank::view(by_rows);
      const index_t split = 501;
      std::thread top([&] {
        lowrank::context<cpu> ctx;
        lowrank::ops<cpu>::fill_random(ctx, d, s, v.middle_rows(0, split), 0, 0);
      });
      std::thread bottom([&] {
        lowrank::context<cpu> ctx;
        lowrank::ops<cpu>::fill_random(ctx, d, s, v.middle_rows(split, rows - split), split, 0);
      });
      top.join();
      bottom.join();
    }
    EXPECT_TRUE(columns_bit_equal<T>(lowrank::view(by_rows), lowrank::view(reference)))
        << name(d) << " split by rows";
  }
}

TYPED_TEST(RandomTyped, FillDoesNotDependOnTheContextThreadCount) {
  using T = TypeParam;
  const random_stream s{123, 456};
  lowrank::context<cpu> one(1);
  lowrank::context<cpu> four(4);
  for (const distribution d : all_distributions) {
    // Large enough that the backend splits it into several pieces.
    host_matrix<T> a(1001, 130);
    host_matrix<T> b(1001, 130);
    lowrank::ops<cpu>::fill_random(one, d, s, lowrank::view(a), 3, 5);
    lowrank::ops<cpu>::fill_random(four, d, s, lowrank::view(b), 3, 5);
    EXPECT_TRUE(columns_bit_equal<T>(lowrank::view(a), lowrank::view(b))) << name(d);
    EXPECT_TRUE(
        columns_bit_equal<T>(lowrank::view(a), lowrank::view(draw<T>(d, s, 1001, 130, 3, 5))))
        << name(d);
  }
}

TYPED_TEST(RandomTyped, FillWritesOnlyItsView) {
  using T = TypeParam;
  const T sentinel = T(-12345);
  for (const distribution d : all_distributions) {
    host_matrix<T> buffer = host_matrix<T>::Constant(11, 6, sentinel);
    const auto v = lowrank::view(buffer).block(2, 1, 7, 4);  // ld 11 > 7 rows
    lowrank::context<cpu> ctx;
    lowrank::ops<cpu>::fill_random(ctx, d, random_stream{5, 5}, v, 3, 2);
    const host_matrix<T> alone = draw<T>(d, random_stream{5, 5}, 7, 4, 3, 2);
    EXPECT_TRUE(columns_bit_equal<T>(lowrank::view(alone), v)) << name(d);
    host_matrix<T> outside = buffer;
    outside.block(2, 1, 7, 4).setConstant(sentinel);
    EXPECT_TRUE((outside.array() == sentinel).all()) << name(d);
  }
}

TYPED_TEST(RandomTyped, SeedAndStreamChangeTheValues) {
  using T = TypeParam;
  const index_t rows = 64;
  const index_t cols = 16;
  const double n = double(rows * cols);
  const random_stream base{1234, 0};
  // Each of these differs from `base` in one place, the high words included.
  const random_stream others[] = {{1235, 0},
                                  {1234 + (std::uint64_t{1} << 32), 0},
                                  base.next(),
                                  base.advance(std::uint64_t{1} << 32)};
  for (const distribution d : all_distributions) {
    const host_matrix<T> a = draw<T>(d, base, rows, cols);
    EXPECT_TRUE(columns_bit_equal<T>(lowrank::view(a), lowrank::view(draw<T>(d, base, rows, cols))))
        << "same stream, same values";
    for (const random_stream& other : others) {
      const host_matrix<T> b = draw<T>(d, other, rows, cols);
      const double equal = (a.array() == b.array()).template cast<double>().sum();
      if (d == distribution::rademacher) {
        // Independent signs agree half the time (6 standard errors again).
        EXPECT_LT(std::abs(equal / n - 0.5), sigmas * std::sqrt(0.25 / n))
            << name(d) << " seed " << other.seed << " stream " << other.stream;
      } else {
        // Continuous values (at least 24 random bits each) essentially never
        // coincide: the expected count is n 2^-24 < 1e-4.
        EXPECT_LE(equal, 1) << name(d) << " seed " << other.seed << " stream " << other.stream;
      }
    }
  }
}

TYPED_TEST(RandomTyped, TopOfTheIndexRange) {
  using T = TypeParam;
  const random_stream s{77, 3};
  lowrank::context<cpu> ctx;
  for (const distribution d : all_distributions) {
    const index_t r = d == distribution::rademacher || sizeof(T) == 4 ? 4 : 2;
    const index_t row_limit = (index_t{1} << 32) * r;
    const index_t col_limit = index_t{1} << 32;
    host_matrix<T> x(5, 3);
    // The last rows and columns the generator can address.
    ASSERT_NO_THROW(
        lowrank::ops<cpu>::fill_random(ctx, d, s, lowrank::view(x), row_limit - 5, col_limit - 3));
    for (index_t j = 0; j < 3; ++j) {
      for (index_t i = 0; i < 5; ++i) {
        const auto gi = std::uint64_t(row_limit - 5 + i);
        const auto gj = std::uint64_t(col_limit - 3 + j);
        T expected{};
        switch (d) {
          case distribution::gaussian:
            expected = lowrank::random_element<T, distribution::gaussian>(s, gi, gj);
            break;
          case distribution::uniform:
            expected = lowrank::random_element<T, distribution::uniform>(s, gi, gj);
            break;
          case distribution::rademacher:
            expected = lowrank::random_element<T, distribution::rademacher>(s, gi, gj);
            break;
        }
        EXPECT_TRUE(bit_equal(x(i, j), expected)) << name(d) << " (" << i << ", " << j << ")";
      }
    }
  }
}

TYPED_TEST(RandomTyped, OutOfRangeFillsThrow) {
  using T = TypeParam;
  lowrank::context<cpu> ctx;
  const random_stream s{1, 2};
  host_matrix<T> x(4, 3);
  const auto v = lowrank::view(x);
  for (const distribution d : all_distributions) {
    const index_t r = d == distribution::rademacher || sizeof(T) == 4 ? 4 : 2;
    const index_t row_limit = (index_t{1} << 32) * r;
    const index_t col_limit = index_t{1} << 32;
    EXPECT_THROW(lowrank::ops<cpu>::fill_random(ctx, d, s, v, -1, 0), lowrank::invalid_argument);
    EXPECT_THROW(lowrank::ops<cpu>::fill_random(ctx, d, s, v, 0, -1), lowrank::invalid_argument);
    // One column past 2^32.
    EXPECT_THROW(lowrank::ops<cpu>::fill_random(ctx, d, s, v, 0, col_limit - 2),
                 lowrank::invalid_argument);
    EXPECT_THROW(lowrank::ops<cpu>::fill_random(ctx, d, s, v, 0, col_limit),
                 lowrank::invalid_argument);
    // One row past 2^32 R.
    EXPECT_THROW(lowrank::ops<cpu>::fill_random(ctx, d, s, v, row_limit - 3, 0),
                 lowrank::invalid_argument);
  }
  // An empty fill is always fine and writes nothing.
  EXPECT_NO_THROW(lowrank::ops<cpu>::fill_random(ctx, distribution::gaussian, s,
                                                 lowrank::view(x).block(0, 0, 0, 3), 0, 0));
}

}  // namespace
}  // namespace philox_tests
