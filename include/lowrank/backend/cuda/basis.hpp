#pragma once
/// @file
/// The basis family's part of the CUDA operation table (internal; the
/// operations of `basis_backend_for`, basis/backend.hpp), assembled into
/// `lowrank::ops<lowrank::cuda>` by backend/cuda/ops.hpp. None synchronises
/// the stream.
///
/// The FFT route of the DCT runs cuFFT in T (a float transform in float, a
/// double one in double, as the CPU backend's own FFT does); the reordering
/// and the twiddles around it are lowrank's kernels (kernels/basis.cuh), the
/// twiddles computed in double. The plans live in a context resource,
/// `cuda_dct_plans`: one per length, batch, precision and direction, bound
/// to the context's stream. The gathers and scatters of columns and the row
/// sums of abs_sums carry the CPU backend's bits; the DCT's basis vectors
/// agree with the CPU's to a few ulp of double before the one rounding to T
/// (the device's cospi / sinpi are not the host's cos / sin); the FFT route,
/// sampled_dots and the column sums of abs_sums agree to rounding.

#include <cuda_runtime.h>
#include <cufft.h>

#include <algorithm>
#include <cstddef>
#include <map>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>

#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/error.hpp"
#include "lowrank/backend/cuda/kernels/basis.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/backend/cuda/matrix.hpp"
#include "lowrank/basis/backend.hpp"
#include "lowrank/core/concepts.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank::detail {

/// cuFFT's statuses as an error category (backend/cuda/error.hpp's model).
class cufft_error_category final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "cufft"; }
  [[nodiscard]] std::string message(int code) const override {
    switch (static_cast<cufftResult>(code)) {
      case CUFFT_SUCCESS:
        return "CUFFT_SUCCESS";
      case CUFFT_INVALID_PLAN:
        return "CUFFT_INVALID_PLAN";
      case CUFFT_ALLOC_FAILED:
        return "CUFFT_ALLOC_FAILED";
      case CUFFT_INVALID_TYPE:
        return "CUFFT_INVALID_TYPE";
      case CUFFT_INVALID_VALUE:
        return "CUFFT_INVALID_VALUE";
      case CUFFT_INTERNAL_ERROR:
        return "CUFFT_INTERNAL_ERROR";
      case CUFFT_EXEC_FAILED:
        return "CUFFT_EXEC_FAILED";
      case CUFFT_SETUP_FAILED:
        return "CUFFT_SETUP_FAILED";
      case CUFFT_INVALID_SIZE:
        return "CUFFT_INVALID_SIZE";
      case CUFFT_UNALIGNED_DATA:
        return "CUFFT_UNALIGNED_DATA";
      case CUFFT_NOT_SUPPORTED:
        return "CUFFT_NOT_SUPPORTED";
      default:
        return "cufft status " + std::to_string(code);
    }
  }
};

/// The error category of cuFFT statuses.
[[nodiscard]] inline const std::error_category& cufft_category() noexcept {
  static const cufft_error_category category;
  return category;
}

/// Throws std::system_error unless `status` is CUFFT_SUCCESS.
inline void check(cufftResult status, const char* call) {
  if (status != CUFFT_SUCCESS) throw std::system_error(int(status), cufft_category(), call);
}

/// cuFFT's types and calls for a real transform in T.
template <class T>
struct cufft_of;

template <>
struct cufft_of<float> {
  using complex = cufftComplex;
  static constexpr cufftType forward = CUFFT_R2C;
  static constexpr cufftType inverse = CUFFT_C2R;
  static cufftResult run(cufftHandle plan, float* in, cufftComplex* out) {
    return cufftExecR2C(plan, in, out);
  }
  static cufftResult run(cufftHandle plan, cufftComplex* in, float* out) {
    return cufftExecC2R(plan, in, out);
  }
  static constexpr const char* forward_call = "lowrank::ops<cuda>::dct_fft: cufftExecR2C";
  static constexpr const char* inverse_call = "lowrank::ops<cuda>::dct_fft: cufftExecC2R";
};

template <>
struct cufft_of<double> {
  using complex = cufftDoubleComplex;
  static constexpr cufftType forward = CUFFT_D2Z;
  static constexpr cufftType inverse = CUFFT_Z2D;
  static cufftResult run(cufftHandle plan, double* in, cufftDoubleComplex* out) {
    return cufftExecD2Z(plan, in, out);
  }
  static cufftResult run(cufftHandle plan, cufftDoubleComplex* in, double* out) {
    return cufftExecZ2D(plan, in, out);
  }
  static constexpr const char* forward_call = "lowrank::ops<cuda>::dct_fft: cufftExecD2Z";
  static constexpr const char* inverse_call = "lowrank::ops<cuda>::dct_fft: cufftExecZ2D";
};

/// The CUDA backend's DCT plans (a context resource, core/resources.hpp):
/// one cuFFT plan per (length n, batch, type), the type naming the precision
/// and the direction (R2C, C2R, D2Z, Z2D), made on first use for `batch`
/// vectors of length n stored one after the other (reals n apart, half
/// spectra n / 2 + 1 apart), bound to the context's stream and destroyed
/// with the context. Each plan owns its cuFFT work area.
class cuda_dct_plans {
 public:
  explicit cuda_dct_plans(context<cuda>& ctx) : stream_(ctx.stream()) {}
  cuda_dct_plans(const cuda_dct_plans&) = delete;
  cuda_dct_plans& operator=(const cuda_dct_plans&) = delete;
  ~cuda_dct_plans() {
    for (const auto& entry : plans_) cufftDestroy(entry.second);
  }

  /// The plan of `batch` transforms of type `type` and length n.
  /// @throws std::system_error if cuFFT cannot make it.
  [[nodiscard]] cufftHandle get(index_t n, index_t batch, cufftType type) {
    const key k{n, batch, int(type)};
    const auto it = plans_.find(k);
    if (it != plans_.end()) return it->second;
    cufftHandle plan = 0;
    check(cufftCreate(&plan), "lowrank::ops<cuda>::dct_fft: cufftCreate");
    try {
      const bool real_input = type == CUFFT_R2C || type == CUFFT_D2Z;
      long long length = n;
      long long real_embed = n;
      long long complex_embed = n / 2 + 1;
      std::size_t work_bytes = 0;
      check(cufftMakePlanMany64(plan, 1, &length, real_input ? &real_embed : &complex_embed, 1,
                                real_input ? real_embed : complex_embed,
                                real_input ? &complex_embed : &real_embed, 1,
                                real_input ? complex_embed : real_embed, type, batch, &work_bytes),
            "lowrank::ops<cuda>::dct_fft: cufftMakePlanMany64");
      check(cufftSetStream(plan, stream_), "lowrank::ops<cuda>::dct_fft: cufftSetStream");
      plans_.emplace(k, plan);
    } catch (...) {
      cufftDestroy(plan);
      throw;
    }
    return plan;
  }

 private:
  using key = std::tuple<index_t, index_t, int>;
  cudaStream_t stream_;
  std::map<key, cufftHandle> plans_;
};

/// The basis family's operations of the CUDA backend.
struct cuda_basis_ops {
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cuda>;

  /// Y = C X (every column) or X C^T (every row); C^T with `inverse`.
  /// Makhoul's algorithm around a real cuFFT in T (float in float, double in
  /// double; the twiddles in double): reorder, FFT, twiddle (forward); half
  /// spectrum, inverse FFT, un-reorder (inverse).
  template <scalar T>
  static void dct_fft(context<cuda>& ctx, input<T> x, matrix_view<T, cuda> y, bool along_columns,
                      bool inverse) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols());
    const index_t n = along_columns ? x.rows() : x.cols();
    const index_t count = along_columns ? x.cols() : x.rows();
    if (n == 0 || count == 0) return;
    if (n == 1) {  // C = [1]
      copy_2d(x.data(), x.ld(), y.data(), y.ld(), x.rows(), x.cols(), cudaMemcpyDeviceToDevice,
              ctx.stream(), "lowrank::ops<cuda>::dct_fft: cudaMemcpy2DAsync");
      return;
    }
    // Element i of vector b at x[i * step + b * stride].
    const index_t x_step = along_columns ? 1 : x.ld();
    const index_t x_stride = along_columns ? x.ld() : 1;
    const index_t y_step = along_columns ? 1 : y.ld();
    const index_t y_stride = along_columns ? y.ld() : 1;
    using fft = cufft_of<T>;
    const index_t half = n / 2 + 1;
    auto& plans = ctx.resource<cuda_dct_plans>();
    auto ws = ctx.workspace();
    T* v = ws.take<T>(std::size_t(count * n));
    auto* f = ws.take<typename fft::complex>(std::size_t(count * half));
    const auto threads = kernels::block_threads;
    if (!inverse) {
      kernels::dct_reorder<<<kernels::grid_for(count * n), threads, 0, ctx.stream()>>>(
          x.data(), x_step, x_stride, n, count, v);
      check(cudaGetLastError(), "lowrank::ops<cuda>::dct_fft: kernel launch");
      check(fft::run(plans.get(n, count, fft::forward), v, f), fft::forward_call);
      kernels::dct_twiddle<<<kernels::grid_for(count * n), threads, 0, ctx.stream()>>>(
          f, n, count, y.data(), y_step, y_stride);
      check(cudaGetLastError(), "lowrank::ops<cuda>::dct_fft: kernel launch");
      return;
    }
    kernels::dct_spectrum<<<kernels::grid_for(count * half), threads, 0, ctx.stream()>>>(
        x.data(), x_step, x_stride, n, count, f);
    check(cudaGetLastError(), "lowrank::ops<cuda>::dct_fft: kernel launch");
    check(fft::run(plans.get(n, count, fft::inverse), f, v), fft::inverse_call);
    kernels::dct_unreorder<<<kernels::grid_for(count * n), threads, 0, ctx.stream()>>>(
        v, n, count, y.data(), y_step, y_stride);
    check(cudaGetLastError(), "lowrank::ops<cuda>::dct_fft: kernel launch");
  }

  /// Out(j, i) = C[idx_i, j], n = out.rows(): in double, rounded once.
  template <scalar T>
  static void dct_basis_fill(context<cuda>& ctx, vector_view<const index_t, cuda> idx,
                             matrix_view<T, cuda> out) {
    LOWRANK_ASSERT(out.cols() == idx.size());
    if (out.empty()) return;
    kernels::
        dct_basis_fill<<<kernels::grid_for(out.size()), kernels::block_threads, 0, ctx.stream()>>>(
            idx.data(), out.data(), out.ld(), out.rows(), out.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::dct_basis_fill: kernel launch");
  }

  /// Out(:, i) = s_i X(:, idx_i), s_i = scale_i or 1 when scale is empty: the
  /// CPU's bits.
  template <scalar T>
  static void gather_columns(context<cuda>& ctx, input<T> x, vector_view<const index_t, cuda> idx,
                             vector_view<const T, cuda> scale, matrix_view<T, cuda> out) {
    LOWRANK_ASSERT(out.cols() == idx.size() && out.rows() == x.rows() &&
                   (scale.size() == 0 || scale.size() == idx.size()));
    if (out.empty()) return;
    kernels::
        gather_columns<<<kernels::grid_for(out.size()), kernels::block_threads, 0, ctx.stream()>>>(
            x.data(), x.ld(), idx.data(), scale.size() == 0 ? nullptr : scale.data(), out.data(),
            out.ld(), out.rows(), out.cols());
    check(cudaGetLastError(), "lowrank::ops<cuda>::gather_columns: kernel launch");
  }

  /// Y(:, idx_i) += alpha s_i Src(:, i), i in order: one thread per row of
  /// Y, the CPU's bits (repeated indices included).
  template <scalar T>
  static void scatter_add_columns(context<cuda>& ctx, T alpha, input<T> src,
                                  vector_view<const index_t, cuda> idx,
                                  vector_view<const T, cuda> scale, matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(src.cols() == idx.size() && src.rows() == y.rows() &&
                   (scale.size() == 0 || scale.size() == idx.size()));
    if (y.rows() == 0 || idx.size() == 0) return;
    kernels::scatter_add_columns<<<kernels::grid_for(y.rows()), kernels::block_threads, 0,
                                   ctx.stream()>>>(alpha, src.data(), src.ld(), idx.data(),
                                                   scale.size() == 0 ? nullptr : scale.data(),
                                                   y.data(), y.ld(), y.rows(), idx.size());
    check(cudaGetLastError(), "lowrank::ops<cuda>::scatter_add_columns: kernel launch");
  }

  /// out_i = sum_n A(n, ia_i) B(n, ib_i), in double: a fixed tree per pair
  /// (deterministic).
  template <scalar T>
  static void sampled_dots(context<cuda>& ctx, matrix_view<const T, cuda> a, input<T> b,
                           vector_view<const index_t, cuda> ia, vector_view<const index_t, cuda> ib,
                           vector_view<double, cuda> out) {
    LOWRANK_ASSERT(a.rows() == b.rows() && ia.size() == ib.size() && out.size() == ia.size());
    if (out.empty()) return;
    const auto grid = static_cast<unsigned>(std::min<index_t>(out.size(), 65535));
    kernels::sampled_dots<<<grid, kernels::block_threads, 0, ctx.stream()>>>(
        a.data(), a.ld(), b.data(), b.ld(), ia.data(), ib.data(), a.rows(), out.size(), out.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::sampled_dots: kernel launch");
  }

  /// out_j = sum_i |X(i, j)| (per column: a fixed tree per column) or out_i =
  /// sum_j |X(i, j)| (per row: the columns in order, the CPU's bits), in
  /// double.
  template <scalar T>
  static void abs_sums(context<cuda>& ctx, matrix_view<const T, cuda> x, bool per_row,
                       vector_view<double, cuda> out) {
    LOWRANK_ASSERT(out.size() == (per_row ? x.rows() : x.cols()));
    if (out.empty()) return;
    if (per_row) {
      kernels::
          row_abs_sums<<<kernels::grid_for(x.rows()), kernels::block_threads, 0, ctx.stream()>>>(
              x.data(), x.ld(), x.rows(), x.cols(), out.data());
      check(cudaGetLastError(), "lowrank::ops<cuda>::abs_sums: kernel launch");
      return;
    }
    const auto grid = static_cast<unsigned>(std::min<index_t>(x.cols(), 65535));
    kernels::column_abs_sums<<<grid, kernels::block_threads, 0, ctx.stream()>>>(
        x.data(), x.ld(), x.rows(), x.cols(), out.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::abs_sums: kernel launch");
  }
};

}  // namespace lowrank::detail
