#pragma once
// Runs the one-block CUDA kernels of include/lowrank/backend/cuda/kernels/ on
// the CPU, one std::thread per CUDA thread, to check their logic where no GPU
// is lent (tools/kernel_emulation/run). Timing means nothing here.
//
// What is emulated: threadIdx / blockIdx / blockDim / gridDim (one block),
// __syncthreads, __syncthreads_or, __syncthreads_count, __shfl_sync and
// __shfl_down_sync among the lanes of their mask (each mask a barrier of its
// own, so groups of a warp may diverge as on the GPU), static __shared__
// arrays (function statics: one block shares them) and the double math the
// kernels call. `extern __shared__` arrays are rewritten by `run` into plain
// externs that the test defines. Not emulated: warp-synchronous code without
// a _sync call, more than one block, memory fences beyond the barriers'.

#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using std::copysign;
using std::fabs;
using std::fmax;
using std::isfinite;
using std::isnan;
using std::nan;
using std::sqrt;
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// The round-to-nearest intrinsics (kernels/elementwise.cuh): plain IEEE
// operations here (this build does not contract them into FMAs).
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

struct emulated_dim3 {
  unsigned x = 0, y = 0, z = 0;
};

inline thread_local emulated_dim3 threadIdx;
inline emulated_dim3 blockIdx;
inline emulated_dim3 blockDim;
inline emulated_dim3 gridDim{1, 1, 1};

namespace emulation {

struct block_state {
  std::unique_ptr<std::barrier<>> all;
  std::mutex lanes_mutex;
  std::map<std::pair<unsigned, unsigned>, std::unique_ptr<std::barrier<>>> lanes;  // (warp, mask)
  std::vector<std::uint64_t> slots;                                                // 32 per warp
  int counter = 0;
  std::mutex counter_mutex;
};

inline block_state* block = nullptr;

inline std::barrier<>& lane_barrier(unsigned mask) {
  const unsigned warp = threadIdx.x / 32;
  std::lock_guard lock(block->lanes_mutex);
  auto& b = block->lanes[{warp, mask}];
  if (!b) b = std::make_unique<std::barrier<>>(std::popcount(mask));
  return *b;
}

template <class T>
T exchange(unsigned mask, T value, int source_lane) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t));
  auto& barrier = lane_barrier(mask);
  const unsigned warp = threadIdx.x / 32;
  std::uint64_t* slots = block->slots.data() + 32 * warp;
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  slots[threadIdx.x % 32] = bits;
  barrier.arrive_and_wait();
  T out;
  std::memcpy(&out, &slots[source_lane], sizeof(T));
  barrier.arrive_and_wait();
  return out;
}

/// Runs kernel(args...) as one block of `threads` threads.
template <class Kernel, class... Args>
void launch(int threads, Kernel kernel, Args... args) {
  block_state state;
  state.all = std::make_unique<std::barrier<>>(threads);
  state.slots.assign(std::size_t(threads + 31) / 32 * 32, 0);
  block = &state;
  blockDim = {unsigned(threads), 1, 1};
  std::vector<std::thread> pool;
  pool.reserve(std::size_t(threads));
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([=] {
      threadIdx = {unsigned(t), 0, 0};
      kernel(args...);
      // A thread that returns leaves the block's barrier, as on the GPU
      // (where a barrier counts the threads that have not exited).
      block->all->arrive_and_drop();
    });
  }
  for (auto& thread : pool) thread.join();
  block = nullptr;
}

}  // namespace emulation

inline void __syncthreads() { emulation::block->all->arrive_and_wait(); }

inline int __syncthreads_count(int predicate) {
  auto& b = *emulation::block;
  {
    std::lock_guard lock(b.counter_mutex);
    if (predicate != 0) ++b.counter;
  }
  b.all->arrive_and_wait();
  int result = 0;
  {
    std::lock_guard lock(b.counter_mutex);
    result = b.counter;
  }
  b.all->arrive_and_wait();
  if (threadIdx.x == 0) {
    std::lock_guard lock(b.counter_mutex);
    b.counter = 0;
  }
  b.all->arrive_and_wait();
  return result;
}

inline int __syncthreads_or(int predicate) { return __syncthreads_count(predicate) != 0 ? 1 : 0; }

template <class T>
T __shfl_sync(unsigned mask, T value, int source, int width = 32) {
  const int lane = int(threadIdx.x % 32);
  const int base = lane / width * width;
  return emulation::exchange(mask, value, base + source % width);
}

template <class T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = int(threadIdx.x % 32);
  const int base = lane / width * width;
  const int source = lane + int(delta) < base + width ? lane + int(delta) : lane;
  return emulation::exchange(mask, value, source);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  const int lane = int(threadIdx.x % 32);
  const int base = lane / width * width;
  const int source = lane ^ lane_mask;
  return emulation::exchange(mask, value, source < base + width ? source : lane);
}

inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  static std::mutex m;
  std::lock_guard lock(m);
  const unsigned long long old = *address;
  if (value < old) *address = value;
  return old;
}
