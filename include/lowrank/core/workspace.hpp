#pragma once
/// @file
/// Scratch memory of a context (internal; docs/architecture.md, "Backends"):
/// a stack of frames over memory kept across calls, so that an operation
/// neither allocates after warm-up nor hands out memory another live request
/// still uses.
///
/// An operation opens a frame (`auto ws = ctx.workspace();`) and takes typed
/// pieces from it (`T* x = ws.take<T>(n);`). The pieces of one frame never
/// overlap one another, nor those of any frame open around it (an operation
/// that calls another keeps its own pieces valid: the callee's frame lies
/// above). Closing a frame (its destructor) returns its pieces for reuse by
/// the next frame, so a piece is valid exactly while its frame is open.
/// Taking never moves memory that is in use: when the current block is full
/// the arena adds one of at least its whole capacity, and when the outermost
/// frame opens next, the blocks are merged into one; after a first pass
/// through a sequence of operations, the same sequence allocates nothing.
///
/// The memory comes from an allocator (`allocate(bytes)`, `deallocate(p,
/// bytes)`): host memory on the CPU, stream-ordered device memory on CUDA
/// (freed in stream order, so work still queued on the stream keeps it).
/// Pieces are 256-byte aligned. An arena is used by one thread at a time, as
/// its context is.

#include <algorithm>
#include <cstddef>
#include <new>
#include <utility>
#include <vector>

#include "lowrank/core/config.hpp"

namespace lowrank::detail {

/// Host memory for a workspace arena.
struct host_allocator {
  [[nodiscard]] void* allocate(std::size_t bytes) {
    return ::operator new (bytes, std::align_val_t{256});
  }
  void deallocate(void* p, std::size_t /*bytes*/) noexcept {
    ::operator delete (p, std::align_val_t{256});
  }
};

template <class Allocator>
class workspace_arena {
 public:
  /// The alignment of every piece, in bytes.
  static constexpr std::size_t alignment = 256;

  /// A frame of the arena: the pieces taken from it are valid, and overlap
  /// nothing else in use, until it closes (see the file comment).
  class frame {
   public:
    explicit frame(workspace_arena& arena) noexcept
        : arena_(&arena), block_(arena.block_), offset_(arena.offset_) {
      ++arena.depth_;
    }
    frame(const frame&) = delete;
    frame& operator=(const frame&) = delete;
    ~frame() { arena_->close(block_, offset_); }

    /// `count` uninitialised elements of T (at least one element's room).
    template <class T>
    [[nodiscard]] T* take(std::size_t count) {
      return static_cast<T*>(arena_->take(count * sizeof(T)));
    }

   private:
    workspace_arena* arena_;
    std::size_t block_;
    std::size_t offset_;
  };

  explicit workspace_arena(Allocator allocator = Allocator()) : allocator_(std::move(allocator)) {}
  workspace_arena(const workspace_arena&) = delete;
  workspace_arena& operator=(const workspace_arena&) = delete;
  ~workspace_arena() { release(); }

  /// The bytes the arena holds.
  [[nodiscard]] std::size_t capacity() const noexcept {
    std::size_t total = 0;
    for (const auto& b : blocks_) total += b.size;
    return total;
  }
  /// How many allocations the arena has made so far.
  [[nodiscard]] std::size_t allocations() const noexcept { return allocations_; }
  /// How many frames are open.
  [[nodiscard]] int depth() const noexcept { return depth_; }

  /// Frees every block (no frame may be open).
  void release() noexcept {
    LOWRANK_ASSERT(depth_ == 0);
    for (auto& b : blocks_) allocator_.deallocate(b.data, b.size);
    blocks_.clear();
    block_ = 0;
    offset_ = 0;
  }

 private:
  struct chunk {
    void* data;
    std::size_t size;
  };

  [[nodiscard]] static std::size_t round_up(std::size_t bytes) noexcept {
    return (bytes + alignment - 1) / alignment * alignment;
  }

  void* take(std::size_t bytes) {
    bytes = round_up(bytes == 0 ? 1 : bytes);
    // The outermost frame's first piece: merge the blocks an earlier pass
    // grew into one, so that the same pass now fits in a single block.
    if (depth_ == 1 && block_ == 0 && offset_ == 0 && blocks_.size() > 1) {
      const std::size_t total = capacity();
      release_blocks();
      push_block(total);
    }
    while (block_ < blocks_.size()) {
      if (blocks_[block_].size - offset_ >= bytes) {
        void* piece = static_cast<std::byte*>(blocks_[block_].data) + offset_;
        offset_ += bytes;
        return piece;
      }
      // The blocks above the current one are unused (frames are a stack).
      if (block_ + 1 < blocks_.size() && blocks_[block_ + 1].size < bytes) {
        trim_above(block_);
      }
      if (block_ + 1 >= blocks_.size()) break;
      ++block_;
      offset_ = 0;
    }
    // Grow geometrically, never moving the blocks in use.
    push_block(std::max(bytes, capacity()));
    block_ = blocks_.size() - 1;
    offset_ = bytes;
    return blocks_.back().data;
  }

  void close(std::size_t block, std::size_t offset) noexcept {
    --depth_;
    block_ = block;
    offset_ = offset;
  }

  void push_block(std::size_t bytes) {
    blocks_.reserve(blocks_.size() + 1);
    void* data = allocator_.allocate(bytes);
    ++allocations_;
    blocks_.push_back({data, bytes});
  }

  void trim_above(std::size_t keep) noexcept {
    while (blocks_.size() > keep + 1) {
      allocator_.deallocate(blocks_.back().data, blocks_.back().size);
      blocks_.pop_back();
    }
  }

  void release_blocks() noexcept {
    for (auto& b : blocks_) allocator_.deallocate(b.data, b.size);
    blocks_.clear();
  }

  Allocator allocator_;
  std::vector<chunk> blocks_;
  std::size_t block_ = 0;   // the block the next piece comes from
  std::size_t offset_ = 0;  // its first free byte
  int depth_ = 0;
  std::size_t allocations_ = 0;
};

}  // namespace lowrank::detail
