#pragma once
/// @file
/// Launch shapes for lowrank's kernels (internal). Grids have a fixed shape
/// that does not depend on the device, so that reductions, whose order follows
/// the grid, give the same bits on every GPU.

#include <algorithm>

#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail::kernels {

/// Threads per block of every lowrank kernel.
inline constexpr int block_threads = 256;

/// Blocks for a grid-stride loop over n items (at most 4096).
[[nodiscard]] inline unsigned grid_for(index_t n) noexcept {
  const index_t blocks = (n + block_threads - 1) / block_threads;
  return static_cast<unsigned>(std::clamp<index_t>(blocks, 1, 4096));
}

}  // namespace lowrank::detail::kernels
