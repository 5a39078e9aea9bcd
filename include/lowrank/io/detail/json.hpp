#pragma once
/// @file
/// JSON text parsed with the keys of every object checked distinct (internal): Python's json
/// keeps the last of two equal keys and nlohmann's ordered_json the first, so a file with a
/// key twice would read differently in PyTorch and here. Used by the PEFT config and the
/// checkpoint index readers.

#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace lowrank::io::detail {

/// Whether JSON text nests objects and arrays deeper than `limit`, counted on the text
/// (strings skipped) before any parser recurses or builds anything. Text that is not JSON
/// is the parser's to reject.
inline bool json_text_nests_deeper(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

/// A parsed document, and the first key found twice in one object, if any.
template <class Json>
struct json_document {
  Json value;
  std::optional<std::string> duplicate;
};

/// Parses `text` with Json::parse (its exceptions propagate) and reports a repeated key.
template <class Json>
json_document<Json> parse_json_unique_keys(const std::string& text) {
  json_document<Json> out;
  std::vector<std::set<std::string>> open;
  const auto unique_keys = [&](int, nlohmann::json::parse_event_t event, Json& parsed) {
    using event_t = nlohmann::json::parse_event_t;
    if (event == event_t::object_start) {
      open.emplace_back();
    } else if (event == event_t::object_end) {
      if (!open.empty()) open.pop_back();
    } else if (event == event_t::key && !open.empty()) {
      const std::string& key = parsed.template get_ref<const std::string&>();
      if (!open.back().insert(key).second && !out.duplicate) out.duplicate = key;
    }
    return true;
  };
  out.value = Json::parse(text, unique_keys);
  return out;
}

}  // namespace lowrank::io::detail
