#pragma once
/// @file
/// CUDA, cuBLAS and cuSOLVER failures as `std::system_error`.
///
/// Every status a CUDA library returns goes through `check(status, call)`,
/// which throws `std::system_error` with the library's own error category
/// (`cuda_category()`, `cublas_category()`, `cusolver_category()`) and a
/// message naming the failing call, e.g.
/// `lowrank::ops<cuda>::gemm: cublasSgemm: CUBLAS_STATUS_INVALID_VALUE`.
/// cuSOLVER's devInfo is checked too (`check_info`). Destructors never throw:
/// they release resources and ignore errors.

#if !defined(__CUDACC__)
#error "lowrank's CUDA backend must be compiled as CUDA (nvcc, or clang -x cuda)"
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <string>
#include <system_error>

#include "lowrank/core/error.hpp"

namespace lowrank {

namespace detail {

class cuda_error_category final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "cuda"; }
  [[nodiscard]] std::string message(int code) const override {
    return cudaGetErrorName(static_cast<cudaError_t>(code)) + std::string(": ") +
           cudaGetErrorString(static_cast<cudaError_t>(code));
  }
};

class cublas_error_category final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "cublas"; }
  [[nodiscard]] std::string message(int code) const override {
    return cublasGetStatusName(static_cast<cublasStatus_t>(code));
  }
};

class cusolver_error_category final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "cusolver"; }
  [[nodiscard]] std::string message(int code) const override {
    switch (static_cast<cusolverStatus_t>(code)) {
      case CUSOLVER_STATUS_SUCCESS:
        return "CUSOLVER_STATUS_SUCCESS";
      case CUSOLVER_STATUS_NOT_INITIALIZED:
        return "CUSOLVER_STATUS_NOT_INITIALIZED";
      case CUSOLVER_STATUS_ALLOC_FAILED:
        return "CUSOLVER_STATUS_ALLOC_FAILED";
      case CUSOLVER_STATUS_INVALID_VALUE:
        return "CUSOLVER_STATUS_INVALID_VALUE";
      case CUSOLVER_STATUS_ARCH_MISMATCH:
        return "CUSOLVER_STATUS_ARCH_MISMATCH";
      case CUSOLVER_STATUS_EXECUTION_FAILED:
        return "CUSOLVER_STATUS_EXECUTION_FAILED";
      case CUSOLVER_STATUS_INTERNAL_ERROR:
        return "CUSOLVER_STATUS_INTERNAL_ERROR";
      case CUSOLVER_STATUS_NOT_SUPPORTED:
        return "CUSOLVER_STATUS_NOT_SUPPORTED";
      default:
        return "cusolver status " + std::to_string(code);
    }
  }
};

}  // namespace detail

/// The error category of CUDA runtime errors (cudaError_t).
[[nodiscard]] inline const std::error_category& cuda_category() noexcept {
  static const detail::cuda_error_category category;
  return category;
}
/// The error category of cuBLAS statuses.
[[nodiscard]] inline const std::error_category& cublas_category() noexcept {
  static const detail::cublas_error_category category;
  return category;
}
/// The error category of cuSOLVER statuses.
[[nodiscard]] inline const std::error_category& cusolver_category() noexcept {
  static const detail::cusolver_error_category category;
  return category;
}

namespace detail {

/// Throws std::system_error unless `status` is success; `call` names the
/// failing function as "lowrank::ops<cuda>::gemm: cublasSgemm".
inline void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) throw std::system_error(int(status), cuda_category(), call);
}
inline void check(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::system_error(int(status), cublas_category(), call);
}
inline void check(cusolverStatus_t status, const char* call) {
  if (status != CUSOLVER_STATUS_SUCCESS) {
    throw std::system_error(int(status), cusolver_category(), call);
  }
}

/// Throws for a non-zero cuSOLVER devInfo (already copied to the host):
/// negative is an invalid argument (a lowrank bug), positive a numerical
/// failure (e.g. an SVD that did not converge).
inline void check_info(int info, const char* call) {
  if (info < 0) {
    throw std::system_error(int(CUSOLVER_STATUS_INVALID_VALUE), cusolver_category(),
                            std::string(call) + ": devInfo " + std::to_string(info));
  }
  if (info > 0) throw_numerical_error(call, "devInfo", info, "0 (converged)");
}

}  // namespace detail
}  // namespace lowrank
