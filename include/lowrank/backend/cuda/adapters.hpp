#pragma once
/// @file
/// The adapters' part of the CUDA operation table (internal; the operations
/// of `adapter_backend_for`, adapters/backend.hpp), assembled into
/// `lowrank::ops<lowrank::cuda>` by backend/cuda/ops.hpp. The dropout mask
/// and DoRA's row norms carry the CPU backend's bits (kernels/adapters.cuh).
/// merge_low_rank / unmerge_low_rank run the CPU backend's merge on host
/// copies (bit-identical merges on both backends; W crosses PCIe twice), so
/// they synchronise the stream; nothing else here does.

#include <cuda_runtime.h>

#include <Eigen/Core>
#include <type_traits>
#include <utility>
#include <vector>

#include "lowrank/adapters/backend.hpp"
#include "lowrank/backend/cpu/adapters.hpp"
#include "lowrank/backend/cpu/context.hpp"
#include "lowrank/backend/cuda/context.hpp"
#include "lowrank/backend/cuda/core.hpp"
#include "lowrank/backend/cuda/error.hpp"
#include "lowrank/backend/cuda/kernels/adapters.cuh"
#include "lowrank/backend/cuda/kernels/launch.cuh"
#include "lowrank/backend/cuda/matrix.hpp"
#include "lowrank/core/eigen.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/random/philox.hpp"

namespace lowrank::detail {

/// The adapters' operations of the CUDA backend.
struct cuda_adapter_ops {
  template <class T>
  using input = matrix_view<const std::type_identity_t<T>, cuda>;

  /// Y = alpha (X (.) M) / (1 - p) + beta Y, the keep mask M(i, j) = [u(i, j)
  /// >= p] from the float uniform matrix of `stream`: the CPU backend's mask,
  /// bit for bit (one thread per Philox block). p in [0, 1).
  /// @throws lowrank::invalid_argument if X is beyond the generator's range
  ///   (random/philox.hpp).
  template <scalar T>
  static void dropout(context<cuda>& ctx, random_stream stream, double p, T alpha, input<T> x,
                      T beta, matrix_view<T, cuda> y) {
    LOWRANK_ASSERT(x.rows() == y.rows() && x.cols() == y.cols() && p >= 0 && p < 1);
    // The mask is the float uniform matrix of `stream`: its index range.
    require_random_range<float>("lowrank::ops<cuda>::dropout", distribution::uniform, x.rows(),
                                x.cols());
    if (y.empty()) return;
    const T keep = alpha / static_cast<T>(1.0 - p);  // as the CPU computes it
    const index_t blocks = (x.rows() + 3) / 4;
    kernels::
        dropout<<<kernels::grid_for(blocks * x.cols()), kernels::block_threads, 0, ctx.stream()>>>(
            stream, p, keep, x.data(), x.ld(), beta, y.data(), y.ld(), x.rows(), x.cols(), blocks);
    check(cudaGetLastError(), "lowrank::ops<cuda>::dropout: kernel launch");
  }

  /// n_i = max(sqrt(max(w_i + 2 s b_i + s^2 c_i, 0)), floor) in double (DoRA's
  /// row norms): the CPU's bits.
  static void factored_row_norms(context<cuda>& ctx, double s, double floor,
                                 vector_view<const double, cuda> w,
                                 vector_view<const double, cuda> b,
                                 vector_view<const double, cuda> c, vector_view<double, cuda> n) {
    LOWRANK_ASSERT(w.size() == n.size() && b.size() == n.size() && c.size() == n.size());
    if (n.empty()) return;
    kernels::factored_row_norms<<<kernels::grid_for(n.size()), kernels::block_threads, 0,
                                  ctx.stream()>>>(s, floor, w.data(), b.data(), c.data(), n.size(),
                                                  n.data());
    check(cudaGetLastError(), "lowrank::ops<cuda>::factored_row_norms: kernel launch");
  }

  /// The merge of a low-rank update into a weight, W'(i, j) = fl(c_i (W(i, j)
  /// + s (B A)(i, j))) in extended precision: ops<cpu>::merge_low_rank on host
  /// copies of W, B, A and c, so the merged bits, the returned index of the
  /// first non-finite W' (or -1), the `record` and hence the exact unmerge
  /// are the CPU backend's. Not a hot path: it synchronises the stream,
  /// downloads W, B, A and c, and (unless `check_only`, which leaves W
  /// untouched) uploads W' back: two transfers of W over PCIe and a host
  /// copy of W (plus one of B A's column) in memory.
  template <scalar T>
  static index_t merge_low_rank(context<cuda>& ctx, double s, input<T> b, input<T> a,
                                vector_view<const double, cuda> row_scale, matrix_view<T, cuda> w,
                                bool check_only,
                                std::vector<merge_exception<std::type_identity_t<T>>>* record) {
    auto host =
        host_operands(ctx, b, a, row_scale, as_const(w), "lowrank::ops<cuda>::merge_low_rank");
    context<cpu> cpu_ctx;
    const index_t bad = cpu_adapter_ops::merge_low_rank<T>(
        cpu_ctx, s, view(std::as_const(host.b)), view(std::as_const(host.a)), host.scale(),
        view(host.w), check_only, record);
    if (!check_only) {
      cuda_core_ops::upload<T>(ctx, view(std::as_const(host.w)), w);
    }
    return bad;
  }

  /// The inverse of merge_low_rank() (ops<cpu>::unmerge_low_rank on host
  /// copies, the record applied there): with the record of the merge, W is
  /// the pre-merge weight bit for bit. Synchronises the stream and moves W
  /// over PCIe twice, as merge_low_rank().
  template <scalar T>
  static void unmerge_low_rank(
      context<cuda>& ctx, double s, input<T> b, input<T> a,
      vector_view<const double, cuda> row_scale, matrix_view<T, cuda> w,
      const std::vector<merge_exception<std::type_identity_t<T>>>& record) {
    auto host =
        host_operands(ctx, b, a, row_scale, as_const(w), "lowrank::ops<cuda>::unmerge_low_rank");
    context<cpu> cpu_ctx;
    cpu_adapter_ops::unmerge_low_rank<T>(cpu_ctx, s, view(std::as_const(host.b)),
                                         view(std::as_const(host.a)), host.scale(), view(host.w),
                                         record);
    cuda_core_ops::upload<T>(ctx, view(std::as_const(host.w)), w);
  }

 private:
  /// Host copies of the operands of a merge (contiguous).
  template <class T>
  struct merge_operands {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> w, b, a;
    Eigen::VectorXd c;
    [[nodiscard]] vector_view<const double, cpu> scale() const noexcept {
      return {c.data(), c.size()};
    }
  };

  /// Downloads W, B, A and the row scale c (queued, then one synchronisation).
  template <class T>
  static merge_operands<T> host_operands(context<cuda>& ctx, matrix_view<const T, cuda> b,
                                         matrix_view<const T, cuda> a,
                                         vector_view<const double, cuda> row_scale,
                                         matrix_view<const T, cuda> w, const char* call) {
    merge_operands<T> host;
    host.w.resize(w.rows(), w.cols());
    host.b.resize(b.rows(), b.cols());
    host.a.resize(a.rows(), a.cols());
    host.c.resize(row_scale.size());
    const auto down = [&](const auto* src, index_t ld, auto* dst, index_t rows, index_t cols) {
      copy_2d(src, ld, dst, rows, rows, cols, cudaMemcpyDeviceToHost, ctx.stream(), call);
    };
    down(w.data(), w.ld(), host.w.data(), w.rows(), w.cols());
    down(b.data(), b.ld(), host.b.data(), b.rows(), b.cols());
    down(a.data(), a.ld(), host.a.data(), a.rows(), a.cols());
    down(row_scale.data(), row_scale.size(), host.c.data(), row_scale.size(), index_t{1});
    ctx.synchronize();
    return host;
  }
};

}  // namespace lowrank::detail
