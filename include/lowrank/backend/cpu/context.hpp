#pragma once
/// @file
/// The CPU execution context: the threads the CPU backend runs on.
///
/// lowrank parallelises its CPU operations itself, over a partition of the
/// work that is decided from the shapes alone, never from the thread count;
/// each piece is one single-threaded BLAS (or Eigen) call or loop. So the same
/// input gives the same bits with 1 thread or 64. When the linked BLAS is
/// itself multi-threaded (OpenBLAS with more than one thread, detected at run
/// time), the BLAS-calling pieces run one after another, each parallelised by
/// the BLAS instead, which avoids oversubscription but makes the bits depend
/// on the BLAS's thread count: set `OPENBLAS_NUM_THREADS=1` for results that
/// depend on nothing but the input and the seed.
///
/// A context is cheap to create (its threads start on first use) and may be
/// moved; concurrent calls on one context are serialised. For repeated small
/// problems, create one context and pass it, rather than using the Eigen
/// convenience overloads, which create a context per call.

#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <thread>

#include "lowrank/backend/cpu/thread_pool.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/error.hpp"

namespace lowrank {

template <>
class context<cpu> {
 public:
  /// A context with `default_threads()` threads.
  context() : context(default_threads()) {}

  /// A context with `threads` threads in all (the calling thread included).
  /// @throws lowrank::invalid_argument if threads < 1.
  explicit context(int threads) {
    if (threads < 1) {
      detail::throw_invalid_argument("lowrank::context<cpu>::context", "threads", threads, ">= 1");
    }
    pool_ = std::make_unique<detail::thread_pool>(threads);
  }

  /// The number of threads the context runs on.
  [[nodiscard]] int threads() const noexcept { return pool_->size(); }

  /// std::thread::hardware_concurrency(), or 1 when unknown.
  [[nodiscard]] static int default_threads() noexcept {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
  }

  /// The pool the backend's operations run on (internal).
  [[nodiscard]] detail::thread_pool& pool() noexcept { return *pool_; }

  /// Scratch memory for one operation at a time (internal): at least `count`
  /// elements of T, 64-byte aligned, kept across calls so that repeated
  /// operations neither allocate nor fault in fresh pages. Invalidated by the
  /// next call.
  template <class T>
  [[nodiscard]] T* scratch(std::size_t count) {
    const std::size_t bytes = count * sizeof(T);
    if (bytes > scratch_bytes_) {
      scratch_.reset(static_cast<std::byte*>(::operator new (bytes, std::align_val_t{64})));
      scratch_bytes_ = bytes;
    }
    return reinterpret_cast<T*>(scratch_.get());
  }

 private:
  struct aligned_delete {
    void operator()(std::byte* p) const noexcept { ::operator delete (p, std::align_val_t{64}); }
  };
  std::unique_ptr<detail::thread_pool> pool_;
  std::unique_ptr<std::byte, aligned_delete> scratch_;
  std::size_t scratch_bytes_ = 0;
};

}  // namespace lowrank
