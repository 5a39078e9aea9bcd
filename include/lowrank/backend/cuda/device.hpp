#pragma once
/// @file
/// Host-side helpers of the CUDA backend's operations (internal): reading one
/// value back from the device after the stream's work, checking cuSOLVER's
/// devInfo, and the dynamic shared memory the one-block kernels may use.

#include <cuda_runtime.h>

#include <cstddef>

#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/error.hpp"

namespace lowrank::detail {

/// The dynamic shared memory a one-block kernel may use on ctx's device:
/// all of it but 8 KB for the kernel's static shared memory (ptxas, sm_90:
/// cholesky_fused 4 KB, jacobi_svd none).
inline std::size_t dynamic_shared_memory(const context<cuda>& ctx) {
  constexpr std::size_t static_reserve = 8192;
  const std::size_t total = ctx.shared_memory_per_block();
  return total > static_reserve ? total - static_reserve : 0;
}

/// Whether a one-block kernel that needs `bytes` of dynamic shared memory
/// fits on ctx's device.
inline bool fits_in_shared_memory(const context<cuda>& ctx, std::size_t bytes) {
  return bytes <= dynamic_shared_memory(ctx);
}

/// Allows `kernel` all the dynamic shared memory ctx's device has. The
/// value depends only on the device, never on a call's size, so threads
/// sharing a device cannot lower the limit under one another's launches.
template <class Kernel>
void allow_shared_memory(const context<cuda>& ctx, Kernel kernel, const char* call) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(dynamic_shared_memory(ctx))),
        call);
}

/// The value at `device` (a status a kernel or cuSOLVER wrote), after
/// everything queued on the stream: one download, one synchronisation.
template <class S>
S download_value(context<cuda>& ctx, const S* device, const char* call) {
  S host{};
  check(cudaMemcpyAsync(&host, device, sizeof host, cudaMemcpyDeviceToHost, ctx.stream()), call);
  ctx.synchronize();
  return host;
}

inline void check_info(context<cuda>& ctx, const char* call) {
  check_info(download_value(ctx, ctx.info(), call), call);
}

}  // namespace lowrank::detail
