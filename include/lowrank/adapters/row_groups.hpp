#pragma once
/// @file
/// The rows of a mixed batch grouped by adapter (internal; multi_lora and
/// shared_a_lora, adapters/multi_lora.hpp and adapters/shared_a_lora.hpp):
/// the checks of per-row adapter ids and the grouping of the rows into one
/// contiguous segment per adapter (SGMV's segments).

#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/core/matrix_view.hpp"

namespace lowrank {

namespace detail {

/// Throws invalid_argument unless there are n ids, each -1 or in [0, adapters).
inline void check_adapter_ids(const char* fn, std::span<const std::int32_t> ids, index_t n,
                              index_t adapters) {
  if (index_t(ids.size()) != n) {
    throw_invalid_argument(fn, "ids.size()", ids.size(),
                           "N = x.rows() = " + std::to_string(n) + " (one id per row)");
  }
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < -1 || ids[i] >= adapters) {
      throw_invalid_argument(
          fn, ("ids[" + std::to_string(i) + "]").c_str(), ids[i],
          "-1 (base only) or an adapter id in [0, " + std::to_string(adapters) + ")");
    }
  }
}

/// The adapters of a multi-adapter layer, by int32 id (0, 1, ...).
template <class Entry>
class adapter_list {
 public:
  [[nodiscard]] index_t size() const noexcept { return index_t(entries_.size()); }
  /// Entry `id`. @throws lowrank::invalid_argument for an id not in [0, size()).
  [[nodiscard]] Entry& at(index_t id, const char* fn) {
    check(id, fn);
    return entries_[std::size_t(id)];
  }
  [[nodiscard]] const Entry& at(index_t id, const char* fn) const {
    check(id, fn);
    return entries_[std::size_t(id)];
  }
  /// Entry `id`, unchecked.
  [[nodiscard]] Entry& operator[](index_t id) noexcept { return entries_[std::size_t(id)]; }
  [[nodiscard]] auto begin() noexcept { return entries_.begin(); }
  [[nodiscard]] auto end() noexcept { return entries_.end(); }

  /// Throws invalid_argument when no further int32 id is available.
  void require_room(const char* fn) const {
    if (entries_.size() >= std::size_t(std::numeric_limits<std::int32_t>::max())) {
      throw_invalid_argument(fn, "this", "a layer with 2^31 - 1 adapters",
                             "fewer adapters (ids are int32)");
    }
  }
  /// Appends an entry (after require_room()); returns its id.
  std::int32_t push(Entry&& entry) {
    entries_.push_back(std::move(entry));
    return static_cast<std::int32_t>(entries_.size() - 1);
  }

 private:
  void check(index_t id, const char* fn) const {
    if (id < 0 || id >= size()) {
      throw_invalid_argument(fn, "id", id, "an adapter id in [0, " + std::to_string(size()) + ")");
    }
  }
  std::vector<Entry> entries_;
};

/// The rows of a batch grouped by adapter (SGMV segments): a stable counting
/// sort of the ids on the host into a permutation that lists the rows of
/// adapter 0, then those of adapter 1, ... (rows with id -1 left out), and a
/// copy of it in the backend's memory. No allocation after the first build
/// with a given N and number of adapters.
template <class Backend>
class row_groups {
 public:
  /// Checks `ids` (n entries, each -1 or in [0, adapters)), then groups them.
  /// @throws lowrank::invalid_argument for bad ids (the grouping unchanged).
  void build(context<Backend>& ctx, const char* fn, std::span<const std::int32_t> ids, index_t n,
             index_t adapters) {
    check_adapter_ids(fn, ids, n, adapters);
    offsets_.assign(std::size_t(adapters) + 1, 0);
    for (const std::int32_t id : ids) {
      if (id >= 0) ++offsets_[std::size_t(id) + 1];
    }
    for (index_t a = 0; a < adapters; ++a) offsets_[a + 1] += offsets_[a];
    cursor_.assign(offsets_.begin(), offsets_.end() - 1);
    if (index_t(host_.size()) < n) host_.resize(std::size_t(n));
    for (index_t i = 0; i < n; ++i) {
      const std::int32_t id = ids[std::size_t(i)];
      if (id >= 0) host_[std::size_t(cursor_[std::size_t(id)]++)] = i;
    }
    adapted_ = offsets_.back();
    if (device_.size() < n) device_ = vector<index_t, Backend>(ctx, n);
    if (adapted_ > 0) {
      ops<Backend>::upload_indices(ctx, vector_view<const index_t, cpu>(host_.data(), adapted_),
                                   device_.view().segment(0, adapted_));
    }
  }

  /// Calls f(a, first, count) for every adapter a with rows in the batch:
  /// its segment is rows [first, first + count) of the permutation.
  template <class F>
  void for_each_segment(F&& f) const {
    for (index_t a = 0; a < groups(); ++a) {
      if (count(a) > 0) f(a, offset(a), count(a));
    }
  }

  /// How many adapters the grouping covers (K at the time of build()).
  [[nodiscard]] index_t groups() const noexcept { return index_t(offsets_.size()) - 1; }
  /// How many rows have an adapter (id != -1).
  [[nodiscard]] index_t adapted() const noexcept { return adapted_; }
  /// Where adapter a's segment starts in the permutation, and its length.
  [[nodiscard]] index_t offset(index_t a) const noexcept { return offsets_[std::size_t(a)]; }
  [[nodiscard]] index_t count(index_t a) const noexcept {
    return offsets_[std::size_t(a) + 1] - offsets_[std::size_t(a)];
  }
  /// The permutation (adapted() entries) in the backend's memory.
  [[nodiscard]] vector_view<const index_t, Backend> rows() noexcept {
    return device_.view().segment(0, adapted_);
  }
  [[nodiscard]] std::size_t bytes() const noexcept {
    return (host_.capacity() + std::size_t(device_.size()) + offsets_.capacity() +
            cursor_.capacity()) *
           sizeof(index_t);
  }

 private:
  std::vector<index_t> offsets_{0};
  std::vector<index_t> cursor_;
  std::vector<index_t> host_;
  vector<index_t, Backend> device_;
  index_t adapted_ = 0;
};

}  // namespace detail

}  // namespace lowrank
