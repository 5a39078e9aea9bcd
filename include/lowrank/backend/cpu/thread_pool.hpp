#pragma once
/// @file
/// The CPU backend's thread pool (internal; owned by `context<cpu>`).
///
/// `run(tasks, f)` calls f(0), ..., f(tasks - 1) on the pool's threads and the
/// calling thread, and returns when all have finished. Which thread runs which
/// task is unspecified; callers make every task's result independent of that
/// (a fixed partition of the work, decided from the shapes alone), which is
/// how the CPU backend gives the same bits whatever the thread count.
///
/// A pool of one thread runs everything on the caller. A call from inside a
/// task runs its tasks sequentially on that thread (no nested parallelism). The
/// first exception a task throws is rethrown by `run` after all tasks ended.
/// Concurrent `run` calls on one pool are serialised.
///
/// The workers spin for a few tens of microseconds after each job before they
/// sleep: a randomized SVD issues dozens of short parallel operations in a
/// row, and waking a sleeping thread costs as much as a small product.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "lowrank/core/matrix_view.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace lowrank::detail {

class thread_pool {
 public:
  /// A pool of `threads` threads in all (the caller is one of them), >= 1.
  explicit thread_pool(int threads) : threads_(threads < 1 ? 1 : threads) {}

  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  ~thread_pool() {
    stop_.store(true);
    generation_.fetch_add(1);
    { const std::lock_guard lock(sleep_mutex_); }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  /// The number of threads that run tasks, the caller included.
  [[nodiscard]] int size() const noexcept { return threads_; }

  /// Runs f(t) for every t in [0, tasks); see the file comment.
  template <class F>
  void run(index_t tasks, F&& f) {
    if (tasks <= 0) return;
    if (tasks == 1 || threads_ == 1 || inside_task()) {
      for (index_t t = 0; t < tasks; ++t) f(t);
      return;
    }
    const std::lock_guard serial(run_mutex_);
    start_workers();
    job j;
    j.call = [](void* fn, index_t t) { (*static_cast<std::remove_reference_t<F>*>(fn))(t); };
    j.fn = const_cast<void*>(static_cast<const void*>(&f));
    j.tasks = tasks;
    current_.store(&j);
    generation_.fetch_add(1);
    if (sleepers_.load() > 0) {
      { const std::lock_guard lock(sleep_mutex_); }
      wake_.notify_all();
    }
    work(j);
    // No worker may enter the job from now on; wait for those inside it.
    current_.store(nullptr);
    for (int spin = 0; j.done.load() < tasks || active_.load() > 0; ++spin) pause(spin);
    if (j.error) std::rethrow_exception(j.error);
  }

 private:
  struct job {
    void (*call)(void*, index_t) = nullptr;
    void* fn = nullptr;
    index_t tasks = 0;
    std::atomic<index_t> next{0};
    std::atomic<index_t> done{0};
    std::mutex error_mutex;
    std::exception_ptr error;
  };

  static bool& inside_task() noexcept {
    thread_local bool inside = false;
    return inside;
  }

  static void pause(int spin) noexcept {
    if (spin < 64) {
#if defined(__x86_64__) || defined(__i386__)
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }

  void start_workers() {
    if (!workers_.empty()) return;
    workers_.reserve(static_cast<std::size_t>(threads_ - 1));
    // The generation the workers start from, read before the first job is
    // announced: a worker scheduled late must still see that job (or the stop).
    const std::uint64_t start = generation_.load();
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, start] { worker_loop(start); });
  }

  // Takes tasks of `j` until none is left.
  static void work(job& j) {
    inside_task() = true;
    for (index_t t = j.next.fetch_add(1); t < j.tasks; t = j.next.fetch_add(1)) {
      try {
        j.call(j.fn, t);
      } catch (...) {
        const std::lock_guard lock(j.error_mutex);
        if (!j.error) j.error = std::current_exception();
      }
      j.done.fetch_add(1);
    }
    inside_task() = false;
  }

  void worker_loop(std::uint64_t seen) {
    for (;;) {
      // Spin a while for the next job, then sleep.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      int spin = 0;
      while (generation_.load() == seen && std::chrono::steady_clock::now() < deadline) {
        pause(spin++ % 64);
      }
      if (generation_.load() == seen) {
        std::unique_lock lock(sleep_mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, [&] { return generation_.load() != seen || stop_.load(); });
        sleepers_.fetch_sub(1);
      }
      seen = generation_.load();
      if (stop_.load()) return;
      // Announce before looking, so that the caller, having withdrawn the job,
      // waits for this thread (job lives on the caller's stack).
      active_.fetch_add(1);
      if (job* j = current_.load()) work(*j);
      active_.fetch_sub(1);
    }
  }

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<job*> current_{nullptr};
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> active_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace lowrank::detail
