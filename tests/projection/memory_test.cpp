// The memory the projection family states against what it allocates: every
// allocation of this test executable is counted in bytes (malloc through the
// linker's --wrap=malloc, and operator new, aligned or not), so a test can
// bound what a refresh or a step takes. A sum of allocations bounds the peak
// from above.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <atomic>
#include <cstdlib>
#include <new>

#include "lowrank/backend/cpu/ops.hpp"
#include "lowrank/projection/projected_adam.hpp"
#include "lowrank/projection/projector.hpp"
#include "support/test_matrices.hpp"

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace {
std::atomic<long> allocated{0};
}  // namespace
extern "C" void* __real_malloc(std::size_t size);   // NOLINT(bugprone-reserved-identifier)
extern "C" void* __wrap_malloc(std::size_t size) {  // NOLINT(bugprone-reserved-identifier)
  allocated.fetch_add(long(size), std::memory_order_relaxed);
  return __real_malloc(size);
}
void* operator new(std::size_t size) {
  allocated.fetch_add(long(size), std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t align) {
  allocated.fetch_add(long(size), std::memory_order_relaxed);
  if (void* p = std::aligned_alloc(std::size_t(align), (size + std::size_t(align) - 1) /
                                                           std::size_t(align) * std::size_t(align)))
    return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace lowrank::test::memory_tests {
namespace {

using matf = Eigen::MatrixXf;

/// Bytes allocated while f() runs.
template <class F>
long bytes_of(F&& f) {
  const long before = allocated.load();
  f();
  return allocated.load() - before;
}

// A refresh takes at most what refresh_workspace_bytes() says (warm and
// random, and the randomized SVD: far below one copy of G), and a step at
// most step_workspace_bytes() once the context's workspace is warm.
TEST(projection_memory, refresh_and_step_take_what_they_state) {
  context<cpu> ctx(1);
  const index_t m = 600, n = 400, r = 8;
  const matf g = make_matrix(Eigen::VectorXd::LinSpaced(n, 1, 0.01), m, n, 3).cast<float>();
  const long gradient = long(sizeof(float)) * m * n;
  for (const auto method :
       {refresh_method::warm, refresh_method::random, refresh_method::randomized}) {
    projector<float> p(m, n, {.rank = r, .method = method, .update_gap = 1});
    p.refresh(ctx, as_const(view(g)));
    p.refresh(ctx, as_const(view(g)));  // the workspace arena is sized now
    const long used = bytes_of([&] { p.refresh(ctx, as_const(view(g))); });
    SCOPED_TRACE(int(method));
    EXPECT_LE(used, long(p.refresh_workspace_bytes()));
    EXPECT_LT(used, gradient);  // no copy of G
    if (method == refresh_method::warm) {
      // (m + n) r scalars for the two products, the new basis, O(r^2).
      EXPECT_LT(used, long(sizeof(float)) * (m + 2 * n) * r + 16384);
    }
  }
  // The exact SVD copies G once (and takes its thin factors).
  projector<float> exact(m, n, {.rank = r, .method = refresh_method::exact});
  exact.refresh(ctx, as_const(view(g)));
  const long used = bytes_of([&] { exact.refresh(ctx, as_const(view(g))); });
  EXPECT_LE(used, long(exact.refresh_workspace_bytes()));

  matf w = matf::Zero(m, n);
  projected_adam<float> opt({.lr = 1e-3});
  const long added = bytes_of([&] {
    opt.add(ctx, view(w), {.rank = r, .method = refresh_method::warm, .update_gap = 1000});
  });
  // The moments, 2 m r floats, and the slot's bookkeeping.
  EXPECT_GE(added, long(2 * sizeof(float)) * m * r);
  EXPECT_LE(added, long(2 * sizeof(float)) * m * r + 4096);
  opt.step(ctx, 0, as_const(view(g)));
  opt.step(ctx, 0, as_const(view(g)));
  // A step without refresh allocates nothing once the workspace is warm.
  EXPECT_EQ(bytes_of([&] { opt.step(ctx, 0, as_const(view(g))); }), 0);
  EXPECT_EQ(opt.state_bytes(), sizeof(float) * std::size_t(2 * m * r + n * r + r * r));
}

}  // namespace
}  // namespace lowrank::test::memory_tests
