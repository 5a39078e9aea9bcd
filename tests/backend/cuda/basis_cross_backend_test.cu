// The basis family's operations on the GPU against the same operations on the
// CPU (basis/backend.hpp): the DCT's FFT route (cuFFT against the CPU's own
// FFT, both in T) for every row and every column, forward and inverse, on
// lengths with small and large prime factors; the DCT's basis vectors (to an ulp of T
// after the one rounding); the column gathers and scatters (bit for bit,
// repeated indices included); the sampled dot products and the sums of
// absolute values (bit for bit where the GPU adds in the CPU's order, to
// rounding where it tree-sums). Every operand is a strided block, and what
// lies outside an output block stays untouched. Cases skip without a GPU
// (and fail under LOWRANK_TEST_REQUIRE_DEVICE=1).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "support/backends.hpp"

namespace lowrank::test::basis_cross_backend_tests {
namespace {

template <class T>
class basis_cross_backend : public backend_test<config<cuda, T>> {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(basis_cross_backend, scalars);

/// Values in [-1, 1] that are exact in float, from a fixed seed.
template <class T>
host_matrix<T> random_matrix(index_t rows, index_t cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1, 1);
  host_matrix<T> m(rows, cols);
  for (index_t j = 0; j < cols; ++j) {
    for (index_t i = 0; i < rows; ++i) m(i, j) = T(float(dist(gen)));
  }
  return m;
}

template <class T>
bool same_bits(const host_matrix<T>& a, const host_matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * std::size_t(a.size())) == 0;
}

/// How many representable T lie between a and b (0 when equal, +0 and -0
/// included; the largest int64 for a NaN or opposite signs).
template <class T>
std::int64_t ulp_distance(T a, T b) {
  if (a == b) return 0;
  if (std::isnan(a) || std::isnan(b) || std::signbit(a) != std::signbit(b)) {
    return std::numeric_limits<std::int64_t>::max();
  }
  using bits = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  bits ia = 0;
  bits ib = 0;
  std::memcpy(&ia, &a, sizeof(T));
  std::memcpy(&ib, &b, sizeof(T));
  return std::abs(std::int64_t(ia) - std::int64_t(ib));
}

/// A rows x cols block at (1, 2) of a larger matrix (ld = rows + 3), on the
/// host and on the device, with the same values.
template <class T>
struct strided {
  index_t rows;
  index_t cols;
  host_matrix<T> h;
  matrix<T, cuda> d;

  strided(context<cuda>& gpu, const host_matrix<T>& whole, index_t r, index_t c)
      : rows(r), cols(c), h(whole), d(gpu, whole) {}
  strided(context<cuda>& gpu, index_t r, index_t c, unsigned seed)
      : strided(gpu, random_matrix<T>(r + 3, c + 2, seed), r, c) {}
  /// A block of NaN in a matrix of NaN (an output nobody wrote stays NaN).
  static strided nans(context<cuda>& gpu, index_t r, index_t c) {
    return strided(gpu, host_matrix<T>::Constant(r + 3, c + 2, std::numeric_limits<T>::quiet_NaN()),
                   r, c);
  }

  matrix_view<T, cpu> host() { return view(h).block(1, 2, rows, cols); }
  matrix_view<T, cuda> device() { return d.view().block(1, 2, rows, cols); }
  [[nodiscard]] host_matrix<T> host_block() const { return h.block(1, 2, rows, cols); }
  /// The device's block; checks that the device's matrix outside the block
  /// still has the host's bits.
  [[nodiscard]] host_matrix<T> device_block() const {
    host_matrix<T> whole = d.to_eigen();
    const host_matrix<T> block = whole.block(1, 2, rows, cols);
    whole.block(1, 2, rows, cols) = h.block(1, 2, rows, cols);
    EXPECT_TRUE(same_bits(whole, h)) << "the device wrote outside the block";
    return block;
  }
};

/// A device copy of host indices.
vector<index_t, cuda> device_indices(context<cuda>& gpu, const std::vector<index_t>& idx) {
  const auto k = index_t(idx.size());
  vector<index_t, cuda> out(gpu, k);
  ops<cuda>::upload_indices(gpu, vector_view<const index_t, cpu>(idx.data(), k), out.view());
  return out;
}

// --- dct_fft -------------------------------------------------------------------

// Both FFTs run in T and the transforms are orthonormal, so each output entry
// of a vector x is off by about eps_T log2(n) ||x||_2 on each backend (the
// twiddles add a few eps): the two differ by twice that at most. The bound,
// 8 eps_T (log2(n) + 2) ||x||_2 per entry, leaves a margin of about 4 over
// that worst case and of more than 10 over what FFTs reach in practice (an
// emulation with a float FFT differed from the CPU by under 1 eps_T ||x||_2);
// a wrong reordering, twiddle or half spectrum is off by O(||x||).
template <class T>
double dct_tolerance(index_t n) {
  return 8 * eps<T> * (std::log2(double(n)) + 2);
}

TYPED_TEST(basis_cross_backend, dct_fft_matches_the_cpu) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  unsigned seed = 1;
  for (const index_t n : {1, 2, 3, 7, 64, 100, 127, 1000}) {
    for (const bool along_columns : {true, false}) {
      for (const bool inverse : {false, true}) {
        const std::string what = "n = " + std::to_string(n) +
                                 (along_columns ? ", columns" : ", rows") +
                                 (inverse ? ", inverse" : ", forward");
        constexpr index_t count = 6;
        const index_t rows = along_columns ? n : count;
        const index_t cols = along_columns ? count : n;
        auto x = strided<T>(gpu, rows, cols, seed++);
        auto y = strided<T>::nans(gpu, rows, cols);
        ops<cpu>::dct_fft(host, as_const(x.host()), y.host(), along_columns, inverse);
        ops<cuda>::dct_fft(gpu, as_const(x.device()), y.device(), along_columns, inverse);
        const Eigen::MatrixXd got = y.device_block().template cast<double>();
        const Eigen::MatrixXd expected = y.host_block().template cast<double>();
        const Eigen::MatrixXd input = x.host_block().template cast<double>();
        for (index_t b = 0; b < count; ++b) {
          const double norm = along_columns ? input.col(b).norm() : input.row(b).norm();
          const double error = along_columns ? (got.col(b) - expected.col(b)).cwiseAbs().maxCoeff()
                                             : (got.row(b) - expected.row(b)).cwiseAbs().maxCoeff();
          EXPECT_LE(error, dct_tolerance<T>(n) * norm) << what << ", vector " << b;
        }
        if (n == 1) {
          EXPECT_TRUE(same_bits(y.device_block(), x.host_block())) << what << ": C = [1]";
        }

        // The GPU's inverse undoes the GPU's transform (to twice the bound).
        auto z = strided<T>::nans(gpu, rows, cols);
        ops<cuda>::dct_fft(gpu, as_const(y.device()), z.device(), along_columns, !inverse);
        const Eigen::MatrixXd back = z.device_block().template cast<double>();
        for (index_t b = 0; b < count; ++b) {
          const double norm = along_columns ? input.col(b).norm() : input.row(b).norm();
          const double error = along_columns ? (back.col(b) - input.col(b)).cwiseAbs().maxCoeff()
                                             : (back.row(b) - input.row(b)).cwiseAbs().maxCoeff();
          EXPECT_LE(error, 2 * dct_tolerance<T>(n) * norm) << what << ", round trip " << b;
        }
      }
    }
  }
}

// --- dct_basis_fill --------------------------------------------------------------

// Both backends compute s_k cos(pi m / 2n) in double with the angle reduced
// exactly on integers and folded into [0, pi/4]; the host's cos / sin and the
// device's cospi / sinpi (2 ulp each) differ by a few ulp of double. Rounded
// to float, the two values are the same float or neighbours (1 ulp); doubles
// agree to 8 ulp (about 2.5 ulp of error on each side, and the product
// with s_k).
TYPED_TEST(basis_cross_backend, dct_basis_fill_matches_the_cpu) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  const std::int64_t bound = std::is_same_v<T, float> ? 1 : 8;
  for (const index_t n : {1, 2, 7, 64, 1000, 4096, 100003}) {
    // First and last, repeated, the middle and a few others.
    std::vector<index_t> idx{0, n - 1, n / 2, 0, n / 3, (7 * n) / 11, n - 1, (n * 5) / 6};
    const auto k = index_t(idx.size());
    const auto d = device_indices(gpu, idx);
    auto out = strided<T>::nans(gpu, n, k);
    ops<cpu>::dct_basis_fill(host, vector_view<const index_t, cpu>(idx.data(), k), out.host());
    ops<cuda>::dct_basis_fill(gpu, as_const(d.view()), out.device());
    const host_matrix<T> got = out.device_block();
    const host_matrix<T> expected = out.host_block();
    std::int64_t worst = 0;
    for (index_t i = 0; i < k; ++i) {
      for (index_t j = 0; j < n; ++j) {
        worst = std::max(worst, ulp_distance(got(j, i), expected(j, i)));
      }
    }
    EXPECT_LE(worst, bound) << "n = " << n;
  }
}

// --- gather_columns, scatter_add_columns ---------------------------------------------

// Both backends round the same products and sums in T in the same order (the
// CPU build does not contract them into FMAs): the same bits, repeated
// indices included (they add in the order of idx).
TYPED_TEST(basis_cross_backend, gathers_and_scatters_match_the_cpu_bit_for_bit) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  constexpr index_t rows = 300;  // more than one block of threads
  constexpr index_t cols = 11;
  const std::vector<index_t> idx{4, 0, 10, 4, 7, 4, 2, 0, 9};
  const auto k = index_t(idx.size());
  const auto d_idx = device_indices(gpu, idx);
  const vector_view<const index_t, cpu> h_idx(idx.data(), k);
  const host_matrix<T> scale = random_matrix<T>(k, 1, 50);
  const matrix<T, cuda> d_scale(gpu, scale);
  for (const bool scaled : {false, true}) {
    const std::string what = scaled ? "with a scale" : "without a scale";
    const vector_view<const T, cpu> hs(scale.data(), scaled ? k : 0);
    const vector_view<const T, cuda> ds(d_scale.data(), scaled ? k : 0);

    auto x = strided<T>(gpu, rows, cols, 51);
    auto g = strided<T>::nans(gpu, rows, k);
    ops<cpu>::gather_columns(host, as_const(x.host()), h_idx, hs, g.host());
    ops<cuda>::gather_columns(gpu, as_const(x.device()), as_const(d_idx.view()), ds, g.device());
    EXPECT_TRUE(same_bits(g.device_block(), g.host_block())) << "gather_columns, " << what;

    auto src = strided<T>(gpu, rows, k, 52);
    auto y = strided<T>(gpu, rows, cols, 53);
    ops<cpu>::scatter_add_columns(host, T(-1.375), as_const(src.host()), h_idx, hs, y.host());
    ops<cuda>::scatter_add_columns(gpu, T(-1.375), as_const(src.device()), as_const(d_idx.view()),
                                   ds, y.device());
    EXPECT_TRUE(same_bits(y.device_block(), y.host_block())) << "scatter_add_columns, " << what;
  }
}

// --- sampled_dots, abs_sums ------------------------------------------------------

// The GPU tree-sums where the CPU adds in order: sums of r terms in double
// agree to r eps_double times the sum of the terms' magnitudes. Row sums of
// abs_sums add in the CPU's order on both: the same bits.
TYPED_TEST(basis_cross_backend, sampled_dots_and_abs_sums_match_the_cpu) {
  using T = TypeParam;
  context<cuda> gpu;
  context<cpu> host(2);
  constexpr double eps_double = std::numeric_limits<double>::epsilon();
  constexpr index_t rows = 700;  // several passes of a 256-thread block
  auto a = strided<T>(gpu, rows, 9, 60);
  auto b = strided<T>(gpu, rows, 13, 61);
  const std::vector<index_t> ia{0, 8, 3, 3, 5, 0, 7};
  const std::vector<index_t> ib{12, 0, 3, 3, 11, 6, 1};
  const auto pairs = index_t(ia.size());
  const auto d_ia = device_indices(gpu, ia);
  const auto d_ib = device_indices(gpu, ib);
  Eigen::VectorXd h_out(pairs);
  vector<double, cuda> d_out(gpu, pairs);
  ops<cpu>::sampled_dots(host, as_const(a.host()), as_const(b.host()),
                         vector_view<const index_t, cpu>(ia.data(), pairs),
                         vector_view<const index_t, cpu>(ib.data(), pairs),
                         vector_view<double, cpu>(h_out.data(), pairs));
  ops<cuda>::sampled_dots(gpu, as_const(a.device()), as_const(b.device()), as_const(d_ia.view()),
                          as_const(d_ib.view()), d_out.view());
  const Eigen::VectorXd got = d_out.to_eigen();
  const Eigen::MatrixXd ha = a.host_block().template cast<double>();
  const Eigen::MatrixXd hb = b.host_block().template cast<double>();
  for (index_t p = 0; p < pairs; ++p) {
    const auto i = std::size_t(p);
    const double magnitude = ha.col(ia[i]).cwiseAbs().dot(hb.col(ib[i]).cwiseAbs());
    EXPECT_NEAR(got(p), h_out(p), rows * eps_double * magnitude) << "sampled_dots, pair " << p;
  }
  // Deterministic: a second run gives the same bits.
  vector<double, cuda> again(gpu, pairs);
  ops<cuda>::sampled_dots(gpu, as_const(a.device()), as_const(b.device()), as_const(d_ia.view()),
                          as_const(d_ib.view()), again.view());
  EXPECT_TRUE(same_bits<double>(again.to_eigen(), got)) << "sampled_dots, a second run";

  for (const bool per_row : {false, true}) {
    const index_t size = per_row ? rows : a.cols;
    Eigen::VectorXd expected(size);
    vector<double, cuda> sums(gpu, size);
    ops<cpu>::abs_sums(host, as_const(a.host()), per_row,
                       vector_view<double, cpu>(expected.data(), size));
    ops<cuda>::abs_sums(gpu, as_const(a.device()), per_row, sums.view());
    const Eigen::VectorXd sums_host = sums.to_eigen();
    if (per_row) {
      EXPECT_TRUE(same_bits<double>(sums_host, expected)) << "abs_sums per row";
    } else {
      for (index_t j = 0; j < size; ++j) {
        EXPECT_NEAR(sums_host(j), expected(j), rows * eps_double * expected(j))
            << "abs_sums per column, column " << j;
      }
    }
  }
}

}  // namespace
}  // namespace lowrank::test::basis_cross_backend_tests
