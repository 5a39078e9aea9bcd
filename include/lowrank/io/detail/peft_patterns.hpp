#pragma once
/// @file
/// PEFT's rank_pattern / alpha_pattern matching (internal): the keys compiled as
/// `peft.utils.other.get_pattern_key` uses them (by lowrank/io/detail/peft_regex.hpp: linear
/// time, no backtracking), the first match for a module, and a resolver of a module's rank
/// and alpha that remembers which keys matched. The matching rules: see the file comment of
/// lowrank/io/peft.hpp.

#include <cstddef>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowrank/core/matrix_view.hpp"
#include "lowrank/io/detail/peft_config.hpp"
#include "lowrank/io/detail/peft_regex.hpp"
#include "lowrank/io/detail/safetensors_header.hpp"
#include "lowrank/io/peft_types.hpp"

namespace lowrank::io::detail {

/// One pattern key, compiled as PEFT's get_pattern_key uses it: re.match(rf"(.*\.)?(K)$", name).
struct peft_compiled_key {
  std::string key;
  peft_regex regex;
};

inline constexpr std::string_view peft_key_rule =
    "keys that are regular expressions (PEFT matches re.match(rf\"(.*\\.)?({key})$\", "
    "module))";

/// Compiles the keys of a pattern, in order.
template <class V>
std::vector<peft_compiled_key> peft_compile(const std::vector<std::pair<std::string, V>>& pattern,
                                            std::string_view field, const peft_failure& fail) {
  std::vector<peft_compiled_key> out;
  out.reserve(pattern.size());
  std::set<std::string_view> seen;
  for (const auto& [key, value] : pattern) {
    if (!seen.insert(key).second) {
      fail(std::string(field) + " with the key " + safetensors_quote(key) + " twice",
           "distinct keys");
    }
    const std::string quoted = std::string(field) + " with the key " + safetensors_quote(key);
    if (key.size() > peft_max_name) {
      fail(quoted + " of " + std::to_string(key.size()) + " bytes",
           "keys of at most " + std::to_string(peft_max_name) + " bytes");
    }
    try {
      out.push_back({key, peft_regex(key)});
    } catch (const peft_regex_error& e) {
      const std::string where = " at position " + std::to_string(e.position);
      if (e.unsupported) {
        fail(quoted + ", which uses " + e.what + where,
             "keys in lowrank's subset of Python regular expressions: characters, ., [...], "
             "escapes such as \\. \\d \\w \\s, groups (...) (?:...), |, * + ? {m,n}, ^ and $ "
             "(no backreferences, lookaround or flags)");
      }
      fail(quoted + ", which is not a regular expression (" + e.what + where + ")", peft_key_rule);
    }
  }
  return out;
}

/// PEFT's get_pattern_key: the index of the first key that matches `module`; failing that,
/// a key equal to `module` (get_pattern_key returns the module name itself, which the
/// pattern's dict may hold); otherwise none. Marks in `used` every key that matches, not
/// only the first (PEFT's "did not match any targeted module" warning counts a key as
/// matched when its regular expression matches a module).
inline std::optional<std::size_t> peft_match(const std::vector<peft_compiled_key>& keys,
                                             const std::string& module, std::vector<bool>& used,
                                             std::string_view field, const peft_failure& fail) {
  std::optional<std::size_t> first;
  for (std::size_t k = 0; k < keys.size(); ++k) {
    bool matched = false;
    try {
      matched = keys[k].regex.matches(module);
    } catch (const peft_regex_error& e) {
      fail(std::string(field) + " with the key " + safetensors_quote(keys[k].key) +
               ", which uses " + e.what + " (" + safetensors_quote(module) + ")",
           "ASCII module names, or keys without \\d, \\w and \\s");
    }
    if (matched) {
      used[k] = true;
      if (!first) first = k;
    }
  }
  if (first) return first;
  for (std::size_t k = 0; k < keys.size(); ++k) {
    if (keys[k].key == module) {
      used[k] = true;
      return k;
    }
  }
  return std::nullopt;
}

/// The config's patterns compiled once, resolving a module's rank and alpha.
class peft_resolver {
 public:
  peft_resolver(const peft_config& config, const peft_failure& fail)
      : config_(&config),
        fail_(fail),
        rank_keys_(peft_compile(config.rank_pattern, "rank_pattern", fail)),
        alpha_keys_(peft_compile(config.alpha_pattern, "alpha_pattern", fail)),
        rank_used_(rank_keys_.size(), false),
        alpha_used_(alpha_keys_.size(), false) {}

  index_t rank(const std::string& module) {
    const std::optional<std::size_t> k =
        peft_match(rank_keys_, module, rank_used_, "rank_pattern", fail_);
    if (!k) return config_->r;
    return config_->rank_pattern[*k].second;
  }

  double alpha(const std::string& module) {
    const std::optional<std::size_t> k =
        peft_match(alpha_keys_, module, alpha_used_, "alpha_pattern", fail_);
    if (!k) return config_->lora_alpha;
    return config_->alpha_pattern[*k].second;
  }

  /// Fails for the first key that matched none of the modules resolved so far (PEFT warns:
  /// "The following rank_pattern keys did not match any targeted module").
  void require_all_used(std::size_t modules, const peft_failure& fail) const {
    const auto check = [&](const std::vector<peft_compiled_key>& keys,
                           const std::vector<bool>& used, std::string_view field) {
      for (std::size_t k = 0; k < keys.size(); ++k) {
        if (!used[k]) {
          fail(std::string(field) + " key " + safetensors_quote(keys[k].key) +
                   ", which matches none of its " + std::to_string(modules) + " modules",
               "pattern keys that each match a module (PEFT's get_pattern_key: "
               "re.match(rf\"(.*\\.)?({key})$\", module))");
        }
      }
    };
    check(rank_keys_, rank_used_, "rank_pattern");
    check(alpha_keys_, alpha_used_, "alpha_pattern");
  }

 private:
  const peft_config* config_;
  peft_failure fail_;
  std::vector<peft_compiled_key> rank_keys_;
  std::vector<peft_compiled_key> alpha_keys_;
  std::vector<bool> rank_used_;
  std::vector<bool> alpha_used_;
};

}  // namespace lowrank::io::detail
