#pragma once
/// @file
/// How a LoRA pair (A, B) starts (docs/algorithms.md, "Adapters"; PEFT's
/// `LoraLayer.reset_lora_parameters`):
/// - `peft_default`: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's kaiming_uniform_ with
///   a = sqrt(5)), B = 0;
/// - `gaussian`: A ~ N(0, 1/r^2), B = 0;
/// - `pissa`: with W = U S V^T (exact SVD, or the randomized SVD with
///   `pissa_iterations` power iterations, PEFT's "pissa_niter_K"), S_r /= s,
///   A = diag(sqrt(S_r)) V_r^T, B = U_r diag(sqrt(S_r)), and W becomes
///   W_res = W - s B A (so that W_res + s B A = W);
/// - a given factor: `lora::from_factors` (A, B as given) and
///   `lora::from_low_rank` (U S V^T -> B = U sqrt(S / s), A = sqrt(S / s) V^T, so
///   that s B A = U S V^T; W unchanged).
/// The random A is the Philox matrix of `adapter_stream(seed, layer, init, 0)`
/// (adapters/base.hpp).

#include <cmath>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank {

/// How a LoRA pair (A, B) starts.
enum class lora_init {
  peft_default,  ///< A kaiming-uniform (bound 1/sqrt(in)), B = 0: the adapter starts as a no-op
  gaussian,      ///< A ~ N(0, 1/r^2), B = 0
  pissa,         ///< the principal rank-r part of W moves into s B A; W keeps the residual
};

namespace detail {

/// A = U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform with a = sqrt(5)) or
/// N(0, 1/r^2), drawn from `stream`.
template <class T, class Backend>
void init_a(context<Backend>& ctx, lora_init init, random_stream stream,
            matrix_view<T, Backend> a) {
  if (init == lora_init::gaussian) {
    ops<Backend>::fill_random(ctx, distribution::gaussian, stream, a);
    ops<Backend>::affine(ctx, T(1.0 / double(a.rows())), T(0), a);
  } else {
    const double bound = 1.0 / std::sqrt(double(a.cols()));
    ops<Backend>::fill_random(ctx, distribution::uniform, stream, a);
    ops<Backend>::affine(ctx, T(2 * bound), T(-bound), a);
  }
}

}  // namespace detail
}  // namespace lowrank
