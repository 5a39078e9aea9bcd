#pragma once
/// @file
/// PEFT's adapter_config.json (internal): parsing its text into a peft_config, the checks
/// of a config that do not depend on the modules, and the JSON text the writer emits; with
/// the failure type and the message helpers the PEFT reader and writer share. The rules:
/// see the file comment of lowrank/io/peft.hpp.

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/io/detail/files.hpp"
#include "lowrank/io/detail/json.hpp"
#include "lowrank/io/detail/safetensors_header.hpp"
#include "lowrank/io/peft_types.hpp"

namespace lowrank::io::detail {

using peft_ordered_json = nlohmann::ordered_json;

inline constexpr std::string_view peft_config_name = "adapter_config.json";

/// The longest module name and pattern key, in bytes (a real one is under 200).
inline constexpr std::size_t peft_max_name = 4096;

/// The deepest nesting of objects and arrays in adapter_config.json (PEFT's own fields nest 3
/// deep): the document is copied and written recursively, so deeper ones are refused first.
inline constexpr int peft_max_depth = 64;

/// Whether a JSON value nests objects and arrays deeper than `limit` (itself at depth 1),
/// walked without recursion.
template <class Json>
bool peft_value_nests_deeper(const Json& value, int limit) {
  std::vector<std::pair<const Json*, int>> pending{{&value, 1}};
  while (!pending.empty()) {
    const auto [v, depth] = pending.back();
    pending.pop_back();
    if (!v->is_structured()) continue;
    if (depth > limit) return true;
    for (const Json& child : *v) pending.emplace_back(&child, depth + 1);
  }
  return false;
}

/// Throws lowrank::invalid_argument for `function` and `argument` with the value
/// "<subject> <context><found>" (no space before a `found` that starts with ','), like
/// fail_with, but as a type whose call operator is [[noreturn]].
struct peft_failure {
  std::string_view function;
  std::string_view argument;
  std::string subject;
  std::string context;

  [[noreturn]] void operator()(const std::string& found, std::string_view expected) const {
    std::string value = subject;
    if (!(context.empty() && found.starts_with(','))) value += ' ';
    value += context;
    value += found;
    lowrank::detail::throw_invalid_argument(function, argument, value, expected);
  }

  /// The same failure with `more` appended to the context.
  [[nodiscard]] peft_failure in(std::string_view more) const {
    peft_failure out = *this;
    out.context += more;
    return out;
  }
};

/// The config fields peft_config holds itself (never in `extra`).
inline bool peft_owned_key(std::string_view key) {
  return key == "r" || key == "lora_alpha" || key == "lora_dropout" || key == "use_rslora" ||
         key == "use_dora" || key == "rank_pattern" || key == "alpha_pattern";
}

inline std::string peft_number(double x) {
  std::ostringstream out;
  out.precision(17);
  out << x;
  return out.str();
}

/// A JSON value as it can be shown in a message.
template <class Json>
std::string peft_json_text(const Json& value) {
  return printable(value.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace), 80);
}

/// A module name that PEFT can address: non-empty dot-separated components.
inline bool peft_valid_module_name(std::string_view name) {
  if (name.empty() || name.front() == '.' || name.back() == '.') return false;
  return name.find("..") == std::string_view::npos;
}

/// The checks of a config that do not depend on the modules: values in range, `extra` an
/// object without the fields peft_config holds, and no LoRA variant lowrank does not read.
/// `fail`'s context names where the fields are ("config." or "whose adapter_config.json has ").
inline void peft_check_config(const peft_config& config, const peft_failure& fail) {
  if (config.r < 1) fail("r " + std::to_string(config.r), "r >= 1");
  if (!std::isfinite(config.lora_alpha)) {
    fail("lora_alpha " + peft_number(config.lora_alpha), "a finite lora_alpha");
  }
  if (!(config.lora_dropout >= 0 && config.lora_dropout <= 1)) {
    fail("lora_dropout " + peft_number(config.lora_dropout), "0 <= lora_dropout <= 1");
  }
  for (const auto& [key, value] : config.rank_pattern) {
    if (value < 1) {
      fail("rank_pattern[" + safetensors_quote(key) + "] " + std::to_string(value), "ranks >= 1");
    }
  }
  for (const auto& [key, value] : config.alpha_pattern) {
    if (!std::isfinite(value)) {
      fail("alpha_pattern[" + safetensors_quote(key) + "] " + peft_number(value), "finite alphas");
    }
  }
  for (const std::string& target : config.target_modules) {
    if (target.empty()) fail("target_modules with an empty name", "non-empty names");
  }
  if (config.extra.is_null()) return;
  // extra is the root object of the file, less peft_config's own fields.
  if (peft_value_nests_deeper(config.extra, peft_max_depth)) {
    fail("extra nesting objects and arrays more than " + std::to_string(peft_max_depth) + " deep",
         "an adapter_config.json nested at most " + std::to_string(peft_max_depth) + " deep");
  }
  if (!config.extra.is_object()) {
    fail("extra " + peft_json_text(config.extra), "a JSON object (or null)");
  }
  for (const auto& [key, value] : config.extra.items()) {
    if (peft_owned_key(key)) {
      fail("extra with the field " + safetensors_quote(key),
           "that field in peft_config's own member, not in extra");
    }
  }
  if (const auto it = config.extra.find("peft_type"); it != config.extra.end()) {
    if (!it->is_string() || it->get<std::string>() != "LORA") {
      fail("peft_type " + peft_json_text(*it), "\"LORA\"");
    }
  }
  if (const auto it = config.extra.find("target_modules"); it != config.extra.end()) {
    if (!config.target_modules.empty()) {
      fail("target_modules both in target_modules and in extra", "one of them");
    }
    if (!it->is_string() && !it->is_null()) {
      fail("extra target_modules " + peft_json_text(*it),
           "a string or null in extra (a list belongs in target_modules)");
    }
  }
  if (const auto it = config.extra.find("bias"); it != config.extra.end() && !it->is_null()) {
    if (!it->is_string() || it->get<std::string>() != "none") {
      fail("bias " + peft_json_text(*it), "\"none\" (lowrank reads adapters without bias tensors)");
    }
  }
  // Variants whose tensors or forward pass differ from LoRA / DoRA.
  for (const std::string_view variant :
       {"lora_bias", "use_qalora", "use_bdlora", "alora_invocation_tokens", "target_parameters",
        "arrow_config", "kasa_config", "monteclora_config"}) {
    const auto it = config.extra.find(std::string(variant));
    if (it == config.extra.end()) continue;
    const bool off =
        it->is_null() || (it->is_boolean() && !it->get<bool>()) || (it->is_array() && it->empty());
    if (!off) {
      fail(std::string(variant) + " " + peft_json_text(*it),
           std::string(variant) +
               " null or false: lowrank reads plain LoRA and DoRA adapters, not this variant");
    }
  }
}

/// adapter_config.json's text as a peft_config (the JSON types; values are checked by
/// peft_check_config).
inline peft_config peft_parse_config(const std::string& text, const peft_failure& fail) {
  // A key twice in one object is an error (detail/json.hpp).
  std::optional<std::string> duplicate;
  if (json_text_nests_deeper(text, peft_max_depth)) {
    fail(std::string("whose ") + std::string(peft_config_name) +
             " nests objects and arrays more than " + std::to_string(peft_max_depth) + " deep",
         "an adapter_config.json nested at most " + std::to_string(peft_max_depth) +
             " deep (PEFT's LoraConfig nests 3)");
  }
  peft_ordered_json doc;
  try {
    auto parsed = parse_json_unique_keys<peft_ordered_json>(text);
    doc = std::move(parsed.value);
    duplicate = std::move(parsed.duplicate);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("whose ") + std::string(peft_config_name) + " is not JSON (" + e.what() + ")",
         "a JSON object (PEFT's LoraConfig)");
  }
  if (duplicate) {
    fail(std::string("whose ") + std::string(peft_config_name) + " has the key " +
             safetensors_quote(*duplicate) + " twice in one object",
         "JSON objects with distinct keys");
  }
  const std::string where = std::string("whose ") + std::string(peft_config_name) + " has ";
  if (!doc.is_object()) {
    fail(where + "the value " + peft_json_text(doc), "a JSON object (PEFT's LoraConfig)");
  }
  const auto integer = [&](const peft_ordered_json& v, const std::string& field) -> index_t {
    if (v.is_number_unsigned()) {
      const auto u = v.get<std::uint64_t>();
      if (u <= static_cast<std::uint64_t>(std::numeric_limits<index_t>::max())) {
        return static_cast<index_t>(u);
      }
    } else if (v.is_number_integer()) {
      return static_cast<index_t>(v.get<std::int64_t>());  // negative: checked later
    }
    fail(where + field + " = " + peft_json_text(v), "a JSON integer >= 1");
  };
  const auto number = [&](const peft_ordered_json& v, const std::string& field) -> double {
    if (!v.is_number()) fail(where + field + " = " + peft_json_text(v), "a JSON number");
    return v.get<double>();
  };
  const auto boolean = [&](const peft_ordered_json& v, const std::string& field) -> bool {
    if (!v.is_boolean()) fail(where + field + " = " + peft_json_text(v), "true or false");
    return v.get<bool>();
  };

  peft_config config;
  config.extra = nlohmann::json::object();
  bool has_type = false;
  for (const auto& [key, value] : doc.items()) {
    if (key == "r") {
      config.r = integer(value, "r");
    } else if (key == "lora_alpha") {
      config.lora_alpha = number(value, "lora_alpha");
    } else if (key == "lora_dropout") {
      config.lora_dropout = number(value, "lora_dropout");
    } else if (key == "use_rslora") {
      config.use_rslora = boolean(value, "use_rslora");
    } else if (key == "use_dora") {
      config.use_dora = boolean(value, "use_dora");
    } else if (key == "rank_pattern" || key == "alpha_pattern") {
      if (value.is_null()) continue;
      if (!value.is_object()) {
        fail(where + key + " = " + peft_json_text(value), "a JSON object of module patterns");
      }
      for (const auto& [pattern, v] : value.items()) {
        const std::string field = key + "[" + safetensors_quote(pattern) + "]";
        if (key == "rank_pattern") {
          config.rank_pattern.emplace_back(pattern, integer(v, field));
        } else {
          config.alpha_pattern.emplace_back(pattern, number(v, field));
        }
      }
    } else if (key == "target_modules" && value.is_array()) {
      for (const peft_ordered_json& name : value) {
        if (!name.is_string()) {
          fail(where + "target_modules = " + peft_json_text(value),
               "a list of strings, a string or null");
        }
        config.target_modules.push_back(name.get<std::string>());
      }
    } else {
      if (key == "peft_type") has_type = true;
      // ordered_json -> json: the same value (objects inside sort their keys, as PEFT's
      // json.dumps(sort_keys=True) does).
      config.extra[key] = nlohmann::json::parse(value.dump());
    }
  }
  if (!has_type) fail(where + "no peft_type", "\"peft_type\": \"LORA\"");
  return config;
}

/// The JSON text write_peft_adapter writes: PEFT's layout (json.dumps(indent=2,
/// sort_keys=True): sorted keys, two-space indent, ASCII with \u escapes), the patterns in
/// their matching order.
template <class T>
std::string peft_config_text(const peft_config& config,
                             const std::vector<peft_module<T>>& modules) {
  // An integral value as a JSON integer (PEFT's lora_alpha is an int), others as floats.
  const auto alpha_json = [](double x) {
    if (x == std::trunc(x) && std::fabs(x) < 9007199254740992.0) {
      return peft_ordered_json(static_cast<std::int64_t>(x));
    }
    return peft_ordered_json(x);
  };
  std::map<std::string, peft_ordered_json> fields;
  if (config.extra.is_object()) {
    for (const auto& [key, value] : config.extra.items()) {
      fields[key] = peft_ordered_json::parse(value.dump());
    }
  }
  if (!fields.contains("peft_type")) fields["peft_type"] = "LORA";
  fields["r"] = static_cast<std::int64_t>(config.r);
  fields["lora_alpha"] = alpha_json(config.lora_alpha);
  fields["lora_dropout"] = config.lora_dropout;
  fields["use_rslora"] = config.use_rslora;
  fields["use_dora"] = config.use_dora;
  peft_ordered_json ranks = peft_ordered_json::object();
  for (const auto& [key, value] : config.rank_pattern)
    ranks[key] = static_cast<std::int64_t>(value);
  fields["rank_pattern"] = std::move(ranks);
  peft_ordered_json alphas = peft_ordered_json::object();
  for (const auto& [key, value] : config.alpha_pattern) alphas[key] = alpha_json(value);
  fields["alpha_pattern"] = std::move(alphas);
  if (!config.target_modules.empty()) {
    fields["target_modules"] = config.target_modules;
  } else if (!fields.contains("target_modules")) {
    std::set<std::string> last;
    for (const peft_module<T>& m : modules) last.insert(m.name.substr(m.name.rfind('.') + 1));
    fields["target_modules"] = std::vector<std::string>(last.begin(), last.end());
  }
  peft_ordered_json doc = peft_ordered_json::object();
  for (auto& [key, value] : fields) doc[key] = std::move(value);
  return doc.dump(2, ' ', true);
}

}  // namespace lowrank::io::detail
