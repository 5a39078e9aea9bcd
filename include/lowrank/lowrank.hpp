#pragma once
/// @file
/// lowrank: low-rank linear algebra for training, fine-tuning and compressing
/// neural networks. This umbrella header brings the core, the CPU backend and
/// every family; it never touches CUDA (see <lowrank/cuda.hpp>).

#include "lowrank/version.hpp"

#include "lowrank/core/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/config.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/linear_operator.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"

#include "lowrank/random/permutation.hpp"
#include "lowrank/random/philox.hpp"
#include "lowrank/random/streams.hpp"

#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cpu/ops.hpp"

#include "lowrank/decomp/block_krylov.hpp"
#include "lowrank/decomp/low_rank.hpp"
#include "lowrank/decomp/orthonormalize.hpp"
#include "lowrank/decomp/randomized_svd.hpp"
#include "lowrank/decomp/range_finder.hpp"
#include "lowrank/decomp/rank_selection.hpp"
#include "lowrank/decomp/truncated_svd.hpp"

#include "lowrank/adapters/base.hpp"
#include "lowrank/adapters/dora.hpp"
#include "lowrank/adapters/init.hpp"
#include "lowrank/adapters/loca.hpp"
#include "lowrank/adapters/lora.hpp"
#include "lowrank/adapters/multi_lora.hpp"
#include "lowrank/adapters/nola.hpp"
#include "lowrank/adapters/shared_a_lora.hpp"

#include "lowrank/basis/dct.hpp"
#include "lowrank/checkpoint/compress.hpp"
#include "lowrank/checkpoint/spectrum.hpp"
#include "lowrank/factors/channel_sparse.hpp"
#include "lowrank/factors/compress.hpp"
#include "lowrank/factors/sparse.hpp"
#include "lowrank/factors/sparse_plus_low_rank.hpp"
#include "lowrank/projection/projected_adam.hpp"
#include "lowrank/projection/projector.hpp"
