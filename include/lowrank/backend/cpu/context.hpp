#pragma once
/// @file
/// The CPU execution context: the threads the CPU backend runs on, its
/// scratch memory and the resources families create on first use.
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
/// moved. One thread at a time uses a context (its scratch memory is the
/// context's): give each thread of a program its own. For repeated small
/// problems, create one context and pass it, rather than using the Eigen
/// convenience overloads, which create a context per call.

#include <memory>
#include <thread>

#include "lowrank/backend/cpu/thread_pool.hpp"
#include "lowrank/core/backend.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/resources.hpp"
#include "lowrank/core/workspace.hpp"

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

  /// A frame of the context's scratch memory (internal; core/workspace.hpp):
  /// `auto ws = ctx.workspace(); T* p = ws.take<T>(n);`, valid while `ws`
  /// lives. Kept across calls, so repeated operations neither allocate nor
  /// fault in fresh pages.
  [[nodiscard]] detail::workspace_arena<detail::host_allocator>::frame workspace() {
    return detail::workspace_arena<detail::host_allocator>::frame(*arena_);
  }

  /// The context's resource of type R (a family's plan cache, say; see
  /// core/resources.hpp), made as R(*this) on first use.
  template <class R>
  [[nodiscard]] R& resource() {
    return resources_->get<R>([&] { return R(*this); });
  }

 private:
  std::unique_ptr<detail::thread_pool> pool_;
  std::unique_ptr<detail::workspace_arena<detail::host_allocator>> arena_ =
      std::make_unique<detail::workspace_arena<detail::host_allocator>>();
  std::unique_ptr<detail::resource_registry> resources_ =
      std::make_unique<detail::resource_registry>();
};

}  // namespace lowrank
