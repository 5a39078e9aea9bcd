// lowrank-inspect, lowrank-compress and lowrank-merge: whole checkpoints from the command
// line (README "Checkpoints"). One program, three names: what it does depends on the name it
// is called by (or on a first argument `inspect`, `compress`, `merge`).
//
//   lowrank-inspect CKPT [--base BASE] [--json F] [--plots DIR] [--rank K] [--target P,..]
//                        [--shard I/N] | --combine F1.json F2.json ... [--json F]
//   lowrank-compress CKPT --budget F --out OUT.safetensors [--allocation A] [--grams G]
//                        [--report R.json] [--rank K] [--target P,..]
//   lowrank-compress CKPT --shard I/N --spectra PART_I.json [--grams G] [--rank K]   (each I)
//   lowrank-compress CKPT --budget F --combine PART_1.json ... --out OUT.safetensors
//   lowrank-compress CKPT --compensate LOSSY --eora-rank R [--grams G] --out ADAPTER_DIR
//   lowrank-merge BASE ADAPTER_DIR --out OUT.safetensors [--unmerge]
//   lowrank-merge BASE ADAPTER_DIR --reduce-intruders [--lambda L] --out NEW_ADAPTER_DIR
//
// CKPT is a .safetensors file, a model.safetensors.index.json or a directory holding one
// (lowrank/io/checkpoint.hpp). Tensors are read one at a time through memory maps and every
// output is written to a temporary and renamed; no output may be one of the inputs.

#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <lowrank/checkpoint/compress.hpp>
#include <lowrank/checkpoint/spectrum.hpp>
#include <lowrank/io/checkpoint.hpp>
#include <lowrank/io/detail/files.hpp>
#include <lowrank/io/peft.hpp>
#include <lowrank/io/safetensors_writer.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "plot.hpp"

namespace {

namespace fs = std::filesystem;
namespace io = lowrank::io;
using lowrank::index_t;
using matrix_f = Eigen::MatrixXf;
using json = nlohmann::ordered_json;

constexpr const char* usage =
    "usage:\n"
    "  lowrank-inspect CKPT [--base BASE] [--json F] [--plots DIR] [--rank K]\n"
    "                  [--target P1,P2 | --target-regex R] [--shard I/N] [--welore-tau T]\n"
    "  lowrank-inspect --combine PART.json... [--json F]\n"
    "  lowrank-compress CKPT --budget F --out OUT.safetensors [--allocation uniform|energy|\n"
    "                   welore|global] [--grams G.safetensors] [--report R.json] [--rank K]\n"
    "                   [--target P1,P2 | --target-regex R] [--combine PART.json...]\n"
    "  lowrank-compress CKPT --shard I/N --spectra PART.json [--grams G] [--rank K] [--target ..]\n"
    "  lowrank-compress CKPT --compensate LOSSY --eora-rank R [--grams G] --out ADAPTER_DIR\n"
    "  lowrank-merge BASE ADAPTER_DIR --out OUT.safetensors [--unmerge]\n"
    "  lowrank-merge BASE ADAPTER_DIR --reduce-intruders [--lambda L] --out NEW_ADAPTER_DIR\n"
    "CKPT: a .safetensors file, a model.safetensors.index.json, or a directory with one.\n";

/// A mistake in the command line: printed with the usage, exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail_usage(const std::string& message) { throw usage_error(message); }

double parse_number(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v)) {
    fail_usage(flag + " expects a number, not '" + text + "'");
  }
  return v;
}

long long parse_integer(const std::string& flag, const std::string& text, long long low,
                        long long high) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < low || v > high) {
    fail_usage(flag + " expects an integer in [" + std::to_string(low) + ", " +
               std::to_string(high) + "], not '" + text + "'");
  }
  return v;
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, sep)) {
    if (!part.empty()) out.push_back(part);
  }
  return out;
}

// ------------------------------------------------------------------ selection

/// Which 2-D weights a run works on: PEFT's target_modules (a list of names, matching the
/// module's last components, or a regular expression matching the whole module name), or by
/// default every 2-D floating-point tensor (inspect) or every 2-D `.weight` but the
/// embeddings and the output head (compress, as SVD-LLM).
struct selection {
  std::vector<std::string> names;
  std::optional<std::regex> pattern;
  std::string pattern_text;
  bool weights_only = false;

  [[nodiscard]] bool explicit_targets() const { return !names.empty() || pattern.has_value(); }

  [[nodiscard]] bool matches(const io::checkpoint::entry& e) const {
    if (!e.info.type || e.info.shape.size() != 2 || e.info.shape[0] == 0 || e.info.shape[1] == 0) {
      return false;
    }
    const std::string module = module_of(e.name);
    if (pattern) return std::regex_match(module, *pattern);
    if (!names.empty()) {
      return std::any_of(names.begin(), names.end(), [&](const std::string& n) {
        return module == n || (module.size() > n.size() &&
                               module.compare(module.size() - n.size(), n.size(), n) == 0 &&
                               module[module.size() - n.size() - 1] == '.');
      });
    }
    if (!weights_only) return true;
    const bool weight = e.name.size() > 7 && e.name.ends_with(".weight");
    return weight && module.find("embed") == std::string::npos &&
           module.find("lm_head") == std::string::npos;
  }

  /// "a.b.weight" -> "a.b" (PEFT's module name); other names unchanged.
  static std::string module_of(const std::string& name) {
    return name.ends_with(".weight") ? name.substr(0, name.size() - 7) : name;
  }
};

/// `--shard I/N`: 1-based I. Tensors are dealt by decreasing cost (m n min(m, n)) to the least
/// loaded shard (ties: the lowest), so the split is deterministic and balanced.
struct shard_spec {
  int index = 1;
  int count = 1;
};

shard_spec parse_shard(const std::string& text) {
  const auto slash = text.find('/');
  if (slash == std::string::npos) fail_usage("--shard expects I/N, e.g. 2/8, not '" + text + "'");
  shard_spec s;
  s.count = static_cast<int>(parse_integer("--shard's N", text.substr(slash + 1), 1, 1 << 20));
  s.index = static_cast<int>(parse_integer("--shard's I", text.substr(0, slash), 1, s.count));
  return s;
}

std::vector<const io::checkpoint::entry*> select(const io::checkpoint& c, const selection& sel,
                                                 const shard_spec& shard) {
  std::vector<const io::checkpoint::entry*> all;
  for (const auto& e : c.tensors()) {
    if (sel.matches(e)) all.push_back(&e);
  }
  if (all.empty()) {
    if (sel.explicit_targets()) {
      fail_usage("the target patterns (" +
                 (sel.pattern ? "--target-regex '" + sel.pattern_text + "'"
                              : "--target " +
                                    [&] {
                                      std::string t;
                                      for (const auto& n : sel.names)
                                        t += (t.empty() ? "" : ",") + n;
                                      return t;
                                    }()) +
                 ") match no 2-D floating-point tensor of the checkpoint");
    }
    fail_usage("the checkpoint has no 2-D floating-point weight to work on");
  }
  if (shard.count == 1) return all;
  const auto cost = [](const io::checkpoint::entry* e) {
    const double m = static_cast<double>(e->info.shape[0]);
    const double n = static_cast<double>(e->info.shape[1]);
    return m * n * std::min(m, n);
  };
  std::vector<const io::checkpoint::entry*> order = all;
  std::stable_sort(order.begin(), order.end(),
                   [&](const auto* a, const auto* b) { return cost(a) > cost(b); });
  std::vector<double> load(static_cast<std::size_t>(shard.count), 0);
  std::vector<const io::checkpoint::entry*> mine;
  for (const auto* e : order) {
    const auto least =
        static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    load[least] += cost(e);
    if (static_cast<int>(least) + 1 == shard.index) mine.push_back(e);
  }
  std::sort(mine.begin(), mine.end(),
            [](const auto* a, const auto* b) { return a->name < b->name; });
  return mine;
}

// --------------------------------------------------------------- small helpers

/// Refuses an output that is one of the inputs (the same file, through any path).
void refuse_overwrite(const fs::path& output, const std::vector<fs::path>& inputs,
                      const std::string& flag) {
  std::error_code ec;
  for (const fs::path& in : inputs) {
    if (fs::exists(output, ec) && fs::exists(in, ec) && fs::equivalent(output, in, ec)) {
      fail_usage(flag + " " + output.string() + " is an input (" + in.string() +
                 "); write the output elsewhere");
    }
    if (fs::is_directory(in, ec) && fs::exists(output, ec) && !fs::is_directory(output, ec)) {
      for (const auto& f : fs::directory_iterator(in, ec)) {
        if (fs::equivalent(output, f.path(), ec)) {
          fail_usage(flag + " " + output.string() + " is an input (" + f.path().string() +
                     "); write the output elsewhere");
        }
      }
    }
  }
}

/// Every file a checkpoint is read from (the index, the shards).
std::vector<fs::path> input_files(const io::checkpoint& c) {
  std::vector<fs::path> out = c.files();
  if (!c.index_file().empty()) out.push_back(c.index_file());
  return out;
}

/// Writes text through a temporary renamed over `file`.
void write_text_file(const fs::path& file, const std::string& text, const char* flag) {
  const io::detail::error_source source{flag, "file", io::detail::quote_path(file)};
  io::detail::temporary_file out(file, source);
  out.write(text.data(), text.size());
  out.commit();
}

/// A progress line on stderr when it is a terminal: "[k/N] name  elapsed".
class progress {
 public:
  explicit progress(std::size_t total) : total_(total), tty_(isatty(STDERR_FILENO) != 0) {}
  void step(const std::string& name) {
    ++done_;
    if (!tty_) return;
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const int width = 24;
    const auto filled = static_cast<int>(width * done_ / std::max<std::size_t>(total_, 1));
    std::fprintf(stderr, "\r[%.*s%*s] %zu/%zu %6.1f s  %-50.50s", filled,
                 "########################", width - filled, "", done_, total_, s, name.c_str());
    if (done_ == total_) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  std::size_t total_;
  std::size_t done_ = 0;
  bool tty_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

/// The spectrum of W: exact (all values), or the leading k from a randomized SVD (q = 2).
std::vector<double> spectrum(const matrix_f& w, index_t rank) {
  const index_t p = std::min(w.rows(), w.cols());
  if (rank <= 0 || rank >= p) return lowrank::spectrum_of<float>(w);
  lowrank::randomized_svd_options opt;
  opt.power_iterations = 2;
  const auto r = lowrank::randomized_svd(w, rank, opt);
  std::vector<double> s(static_cast<std::size_t>(r.rank()));
  for (index_t i = 0; i < r.rank(); ++i)
    s[static_cast<std::size_t>(i)] = static_cast<double>(r.s(i));
  for (std::size_t i = 1; i < s.size(); ++i) s[i] = std::min(s[i], s[i - 1]);
  return s;
}

double squared_norm(const matrix_f& w) { return w.cast<double>().squaredNorm(); }

std::string file_name_for(const std::string& tensor) {
  std::string out;
  for (const char c : tensor)
    out +=
        (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') ? c : '_';
  return out;
}

/// The kind of a module for the overview's colours: its name after the last numeric
/// component ("encoder.layer.3.attention.self.query" -> "attention.self.query"), or its last
/// components when it has none ("pooler.dense").
std::string kind_of(const std::string& name) {
  const std::vector<std::string> parts = split(selection::module_of(name), '.');
  std::size_t first = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i].empty() && std::all_of(parts[i].begin(), parts[i].end(),
                                         [](unsigned char c) { return std::isdigit(c) != 0; })) {
      first = i + 1;
    }
  }
  if (first == 0 && parts.size() > 1) {
    // No layer index: the last two components, or the last one when they are long
    // ("embeddings.position_embeddings" -> "position_embeddings").
    const std::string two = parts[parts.size() - 2] + "." + parts.back();
    return two.size() <= 20 ? two : parts.back();
  }
  std::string kind;
  for (std::size_t i = first; i < parts.size(); ++i) kind += (kind.empty() ? "" : ".") + parts[i];
  return kind.empty() ? selection::module_of(name) : kind;
}

/// One part given to --combine, as JSON.
json read_part(const fs::path& part) {
  std::ifstream in(part);
  if (!in) fail_usage("--combine: cannot read " + part.string());
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail_usage("--combine: " + part.string() + " is not JSON (" + e.what() + ")");
  }
}

// -------------------------------------------------------------------- inspect

struct inspect_options {
  fs::path checkpoint;
  std::optional<fs::path> base;
  std::optional<fs::path> json_out;
  std::optional<fs::path> plots;
  index_t rank = 0;
  double welore_tau = 0.175;  // WeLore's table at a 50% rank reduction
  double welore_min_ratio = 0.4999;
  index_t intruder_k = 10;
  double intruder_epsilon = 0.5;
  selection sel;
  shard_spec shard;
  std::vector<fs::path> combine;
};

json spectrum_json(const std::vector<double>& s) {
  json a = json::array();
  for (const double x : s) a.push_back(static_cast<float>(x));
  return a;
}

json inspect_row(const io::checkpoint::entry& e, const matrix_f& w, const inspect_options& o,
                 const std::optional<io::checkpoint>& base, std::vector<double>& s_out,
                 std::vector<double>& base_s_out) {
  const index_t m = w.rows();
  const index_t n = w.cols();
  const std::vector<double> s = spectrum(w, o.rank);
  const double energy = squared_norm(w);
  const auto st = lowrank::spectrum_stats(
      s, m, n, s.size() < static_cast<std::size_t>(std::min(m, n)) ? energy : 0);
  json row;
  row["name"] = e.name;
  row["dtype"] = e.info.dtype_name;
  row["shape"] = {m, n};
  row["parameters"] = m * n;
  row["frobenius"] = st.frobenius;
  row["spectral"] = st.spectral;
  row["stable_rank"] = st.stable_rank;
  row["effective_rank"] = st.partial ? json(nullptr) : json(st.effective_rank);
  row["energy_rank_90"] = st.energy_rank_90;
  row["energy_rank_99"] = st.energy_rank_99;
  row["energy_rank_999"] = st.energy_rank_999;
  row["break_even_rank"] = st.break_even_rank;
  row["exact"] = !st.partial;
  if (!st.partial) {
    const index_t prune = lowrank::welore_prune_count(s, o.welore_tau);
    row["welore_k_prune"] = prune;
    row["welore_class"] =
        lowrank::welore_is_low_rank(s, o.welore_tau, o.welore_min_ratio) ? "LRC" : "N-LRC";
  }
  row["singular_values"] = spectrum_json(s);
  s_out = s;
  if (base && base->contains(e.name)) {
    const io::checkpoint::entry& b = *base->find(e.name);
    if (b.info.shape == e.info.shape) {
      const matrix_f w0 = base->matrix<float>(e.name);
      // Intruders: left singular vectors of both (thin SVDs, float, as the authors).
      const Eigen::BDCSVD<matrix_f> tuned(w, Eigen::ComputeThinU);
      const Eigen::BDCSVD<matrix_f> original(w0, Eigen::ComputeThinU);
      const auto intr = lowrank::intruder_dimensions<float>(original.matrixU(), tuned.matrixU(),
                                                            o.intruder_k, o.intruder_epsilon);
      json bj;
      bj["intruders"] = intr.intruders.size();
      bj["intruder_indices"] = intr.intruders;
      bj["max_abs_cos"] = intr.max_abs_cos;
      const matrix_f delta = w - w0;
      const std::vector<double> ds = spectrum(delta, o.rank);
      const double denergy = squared_norm(delta);
      const auto dst = lowrank::spectrum_stats(
          ds, m, n, ds.size() < static_cast<std::size_t>(std::min(m, n)) ? denergy : 0);
      const double base_norm = std::sqrt(squared_norm(w0));
      bj["delta_relative_norm"] = base_norm > 0 ? std::sqrt(denergy) / base_norm : 0.0;
      bj["delta_stable_rank"] = dst.stable_rank;
      bj["delta_energy_rank_90"] = dst.energy_rank_90;
      bj["delta_energy_rank_99"] = dst.energy_rank_99;
      bj["delta_singular_values"] = spectrum_json(ds);
      row["base"] = bj;
      base_s_out = spectrum(w0, o.rank);
      base->release(e.name);
    }
  }
  return row;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

void print_table(const json& rows, bool with_base) {
  std::printf("%-48s %13s %10s %10s %9s %8s %8s %6s %6s %6s %6s %6s", "tensor", "shape", "params",
              "||W||_F", "||W||_2", "stable", "eff", "r90", "r99", "r99.9", "even", "WeLore");
  if (with_base) std::printf(" %6s %9s %6s", "intr", "||dW||/W", "dr90");
  std::printf("\n");
  for (const json& r : rows) {
    const std::string shape = std::to_string(r["shape"][0].get<long>()) + " x " +
                              std::to_string(r["shape"][1].get<long>());
    const auto rank_text = [&](const char* key) {
      const long v = r[key].get<long>();
      return v == 0 && !r["exact"].get<bool>() ? std::string(">K") : std::to_string(v);
    };
    std::printf(
        "%-48.48s %13s %10ld %10.4g %9.4g %8.2f %8s %6s %6s %6s %6ld %6s",
        r["name"].get<std::string>().c_str(), shape.c_str(), r["parameters"].get<long>(),
        r["frobenius"].get<double>(), r["spectral"].get<double>(), r["stable_rank"].get<double>(),
        r["effective_rank"].is_null() ? "-"
                                      : fmt("%.1f", r["effective_rank"].get<double>()).c_str(),
        rank_text("energy_rank_90").c_str(), rank_text("energy_rank_99").c_str(),
        rank_text("energy_rank_999").c_str(), r["break_even_rank"].get<long>(),
        r.contains("welore_class") ? r["welore_class"].get<std::string>().c_str() : "-");
    if (with_base) {
      if (r.contains("base")) {
        std::printf(" %6ld %9.3g %6ld", r["base"]["intruders"].get<long>(),
                    r["base"]["delta_relative_norm"].get<double>(),
                    r["base"]["delta_energy_rank_90"].get<long>());
      } else {
        std::printf(" %6s %9s %6s", "-", "-", "-");
      }
    }
    std::printf("\n");
  }
}

void write_overview(const fs::path& dir, const json& rows) {
  std::vector<lowrank::tools::overview_curve> curves;
  std::vector<std::string> groups;
  for (const json& r : rows) {
    const std::string kind = kind_of(r["name"].get<std::string>());
    auto it = std::find(groups.begin(), groups.end(), kind);
    if (it == groups.end()) it = groups.insert(groups.end(), kind);
    lowrank::tools::overview_curve c;
    c.values = r["singular_values"].get<std::vector<double>>();
    c.group = static_cast<int>(it - groups.begin());
    curves.push_back(std::move(c));
  }
  write_text_file(
      dir / "overview.svg",
      lowrank::tools::render_overview_svg(
          "normalised spectra of " + std::to_string(rows.size()) + " matrices", curves, groups),
      "lowrank-inspect --plots");
}

int run_inspect(const inspect_options& o) {
  json rows = json::array();
  json meta;
  if (!o.combine.empty()) {
    std::set<std::string> seen;
    for (const fs::path& part : o.combine) {
      const json doc = read_part(part);
      if (!doc.is_object() || !doc.contains("rows") || !doc["rows"].is_array()) {
        fail_usage("--combine: " + part.string() + " is not a lowrank-inspect --json report");
      }
      if (meta.is_null()) meta = doc["checkpoint"];
      for (const json& r : doc["rows"]) {
        if (!seen.insert(r["name"].get<std::string>()).second) {
          fail_usage("--combine: the tensor " + r["name"].get<std::string>() + " is in two parts");
        }
        rows.push_back(r);
      }
    }
    std::sort(rows.begin(), rows.end(),
              [](const json& a, const json& b) { return a["name"] < b["name"]; });
  } else {
    const io::checkpoint c = io::checkpoint::open(o.checkpoint);
    std::optional<io::checkpoint> base;
    if (o.base) base = io::checkpoint::open(*o.base);
    const auto mine = select(c, o.sel, o.shard);
    if (o.plots) fs::create_directories(*o.plots);
    progress bar(mine.size());
    for (const auto* e : mine) {
      const matrix_f w = c.matrix<float>(e->name);
      std::vector<double> s;
      std::vector<double> base_s;
      json row = inspect_row(*e, w, o, base, s, base_s);
      if (o.plots) {
        lowrank::tools::spectrum_plot plot;
        plot.title = e->name + "  " + std::to_string(w.rows()) + " x " + std::to_string(w.cols());
        plot.series.push_back({base ? "tuned" : "singular values", s});
        if (!base_s.empty()) plot.series.push_back({"base", base_s});
        const auto mark = [&](const char* key, const char* label) {
          const long v = row[key].get<long>();
          if (v > 0) plot.markers.emplace_back(static_cast<double>(v), label);
        };
        mark("energy_rank_90", "90%");
        mark("energy_rank_99", "99%");
        mark("break_even_rank", "break-even");
        write_text_file(*o.plots / (file_name_for(e->name) + ".svg"),
                        lowrank::tools::render_spectrum_svg(plot), "lowrank-inspect --plots");
      }
      rows.push_back(std::move(row));
      bar.step(e->name);
    }
    meta = {{"path", o.checkpoint.string()},
            {"files", c.files().size()},
            {"tensors", c.tensors().size()},
            {"shard", std::to_string(o.shard.index) + "/" + std::to_string(o.shard.count)},
            {"rank", o.rank},
            {"welore_tau", o.welore_tau},
            {"welore_min_ratio", o.welore_min_ratio}};
    if (o.base) meta["base"] = o.base->string();
  }
  const bool with_base =
      std::any_of(rows.begin(), rows.end(), [](const json& r) { return r.contains("base"); });
  print_table(rows, with_base);
  long params = 0;
  long low_rank = 0;
  for (const json& r : rows) {
    params += r["parameters"].get<long>();
    if (r.contains("welore_class") && r["welore_class"] == "LRC") ++low_rank;
  }
  std::printf(
      "%zu matrices, %ld parameters; %ld low-rank components (WeLore, tau %.4g, min ratio %.4g)\n",
      rows.size(), params, low_rank, o.welore_tau, o.welore_min_ratio);
  if (o.plots && !rows.empty()) write_overview(*o.plots, rows);
  if (o.json_out) {
    json doc;
    doc["tool"] = "lowrank-inspect";
    doc["checkpoint"] = meta;
    doc["rows"] = rows;
    write_text_file(*o.json_out, doc.dump(1) + "\n", "lowrank-inspect --json");
  }
  return 0;
}

// ------------------------------------------------------------------- compress

struct compress_options {
  fs::path checkpoint;
  double budget = 0;
  bool budget_given = false;
  lowrank::rank_allocation allocation = lowrank::rank_allocation::global;
  std::optional<fs::path> grams;
  std::optional<fs::path> out;
  std::optional<fs::path> report;
  index_t rank = 0;
  selection sel;
  std::optional<fs::path> compensate;
  index_t eora_rank = 0;
  shard_spec shard;
  std::optional<fs::path> spectra_out;  // --spectra: write the spectra and stop
  std::vector<fs::path> combine;        // --combine: the spectra of a sharded run
};

/// The settings a spectra file was made with: a run that combines it must use the same.
json spectra_settings(const compress_options& o) {
  return {{"checkpoint", fs::absolute(o.checkpoint).lexically_normal().string()},
          {"grams", o.grams ? fs::absolute(*o.grams).lexically_normal().string() : ""},
          {"rank", o.rank}};
}

/// Reads the spectra of `--combine` parts and checks they are this run's, once each.
std::vector<lowrank::matrix_spectrum> combine_spectra(const compress_options& o) {
  const json settings = spectra_settings(o);
  std::map<std::string, lowrank::matrix_spectrum> by_name;
  for (const fs::path& part : o.combine) {
    json doc = read_part(part);
    if (!doc.is_object() || doc.value("tool", "") != "lowrank-compress --spectra" ||
        !doc.contains("matrices") || !doc["matrices"].is_array()) {
      fail_usage("--combine: " + part.string() + " is not a lowrank-compress --spectra file");
    }
    if (doc["settings"] != settings) {
      fail_usage("--combine: " + part.string() + " was made with " + doc["settings"].dump() +
                 ", but this run has " + settings.dump());
    }
    for (const json& m : doc["matrices"]) {
      lowrank::matrix_spectrum s;
      try {
        s.name = m.at("name").get<std::string>();
        s.rows = m.at("rows").get<index_t>();
        s.cols = m.at("cols").get<index_t>();
        s.energy = m.at("energy").get<double>();
        s.singular_values = m.at("singular_values").get<std::vector<double>>();
      } catch (const json::exception& e) {
        fail_usage("--combine: " + part.string() + " has a malformed matrix (" + e.what() + ")");
      }
      if (by_name.contains(s.name))
        fail_usage("--combine: the tensor " + s.name + " is in two parts");
      by_name[s.name] = std::move(s);
    }
  }
  std::vector<lowrank::matrix_spectrum> out;
  for (auto& [name, s] : by_name) out.push_back(std::move(s));
  return out;
}

/// The Gram of a module from --grams (`<module>.gram`), whitened.
lowrank::gram_whitening gram_of(const io::checkpoint& grams, const std::string& tensor) {
  const std::string key = selection::module_of(tensor) + ".gram";
  if (!grams.contains(key)) {
    fail_usage("--grams has no tensor '" + key + "' for the weight '" + tensor +
               "' (tools/minilm_calibration.py writes one per nn.Linear)");
  }
  const Eigen::MatrixXd g = grams.matrix<double>(key);
  try {
    return lowrank::whiten_gram(g);
  } catch (const std::exception& e) {
    fail_usage("--grams: '" + key + "' is not usable: " + e.what());
  }
}

/// The weight a possibly factored checkpoint holds for `tensor`: the tensor itself, or the
/// product of its `<module>.lowrank_u` and `.lowrank_v`.
std::optional<matrix_f> weight_in(const io::checkpoint& c, const std::string& tensor) {
  if (c.contains(tensor)) return c.matrix<float>(tensor);
  const std::string module = selection::module_of(tensor);
  if (c.contains(module + ".lowrank_u") && c.contains(module + ".lowrank_v")) {
    return matrix_f(c.matrix<float>(module + ".lowrank_u") *
                    c.matrix<float>(module + ".lowrank_v"));
  }
  return std::nullopt;
}

int run_eora(const compress_options& o) {
  const io::checkpoint original = io::checkpoint::open(o.checkpoint);
  const io::checkpoint lossy = io::checkpoint::open(*o.compensate);
  std::optional<io::checkpoint> grams;
  if (o.grams) grams = io::checkpoint::open(*o.grams);
  const auto mine = select(original, o.sel, {});
  for (const fs::path& in : input_files(original))
    refuse_overwrite(*o.out / "adapter_model.safetensors", {in}, "--out");
  io::peft_adapter<float> adapter;
  adapter.config.r = o.eora_rank;
  adapter.config.lora_alpha = static_cast<double>(o.eora_rank);  // scaling 1: B A is the correction
  adapter.config.extra = {{"peft_type", "LORA"},
                          {"base_model_name_or_path", o.compensate->string()}};
  progress bar(mine.size());
  std::printf("%-48s %13s %6s %12s %12s\n", "module", "shape", "rank", "err before", "err after");
  for (const auto* e : mine) {
    const std::optional<matrix_f> wc = weight_in(lossy, e->name);
    if (!wc) {
      bar.step(e->name);
      continue;  // not in the lossy checkpoint: nothing to compensate
    }
    const matrix_f w = original.matrix<float>(e->name);
    if (wc->rows() != w.rows() || wc->cols() != w.cols()) {
      fail_usage("--compensate: '" + e->name + "' has another shape in " + o.compensate->string());
    }
    const index_t r = std::min<index_t>(o.eora_rank, std::min(w.rows(), w.cols()));
    std::optional<Eigen::MatrixXd> g;
    if (grams) {
      const std::string key = selection::module_of(e->name) + ".gram";
      if (!grams->contains(key)) fail_usage("--grams has no tensor '" + key + "'");
      g = grams->matrix<double>(key);
    }
    const auto corr = lowrank::eora_correction<float>(w, *wc, r, g ? &*g : nullptr);
    const Eigen::MatrixXd delta = (w - *wc).cast<double>();
    const Eigen::MatrixXd after = delta - (corr.b * corr.a).cast<double>();
    const auto measure = [&](const Eigen::MatrixXd& d) {
      if (!g) return d.norm() / w.cast<double>().norm();
      return std::sqrt(std::max(0.0, (d * *g * d.transpose()).trace())) /
             std::sqrt(
                 std::max(1e-300, (w.cast<double>() * *g * w.cast<double>().transpose()).trace()));
    };
    std::printf("%-48.48s %6ld x %-5ld %6ld %12.4g %12.4g\n", selection::module_of(e->name).c_str(),
                static_cast<long>(w.rows()), static_cast<long>(w.cols()), static_cast<long>(r),
                measure(delta), measure(after));
    io::peft_module<float> m;
    m.name = selection::module_of(e->name);
    m.rank = r;
    m.alpha = static_cast<double>(r);
    m.a = corr.a;
    m.b = corr.b;
    if (r != o.eora_rank) {
      adapter.config.rank_pattern.emplace_back(
          "^" + std::regex_replace(m.name, std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\$&)") + "$",
          r);
      adapter.config.alpha_pattern.emplace_back(adapter.config.rank_pattern.back().first,
                                                static_cast<double>(r));
    }
    adapter.modules.push_back(std::move(m));
    bar.step(e->name);
  }
  if (adapter.modules.empty())
    fail_usage("--compensate: no selected weight is in " + o.compensate->string());
  fs::create_directories(*o.out);
  io::write_peft_adapter(*o.out, adapter);
  std::printf("wrote a LoRA adapter of %zu modules to %s (errors: relative, %s)\n",
              adapter.modules.size(), o.out->string().c_str(),
              o.grams ? "of the layer outputs, ||dW X^T|| / ||W X^T||" : "of the weights");
  return 0;
}

int run_compress(const compress_options& o) {
  if (o.compensate) return run_eora(o);
  const io::checkpoint c = io::checkpoint::open(o.checkpoint);
  std::optional<io::checkpoint> grams;
  if (o.grams) grams = io::checkpoint::open(*o.grams);
  std::vector<fs::path> inputs = input_files(c);
  if (grams) {
    for (const auto& f : input_files(*grams)) inputs.push_back(f);
  }
  for (const auto& f : o.combine) inputs.push_back(f);
  if (o.spectra_out) refuse_overwrite(*o.spectra_out, inputs, "--spectra");
  const fs::path out = o.out ? *o.out : fs::path();
  const fs::path report = o.report ? *o.report : fs::path(out).replace_extension(".report.json");
  if (o.out) {
    refuse_overwrite(out, inputs, "--out");
    refuse_overwrite(report, inputs, "--report");
    if (fs::exists(out) && fs::exists(report) && fs::equivalent(out, report))
      fail_usage("--report is the same file as --out");
  }

  // Pass 1: the spectra (whitened with a Gram), or those of a sharded run's parts.
  std::vector<lowrank::matrix_spectrum> spectra;
  if (!o.combine.empty()) {
    spectra = combine_spectra(o);
    std::set<std::string> expected;
    for (const auto* e : select(c, o.sel, {})) expected.insert(e->name);
    for (const auto& m : spectra) {
      if (!expected.erase(m.name)) {
        fail_usage("--combine: the parts hold '" + m.name + "', which this run does not select");
      }
    }
    if (!expected.empty()) {
      fail_usage("--combine: no part holds '" + *expected.begin() + "' (" +
                 std::to_string(expected.size()) + " selected matrices missing)");
    }
  }
  const auto mine =
      o.combine.empty() ? select(c, o.sel, o.shard) : std::vector<const io::checkpoint::entry*>{};
  progress bar1(mine.size());
  for (const auto* e : mine) {
    const matrix_f w = c.matrix<float>(e->name);
    lowrank::matrix_spectrum m;
    m.name = e->name;
    m.rows = w.rows();
    m.cols = w.cols();
    if (grams) {
      const auto white = gram_of(*grams, e->name);
      const matrix_f target =
          (w.cast<double>() * white.l.triangularView<Eigen::Lower>()).cast<float>();
      m.singular_values = spectrum(target, o.rank);
      m.energy = squared_norm(target);
    } else {
      m.singular_values = spectrum(w, o.rank);
      m.energy = squared_norm(w);
    }
    spectra.push_back(std::move(m));
    bar1.step(e->name);
  }
  if (o.spectra_out) {
    json matrices = json::array();
    for (const auto& m : spectra) {
      matrices.push_back({{"name", m.name},
                          {"rows", m.rows},
                          {"cols", m.cols},
                          {"energy", m.energy},
                          {"singular_values", m.singular_values}});
    }
    const json doc = {
        {"tool", "lowrank-compress --spectra"},
        {"settings", spectra_settings(o)},
        {"shard", std::to_string(o.shard.index) + "/" + std::to_string(o.shard.count)},
        {"matrices", matrices}};
    write_text_file(*o.spectra_out, doc.dump(1) + "\n", "lowrank-compress --spectra");
    std::printf("wrote the spectra of %zu matrices to %s\n", spectra.size(),
                o.spectra_out->string().c_str());
    return 0;
  }
  const lowrank::compress_plan plan = lowrank::plan_compression(spectra, o.budget, o.allocation);

  // Pass 2: stream the output: untouched tensors byte for byte, factored ones as u, v.
  std::map<std::string, const lowrank::plan_entry*> planned;
  for (const auto& e : plan.entries) planned[e.name] = &e;
  std::vector<io::tensor_spec> specs;
  for (const auto& e : c.tensors()) {
    const auto it = planned.find(e.name);
    if (it == planned.end() || !it->second->factored) {
      specs.push_back({e.name, e.info.dtype_name, e.info.shape});
    } else {
      const std::string module = selection::module_of(e.name);
      const index_t k = it->second->rank;
      specs.push_back({module + ".lowrank_u", e.info.dtype_name, {it->second->rows, k}});
      specs.push_back({module + ".lowrank_v", e.info.dtype_name, {k, it->second->cols}});
    }
  }
  std::map<std::string, std::string> metadata = c.metadata();
  metadata.erase("total_size");
  metadata["lowrank"] = json({{"tool", "lowrank-compress"},
                              {"budget", o.budget},
                              {"allocation", lowrank::name(o.allocation)},
                              {"activation_aware", o.grams.has_value()}})
                            .dump();
  io::safetensors_writer writer(out, specs, metadata);
  std::map<std::string, json> measured;
  std::optional<matrix_f> pending_v;
  std::string pending_module;
  progress bar2(specs.size());
  while (!writer.done()) {
    const io::tensor_spec spec = writer.next();
    if (spec.name.ends_with(".lowrank_v") && pending_v &&
        pending_module + ".lowrank_v" == spec.name) {
      writer.write_matrix(*pending_v);
      pending_v.reset();
    } else if (spec.name.ends_with(".lowrank_u") && !c.contains(spec.name)) {
      const std::string module =
          spec.name.substr(0, spec.name.size() - std::string_view(".lowrank_u").size());
      const std::string tensor = module + ".weight";
      const lowrank::plan_entry& pe = *planned.at(tensor);
      const matrix_f w = c.matrix<float>(tensor);
      std::optional<lowrank::gram_whitening> white;
      if (grams) white = gram_of(*grams, tensor);
      // With --rank K the spectra were randomized: so are the factors (same q = 2).
      lowrank::factor_options how;
      how.randomized = o.rank > 0;
      const auto f = lowrank::factor_weight<float>(w, pe.rank, white ? &*white : nullptr, how);
      writer.write_matrix(f.u);
      pending_v = f.v;
      pending_module = module;
      measured[tensor] = {
          {"relative_error", f.relative_error},
          {"output_relative_error", grams ? json(f.output_relative_error) : json(nullptr)}};
    } else {
      writer.write_bytes(c.tensor_bytes(spec.name));
      c.release(spec.name);
    }
    bar2.step(spec.name);
  }
  writer.commit();

  json rows = json::array();
  std::printf("%-48s %13s %6s %10s %9s %9s %9s\n", "tensor", "shape", "rank", "params", "predicted",
              "weight", "output");
  for (const auto& e : plan.entries) {
    json r = {{"name", e.name},
              {"shape", {e.rows, e.cols}},
              {"factored", e.factored},
              {"rank", e.rank},
              {"parameters", e.parameters},
              {"original_parameters", std::int64_t{e.rows} * e.cols},
              {"predicted_relative_error", e.relative_error},
              {"predicted_error_of", grams ? "output" : "weight"}};
    double weight_err = 0;
    json output_err = grams ? json(0.0) : json(nullptr);
    if (e.factored) {
      weight_err = measured.at(e.name)["relative_error"].get<double>();
      output_err = measured.at(e.name)["output_relative_error"];
    }
    r["relative_error"] = weight_err;
    r["output_relative_error"] = output_err;
    std::printf("%-48.48s %6ld x %-5ld %6s %10ld %9.4f %9.4f %9s\n", e.name.c_str(),
                static_cast<long>(e.rows), static_cast<long>(e.cols),
                e.factored ? std::to_string(e.rank).c_str() : "dense",
                static_cast<long>(e.parameters), e.relative_error, weight_err,
                output_err.is_null() ? "-" : fmt("%.4f", output_err.get<double>()).c_str());
    rows.push_back(std::move(r));
  }
  std::printf(
      "kept %ld of %ld parameters (%.4f, budget %.4f) with '%s'%s; sum of squared relative errors "
      "%.6g\n",
      static_cast<long>(plan.parameters), static_cast<long>(plan.original_parameters),
      static_cast<double>(plan.parameters) / static_cast<double>(plan.original_parameters),
      o.budget, lowrank::name(o.allocation), grams ? ", activation-aware" : "",
      plan.squared_error_sum);
  json doc = {
      {"tool", "lowrank-compress"},
      {"checkpoint", o.checkpoint.string()},
      {"output", out.string()},
      {"budget", o.budget},
      {"allocation", lowrank::name(o.allocation)},
      {"activation_aware", o.grams.has_value()},
      {"spectra", o.rank > 0 ? "randomized, rank " + std::to_string(o.rank) : std::string("exact")},
      {"original_parameters", plan.original_parameters},
      {"parameters", plan.parameters},
      {"squared_error_sum", plan.squared_error_sum},
      {"threshold", plan.threshold},
      {"matrices", rows}};
  write_text_file(report, doc.dump(1) + "\n", "lowrank-compress --report");
  std::printf("wrote %s and %s\n", out.string().c_str(), report.string().c_str());
  return 0;
}

// ---------------------------------------------------------------------- merge

struct merge_options {
  fs::path base;
  fs::path adapter;
  std::optional<fs::path> out;
  bool unmerge = false;
  bool reduce_intruders = false;
  double lambda = 0.75;
};

/// `--reduce-intruders`: PEFT's reduce_intruder_dimension on every module, written as a new
/// adapter directory (the base is only read).
int run_reduce_intruders(const merge_options& o, const io::checkpoint& base,
                         const io::peft_adapter<double>& adapter) {
  if (adapter.config.use_dora) {
    fail_usage("--reduce-intruders works on LoRA adapters (as PEFT's reduce_intruder_dimension)");
  }
  io::peft_adapter<double> reduced = adapter;
  std::printf("%-48s %9s  %s\n", "module", "intruders", "max |cos| of the top directions");
  for (auto& m : reduced.modules) {
    const Eigen::MatrixXd w0 = base.matrix<double>(m.name + ".weight");
    const auto r =
        lowrank::reduce_intruder_dimension<double>(w0, m.b, m.a, m.scaling(), 10, 0.5, o.lambda);
    std::string cosines;
    for (const double c : r.intruders.max_abs_cos) cosines += fmt(" %.2f", c);
    std::printf("%-48.48s %9zu %s\n", m.name.c_str(), r.intruders.intruders.size(),
                cosines.c_str());
    m.b = r.b;
    m.a = r.a;
  }
  fs::create_directories(*o.out);
  io::write_peft_adapter(*o.out, reduced);
  std::printf("wrote the mitigated adapter (lambda %.3g kept of each intruder) to %s\n", o.lambda,
              o.out->string().c_str());
  return 0;
}

int run_merge(const merge_options& o) {
  const io::checkpoint base = io::checkpoint::open(o.base);
  const io::peft_adapter<double> adapter = io::read_peft_adapter<double>(o.adapter);
  if (o.unmerge && adapter.config.use_dora) {
    fail_usage(
        "--unmerge: a DoRA merge cannot be undone from the files (the row norms of "
        "W + s B A before the merge are not stored); keep the base instead");
  }
  if (o.reduce_intruders) {
    if (fs::exists(*o.out) && fs::exists(o.adapter) && fs::equivalent(*o.out, o.adapter)) {
      fail_usage("--out " + o.out->string() + " is the input adapter; write the output elsewhere");
    }
    return run_reduce_intruders(o, base, adapter);
  }
  std::vector<fs::path> inputs = input_files(base);
  inputs.push_back(o.adapter / "adapter_model.safetensors");
  inputs.push_back(o.adapter / "adapter_config.json");
  refuse_overwrite(*o.out, inputs, "--out");
  std::map<std::string, const io::peft_module<double>*> by_tensor;
  for (const auto& m : adapter.modules) {
    const std::string tensor = m.name + ".weight";
    const auto* e = base.find(tensor);
    if (e == nullptr) {
      fail_usage("the adapter's module '" + m.name + "' has no weight '" + tensor + "' in " +
                 o.base.string());
    }
    if (!e->info.type || e->info.shape.size() != 2 || e->info.shape[0] != m.b.rows() ||
        e->info.shape[1] != m.a.cols()) {
      fail_usage("the adapter's module '" + m.name + "' (" + std::to_string(m.b.rows()) + " x " +
                 std::to_string(m.a.cols()) + ") does not fit '" + tensor + "' of shape " +
                 io::detail::safetensors_shape_string(e->info.shape) + " and dtype " +
                 e->info.dtype_name);
    }
    by_tensor[tensor] = &m;
  }
  std::vector<io::tensor_spec> specs;
  for (const auto& e : base.tensors()) specs.push_back({e.name, e.info.dtype_name, e.info.shape});
  std::map<std::string, std::string> metadata = base.metadata();
  metadata.erase("total_size");
  io::safetensors_writer writer(*o.out, specs, metadata);
  progress bar(specs.size());
  while (!writer.done()) {
    const std::string name = writer.next().name;
    const auto it = by_tensor.find(name);
    if (it == by_tensor.end()) {
      writer.write_bytes(base.tensor_bytes(name));
      base.release(name);
    } else {
      // In double, rounded once to the base's dtype (lowrank's merge; PEFT rounds from float).
      const io::peft_module<double>& m = *it->second;
      const Eigen::MatrixXd w = base.matrix<double>(name);
      const Eigen::MatrixXd delta = m.scaling() * (m.b * m.a);
      Eigen::MatrixXd merged;
      if (o.unmerge) {
        merged = w - delta;
      } else if (m.magnitude.size() > 0) {
        merged = w + delta;
        const Eigen::VectorXd norms = merged.rowwise().norm();
        for (Eigen::Index i = 0; i < merged.rows(); ++i) {
          merged.row(i) *= norms(i) > 0 ? m.magnitude(i) / norms(i) : 0.0;
        }
      } else {
        merged = w + delta;
      }
      if (!merged.allFinite()) {
        throw lowrank::numerical_error("lowrank-merge: merging '" + m.name +
                                       "' gives a non-finite value");
      }
      writer.write_matrix(merged);
    }
    bar.step(name);
  }
  writer.commit();
  std::printf("%s %zu %s modules %s %s; wrote %s\n", o.unmerge ? "unmerged" : "merged",
              adapter.modules.size(), adapter.config.use_dora ? "DoRA" : "LoRA",
              o.unmerge ? "from" : "into", o.base.string().c_str(), o.out->string().c_str());
  return 0;
}

// ----------------------------------------------------------------------- main

int dispatch(std::string command, std::vector<std::string> args) {
  if (command != "inspect" && command != "compress" && command != "merge") {
    if (!args.empty() && (args[0] == "inspect" || args[0] == "compress" || args[0] == "merge")) {
      command = args[0];
      args.erase(args.begin());
    } else {
      fail_usage("call me as lowrank-inspect, lowrank-compress or lowrank-merge");
    }
  }
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;
  std::set<std::string> flags;
  std::vector<fs::path> combine;
  const std::set<std::string> takes_value = {
      "--base",   "--json",       "--plots",     "--rank",   "--target",     "--target-regex",
      "--shard",  "--welore-tau", "--budget",    "--out",    "--allocation", "--grams",
      "--report", "--compensate", "--eora-rank", "--lambda", "--spectra"};
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (a == "--combine") {
      while (i + 1 < args.size() && !args[i + 1].starts_with("--")) combine.emplace_back(args[++i]);
      if (combine.empty()) fail_usage("--combine needs the JSON reports to join");
    } else if (a == "--unmerge" || a == "--reduce-intruders") {
      flags.insert(a);
    } else if (takes_value.contains(a)) {
      if (i + 1 >= args.size()) fail_usage(a + " needs a value");
      values[a] = args[++i];
    } else if (a.starts_with("--")) {
      fail_usage("unknown option " + a);
    } else {
      positional.push_back(a);
    }
  }
  const auto take = [&](const std::string& key) -> std::optional<std::string> {
    const auto it = values.find(key);
    if (it == values.end()) return std::nullopt;
    std::string v = it->second;
    values.erase(it);
    return v;
  };
  selection sel;
  if (auto t = take("--target")) sel.names = split(*t, ',');
  if (auto r = take("--target-regex")) {
    if (!sel.names.empty()) fail_usage("--target and --target-regex exclude each other");
    try {
      sel.pattern = std::regex(*r);
      sel.pattern_text = *r;
    } catch (const std::regex_error& e) {
      fail_usage("--target-regex '" + *r + "' is not a regular expression (" + e.what() + ")");
    }
  }
  const auto finish = [&] {
    if (!values.empty())
      fail_usage(values.begin()->first + " does not apply to lowrank-" + command);
  };
  if (command == "inspect") {
    inspect_options o;
    o.sel = sel;
    o.combine = combine;
    if (combine.empty()) {
      if (positional.size() != 1) fail_usage("lowrank-inspect takes one checkpoint");
      o.checkpoint = positional[0];
    } else if (!positional.empty()) {
      fail_usage("--combine joins reports; give no checkpoint with it");
    }
    if (auto v = take("--base")) o.base = *v;
    if (auto v = take("--json")) o.json_out = *v;
    if (auto v = take("--plots")) o.plots = *v;
    if (auto v = take("--rank"))
      o.rank = static_cast<index_t>(parse_integer("--rank", *v, 1, 1 << 20));
    if (auto v = take("--shard")) o.shard = parse_shard(*v);
    if (auto v = take("--welore-tau")) {
      o.welore_tau = parse_number("--welore-tau", *v);
      if (!(o.welore_tau > 0 && o.welore_tau < 1))
        fail_usage("--welore-tau expects a value in (0, 1)");
    }
    finish();
    if (o.json_out) {
      std::vector<fs::path> inputs;
      if (!o.checkpoint.empty()) inputs = {o.checkpoint};
      for (const auto& f : combine) inputs.push_back(f);
      if (!o.checkpoint.empty()) {
        const auto c = io::checkpoint::open(o.checkpoint);
        inputs = input_files(c);
      }
      refuse_overwrite(*o.json_out, inputs, "--json");
    }
    return run_inspect(o);
  }
  if (command == "compress") {
    compress_options o;
    o.sel = sel;
    o.sel.weights_only = true;
    if (positional.size() != 1) fail_usage("lowrank-compress takes one checkpoint");
    o.checkpoint = positional[0];
    if (auto v = take("--out")) o.out = *v;
    if (auto v = take("--grams")) o.grams = *v;
    if (auto v = take("--rank"))
      o.rank = static_cast<index_t>(parse_integer("--rank", *v, 1, 1 << 20));
    o.combine = combine;
    if (auto v = take("--shard")) o.shard = parse_shard(*v);
    if (auto v = take("--spectra")) {
      // Phase one of a sharded run: the spectra of this shard only.
      o.spectra_out = *v;
      if (o.out || !combine.empty()) {
        fail_usage("--spectra writes spectra only: no --out or --combine");
      }
      finish();
      return run_compress(o);
    }
    if (o.shard.count > 1) {
      fail_usage(
          "--shard I/N computes the spectra of a share: give --spectra PART.json, then "
          "--combine the parts in a final run with --budget and --out");
    }
    if (!o.out) fail_usage("lowrank-compress needs --out");
    if (auto v = take("--compensate")) {
      o.compensate = *v;
      auto r = take("--eora-rank");
      if (!r) fail_usage("--compensate needs --eora-rank R");
      o.eora_rank = static_cast<index_t>(parse_integer("--eora-rank", *r, 1, 1 << 20));
      finish();
      return run_compress(o);
    }
    if (auto v = take("--budget")) {
      o.budget = parse_number("--budget", *v);
      if (!(o.budget > 0 && o.budget <= 1)) {
        fail_usage("--budget expects the fraction of parameters to keep, in (0, 1], not '" + *v +
                   "'");
      }
    } else {
      fail_usage("lowrank-compress needs --budget F (the fraction of parameters to keep)");
    }
    if (auto v = take("--allocation")) {
      const std::map<std::string, lowrank::rank_allocation> known = {
          {"uniform", lowrank::rank_allocation::uniform},
          {"energy", lowrank::rank_allocation::energy},
          {"welore", lowrank::rank_allocation::welore},
          {"global", lowrank::rank_allocation::global}};
      if (!known.contains(*v))
        fail_usage("--allocation expects uniform, energy, welore or global, not '" + *v + "'");
      o.allocation = known.at(*v);
    }
    if (auto v = take("--report")) o.report = *v;
    finish();
    return run_compress(o);
  }
  merge_options o;
  if (positional.size() != 2)
    fail_usage("lowrank-merge takes a base checkpoint and an adapter directory");
  o.base = positional[0];
  o.adapter = positional[1];
  o.unmerge = flags.contains("--unmerge");
  o.reduce_intruders = flags.contains("--reduce-intruders");
  if (auto v = take("--lambda")) {
    o.lambda = parse_number("--lambda", *v);
    if (!(o.lambda >= 0 && o.lambda <= 1)) fail_usage("--lambda expects the share kept, in [0, 1]");
    if (!o.reduce_intruders) fail_usage("--lambda applies to --reduce-intruders");
  }
  if (o.unmerge && o.reduce_intruders)
    fail_usage("--unmerge and --reduce-intruders exclude each other");
  if (auto v = take("--out"))
    o.out = *v;
  else
    fail_usage("lowrank-merge needs --out");
  finish();
  return run_merge(o);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string program = fs::path(argc > 0 ? argv[0] : "").filename().string();
  std::string command = program.starts_with("lowrank-") ? program.substr(8) : program;
  try {
    return dispatch(command, std::vector<std::string>(argv + 1, argv + argc));
  } catch (const usage_error& e) {
    std::fprintf(stderr, "%s: %s\n%s", program.c_str(), e.what(), usage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), e.what());
    return 1;
  }
}
