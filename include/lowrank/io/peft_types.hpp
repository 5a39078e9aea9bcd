#pragma once
/// @file
/// The public data types of lowrank/io/peft.hpp: a PEFT adapter's config (the
/// adapter_config.json fields lowrank uses), its scaling, one adapted module and a whole
/// adapter (the format and its rules: see lowrank/io/peft.hpp). Included by that header,
/// and by the config parser and the pattern matching in lowrank/io/detail/peft_config.hpp
/// and lowrank/io/detail/peft_patterns.hpp.

#include <Eigen/Core>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/core/matrix_view.hpp"

namespace lowrank::io {

/// The adapter_config.json fields lowrank uses. Everything else is kept in `extra` and
/// written back unchanged.
struct peft_config {
  index_t r = 8;            ///< the default rank ("r")
  double lora_alpha = 8;    ///< the default alpha ("lora_alpha")
  bool use_rslora = false;  ///< s = alpha / sqrt(r) instead of alpha / r
  bool use_dora = false;    ///< DoRA: every module has a magnitude vector
  double lora_dropout = 0;  ///< PEFT's dropout on the adapter input, in [0, 1]
  /// "target_modules" when it is a list of names. When the file has a string (a regular
  /// expression, or "all-linear") or null, this is empty and the value is in `extra`. The
  /// writer writes this list when it is not empty; when it is empty and `extra` has no
  /// "target_modules", it writes the sorted last components of the module names.
  std::vector<std::string> target_modules;
  /// Per-module ranks and alphas: (regular expression, value) in matching order (the first
  /// key that matches wins, as in PEFT; see the file comment of lowrank/io/peft.hpp). A list
  /// rather than a map, because the order decides between two keys that match one module.
  std::vector<std::pair<std::string, index_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  /// The other fields of adapter_config.json (peft_type, task_type, base_model_name_or_path,
  /// ...): a JSON object, or null for none. The writer adds "peft_type": "LORA" when absent.
  nlohmann::json extra = nlohmann::json::object();
};

/// s = alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT's `LoraLayer.update_layer`).
[[nodiscard]] inline double peft_scaling(double alpha, index_t rank, bool use_rslora) {
  const auto r = static_cast<double>(rank);
  return use_rslora ? alpha / std::sqrt(r) : alpha / r;
}

/// One adapted nn.Linear. write_peft_adapter requires `rank`, `alpha` and `use_rslora` to be
/// what the adapter's config gives the module (peft_rank, peft_alpha), as PEFT derives them
/// from the config when it loads the file.
template <class T>
struct peft_module {
  std::string name;         ///< module path without "base_model.model.", e.g. "layers.0.q_proj"
  index_t rank = 0;         ///< after rank_pattern
  double alpha = 0;         ///< after alpha_pattern
  bool use_rslora = false;  ///< the config's use_rslora
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> a;  ///< rank x in (lora_A.weight)
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> b;  ///< out x rank (lora_B.weight)
  Eigen::Matrix<T, Eigen::Dynamic, 1> magnitude;       ///< out entries with DoRA, else empty

  /// alpha / rank, or alpha / sqrt(rank) with use_rslora.
  [[nodiscard]] double scaling() const { return peft_scaling(alpha, rank, use_rslora); }
};

/// A whole adapter: its config and its modules (sorted by name when read).
template <class T>
struct peft_adapter {
  peft_config config;
  std::vector<peft_module<T>> modules;
};

}  // namespace lowrank::io
