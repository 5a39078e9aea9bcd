#pragma once
/// @file
/// The CUDA execution context: one device, one non-blocking stream, a cuBLAS
/// and a cuSOLVER handle bound to it, reusable device workspace
/// (core/workspace.hpp: frames of stream-ordered memory whose pieces never
/// alias a live request), and the resources families create on first use
/// (core/resources.hpp: a cuSPARSE or cuFFT handle bound to the stream, a
/// persistent buffer).
///
/// RAII, non-copyable, movable; no global state. Every operation of
/// `ops<cuda>` is ordered on the context's stream; the ones that return host
/// values (norms, downloads, cuSOLVER's devInfo) synchronise it. Create the
/// context on the thread that uses it (its constructor makes its device
/// current there); `make_current()` re-selects the device on another thread.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <memory>
#include <utility>

#include "lowrank/backend/cuda/error.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/resources.hpp"
#include "lowrank/core/workspace.hpp"

namespace lowrank {

namespace detail {

/// Stream-ordered device memory for a workspace arena (cudaMallocAsync /
/// cudaFreeAsync on one stream).
struct stream_allocator {
  cudaStream_t stream = nullptr;
  [[nodiscard]] void* allocate(std::size_t bytes) {
    void* p = nullptr;
    check(cudaMallocAsync(&p, bytes, stream), "lowrank::context<cuda>::workspace: cudaMallocAsync");
    return p;
  }
  void deallocate(void* p, std::size_t /*bytes*/) noexcept { cudaFreeAsync(p, stream); }
};

}  // namespace detail

/// The method the last `ops<cuda>::svd` on a context used.
enum class cuda_svd_method {
  none,    ///< no SVD yet (or of an empty matrix)
  jacobi,  ///< the one-block Jacobi kernel (kernels/jacobi.cuh)
  eigen,   ///< syevd + QR in double (small float matrices)
  gesvd,   ///< cuSOLVER's gesvd
};

/// What the last `ops<cuda>::svd` on a context did (for benchmarks, tests and
/// tuning; `context<cuda>::svd_report()`).
struct cuda_svd_report {
  cuda_svd_method method = cuda_svd_method::none;
  int jacobi_sweeps = 0;  ///< sweeps the Jacobi kernel made (0: it did not run)

  /// The Jacobi kernel ran, then handed X on (a zero singular value, or no
  /// convergence).
  [[nodiscard]] bool jacobi_handed_on() const noexcept {
    return jacobi_sweeps > 0 && method != cuda_svd_method::jacobi;
  }
  /// The method's name, as benchmarks print it.
  [[nodiscard]] const char* method_name() const noexcept {
    switch (method) {
      case cuda_svd_method::jacobi:
        return "lowrank one-sided Jacobi";
      case cuda_svd_method::eigen:
        return "cuSOLVER syevd + QR";
      case cuda_svd_method::gesvd:
        return "cuSOLVER gesvd";
      case cuda_svd_method::none:
        break;
    }
    return "none";
  }
};

template <>
class context<cuda> {
 public:
  /// A context on `device` (default 0).
  /// @throws std::system_error if the device cannot be used.
  explicit context(int device = 0) : device_(device) {
    detail::check(cudaSetDevice(device), "lowrank::context<cuda>: cudaSetDevice");
    try {
      detail::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                    "lowrank::context<cuda>: cudaStreamCreateWithFlags");
      detail::check(cublasCreate(&blas_), "lowrank::context<cuda>: cublasCreate");
      detail::check(cublasSetStream(blas_, stream_), "lowrank::context<cuda>: cublasSetStream");
      detail::check(cusolverDnCreate(&solver_), "lowrank::context<cuda>: cusolverDnCreate");
      detail::check(cusolverDnSetStream(solver_, stream_),
                    "lowrank::context<cuda>: cusolverDnSetStream");
      detail::check(cudaMallocAsync(reinterpret_cast<void**>(&info_), sizeof(int), stream_),
                    "lowrank::context<cuda>: cudaMallocAsync");
      int optin = 0;
      detail::check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                    "lowrank::context<cuda>: cudaDeviceGetAttribute");
      shared_memory_per_block_ = std::size_t(optin);
      arena_ = std::make_unique<detail::workspace_arena<detail::stream_allocator>>(
          detail::stream_allocator{stream_});
      resources_ = std::make_unique<detail::resource_registry>();
    } catch (...) {
      release();
      throw;
    }
  }

  context(const context&) = delete;
  context& operator=(const context&) = delete;
  context(context&& other) noexcept { take(other); }
  context& operator=(context&& other) noexcept {
    if (this != &other) {
      release();
      take(other);
    }
    return *this;
  }
  ~context() { release(); }

  /// True when at least one CUDA device is usable (a driver and a device).
  [[nodiscard]] static bool device_available() noexcept {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  }

  [[nodiscard]] int device() const noexcept { return device_; }
  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }
  [[nodiscard]] cublasHandle_t blas() const noexcept { return blas_; }
  [[nodiscard]] cusolverDnHandle_t solver() const noexcept { return solver_; }
  /// A device int for cuSOLVER's devInfo.
  [[nodiscard]] int* info() const noexcept { return info_; }
  /// The most shared memory (static plus dynamic, bytes) one block may use on
  /// the device, kernels opting in (cudaDevAttrMaxSharedMemoryPerBlockOptin).
  [[nodiscard]] std::size_t shared_memory_per_block() const noexcept {
    return shared_memory_per_block_;
  }

  /// What the last `ops<cuda>::svd` on this context did.
  [[nodiscard]] const cuda_svd_report& svd_report() const noexcept { return svd_report_; }
  /// Written by `ops<cuda>::svd`.
  [[nodiscard]] cuda_svd_report& svd_report() noexcept { return svd_report_; }

  /// Makes the context's device current on the calling thread.
  void make_current() const {
    detail::check(cudaSetDevice(device_), "lowrank::context<cuda>::make_current");
  }

  /// Waits for everything queued on the stream.
  void synchronize() const {
    detail::check(cudaStreamSynchronize(stream_), "lowrank::context<cuda>::synchronize");
  }

  /// A frame of the context's device workspace (core/workspace.hpp):
  /// `auto ws = ctx.workspace(); T* p = ws.take<T>(n);`, valid (in stream
  /// order) while `ws` lives; pieces never alias another live request.
  [[nodiscard]] detail::workspace_arena<detail::stream_allocator>::frame workspace() {
    return detail::workspace_arena<detail::stream_allocator>::frame(*arena_);
  }

  /// The context's resource of type R (a family's library handle bound to
  /// the stream, a plan cache, ...; core/resources.hpp), made as R(*this) on
  /// first use and destroyed before the stream.
  template <class R>
  [[nodiscard]] R& resource() {
    return resources_->get<R>([&] { return R(*this); });
  }

 private:
  void take(context& other) noexcept {
    device_ = other.device_;
    stream_ = std::exchange(other.stream_, nullptr);
    blas_ = std::exchange(other.blas_, nullptr);
    solver_ = std::exchange(other.solver_, nullptr);
    info_ = std::exchange(other.info_, nullptr);
    arena_ = std::move(other.arena_);
    resources_ = std::move(other.resources_);
    shared_memory_per_block_ = other.shared_memory_per_block_;
    svd_report_ = other.svd_report_;
  }

  void release() noexcept {
    resources_.reset();
    arena_.reset();
    if (stream_ != nullptr) {
      if (info_ != nullptr) cudaFreeAsync(info_, stream_);
      cudaStreamSynchronize(stream_);
    }
    if (solver_ != nullptr) cusolverDnDestroy(solver_);
    if (blas_ != nullptr) cublasDestroy(blas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = nullptr;
    solver_ = nullptr;
    blas_ = nullptr;
    info_ = nullptr;
  }

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  int* info_ = nullptr;
  std::unique_ptr<detail::workspace_arena<detail::stream_allocator>> arena_;
  std::unique_ptr<detail::resource_registry> resources_;
  std::size_t shared_memory_per_block_ = 0;
  cuda_svd_report svd_report_;
};

}  // namespace lowrank
