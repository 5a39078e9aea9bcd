#pragma once
// Typed-test plumbing: one test body over {backend} x {float, double}.
// A configuration names the backend and the scalar; `to_backend` / `to_host`
// move test data between Eigen and the backend's memory.
//
// The same test sources build twice: as C++ (test_configs = the CPU
// configurations) and, wrapped in .cu files, as CUDA (test_configs = the CUDA
// configurations). CUDA cases skip when no device is visible, and fail
// instead when LOWRANK_TEST_REQUIRE_DEVICE=1.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cstdlib>
#include <cstring>

#if defined(__CUDACC__)
#include "lowrank/cuda.hpp"
#else
#include "lowrank/lowrank.hpp"
#endif

namespace lowrank::test {

template <class Backend, class T>
struct config {
  using backend = Backend;
  using scalar = T;
};

using cpu_configs = ::testing::Types<config<cpu, float>, config<cpu, double>>;
#if defined(__CUDACC__)
using cuda_configs = ::testing::Types<config<cuda, float>, config<cuda, double>>;
using test_configs = cuda_configs;
#else
using test_configs = cpu_configs;
#endif

/// True when LOWRANK_TEST_REQUIRE_DEVICE=1: a missing device is then a failure.
inline bool device_required() {
  const char* value = std::getenv("LOWRANK_TEST_REQUIRE_DEVICE");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

/// The base of typed tests: skips (or fails, see device_required) a CUDA
/// configuration when no device is visible.
template <class Config>
class backend_test : public ::testing::Test {
 protected:
  void SetUp() override {
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<typename Config::backend, cuda>) {
      if (!context<cuda>::device_available()) {
        if (device_required()) {
          FAIL() << "no CUDA device visible, and LOWRANK_TEST_REQUIRE_DEVICE=1";
        } else {
          GTEST_SKIP() << "no CUDA device visible";
        }
      }
    }
#endif
  }
};

/// Names typed tests "cpu_float", "cpu_double", ...
struct config_names {
  template <class Config>
  static std::string GetName(int /*index_t*/) {
    return std::string(Config::backend::name) + "_" +
           (std::is_same_v<typename Config::scalar, float> ? "float" : "double");
  }
};

template <class T>
using host_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

/// A context; on the CPU, one with the given number of threads.
template <class Backend>
context<Backend> make_context(int threads) {
  if constexpr (std::is_same_v<Backend, cpu>) {
    return context<cpu>(threads);
  } else {
    return context<Backend>();
  }
}

/// A backend copy of a host matrix.
template <class Backend, class T>
matrix<T, Backend> to_backend(context<Backend>& ctx, const host_matrix<T>& a) {
  matrix<T, Backend> out(ctx, a.rows(), a.cols());
  ops<Backend>::upload(ctx, view(a), out.view());
  return out;
}

/// A host copy of a backend matrix, in double precision.
template <class T, class Backend>
Eigen::MatrixXd to_host(context<Backend>& ctx, const matrix<T, Backend>& a) {
  host_matrix<T> out(a.rows(), a.cols());
  ops<Backend>::download(ctx, a.view(), view(out));
  return out.template cast<double>();
}

/// A host copy of a backend vector, in double precision.
template <class T, class Backend>
Eigen::VectorXd to_host(context<Backend>& ctx, const vector<T, Backend>& s) {
  host_matrix<T> out(s.size(), 1);
  ops<Backend>::download(ctx, s.view().as_matrix(), view(out));
  return out.template cast<double>();
}

/// Unit roundoff of T.
template <class T>
constexpr double eps = std::numeric_limits<T>::epsilon();

}  // namespace lowrank::test
