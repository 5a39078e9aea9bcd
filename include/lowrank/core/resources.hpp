#pragma once
/// @file
/// Per-family resources of a context (internal; docs/architecture.md,
/// "Backends"): a library handle, a plan cache or a persistent buffer that a
/// family's backend part needs, created on first use and owned by the
/// context, so that core and the context itself never name a family's
/// resources. `ctx.resource<R>()` returns the context's R, constructing it
/// as `R(ctx)` on the first call (an R bound to a CUDA context binds itself
/// to the context's stream there); the resources are destroyed with the
/// context, in the reverse order of their creation and before what the
/// context owns itself (its stream, its handles).

#include <memory>
#include <utility>
#include <vector>

namespace lowrank::detail {

class resource_registry {
 public:
  resource_registry() = default;
  resource_registry(const resource_registry&) = delete;
  resource_registry& operator=(const resource_registry&) = delete;
  resource_registry(resource_registry&& other) noexcept
      : entries_(std::exchange(other.entries_, {})) {}
  resource_registry& operator=(resource_registry&& other) noexcept {
    if (this != &other) {
      clear();
      entries_ = std::exchange(other.entries_, {});
    }
    return *this;
  }
  ~resource_registry() { clear(); }

  /// The registry's R, made by `make()` (which returns an R) on first use.
  template <class R, class Make>
  [[nodiscard]] R& get(Make&& make) {
    for (const auto& e : entries_) {
      if (e.key == &key<R>) return *static_cast<R*>(e.object);
    }
    // R(make()) from a prvalue: R need not be movable.
    std::unique_ptr<R> made(new R(make()));
    entries_.reserve(entries_.size() + 1);
    R* object = made.release();
    entries_.push_back({&key<R>, object, [](void* p) noexcept { delete static_cast<R*>(p); }});
    return *object;
  }

  /// Whether the registry holds an R.
  template <class R>
  [[nodiscard]] bool contains() const noexcept {
    for (const auto& e : entries_) {
      if (e.key == &key<R>) return true;
    }
    return false;
  }

  /// Destroys every resource, the last created first.
  void clear() noexcept {
    while (!entries_.empty()) {
      entries_.back().destroy(entries_.back().object);
      entries_.pop_back();
    }
  }

 private:
  /// One address per type, the same in every translation unit.
  template <class R>
  static constexpr char key = 0;

  struct entry {
    const void* key;
    void* object;
    void (*destroy)(void*) noexcept;
  };
  std::vector<entry> entries_;
};

}  // namespace lowrank::detail
