#pragma once
/// @file
/// Hugging Face PEFT LoRA / DoRA adapter directories to and from Eigen matrices.
///
/// Format: what `PeftModel.save_pretrained` writes (PEFT 0.21; the fixtures under
/// tests/adapters/fixtures/peft/ were saved by it and are read back by the tests):
///
///     <dir>/adapter_config.json        the LoraConfig as JSON (sorted keys, indent 2)
///     <dir>/adapter_model.safetensors  one tensor per factor, row-major (io/safetensors.hpp)
///
/// Tensor names (PEFT's `get_peft_model_state_dict`, which drops the adapter name, and
/// `LoraModel._get_adapter_state_dict`, which drops DoRA's ".weight"), for each adapted
/// nn.Linear `<module>` (its path in the base model, e.g. "layers.0.q_proj"):
///
///     base_model.model.<module>.lora_A.weight          [r, in]   A, r x in
///     base_model.model.<module>.lora_B.weight          [out, r]  B, out x r
///     base_model.model.<module>.lora_magnitude_vector  [out]     DoRA's m (use_dora only)
///
/// The shapes are PyTorch's, and equal the math orientation of docs/algorithms.md,
/// "Adapters" (A is r x in, B is out x r, dW = s B A): the row-major bytes are transposed
/// explicitly into Eigen's column-major storage on reading, and back on writing. Any of F32,
/// F16, BF16 and F64 is read (each tensor may have its own); the writer stores one dtype.
///
/// Ranks and alphas: a module's rank is `r` and its alpha `lora_alpha`, unless a key of
/// `rank_pattern` / `alpha_pattern` matches the module name. Matching is PEFT's
/// `peft.utils.other.get_pattern_key`: the keys are tried in order (the file's order; PEFT
/// itself writes them sorted) and the first key K for which the Python regular expression
/// `re.match(rf"(.*\.)?({K})$", module)` matches wins, so "v_proj" matches
/// "layers.0.v_proj" but not "layers.0.xv_proj", and keys are regular expressions ("." is
/// any character). lowrank matches with its own matcher (lowrank/io/detail/peft_regex.hpp:
/// a Pike VM, no backtracking, time O(key x name)) for the subset of Python's `re` that
/// such keys use: characters, `.`, classes `[...]` (ranges, negation), escapes (`\.`, `\d`,
/// `\w`, `\s` and their negations, ASCII), groups `(...)`, `(?:...)`, `(?P<name>...)`,
/// `|`, `* + ? {m} {m,n}` (greedy or lazy) and `^ $`. A key that is not a regular expression
/// on its own, or uses anything else (backreferences, lookaround, flags, ...), is an error
/// naming the key and the position, never approximated; so is a key or a module name over
/// 4096 bytes. The scaling is s = alpha / r, or alpha / sqrt(r) with use_rslora (PEFT's
/// `LoraLayer.update_layer`).
///
/// What is checked (stricter than PEFT, which mostly loads what it can and warns):
/// - both files are regular files (a FIFO, a device or a directory is refused before it is
///   read; symbolic links to regular files are followed); adapter_config.json is at most
///   16 MiB and nests objects and arrays at most 64 deep, checked on its text before it is
///   parsed;
/// - adapter_config.json is a JSON object with "peft_type": "LORA"; "r" (default 8) and the
///   rank_pattern values are JSON integers >= 1; "lora_alpha" (default 8) and the
///   alpha_pattern values finite numbers; "lora_dropout" (default 0) a number in [0, 1];
///   "use_rslora" and "use_dora" (default false) booleans; "rank_pattern" and "alpha_pattern"
///   objects (or null); every pattern key a regular expression that matches at least one
///   module of the adapter (PEFT only warns about such a key);
/// - LoRA variants whose tensors or forward pass differ from plain LoRA / DoRA are refused:
///   "bias" other than "none", and a true or non-null "lora_bias", "use_qalora",
///   "use_bdlora", "alora_invocation_tokens", "target_parameters" (non-empty),
///   "arrow_config", "kasa_config" or "monteclora_config";
/// - every tensor has one of the three names above (anything else, e.g. a bias, an
///   embedding factor, a modules_to_save weight, or a magnitude without use_dora, is an
///   error), a dtype of F32, F16, BF16 or F64, and its shape: A 2-D [rank, in], B 2-D
///   [out, rank] with the module's rank, m 1-D [out]; every module has A and B, and a
///   magnitude exactly when use_dora; there is at least one module;
/// - every value is finite after conversion to T.
///
/// Everything else in adapter_config.json (peft_type, task_type, base_model_name_or_path,
/// target_modules given as a string, ...) is kept in `peft_config::extra` and written back
/// as it was: a read -> write round trip keeps every field (numbers keep their value; an
/// integral lora_alpha or alpha_pattern value is written as a JSON integer, as PEFT does).
/// The safetensors file's metadata is ignored on reading; the writer sets {"format": "pt"}.
/// `target_modules` is not checked against the module names (PEFT's matching rules also
/// involve exclude_modules, layers_to_transform and "all-linear").

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix_view.hpp"
#include "lowrank/io/detail/directory_update.hpp"
#include "lowrank/io/detail/files.hpp"
#include "lowrank/io/detail/half.hpp"
#include "lowrank/io/detail/peft_config.hpp"
#include "lowrank/io/detail/peft_patterns.hpp"
#include "lowrank/io/peft_types.hpp"
#include "lowrank/io/safetensors.hpp"

namespace lowrank::io {

namespace detail {

inline constexpr std::string_view peft_prefix = "base_model.model.";
inline constexpr std::string_view peft_suffix_a = ".lora_A.weight";
inline constexpr std::string_view peft_suffix_b = ".lora_B.weight";
inline constexpr std::string_view peft_suffix_m = ".lora_magnitude_vector";
inline constexpr std::string_view peft_weights_name = "adapter_model.safetensors";

inline bool peft_fits(double x, dtype stored) {
  switch (stored) {
    case dtype::float32:
      // Below FLT_MAX + half an ulp (0x1.fffffep127 + 0x1p103), x rounds to a finite float.
      return std::fabs(x) < 0x1.ffffffp127;
    case dtype::float16:
      return std::isfinite(half_to_double(double_to_half(x)));
    case dtype::bfloat16:
      return std::isfinite(bfloat16_to_float(double_to_bfloat16(x)));
    case dtype::float64:
      return true;
  }
  return false;
}

/// The largest adapter_config.json read (a real one is a few kilobytes; rank_pattern and
/// alpha_pattern with a key per module of a large model, a few hundred).
inline constexpr std::uintmax_t peft_max_config_size = 16 << 20;

/// The text of `file`, a regular file in the adapter directory.
inline std::string peft_read_text(const std::filesystem::path& file, const error_source& source) {
  const std::string name = file.filename().string();
  const std::string expected = "a directory with a readable " + name;
  const file_contents contents = read_regular_file(file, peft_max_config_size);
  switch (contents.error) {
    case file_contents::problem::none:
      break;
    case file_contents::problem::missing:
      fail_with(source, "with no " + name, expected);
    case file_contents::problem::not_regular:
      fail_with(source, "whose " + name + " is not a regular file (it is " + contents.detail + ")",
                expected);
    case file_contents::problem::too_large:
      fail_with(source, "whose " + name + " is " + contents.detail + " bytes long",
                "an " + name + " of at most " + std::to_string(peft_max_config_size) + " bytes");
    default:
      fail_with(source, "whose " + name + " cannot be read (" + contents.detail + ")", expected);
  }
  return {reinterpret_cast<const char*>(contents.bytes.data()), contents.bytes.size()};
}

/// Fails for a `module` argument longer than peft_max_name.
inline void peft_check_module_length(std::string_view function, const std::string& module) {
  if (module.size() > peft_max_name) {
    lowrank::detail::throw_invalid_argument(
        function, "module", "a name of " + std::to_string(module.size()) + " bytes",
        "a module name of at most " + std::to_string(peft_max_name) + " bytes");
  }
}

}  // namespace detail

/// The rank PEFT gives `module` under `config`: the value of the first rank_pattern key
/// that matches (PEFT's get_pattern_key; see the file comment), else `config.r`.
///
/// @throws lowrank::invalid_argument (function `lowrank::io::peft_rank`), argument `config`
///   when a rank_pattern or alpha_pattern key is not a regular expression in the supported
///   subset (lowrank/io/detail/peft_regex.hpp), is longer than 4096 bytes or appears twice;
///   argument `module` when it is longer than 4096 bytes.
[[nodiscard]] inline index_t peft_rank(const peft_config& config, const std::string& module) {
  detail::peft_check_module_length("lowrank::io::peft_rank", module);
  detail::peft_resolver resolver(config, {"lowrank::io::peft_rank", "config", "a config", "with "});
  return resolver.rank(module);
}

/// The alpha PEFT gives `module` under `config`: the value of the first alpha_pattern key
/// that matches, else `config.lora_alpha`.
///
/// @throws lowrank::invalid_argument (function `lowrank::io::peft_alpha`), as peft_rank.
[[nodiscard]] inline double peft_alpha(const peft_config& config, const std::string& module) {
  detail::peft_check_module_length("lowrank::io::peft_alpha", module);
  detail::peft_resolver resolver(config,
                                 {"lowrank::io::peft_alpha", "config", "a config", "with "});
  return resolver.alpha(module);
}

/// Reads a PEFT LoRA or DoRA adapter directory (adapter_config.json and
/// adapter_model.safetensors; format and checks: see the file comment). The modules are
/// sorted by name; each has its rank and alpha after rank_pattern / alpha_pattern, A
/// (rank x in), B (out x rank) and, with use_dora, the magnitude (out). F16, BF16 and F32
/// convert exactly; F64 -> float rounds to nearest.
///
/// Memory: the safetensors file plus the result.
///
/// @throws lowrank::invalid_argument (function `lowrank::io::read_peft_adapter`, argument
///   `dir`, whose value is the quoted path) when `dir` is not a directory, a file is
///   missing, adapter_config.json is not JSON or breaks a rule of the file comment,
///   adapter_model.safetensors is not a valid safetensors file (the message includes the
///   safetensors reader's), a tensor is unexpected or has the wrong dtype or shape, a module
///   lacks a factor, or a pattern key matches no module, e.g.
///   `lowrank::io::read_peft_adapter: argument 'dir' is "a" with the module
///   'layers.0.q_proj' without lora_B.weight; expected ...`.
/// @throws lowrank::numerical_error (same function and argument) when a value is not finite
///   after conversion to T.
template <class T>
requires std::same_as<T, float> || std::same_as<T, double>
[[nodiscard]] peft_adapter<T> read_peft_adapter(const std::filesystem::path& dir) {
  constexpr std::string_view function = "lowrank::io::read_peft_adapter";
  const detail::error_source source{function, "dir", detail::quote_path(dir)};
  const detail::peft_failure fail{function, "dir", source.subject, ""};
  {
    std::error_code ec;
    const auto status = std::filesystem::status(dir, ec);
    if (!std::filesystem::exists(status)) {
      fail(", which does not exist", "a PEFT adapter directory");
    }
    if (!std::filesystem::is_directory(status)) {
      fail(", which is not a directory", "a PEFT adapter directory");
    }
  }

  peft_adapter<T> adapter;
  adapter.config = detail::peft_parse_config(
      detail::peft_read_text(dir / detail::peft_config_name, source), fail);
  const peft_config& config = adapter.config;
  const detail::peft_failure config_fail = fail.in("whose adapter_config.json has ");
  detail::peft_check_config(config, config_fail);
  detail::peft_resolver resolver(config, config_fail);

  const std::filesystem::path weights_path = dir / detail::peft_weights_name;
  {
    std::error_code ec;
    const std::filesystem::file_status status = std::filesystem::status(weights_path, ec);
    if (!std::filesystem::exists(status)) {
      const bool bin = std::filesystem::exists(dir / "adapter_model.bin", ec);
      fail(bin ? "with adapter_model.bin but no adapter_model.safetensors"
               : "with no adapter_model.safetensors",
           "a directory with adapter_model.safetensors (lowrank does not read pickled .bin "
           "files)");
    }
    // Checked again on the open file by the safetensors reader.
    if (!std::filesystem::is_regular_file(status)) {
      fail("whose adapter_model.safetensors is not a regular file",
           "a directory with a readable adapter_model.safetensors");
    }
  }
  std::optional<safetensors_file> weights;
  try {
    weights.emplace(safetensors_file::read(weights_path));
  } catch (const lowrank::invalid_argument& e) {
    fail(std::string("whose adapter_model.safetensors is invalid (") + e.what() + ")",
         "a valid safetensors file");
  }

  // Group the tensors by module.
  struct names {
    const std::string* a = nullptr;
    const std::string* b = nullptr;
    const std::string* m = nullptr;
  };
  std::map<std::string, names> grouped;
  const std::string expected_names =
      config.use_dora
          ? "only tensors base_model.model.<module>.lora_A.weight, .lora_B.weight and "
            ".lora_magnitude_vector (use_dora is true)"
          : "only tensors base_model.model.<module>.lora_A.weight and .lora_B.weight (use_dora "
            "is false)";
  for (const auto& [tensor, info] : weights->tensors()) {
    const std::string_view t = tensor;
    const std::string stray = "with the tensor " + detail::safetensors_quote(tensor);
    if (!t.starts_with(detail::peft_prefix)) fail(stray, expected_names);
    const std::string_view rest = t.substr(detail::peft_prefix.size());
    std::string_view module;
    const std::string** slot = nullptr;
    names* entry = nullptr;
    for (const std::string_view suffix :
         {detail::peft_suffix_a, detail::peft_suffix_b, detail::peft_suffix_m}) {
      if (!rest.ends_with(suffix)) continue;
      if (suffix == detail::peft_suffix_m && !config.use_dora) break;
      module = rest.substr(0, rest.size() - suffix.size());
      if (!detail::peft_valid_module_name(module)) break;
      if (module.size() > detail::peft_max_name) {
        fail(stray + ", whose module name is " + std::to_string(module.size()) + " bytes long",
             "module names of at most " + std::to_string(detail::peft_max_name) + " bytes");
      }
      entry = &grouped[std::string(module)];
      slot = suffix == detail::peft_suffix_a   ? &entry->a
             : suffix == detail::peft_suffix_b ? &entry->b
                                               : &entry->m;
      break;
    }
    if (slot == nullptr) fail(stray, expected_names);
    *slot = &tensor;
    if (!info.type) {
      fail(stray + " of dtype '" + info.dtype_name + "'", "tensors of dtype F32, F16, BF16 or F64");
    }
  }
  if (grouped.empty()) {
    fail("whose adapter_model.safetensors has no LoRA tensors", "at least one adapted module");
  }

  const auto shape_of = [&](const std::string& tensor) -> const std::vector<std::int64_t>& {
    return weights->tensors().at(tensor).shape;
  };
  const auto convert = [&](const std::string& tensor) {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> values = weights->matrix<T>(tensor);
    if (!values.allFinite()) {
      lowrank::detail::throw_numerical_error(function, "dir",
                                             source.subject + " with the tensor " +
                                                 detail::safetensors_quote(tensor) +
                                                 ", which holds a value that is not finite as " +
                                                 (std::same_as<T, float> ? "float" : "double"),
                                             "finite values");
    }
    return values;
  };
  adapter.modules.reserve(grouped.size());
  for (const auto& [module, entry] : grouped) {
    const std::string quoted = "the module " + detail::safetensors_quote(module);
    if (entry.a == nullptr)
      fail("with " + quoted + " without lora_A.weight", "A and B for every module");
    if (entry.b == nullptr)
      fail("with " + quoted + " without lora_B.weight", "A and B for every module");
    if (config.use_dora && entry.m == nullptr) {
      fail("with " + quoted + " without lora_magnitude_vector",
           "a magnitude for every module (use_dora is true)");
    }
    peft_module<T> out;
    out.name = module;
    out.rank = resolver.rank(module);
    out.alpha = resolver.alpha(module);
    out.use_rslora = config.use_rslora;
    const std::vector<std::int64_t>& sa = shape_of(*entry.a);
    const std::vector<std::int64_t>& sb = shape_of(*entry.b);
    const std::string rank = std::to_string(out.rank);
    if (sa.size() != 2 || sa[0] != out.rank || sa[1] < 1) {
      fail("with " + quoted + " whose lora_A.weight has shape " +
               detail::safetensors_shape_string(sa),
           "shape [" + rank + ", in] with in >= 1 (the module's rank is " + rank + ")");
    }
    if (sb.size() != 2 || sb[1] != out.rank || sb[0] < 1) {
      fail("with " + quoted + " whose lora_B.weight has shape " +
               detail::safetensors_shape_string(sb),
           "shape [out, " + rank + "] with out >= 1 (the module's rank is " + rank + ")");
    }
    if (entry.m != nullptr) {
      const std::vector<std::int64_t>& sm = shape_of(*entry.m);
      if (sm.size() != 1 || sm[0] != sb[0]) {
        fail("with " + quoted + " whose lora_magnitude_vector has shape " +
                 detail::safetensors_shape_string(sm),
             "shape [" + std::to_string(sb[0]) + "] (lora_B.weight's out)");
      }
      out.magnitude = convert(*entry.m).col(0);
    }
    out.a = convert(*entry.a);
    out.b = convert(*entry.b);
    adapter.modules.push_back(std::move(out));
  }
  resolver.require_all_used(adapter.modules.size(), config_fail.in("the "));
  return adapter;
}

/// Writes `adapter` as a PEFT adapter directory that `PeftModel.from_pretrained` loads
/// (tests/adapters/fixtures/peft/cpp_saved was written by this function and checked with
/// PEFT): adapter_config.json (PEFT's field names; see peft_config for what is written) and
/// adapter_model.safetensors with every factor stored as `stored` (values rounded once to
/// nearest even), the modules in name order. `dir` is created if missing.
///
/// The update is all-or-nothing (lowrank/io/detail/directory_update.hpp): both files are
/// written and synced before either replaces anything, then a new `dir` is renamed into
/// place, or (when `dir` has no subdirectory) exchanged with the old one in one
/// renameat2(RENAME_EXCHANGE), or (otherwise: subdirectories, a mount point, a file system
/// without the exchange) the two files are renamed in place with hard-link backups that
/// put the first back if the second rename fails. After a failure `dir` is as it was (both
/// files' bytes and modes), with no temporary behind; other files in `dir` are kept.
/// Symbolic links at `dir` or at its files are written through; a file that replaces
/// another keeps its mode. Only the exchange and the new directory are atomic against a
/// crash.
///
/// @throws lowrank::invalid_argument (function `lowrank::io::write_peft_adapter`)
///   - argument `adapter`: a config that breaks the rules of the file comment (r, alpha,
///     dropout, patterns, `extra` not an object, holding a field peft_config holds, a
///     peft_type other than "LORA", or a LoRA variant), no modules, a module name that is
///     empty, has an empty component or appears twice, a module whose rank, alpha or
///     use_rslora is not what the config gives it, A not rank x in, B not out x rank, a
///     magnitude not of B's rows with use_dora or not empty without, or a pattern key that
///     matches no module;
///   - argument `stored`: not a dtype enumerator, or a value that overflows it (e.g. over
///     65504 in F16);
///   - argument `dir`: not a directory or not writable, adapter_config.json or
///     adapter_model.safetensors there not a regular file, or a failed write or rename.
/// @throws lowrank::numerical_error (argument `adapter`) when a value is not finite.
template <class T>
requires std::same_as<T, float> || std::same_as<T, double>
void write_peft_adapter(const std::filesystem::path& dir, const peft_adapter<T>& adapter,
                        dtype stored = dtype::float32) {
  constexpr std::string_view function = "lowrank::io::write_peft_adapter";
  const peft_config& config = adapter.config;
  const std::string subject =
      "an adapter of " + std::to_string(adapter.modules.size()) + " modules";
  const detail::peft_failure fail{function, "adapter", subject, "with "};
  if (!detail::safetensors_known(stored)) {
    lowrank::detail::throw_invalid_argument(function, "stored", static_cast<int>(stored),
                                            "dtype::float32, float16, bfloat16 or float64");
  }
  const detail::peft_failure config_fail = fail.in("config.");
  detail::peft_check_config(config, config_fail);
  detail::peft_resolver resolver(config, config_fail);
  if (adapter.modules.empty()) fail("no modules", "at least one module");

  std::vector<const peft_module<T>*> order;
  order.reserve(adapter.modules.size());
  for (const peft_module<T>& m : adapter.modules) order.push_back(&m);
  std::sort(order.begin(), order.end(),
            [](const auto* x, const auto* y) { return x->name < y->name; });
  std::vector<tensor_to_write> tensors;
  tensors.reserve(order.size() * 3);
  for (std::size_t k = 0; k < order.size(); ++k) {
    const peft_module<T>& m = *order[k];
    const std::string quoted = "the module " + detail::safetensors_quote(m.name);
    if (!detail::peft_valid_module_name(m.name)) {
      fail(quoted + " as a name", "module paths of non-empty dot-separated components");
    }
    if (m.name.size() > detail::peft_max_name) {
      fail(quoted + ", a name of " + std::to_string(m.name.size()) + " bytes",
           "module names of at most " + std::to_string(detail::peft_max_name) + " bytes");
    }
    if (k > 0 && order[k - 1]->name == m.name) fail(quoted + " twice", "distinct module names");
    const index_t rank = resolver.rank(m.name);
    const double alpha = resolver.alpha(m.name);
    if (m.rank != rank) {
      fail(quoted + " of rank " + std::to_string(m.rank),
           "the rank the config gives it: " + std::to_string(rank) +
               " (r, or the first rank_pattern key that matches)");
    }
    if (m.alpha != alpha) {
      fail(quoted + " of alpha " + detail::peft_number(m.alpha),
           "the alpha the config gives it: " + detail::peft_number(alpha) +
               " (lora_alpha, or the first alpha_pattern key that matches)");
    }
    if (m.use_rslora != config.use_rslora) {
      fail(quoted + std::string(" with use_rslora ") + (m.use_rslora ? "true" : "false"),
           "the config's use_rslora");
    }
    const std::string shapes = " (A " + std::to_string(m.a.rows()) + " x " +
                               std::to_string(m.a.cols()) + ", B " + std::to_string(m.b.rows()) +
                               " x " + std::to_string(m.b.cols()) + ", magnitude " +
                               std::to_string(m.magnitude.size()) + ")";
    if (m.a.rows() != rank || m.a.cols() < 1 || m.b.cols() != rank || m.b.rows() < 1) {
      fail(quoted + shapes,
           "A rank x in and B out x rank with rank " + std::to_string(rank) + " and in, out >= 1");
    }
    if (config.use_dora ? m.magnitude.size() != m.b.rows() : m.magnitude.size() != 0) {
      fail(quoted + shapes, config.use_dora ? "a magnitude of out = B's rows entries (use_dora)"
                                            : "an empty magnitude (use_dora is false)");
    }
    const std::string base = std::string(detail::peft_prefix) + m.name;
    tensors.push_back(
        {base + std::string(detail::peft_suffix_a), stored, m.a.template cast<double>(), false});
    tensors.push_back(
        {base + std::string(detail::peft_suffix_b), stored, m.b.template cast<double>(), false});
    if (config.use_dora) {
      tensors.push_back({base + std::string(detail::peft_suffix_m), stored,
                         m.magnitude.template cast<double>(), true});
    }
    for (std::size_t t = tensors.size() - (config.use_dora ? 3 : 2); t < tensors.size(); ++t) {
      const Eigen::MatrixXd& values = tensors[t].values;
      for (Eigen::Index j = 0; j < values.cols(); ++j) {
        for (Eigen::Index i = 0; i < values.rows(); ++i) {
          const double x = values(i, j);
          const std::string where =
              quoted + " whose tensor " + detail::safetensors_quote(tensors[t].name) + " holds " +
              detail::peft_number(x) + " at (" + std::to_string(i) + ", " + std::to_string(j) + ")";
          if (!std::isfinite(x)) {
            lowrank::detail::throw_numerical_error(function, "adapter", subject + " with " + where,
                                                   "finite values");
          }
          if (!detail::peft_fits(x, stored)) {
            lowrank::detail::throw_invalid_argument(
                function, "stored",
                std::string(name(stored)) + " for " + subject + " with " + where,
                "a dtype whose range holds every value");
          }
        }
      }
    }
  }
  resolver.require_all_used(adapter.modules.size(), config_fail);

  std::string json;
  try {
    json = detail::peft_config_text(config, adapter.modules);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("config.extra that cannot be written as JSON (") + e.what() + ")",
         "valid UTF-8 strings");
  }

  detail::safetensors_layout layout;
  try {
    layout = detail::safetensors_plan(tensors, {{"format", "pt"}});
  } catch (const lowrank::invalid_argument& e) {
    fail(std::string("tensors that one safetensors file cannot hold (") + e.what() + ")",
         "an adapter whose safetensors header fits in 100000000 bytes");
  }
  detail::update_directory(
      dir,
      {{std::string(detail::peft_weights_name),
        [&](detail::temporary_file& out) { detail::safetensors_emit(out, layout, tensors); }},
       {std::string(detail::peft_config_name),
        [&](detail::temporary_file& out) { out.write(json.data(), json.size()); }}},
      {function, "dir", detail::quote_path(dir)});
}

}  // namespace lowrank::io
