#pragma once
/// @file
/// Whole model checkpoints in safetensors: one file, or a sharded checkpoint described by a
/// Hugging Face index (`model.safetensors.index.json`), read tensor by tensor through memory
/// maps so that a checkpoint larger than memory can be inspected and rewritten.
///
/// What `checkpoint::open(path)` accepts:
/// - a `.safetensors` file;
/// - an index file, a JSON object
///
///       {"metadata": {"total_size": 1234, ...},             optional, any JSON object
///        "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
///                       ...}}
///
///   whose shard names are plain file names or relative paths below the index's directory
///   (an absolute path or a `..` component is refused: an index must not reach outside its
///   checkpoint);
/// - a directory holding `model.safetensors.index.json` (preferred) or `model.safetensors`.
///
/// Rules, stricter than transformers' loader where a checkpoint could be read two ways:
/// every shard is a valid safetensors file (lowrank/io/safetensors.hpp); every tensor the
/// index names is in the shard it names; a shard holds no tensor the index does not name;
/// no tensor is in two shards; a key is not twice in one JSON object. `total_size` is not
/// checked (published checkpoints disagree on what it counts).
///
/// Memory: the tensor table and, per matrix() call, the converted tensor and the pages being
/// read (see safetensors_file::map); every shard stays mapped while the object lives.
/// Layout and conversions: as safetensors_file (a tensor [r, c] is an r x c matrix).

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowrank/core/error.hpp"
#include "lowrank/io/detail/files.hpp"
#include "lowrank/io/detail/json.hpp"
#include "lowrank/io/safetensors.hpp"

namespace lowrank::io {

/// The index file name transformers writes next to the shards.
inline constexpr std::string_view checkpoint_index_name = "model.safetensors.index.json";

/// A checkpoint of one or more safetensors files (the rules: see the file comment).
class checkpoint {
 public:
  /// One tensor: its name, its description in its shard, and the shard's position in files().
  struct entry {
    std::string name;
    tensor_info info;
    std::size_t shard = 0;
  };

  /// Opens a `.safetensors` file, an index JSON file, or a directory holding either (see
  /// the file comment); maps every shard and validates the whole checkpoint.
  ///
  /// @throws lowrank::invalid_argument (function `lowrank::io::checkpoint::open`, argument
  ///   `path`) when the path does not exist, a directory holds neither file, the index is
  ///   not JSON or breaks a rule (weight_map missing or not an object of strings, a key twice,
  ///   an absolute shard path or one with `..`), a shard is missing or not a valid
  ///   safetensors file (the message includes the safetensors reader's), or the index and
  ///   the shards disagree about a tensor.
  [[nodiscard]] static checkpoint open(const std::filesystem::path& path) {
    const detail::error_source source{"lowrank::io::checkpoint::open", "path",
                                      detail::quote_path(path)};
    constexpr std::string_view expected =
        "a .safetensors file, a model.safetensors.index.json, or a directory holding one";
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status)) {
      detail::fail_with(source, ", which does not exist", expected);
    }
    checkpoint out;
    if (std::filesystem::is_directory(status)) {
      if (std::filesystem::exists(path / checkpoint_index_name)) {
        out.open_index(path / checkpoint_index_name, source);
      } else if (std::filesystem::exists(path / "model.safetensors")) {
        out.open_single(path / "model.safetensors", source);
      } else {
        detail::fail_with(source,
                          ", a directory with neither " + std::string(checkpoint_index_name) +
                              " nor model.safetensors",
                          expected);
      }
    } else if (path.extension() == ".json") {
      out.open_index(path, source);
    } else {
      out.open_single(path, source);
    }
    std::sort(out.entries_.begin(), out.entries_.end(),
              [](const entry& a, const entry& b) { return a.name < b.name; });
    return out;
  }

  /// Every tensor, sorted by name.
  [[nodiscard]] const std::vector<entry>& tensors() const noexcept { return entries_; }

  /// The tensor `name`, or null.
  [[nodiscard]] const entry* find(std::string_view name) const {
    const auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                                     [](const entry& e, std::string_view n) { return e.name < n; });
    return it != entries_.end() && it->name == name ? &*it : nullptr;
  }

  [[nodiscard]] bool contains(std::string_view name) const { return find(name) != nullptr; }

  /// The files of the checkpoint (one, or the shards in the order the index first names
  /// them) and, for an index, the index file first is not among them: see index_file().
  [[nodiscard]] const std::vector<std::filesystem::path>& files() const noexcept { return files_; }

  /// The index file, or empty for a single file.
  [[nodiscard]] const std::filesystem::path& index_file() const noexcept { return index_; }

  /// The shard `k` of files().
  [[nodiscard]] const safetensors_file& shard(std::size_t k) const { return shards_.at(k); }

  /// A single file's `__metadata__`, or the index's "metadata" object (values as JSON text
  /// when they are not strings).
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept {
    return metadata_;
  }

  /// The tensor `name` as a matrix (safetensors_file::matrix; its pages are handed back
  /// after conversion).
  /// @throws lowrank::invalid_argument (function `lowrank::io::checkpoint::matrix`, argument
  ///   `name`) when there is no such tensor, and as safetensors_file::matrix otherwise.
  template <class T>
  requires std::same_as<T, float> || std::same_as<T, double>
  [[nodiscard]] Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> matrix(
      std::string_view name) const {
    return shards_[at(name, "lowrank::io::checkpoint::matrix").shard].template matrix<T>(name);
  }

  /// The tensor's raw bytes (safetensors_file::tensor_bytes), valid while this object lives.
  [[nodiscard]] std::span<const std::byte> tensor_bytes(std::string_view name) const {
    return shards_[at(name, "lowrank::io::checkpoint::tensor_bytes").shard].tensor_bytes(name);
  }

  /// Hands the pages of tensor `name` back to the system (safetensors_file::release).
  void release(std::string_view name) const {
    shards_[at(name, "lowrank::io::checkpoint::release").shard].release(name);
  }

  /// The number of elements of the largest tensor (for memory bounds).
  [[nodiscard]] std::int64_t largest_tensor_elements() const {
    std::int64_t most = 0;
    for (const entry& e : entries_) {
      std::int64_t n = 1;
      for (const std::int64_t d : e.info.shape) n *= d;
      most = std::max(most, n);
    }
    return most;
  }

  /// The total size of the tensors' data in bytes.
  [[nodiscard]] std::uint64_t data_bytes() const {
    std::uint64_t total = 0;
    for (const entry& e : entries_) total += e.info.end - e.info.begin;
    return total;
  }

 private:
  checkpoint() = default;

  const entry& at(std::string_view name, std::string_view function) const {
    const entry* e = find(name);
    if (e == nullptr) {
      lowrank::detail::throw_invalid_argument(
          function, "name",
          detail::safetensors_quote(name) + ", which is not a tensor of " + where(),
          "the name of one of its " + std::to_string(entries_.size()) + " tensors");
    }
    return *e;
  }

  std::string where() const { return detail::quote_path(index_.empty() ? files_.front() : index_); }

  /// Maps `file`; its errors become the checkpoint's, naming the file.
  static safetensors_file map_shard(const std::filesystem::path& file,
                                    const detail::error_source& source) {
    try {
      return safetensors_file::map(file);
    } catch (const invalid_argument& e) {
      detail::fail_with(
          source, " whose file " + detail::quote_path(file) + " is unusable (" + e.what() + ")",
          "valid safetensors files");
    }
  }

  void open_single(const std::filesystem::path& file, const detail::error_source& source) {
    shards_.push_back(map_shard(file, source));
    files_.push_back(file);
    metadata_ = shards_.front().metadata();
    for (const auto& [name, info] : shards_.front().tensors()) entries_.push_back({name, info, 0});
  }

  void open_index(const std::filesystem::path& file, const detail::error_source& source) {
    constexpr std::string_view expected_index =
        "a JSON object with a \"weight_map\" object of tensor names to shard files";
    index_ = file;
    const std::vector<std::byte> bytes =
        detail::read_file(file, source, "an existing, readable index file", "a readable file");
    const std::string text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    if (detail::json_text_nests_deeper(text, 64)) {
      detail::fail_with(source, ", whose JSON nests objects and arrays more than 64 deep",
                        expected_index);
    }
    nlohmann::json doc;
    std::optional<std::string> duplicate;
    try {
      auto parsed = detail::parse_json_unique_keys<nlohmann::json>(text);
      doc = std::move(parsed.value);
      duplicate = std::move(parsed.duplicate);
    } catch (const nlohmann::json::exception& e) {
      detail::fail_with(source, ", which is not JSON (" + std::string(e.what()) + ")",
                        expected_index);
    }
    if (duplicate) {
      detail::fail_with(
          source, " with the key " + detail::safetensors_quote(*duplicate) + " twice in one object",
          "JSON objects with distinct keys");
    }
    if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object()) {
      detail::fail_with(source, " without a \"weight_map\" object", expected_index);
    }
    if (doc.contains("metadata")) {
      if (!doc["metadata"].is_object() && !doc["metadata"].is_null()) {
        detail::fail_with(source, " with a \"metadata\" that is not an object",
                          "an object or null as \"metadata\"");
      }
      if (doc["metadata"].is_object()) {
        for (const auto& [key, value] : doc["metadata"].items()) {
          metadata_[key] = value.is_string() ? value.get<std::string>() : value.dump();
        }
      }
    }
    const std::filesystem::path dir = detail::directory_of(file);
    std::map<std::string, std::size_t> shard_of_file;
    std::map<std::string, std::size_t> listed;  // tensor -> shard
    for (const auto& [name, value] : doc["weight_map"].items()) {
      if (!value.is_string()) {
        detail::fail_with(source,
                          " whose weight_map gives the tensor " + detail::safetensors_quote(name) +
                              " the value " + value.dump(),
                          "a shard file name (a string) per tensor");
      }
      const std::string shard_name = value.get<std::string>();
      const std::filesystem::path relative(shard_name);
      const bool climbs = std::any_of(relative.begin(), relative.end(),
                                      [](const std::filesystem::path& p) { return p == ".."; });
      if (shard_name.empty() || relative.is_absolute() || climbs) {
        detail::fail_with(source,
                          " whose weight_map puts the tensor " + detail::safetensors_quote(name) +
                              " in " + detail::safetensors_quote(shard_name),
                          "shard paths relative to the index's directory, without '..'");
      }
      auto [it, added] = shard_of_file.emplace(shard_name, shards_.size());
      if (added) {
        files_.push_back(dir / relative);
        shards_.push_back(map_shard(files_.back(), source));
      }
      listed.emplace(name, it->second);
    }
    if (listed.empty()) {
      detail::fail_with(source, " whose weight_map is empty", "at least one tensor");
    }
    for (std::size_t k = 0; k < shards_.size(); ++k) {
      for (const auto& [name, info] : shards_[k].tensors()) {
        const auto it = listed.find(name);
        if (it == listed.end()) {
          detail::fail_with(source,
                            " whose shard " + detail::quote_path(files_[k]) + " holds the tensor " +
                                detail::safetensors_quote(name) + ", which the index does not list",
                            "an index that lists every tensor of its shards");
        }
        if (it->second != k) {
          detail::fail_with(source,
                            " whose shard " + detail::quote_path(files_[k]) + " holds the tensor " +
                                detail::safetensors_quote(name) + ", which the index puts in " +
                                detail::quote_path(files_[it->second]),
                            "every tensor in the shard the index names");
        }
        entries_.push_back({name, info, k});
      }
    }
    if (entries_.size() != listed.size()) {
      for (const auto& [name, k] : listed) {
        if (!shards_[k].contains(name)) {
          detail::fail_with(source,
                            " whose weight_map puts the tensor " + detail::safetensors_quote(name) +
                                " in " + detail::quote_path(files_[k]) + ", which does not hold it",
                            "every tensor of the index in the shard it names");
        }
      }
    }
  }

  std::vector<entry> entries_;
  std::vector<std::filesystem::path> files_;
  std::vector<safetensors_file> shards_;
  std::filesystem::path index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace lowrank::io
