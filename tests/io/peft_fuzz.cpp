// Fuzz target of PEFT's adapter_config.json parser and rank_pattern / alpha_pattern matcher
// (lowrank/io/detail/peft_config.hpp, peft_patterns.hpp, peft_regex.hpp). The first byte
// chooses the target:
// - even: the rest is adapter_config.json. It either parses into a config that passes the
//   checks, resolves every module to a rank >= 1 and a finite alpha and survives
//   write -> parse unchanged, or throws lowrank::invalid_argument naming the reader;
// - odd: the rest is "key\nmodule". The key either compiles or throws peft_regex_error at
//   a position inside the key; a compiled key gives the same answer as (?:key) and
//   (?:key)|a^ (a^ matches nothing), and one that matches `module` (without ^) matches "x." +
//   module too.
// A crash, a hang, a sanitizer report, any other exception or a broken property is a bug.
//
// libFuzzer (clang), with a scratch corpus directory first:
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined
//       -I include -I /usr/include/eigen3 tests/io/peft_fuzz.cpp -o peft_fuzz
//   ./peft_fuzz -max_total_time=60 corpus/
// Standalone, a deterministic mutation loop for any compiler (no libFuzzer):
//   g++ -std=c++20 -g -O1 -fsanitize=address,undefined -DLOWRANK_FUZZ_STANDALONE
//       -I include -I /usr/include/eigen3 tests/io/peft_fuzz.cpp -o peft_fuzz
//   ./peft_fuzz [--iterations=N] [--seed=S] [seed files...]    (N defaults to 20000)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "io_test_support.hpp"
#include "lowrank/io/peft.hpp"

namespace {

namespace detail = lowrank::io::detail;
using io_test::starts_with;

void require(bool ok, const char* what) { io_test::require("peft_fuzz", ok, what); }

// What the mutants reached, for the summary of the standalone driver.
std::size_t configs_valid = 0;
std::size_t keys_valid = 0;

const std::vector<std::string> modules = {
    "layers.0.q_proj", "model.layers.12.self_attn.v_proj", "q", "a.b", "x_proj", "0.1"};

void fuzz_config(std::string_view input) {
  const detail::peft_failure fail{"lowrank::io::read_peft_adapter", "dir", "\"fuzz\"", ""};
  try {
    const lowrank::io::peft_config config = detail::peft_parse_config(std::string(input), fail);
    detail::peft_check_config(config, fail.in("whose adapter_config.json has "));
    detail::peft_resolver resolver(config, fail.in("whose adapter_config.json has "));
    std::vector<lowrank::io::peft_module<float>> named;
    for (const std::string& module : modules) {
      require(resolver.rank(module) >= 1, "a rank below 1");
      require(std::isfinite(resolver.alpha(module)), "an alpha that is not finite");
      named.emplace_back().name = module;
    }
    // What the writer writes reads back as the same config.
    const std::string text = detail::peft_config_text(config, named);
    const lowrank::io::peft_config back = detail::peft_parse_config(text, fail);
    require(back.r == config.r && back.lora_alpha == config.lora_alpha &&
                back.lora_dropout == config.lora_dropout && back.use_rslora == config.use_rslora &&
                back.use_dora == config.use_dora,
            "a written config reads back with other values");
    require(back.rank_pattern == config.rank_pattern && back.alpha_pattern == config.alpha_pattern,
            "a written config reads back with other patterns");
    require(back.extra == config.extra, "a written config reads back with other extra fields");
    ++configs_valid;
  } catch (const lowrank::invalid_argument& e) {
    require(starts_with(e.what(), "lowrank::io::read_peft_adapter: argument 'dir' is \"fuzz\" "),
            "a config message does not name the function and argument");
  }
}

// The answer of `key` for `module`: 0, 1, or -1 when the key or the name is refused.
int answer(const std::string& key, std::string_view module) {
  try {
    return detail::peft_regex(key).matches(module) ? 1 : 0;
  } catch (const detail::peft_regex_error& e) {
    require(!e.what.empty(), "an error without a reason");
    require(e.position <= detail::peft_code_points(key).size(), "an error past the key");
    return -1;
  }
}

void fuzz_pattern(std::string_view input) {
  const std::size_t newline = std::min(input.find('\n'), input.size());
  const std::string key(input.substr(0, newline));
  const std::string_view module = input.substr(std::min(newline + 1, input.size()));
  const int plain = answer(key, module);
  if (plain < 0) return;
  ++keys_valid;
  require(answer("(?:" + key + ")", module) == plain, "(?:key) answers otherwise");
  require(answer("(?:" + key + ")|a^", module) == plain, "key|nothing answers otherwise");
  if (plain == 1 && key.find('^') == std::string::npos) {
    const std::string longer = "x." + std::string(module);
    require(answer(key, longer) == 1, "a match is lost after a prefix");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    fuzz_config(input);
  } else {
    fuzz_pattern(input);
  }
  return 0;
}

#ifdef LOWRANK_FUZZ_STANDALONE

namespace {

using buffer = io_test::fuzz_buffer;

buffer seed(char mode, std::string_view text) {
  buffer out = {static_cast<std::uint8_t>(mode)};
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

std::vector<buffer> builtin_seeds() {
  return {
      seed(0,
           R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
               "use_rslora": false, "use_dora": false, "target_modules": ["q_proj", "v_proj"],
               "rank_pattern": {"layers.1.q_proj": 2}, "alpha_pattern": {"v_proj": 16},
               "task_type": null, "loftq_config": {}, "layer_replication": [[0, 4], [2, 6]]})"),
      seed(0,
           R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16.5, "use_dora": true,
               "rank_pattern": {"model\\.layers\\.[0-9]+\\.mlp": 5, "q_proj|v_proj": 3},
               "alpha_pattern": {".*attn.*": 2}, "target_modules": ".*proj",
               "bias": "none", "auto_mapping": {"base_model_class": "Net"}})"),
      seed(0, R"({"peft_type": "LORA", "extra": [[[{"a": [1, 2.5e3, -0, "\u00e9"]}]]]})"),
      seed(1, "q_proj\nlayers.0.q_proj"),
      seed(1, "model\\.layers\\.\\d+\\.(q|v)_proj\nmodel.layers.12.v_proj"),
      seed(1, "(a*)*b\nx.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac"),
      seed(1, "[^.]{2,4}(?:_[a-z]+)?$\nblock.ab_cd"),
      seed(1, "^(?P<l>layers)\\.[0-9]{1,3}\\.\\w+|x{,2}\nlayers.7.k_proj\n"),
  };
}

// Fragments of JSON and of regular expressions: inserting them makes mutants that reach deep.
constexpr std::string_view tokens[] = {"{",
                                       "}",
                                       "[",
                                       "]",
                                       "(",
                                       ")",
                                       "\"",
                                       ":",
                                       ",",
                                       "\\",
                                       "|",
                                       "*",
                                       "+",
                                       "?",
                                       ".",
                                       "^",
                                       "$",
                                       "\n",
                                       "-",
                                       "0",
                                       "1",
                                       "{2,3}",
                                       "{,2}",
                                       "{3}",
                                       "(?:",
                                       "(?P<n>",
                                       "(?=",
                                       "\\d",
                                       "\\w",
                                       "\\s",
                                       "\\.",
                                       "[^a]",
                                       "[a-z]",
                                       "[]",
                                       "\\x41",
                                       "\u00e9",
                                       "null",
                                       "true",
                                       "false",
                                       "1e308",
                                       "-1",
                                       "9223372036854775808",
                                       "\"r\": ",
                                       "\"lora_alpha\": ",
                                       "\"rank_pattern\": {",
                                       "\"peft_type\"",
                                       "\"alpha_pattern\": {\"",
                                       "\"use_dora\": true",
                                       "[[[[[[[[[[[[[[[[",
                                       "]]]]]]]]]]]]]]]]"};

// A random regular-expression-like key made of tokens.
std::string random_key(std::mt19937_64& rng) {
  std::string key;
  for (std::size_t n = rng() % 5; n > 0; --n) {
    key += rng() % 2 == 0 ? std::string(1, "abq_.0"[rng() % 6])
                          : std::string(tokens[rng() % std::size(tokens)]);
  }
  return key;
}

// Sets or removes one field of a config that is JSON: most mutants stay JSON, and reach the
// checks, the patterns and the round trip.
void mutate_field(buffer& b, std::mt19937_64& rng) {
  nlohmann::json doc = nlohmann::json::parse(b.begin() + 1, b.end(), nullptr, false);
  if (!doc.is_object()) return;
  const auto pattern = [&] {
    nlohmann::json p = nlohmann::json::object();
    for (std::size_t n = rng() % 4; n > 0; --n) {
      p[random_key(rng)] = rng() % 8 == 0 ? nlohmann::json(2.5) : nlohmann::json(1 + rng() % 4);
    }
    return p;
  };
  const int depth = 1 + static_cast<int>(rng() % 70);
  const std::vector<std::pair<std::string, nlohmann::json>> changes = {
      {"r", static_cast<int>(rng() % 12) - 2},
      {"lora_alpha", rng() % 2 == 0 ? nlohmann::json(1.5) : nlohmann::json(rng() % 64)},
      {"lora_dropout", 0.1},
      {"rank_pattern", pattern()},
      {"alpha_pattern", pattern()},
      {"target_modules", rng() % 2 == 0 ? nlohmann::json({"q_proj", random_key(rng)})
                                        : nlohmann::json(random_key(rng))},
      {"use_dora", rng() % 2 == 0},
      {"use_rslora", rng() % 4 == 0 ? nlohmann::json(1) : nlohmann::json(true)},
      {"bias", rng() % 2 == 0 ? "none" : "all"},
      {"deep", nlohmann::json::parse(std::string(static_cast<std::size_t>(depth), '[') +
                                     std::string(static_cast<std::size_t>(depth), ']'))},
      {"peft_type", rng() % 8 == 0 ? "LOHA" : "LORA"},
  };
  const auto& [key, value] = changes[rng() % changes.size()];
  if (rng() % 6 == 0) {
    doc.erase(key);
  } else {
    doc[key] = value;
  }
  const std::string text = doc.dump(rng() % 2 == 0 ? -1 : 2);
  b.resize(1);
  b.insert(b.end(), text.begin(), text.end());
}

void mutate(buffer& b, std::mt19937_64& rng) {
  const auto below = [&](std::size_t n) {
    return n == 0 ? 0 : static_cast<std::size_t>(rng() % n);
  };
  if (!b.empty() && b[0] % 2 == 0 && below(2) == 0) {
    mutate_field(b, rng);
    return;
  }
  const auto at = [&](std::size_t k) { return b.begin() + static_cast<std::ptrdiff_t>(k); };
  switch (below(8)) {
    case 0:  // flip a bit (not of the mode byte: that flips the target)
      if (b.size() > 1) b[1 + below(b.size() - 1)] ^= static_cast<std::uint8_t>(1U << below(8));
      break;
    case 1:  // overwrite a byte with a printable one
      if (b.size() > 1) b[1 + below(b.size() - 1)] = static_cast<std::uint8_t>(32 + below(95));
      break;
    case 2:  // delete a range
      if (b.size() > 1) {
        const std::size_t from = 1 + below(b.size() - 1);
        b.erase(at(from), at(from + 1 + below(std::min<std::size_t>(8, b.size() - from))));
      }
      break;
    case 3:
    case 4: {  // insert a token
      const std::string_view t = tokens[below(std::size(tokens))];
      b.insert(at(1 + below(b.size())), t.begin(), t.end());
      break;
    }
    case 5: {  // duplicate a range (nesting, repetition)
      if (b.size() < 2) break;
      const std::size_t from = 1 + below(b.size() - 1);
      const std::size_t length = 1 + below(std::min<std::size_t>(32, b.size() - from));
      const buffer piece(at(from), at(from + length));
      b.insert(at(1 + below(b.size())), piece.begin(), piece.end());
      break;
    }
    case 6:  // a long run of one byte (long names, deep nesting)
      b.insert(at(1 + below(b.size())), 1 + below(300),
               b.size() > 1 ? b[1 + below(b.size() - 1)] : 'a');
      break;
    default:  // truncate
      b.resize(1 + below(b.size()));
      break;
  }
}

}  // namespace

int main(int argc, char** argv) {
  io_test::fuzz_options options;
  options.seeds = builtin_seeds();
  if (!io_test::parse_fuzz_arguments("peft_fuzz", argc, argv, options)) return 2;
  io_test::run_fuzz_loop(
      options, [](const buffer& b) { LLVMFuzzerTestOneInput(b.data(), b.size()); }, mutate,
      [](buffer& b, std::mt19937_64&) {
        if (b.empty()) b.push_back(0);
      });
  std::printf(
      "peft_fuzz: %zu executions (%zu seeds + %zu mutants; %zu valid configs, %zu valid keys), "
      "no failure\n",
      options.seeds.size() + options.iterations, options.seeds.size(), options.iterations,
      configs_valid, keys_valid);
  return 0;
}

#endif  // LOWRANK_FUZZ_STANDALONE
