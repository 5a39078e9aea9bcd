#pragma once
/// @file
/// Device matrices and vectors: `matrix<T, cuda>` and `vector<T, cuda>`.
///
/// Column-major device memory (leading dimension = rows), allocated and freed
/// in stream order on the context's stream (cudaMallocAsync / cudaFreeAsync).
/// Move-only: a copy of device data is an explicit operation. Data moves only
/// when asked: construct from an Eigen object to upload, `to_eigen()` to
/// download (which synchronises the stream). A matrix must not outlive the
/// context it was created with.

#include <cuda_runtime.h>

#include <Eigen/Core>
#include <utility>

#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

namespace detail {

/// Owns `count` elements of T on the device, freed in stream order.
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  device_buffer(context<cuda>& ctx, index_t count) : stream_(ctx.stream()) {
    if (count > 0) {
      check(cudaMallocAsync(reinterpret_cast<void**>(&data_), sizeof(T) * std::size_t(count),
                            stream_),
            "lowrank::matrix<T, cuda>: cudaMallocAsync");
    }
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), stream_(other.stream_) {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = std::exchange(other.data_, nullptr);
      stream_ = other.stream_;
    }
    return *this;
  }
  ~device_buffer() { reset(); }

  [[nodiscard]] T* get() const noexcept { return data_; }
  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }

 private:
  void reset() noexcept {
    if (data_ != nullptr) cudaFreeAsync(data_, stream_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

/// Copies a rows x cols column-major block between memories (the kind says
/// which way), on `stream`.
template <class T>
void copy_2d(const T* src, index_t src_ld, T* dst, index_t dst_ld, index_t rows, index_t cols,
             cudaMemcpyKind kind, cudaStream_t stream, const char* call) {
  if (rows == 0 || cols == 0) return;
  check(
      cudaMemcpy2DAsync(dst, sizeof(T) * std::size_t(dst_ld), src, sizeof(T) * std::size_t(src_ld),
                        sizeof(T) * std::size_t(rows), std::size_t(cols), kind, stream),
      call);
}

}  // namespace detail

/// A column-major matrix in device memory.
template <class T>
class matrix<T, cuda> {
 public:
  using value_type = T;

  matrix() = default;

  /// Uninitialised rows x cols device storage on ctx's stream.
  template <std::integral I, std::integral J>
  matrix(context<cuda>& ctx, I rows, J cols)
      : buffer_(ctx, index_t(rows) * index_t(cols)), rows_(index_t(rows)), cols_(index_t(cols)) {}

  /// A device copy of a host matrix (any Eigen expression; evaluated once).
  template <class Derived>
  matrix(context<cuda>& ctx, const Eigen::MatrixBase<Derived>& host)
      : matrix(ctx, host.rows(), host.cols()) {
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> column_major = host.template cast<T>();
    detail::copy_2d(column_major.data(), rows_, buffer_.get(), rows_, rows_, cols_,
                    cudaMemcpyHostToDevice, ctx.stream(), "lowrank::matrix<T, cuda>: upload");
    // Pageable host memory: wait, so that `column_major` may go.
    ctx.synchronize();
  }

  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t cols() const noexcept { return cols_; }
  [[nodiscard]] index_t size() const noexcept { return rows_ * cols_; }
  [[nodiscard]] T* data() noexcept { return buffer_.get(); }
  [[nodiscard]] const T* data() const noexcept { return buffer_.get(); }

  [[nodiscard]] matrix_view<T, cuda> view() noexcept { return {buffer_.get(), rows_, cols_}; }
  [[nodiscard]] matrix_view<const T, cuda> view() const noexcept {
    return {buffer_.get(), rows_, cols_};
  }

  /// A host copy (synchronises the stream the matrix was allocated on).
  [[nodiscard]] Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> to_eigen() const {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> host(rows_, cols_);
    detail::copy_2d(buffer_.get(), rows_, host.data(), rows_, rows_, cols_, cudaMemcpyDeviceToHost,
                    buffer_.stream(), "lowrank::matrix<T, cuda>::to_eigen");
    if (size() > 0) {
      detail::check(cudaStreamSynchronize(buffer_.stream()), "lowrank::matrix<T, cuda>::to_eigen");
    }
    return host;
  }

 private:
  detail::device_buffer<T> buffer_;
  index_t rows_ = 0;
  index_t cols_ = 0;
};

/// A contiguous vector in device memory.
template <class T>
class vector<T, cuda> {
 public:
  using value_type = T;

  vector() = default;

  /// Uninitialised device storage of `size` elements on ctx's stream.
  template <std::integral I>
  vector(context<cuda>& ctx, I size) : buffer_(ctx, index_t(size)), size_(index_t(size)) {}

  /// A device copy of a host vector.
  template <class Derived>
  vector(context<cuda>& ctx, const Eigen::MatrixBase<Derived>& host) : vector(ctx, host.size()) {
    const Eigen::Matrix<T, Eigen::Dynamic, 1> contiguous = host.template cast<T>();
    detail::copy_2d(contiguous.data(), size_, buffer_.get(), size_, size_, index_t{1},
                    cudaMemcpyHostToDevice, ctx.stream(), "lowrank::vector<T, cuda>: upload");
    ctx.synchronize();
  }

  [[nodiscard]] index_t size() const noexcept { return size_; }
  [[nodiscard]] T* data() noexcept { return buffer_.get(); }
  [[nodiscard]] const T* data() const noexcept { return buffer_.get(); }

  [[nodiscard]] vector_view<T, cuda> view() noexcept { return {buffer_.get(), size_}; }
  [[nodiscard]] vector_view<const T, cuda> view() const noexcept { return {buffer_.get(), size_}; }

  /// A host copy (synchronises the stream the vector was allocated on).
  [[nodiscard]] Eigen::Matrix<T, Eigen::Dynamic, 1> to_eigen() const {
    Eigen::Matrix<T, Eigen::Dynamic, 1> host(size_);
    detail::copy_2d(buffer_.get(), size_, host.data(), size_, size_, index_t{1},
                    cudaMemcpyDeviceToHost, buffer_.stream(), "lowrank::vector<T, cuda>::to_eigen");
    if (size_ > 0) {
      detail::check(cudaStreamSynchronize(buffer_.stream()), "lowrank::vector<T, cuda>::to_eigen");
    }
    return host;
  }

 private:
  detail::device_buffer<T> buffer_;
  index_t size_ = 0;
};

}  // namespace lowrank
