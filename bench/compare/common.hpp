#pragma once
// What lowrank-compare's main.cpp and its GPU rows (cuda_rows.cu) share: the
// matrix types, the timer, and the interface through which the GPU rows report
// to the comparison. The GPU rows are a translation unit of their own so that
// nvcc compiles only them: main.cpp, with its CPU peers in float and double,
// is the host compiler's job, under the C++ warnings (as one CUDA unit the
// program took 338 s to compile on the 2-core CI machine; now 66 s + ~220 s).

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <functional>
#include <lowrank/core/matrix_view.hpp>
#include <string>

namespace lowrank_compare {

using lowrank::index_t;
template <class T>
using dense = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using column = Eigen::Matrix<T, Eigen::Dynamic, 1>;

/// The best of up to `repeat` timings of f, which returns the factorisation;
/// a method that takes more than a second runs once.
template <class F>
auto timed(int repeat, double& seconds, F&& f) {
  using clock = std::chrono::steady_clock;
  auto start = clock::now();
  auto result = f();
  seconds = std::chrono::duration<double>(clock::now() - start).count();
  for (int r = 1; r < repeat && seconds < 1.0; ++r) {
    start = clock::now();
    result = f();
    seconds = std::min(seconds, std::chrono::duration<double>(clock::now() - start).count());
  }
  return result;
}

/// Where the GPU rows go: the comparison measures them as it measures its own.
template <class T>
class cuda_sink {
 public:
  /// Runs one method; a throw becomes that method's failed row.
  virtual void attempt(const std::string& method, const std::function<void()>& run) = 0;
  /// A row from the factors U (m x k), s (k) and V (n x k), downloaded.
  virtual void add(const std::string& method, double seconds, const dense<T>& u, const column<T>& s,
                   const dense<T>& v) = 0;
  /// The exact SVD's values (the reference when none is known) and its time.
  virtual void set_exact(const column<T>& s, double seconds) = 0;
  /// The fixed-accuracy row's relative error (--tolerance, or from the reference).
  [[nodiscard]] virtual double fixed_accuracy_tolerance(index_t k) const = 0;

 protected:
  ~cuda_sink() = default;
};

/// Device 0's name (std::system_error without a usable device).
std::string cuda_device_name();

/// The GPU rows on A (uploaded once): lowrank's exact SVD route (unless
/// skip_exact), cuSOLVER's randomized gesvdr, lowrank's randomized SVDs with
/// q = 0, 1, 2, block Krylov and the fixed-accuracy mode. Defined for float and
/// double in cuda_rows.cu.
template <class T>
void run_cuda(const dense<T>& a, index_t rank, int repeat, bool skip_exact, cuda_sink<T>& sink);

}  // namespace lowrank_compare
