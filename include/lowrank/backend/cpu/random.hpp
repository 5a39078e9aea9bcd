#pragma once
/// @file
/// The Philox fills of the CPU backend (internal; random/philox.hpp has the
/// mapping): every element is a function of its indices, so any split of the
/// columns gives the same bits. Float Gaussians go through the vectorised
/// Box-Muller batch, 64 values at a time, whose lanes give the bits of
/// `random_block<float, gaussian>`.

#include <cstdint>

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/partition.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank::detail {

template <class T, distribution D>
void fill_random_cpu(random_stream s, matrix_view<T, cpu> x, index_t row0, index_t col0) {
  constexpr index_t r = rows_per_block<T, D>;
  for (index_t j = 0; j < x.cols(); ++j) {
    T* out = x.data() + j * x.ld();
    const auto col = static_cast<std::uint64_t>(col0 + j);
    index_t i = 0;
    while (i < x.rows()) {
      const index_t global = row0 + i;
      T block[4];
      random_block<T, D>(s, static_cast<std::uint64_t>(global / r), col, block);
      for (index_t lane = global % r; lane < r && i < x.rows(); ++lane, ++i) out[i] = block[lane];
    }
  }
}

/// Float Gaussians: Philox words for 16 blocks (64 values) at a time, then the
/// vectorised Box-Muller batch, whose lanes give the same bits as
/// random_block<float, gaussian> (random/philox.hpp).
template <>
inline void fill_random_cpu<float, distribution::gaussian>(random_stream s,
                                                           matrix_view<float, cpu> x, index_t row0,
                                                           index_t col0) {
  static_assert(gaussian_batch == 32, "16 Philox blocks give 32 pairs");
  std::uint32_t words[4][16];
  std::uint32_t w1[gaussian_batch];
  std::uint32_t w2[gaussian_batch];
  float z0[gaussian_batch];
  float z1[gaussian_batch];
  const index_t end = row0 + x.rows();
  for (index_t j = 0; j < x.cols(); ++j) {
    float* out = x.data() + j * x.ld();  // out[i - row0] is global row i
    const auto col = static_cast<std::uint64_t>(col0 + j);
    for (index_t b0 = row0 / 4; 4 * b0 < end; b0 += 16) {
      random_words_16(s, static_cast<std::uint64_t>(b0), col, words);
      for (int t = 0; t < 16; ++t) {
        w1[2 * t] = words[0][t];
        w2[2 * t] = words[1][t];
        w1[2 * t + 1] = words[2][t];
        w2[2 * t + 1] = words[3][t];
      }
      box_muller_float_batch(w1, w2, z0, z1);
      // Pair p holds rows 4 b0 + 2 p and 4 b0 + 2 p + 1.
      const index_t first = 4 * b0;
      if (first >= row0 && first + 2 * gaussian_batch <= end) {
        float* at = out + (first - row0);
        for (index_t p = 0; p < gaussian_batch; ++p) {
          at[2 * p] = z0[p];
          at[2 * p + 1] = z1[p];
        }
      } else {
        for (index_t p = 0; p < gaussian_batch; ++p) {
          const index_t row = first + 2 * p;
          if (row >= row0 && row < end) out[row - row0] = z0[p];
          if (row + 1 >= row0 && row + 1 < end) out[row + 1 - row0] = z1[p];
        }
      }
    }
  }
}

/// X = the block at (row0, col0) of the random matrix of `stream`, in
/// column panels on the context's threads.
/// @throws lowrank::invalid_argument if the block is outside the generator's
///   index range (random/philox.hpp); `fn` names the caller.
template <class T>
void cpu_fill_random(context<cpu>& ctx, distribution d, random_stream stream, matrix_view<T, cpu> x,
                     index_t row0, index_t col0, const char* fn) {
  require_random_range<T>(fn, d, x.rows(), x.cols(), row0, col0);
  const index_t parts = column_parts(x.rows(), x.cols(), 16384);
  ctx.pool().run(parts, [&](index_t t) {
    const auto r = part(x.cols(), parts, t);
    const auto piece = x.middle_cols(r.begin, r.size);
    switch (d) {
      case distribution::gaussian:
        fill_random_cpu<T, distribution::gaussian>(stream, piece, row0, col0 + r.begin);
        break;
      case distribution::uniform:
        fill_random_cpu<T, distribution::uniform>(stream, piece, row0, col0 + r.begin);
        break;
      case distribution::rademacher:
        fill_random_cpu<T, distribution::rademacher>(stream, piece, row0, col0 + r.begin);
        break;
    }
  });
}

}  // namespace lowrank::detail
