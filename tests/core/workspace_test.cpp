// Scratch memory and per-family resources of a context (core/workspace.hpp,
// core/resources.hpp): pieces never alias a live request, memory in use
// never moves, a repeated sequence allocates nothing after its first pass,
// and resources are made once and destroyed in reverse order.

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "lowrank/lowrank.hpp"

namespace lowrank {
namespace workspace_tests {
namespace {

/// Host memory that counts what is live.
struct counting_allocator {
  std::size_t* live;
  [[nodiscard]] void* allocate(std::size_t bytes) {
    ++*live;
    return detail::host_allocator().allocate(bytes);
  }
  void deallocate(void* p, std::size_t bytes) noexcept {
    --*live;
    detail::host_allocator().deallocate(p, bytes);
  }
};
using arena = detail::workspace_arena<counting_allocator>;

bool disjoint(const std::byte* a, std::size_t na, const std::byte* b, std::size_t nb) {
  return a + na <= b || b + nb <= a;
}

TEST(workspace, pieces_of_live_frames_never_overlap_and_never_move) {
  std::size_t live = 0;
  {
    arena w(counting_allocator{&live});
    auto outer = arena::frame(w);
    auto* a = outer.take<std::byte>(1000);
    std::memset(a, 0xA5, 1000);
    {
      auto inner = arena::frame(w);
      auto* b = inner.take<double>(10);
      // Far beyond the first block: a new block, a untouched and in place.
      auto* c = inner.take<std::byte>(1 << 20);
      std::memset(c, 0x5A, 1 << 20);
      EXPECT_TRUE(disjoint(a, 1000, reinterpret_cast<std::byte*>(b), 80));
      EXPECT_TRUE(disjoint(a, 1000, c, 1 << 20));
      EXPECT_TRUE(disjoint(reinterpret_cast<std::byte*>(b), 80, c, 1 << 20));
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b) % arena::alignment, 0u);
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(c) % arena::alignment, 0u);
      EXPECT_EQ(w.depth(), 2);
    }
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(a[i], std::byte{0xA5});
    // The inner frame's memory is free again: the next piece reuses it.
    auto* d = outer.take<std::byte>(64);
    EXPECT_TRUE(disjoint(a, 1000, d, 64));
    EXPECT_EQ(w.depth(), 1);
  }
  EXPECT_EQ(live, 0u);  // the arena freed every block
}

TEST(workspace, a_repeated_sequence_allocates_nothing_after_its_first_pass) {
  std::size_t live = 0;
  arena w(counting_allocator{&live});
  const auto pass = [&] {
    auto f = arena::frame(w);
    (void)f.take<float>(3000);
    {
      auto g = arena::frame(w);
      (void)g.take<double>(50000);
      (void)g.take<int>(7);
    }
    (void)f.take<std::byte>(123456);
  };
  pass();
  pass();  // merges the first pass's blocks into one
  const std::size_t allocations = w.allocations();
  EXPECT_EQ(live, 1u);
  for (int i = 0; i < 5; ++i) pass();
  EXPECT_EQ(w.allocations(), allocations);
  EXPECT_GE(w.capacity(), 3000 * sizeof(float) + 50000 * sizeof(double));
}

TEST(workspace, contexts_hand_out_frames) {
  context<cpu> ctx(1);
  auto ws = ctx.workspace();
  float* x = ws.take<float>(100);
  double* y = ws.take<double>(100);
  EXPECT_TRUE(disjoint(reinterpret_cast<std::byte*>(x), 400, reinterpret_cast<std::byte*>(y), 800));
}

/// A resource that records its construction and destruction.
struct recorder {
  std::vector<std::string>* log;
  std::string name;
  recorder(std::vector<std::string>* l, std::string n) : log(l), name(std::move(n)) {
    log->push_back("make " + name);
  }
  recorder(const recorder&) = delete;
  recorder& operator=(const recorder&) = delete;
  ~recorder() { log->push_back("destroy " + name); }
};
struct first_resource : recorder {
  using recorder::recorder;
};
struct second_resource : recorder {
  using recorder::recorder;
};

TEST(resources, made_once_on_first_use_and_destroyed_in_reverse_order) {
  std::vector<std::string> log;
  {
    detail::resource_registry r;
    EXPECT_FALSE(r.contains<first_resource>());
    auto& a = r.get<first_resource>([&] { return first_resource(&log, "first"); });
    auto& b = r.get<second_resource>([&] { return second_resource(&log, "second"); });
    auto& again = r.get<first_resource>([&] { return first_resource(&log, "never"); });
    EXPECT_EQ(&a, &again);
    EXPECT_NE(static_cast<void*>(&a), static_cast<void*>(&b));
    EXPECT_TRUE(r.contains<second_resource>());
  }
  const std::vector<std::string> expected{"make first", "make second", "destroy second",
                                          "destroy first"};
  EXPECT_EQ(log, expected);
}

/// A family's resource bound to a CPU context, made as R(ctx).
struct plan_cache {
  int threads;
  explicit plan_cache(context<cpu>& ctx) : threads(ctx.threads()) {}
};

TEST(resources, a_context_makes_its_resources_from_itself) {
  context<cpu> ctx(2);
  auto& plans = ctx.resource<plan_cache>();
  EXPECT_EQ(plans.threads, 2);
  EXPECT_EQ(&plans, &ctx.resource<plan_cache>());
  context<cpu> moved = std::move(ctx);
  EXPECT_EQ(&plans, &moved.resource<plan_cache>());
}

}  // namespace
}  // namespace workspace_tests
}  // namespace lowrank
