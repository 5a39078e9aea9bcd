#pragma once
/// @file
/// The Philox fills on the device (internal). One thread computes one Philox
/// block (rows_per_block<T, D> consecutive rows of one column) with the same
/// host/device code as the CPU backend (random/philox.hpp), so uniform and
/// Rademacher values are bit-identical to the CPU's and Gaussians agree to a
/// few ulp (the device's logf / sincosf against the host's packet math).

#include <cstdint>

#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/random/philox.hpp"

namespace lowrank::detail::kernels {

/// X (rows x cols, leading dimension ld) = the block at (row0, col0) of the
/// random matrix of `s`; `first_block` = row0 / R and `blocks` Philox blocks
/// per column cover the rows.
template <class T, distribution D>
__global__ void fill_random(random_stream s, T* x, index_t rows, index_t cols, index_t ld,
                            index_t row0, index_t col0, index_t first_block, index_t blocks) {
  constexpr index_t r = rows_per_block<T, D>;
  const index_t items = blocks * cols;
  for (index_t item = index_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += index_t(gridDim.x) * blockDim.x) {
    const index_t b = first_block + item % blocks;
    const index_t j = item / blocks;
    T values[4];
    random_block<T, D>(s, static_cast<std::uint64_t>(b), static_cast<std::uint64_t>(col0 + j),
                       values);
    for (index_t lane = 0; lane < r; ++lane) {
      const index_t i = b * r + lane - row0;
      if (i >= 0 && i < rows) x[i + j * ld] = values[lane];
    }
  }
}

}  // namespace lowrank::detail::kernels
