// lowrank-compare's GPU rows (--backend cuda): the only part of the program
// that nvcc compiles (common.hpp says why).

#include <algorithm>
#include <cstdio>
#include <lowrank/cuda.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "common.hpp"

namespace lowrank_compare {

std::string cuda_device_name() {
  cudaDeviceProp properties{};
  lowrank::detail::check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  return properties.name;
}

/// The GPU comparison: the exact SVD through lowrank's backend (its Jacobi
/// kernel for small matrices, cuSOLVER's syevd + QR in double for small
/// float ones, gesvd otherwise; the row names the route taken, from
/// context<cuda>::svd_report) and
/// randomized gesvdr against lowrank's randomized SVDs on the device. Each
/// time includes the stream's synchronisation; the factors are downloaded
/// (untimed) to measure them like the CPU rows.
template <class T>
void run_cuda(const dense<T>& a, index_t rank, int repeat, bool skip_exact, cuda_sink<T>& sink) {
  using device_matrix = lowrank::matrix<T, lowrank::cuda>;
  using device_vector = lowrank::vector<T, lowrank::cuda>;
  const index_t k = rank;
  const index_t m = a.rows();
  const index_t n = a.cols();
  lowrank::context<lowrank::cuda> gpu;
  const device_matrix da(gpu, a);
  int step = 0;
  auto progress = [&](const char* what) { std::fprintf(stderr, "[%d/4] %s ...\n", ++step, what); };

  if (!skip_exact) {
    progress("exact SVD (lowrank ops<cuda>::svd)");
    sink.attempt("exact: lowrank ops<cuda>::svd", [&] {
      const index_t r = std::min(m, n);
      device_matrix u(gpu, m, r);
      device_matrix v(gpu, n, r);
      device_vector s(gpu, r);
      double seconds = 0;
      timed(repeat, seconds, [&] {
        lowrank::ops<lowrank::cuda>::svd(gpu, da.view(), u.view(), s.view(), v.view());
        gpu.synchronize();
        return 0;
      });
      const column<T> hs = s.to_eigen();
      sink.set_exact(hs, seconds);
      sink.add(std::string("exact: ") + gpu.svd_report().method_name(), seconds,
               u.to_eigen().leftCols(k), hs.head(k), v.to_eigen().leftCols(k));
    });
  } else {
    ++step;
  }

  progress("cuSOLVER randomized gesvdr, p = 10, q = 2");
  sink.attempt("cuSOLVER gesvdr q=2", [&] {
    const index_t p = std::min<index_t>(10, std::min(m, n) - k);
    const index_t l = k + p;
    constexpr cudaDataType type = std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_64F;
    device_matrix work(gpu, m, n);
    device_matrix u(gpu, m, l);
    device_matrix v(gpu, n, l);
    device_vector s(gpu, l);
    cusolverDnParams_t params = nullptr;
    lowrank::detail::check(cusolverDnCreateParams(&params), "cusolverDnCreateParams");
    std::size_t device_bytes = 0;
    std::size_t host_bytes = 0;
    lowrank::detail::check(
        cusolverDnXgesvdr_bufferSize(gpu.solver(), params, 'S', 'S', m, n, k, p, 2, type,
                                     work.data(), m, type, s.data(), type, u.data(), m, type,
                                     v.data(), n, type, &device_bytes, &host_bytes),
        "cusolverDnXgesvdr_bufferSize");
    std::vector<char> host_work(std::max<std::size_t>(host_bytes, 1));
    double seconds = 0;
    timed(repeat, seconds, [&] {
      lowrank::ops<lowrank::cuda>::copy<T>(gpu, da.view(), work.view());  // gesvdr overwrites A
      auto ws = gpu.workspace();
      void* device_work = ws.take<std::byte>(device_bytes);
      lowrank::detail::check(
          cusolverDnXgesvdr(gpu.solver(), params, 'S', 'S', m, n, k, p, 2, type, work.data(), m,
                            type, s.data(), type, u.data(), m, type, v.data(), n, type, device_work,
                            device_bytes, host_work.data(), host_bytes, gpu.info()),
          "cusolverDnXgesvdr");
      gpu.synchronize();
      return 0;
    });
    cusolverDnDestroyParams(params);
    sink.add("cuSOLVER gesvdr q=2", seconds, u.to_eigen().leftCols(k), s.to_eigen().head(k),
             v.to_eigen().leftCols(k));
  });

  progress("lowrank::randomized_svd on the GPU, q = 0, 1, 2");
  for (const index_t q : {0, 1, 2}) {
    const std::string name = "lowrank randomized q=" + std::to_string(q);
    sink.attempt(name, [&] {
      double seconds = 0;
      const auto r = timed(repeat, seconds, [&] {
        auto f =
            lowrank::randomized_svd(gpu, da.view(), k, {.oversampling = 10, .power_iterations = q});
        gpu.synchronize();
        return f;
      });
      sink.add(name, seconds, r.u.to_eigen(), r.s.to_eigen(), r.v.to_eigen());
    });
  }
  sink.attempt("lowrank block Krylov", [&] {  // the defaults: b = k, 3 blocks
    double seconds = 0;
    const auto r = timed(repeat, seconds, [&] {
      auto f = lowrank::block_krylov_svd(gpu, da.view(), k);
      gpu.synchronize();
      return f;
    });
    sink.add("lowrank block Krylov", seconds, r.u.to_eigen(), r.s.to_eigen(), r.v.to_eigen());
  });

  progress("lowrank::randomized_svd on the GPU, fixed accuracy");
  const double tolerance = sink.fixed_accuracy_tolerance(k);
  char name[64];
  std::snprintf(name, sizeof name, "lowrank tolerance %.3g", tolerance);
  sink.attempt(name, [&] {
    double seconds = 0;
    const auto r = timed(repeat, seconds, [&] {
      auto f = lowrank::randomized_svd(gpu, da.view(),
                                       lowrank::fixed_accuracy{.relative_error = tolerance});
      gpu.synchronize();
      return f;
    });
    sink.add(name, seconds, r.u.to_eigen(), r.s.to_eigen(), r.v.to_eigen());
  });
}

template void run_cuda<float>(const dense<float>&, index_t, int, bool, cuda_sink<float>&);
template void run_cuda<double>(const dense<double>&, index_t, int, bool, cuda_sink<double>&);

}  // namespace lowrank_compare
