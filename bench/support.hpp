#pragma once
// What the CPU benchmarks share: the BLAS's thread count, wall-clock timing
// and the medians their counters report.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

namespace lowrank::bench {

/// Sets OpenBLAS's thread count when the BLAS is OpenBLAS (found at run time).
inline void set_blas_threads(int threads) {
#if defined(__unix__) || defined(__APPLE__)
  static const auto set =
      reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set != nullptr) set(threads);
#else
  (void)threads;
#endif
}

/// Seconds that f() takes.
template <class F>
double time_of(F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// The median (the upper one of an even count).
inline double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

/// The median of the per-iteration ratios a_i / b_i: each pair ran back to
/// back, so this follows the machine's load better than a ratio of medians.
inline double median_ratio(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> ratios(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) ratios[i] = a[i] / b[i];
  return median(std::move(ratios));
}

}  // namespace lowrank::bench
