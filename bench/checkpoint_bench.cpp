// Whole checkpoints: lowrank-inspect and lowrank-compress on a synthetic LLaMA-shaped
// checkpoint of about 1.5 GB in BF16 (TinyLlama's shapes, 14 layers, two shards and an index),
// and the spectrum of one matrix of each shape, exact against randomized.
//
//   scripts/bench checkpoint                       # generates the checkpoint once, in /tmp
//   LOWRANK_BENCH_CHECKPOINT_DIR=/data/llama scripts/bench checkpoint
//   LOWRANK_BENCH_MINILM=/tmp/minilm/model scripts/bench checkpoint   # and the real MiniLM
//
// The programs run as child processes (lowrank-inspect next to this binary, in
// build/bench/bench/checkpoint/), so their peak resident set is the child's own (wait4's
// ru_maxrss); the target is at most 3 x the largest tensor converted to float. Counters:
// seconds, peak_rss_mib, largest_tensor_mib (float) and rss_over_largest.

#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <Eigen/Core>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <lowrank/io/checkpoint.hpp>
#include <lowrank/io/safetensors_writer.hpp>
#include <lowrank/lowrank.hpp>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

namespace fs = std::filesystem;
namespace io = lowrank::io;

constexpr int layers = 14;
constexpr Eigen::Index hidden = 2048;
constexpr Eigen::Index intermediate = 5632;
constexpr Eigen::Index kv = 256;  // 4 key-value heads of 64, as TinyLlama
constexpr Eigen::Index vocab = 32000;

fs::path checkpoint_dir() {
  const char* dir = std::getenv("LOWRANK_BENCH_CHECKPOINT_DIR");
  return dir != nullptr ? fs::path(dir) : fs::temp_directory_path() / "lowrank_bench_llama";
}

/// A weight like a trained one: a rank-64 part with a 1/i spectrum plus small full-rank
/// noise, from a counter-based hash (fast, reproducible).
Eigen::MatrixXf synthetic(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
  const Eigen::Index r = 64;
  const auto noise = [seed](std::uint64_t i) {
    std::uint64_t z = (i + seed * 0x9e3779b97f4a7c15ULL) * 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 31;
    z *= 0x94d049bb133111ebULL;
    z ^= z >> 29;
    return static_cast<float>(static_cast<double>(z >> 11) * 0x1p-53 - 0.5);
  };
  Eigen::MatrixXf left(rows, r);
  Eigen::MatrixXf right(r, cols);
  for (Eigen::Index j = 0; j < r; ++j) {
    for (Eigen::Index i = 0; i < rows; ++i) {
      left(i, j) = noise(static_cast<std::uint64_t>(j * rows + i)) / static_cast<float>(j + 1);
    }
  }
  for (Eigen::Index j = 0; j < cols; ++j) {
    for (Eigen::Index i = 0; i < r; ++i) {
      right(i, j) = noise(static_cast<std::uint64_t>(0x100000000LL + j * r + i));
    }
  }
  Eigen::MatrixXf w = left * right;
  const float scale = 0.02f;
  for (Eigen::Index j = 0; j < cols; ++j) {
    for (Eigen::Index i = 0; i < rows; ++i) {
      w(i, j) += scale * noise(static_cast<std::uint64_t>(0x200000000LL + j * rows + i));
    }
  }
  return w;
}

struct tensor_plan {
  std::string name;
  Eigen::Index rows;
  Eigen::Index cols;  // 0: a vector of `rows`
};

std::vector<tensor_plan> llama_tensors() {
  std::vector<tensor_plan> t = {{"model.embed_tokens.weight", vocab, hidden},
                                {"model.norm.weight", hidden, 0},
                                {"lm_head.weight", vocab, hidden}};
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const auto& [name, rows, cols] :
         std::vector<tensor_plan>{{"self_attn.q_proj.weight", hidden, hidden},
                                  {"self_attn.k_proj.weight", kv, hidden},
                                  {"self_attn.v_proj.weight", kv, hidden},
                                  {"self_attn.o_proj.weight", hidden, hidden},
                                  {"mlp.gate_proj.weight", intermediate, hidden},
                                  {"mlp.up_proj.weight", intermediate, hidden},
                                  {"mlp.down_proj.weight", hidden, intermediate},
                                  {"input_layernorm.weight", hidden, 0},
                                  {"post_attention_layernorm.weight", hidden, 0}}) {
      t.push_back({p + name, rows, cols});
    }
  }
  return t;
}

/// Writes the checkpoint once (two shards and an index), streamed tensor by tensor.
fs::path ensure_checkpoint() {
  const fs::path dir = checkpoint_dir();
  if (fs::exists(dir / io::checkpoint_index_name)) return dir;
  fs::create_directories(dir);
  const auto all = llama_tensors();
  std::string map;
  for (int shard = 0; shard < 2; ++shard) {
    const std::string file = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
    std::vector<io::tensor_spec> specs;
    std::vector<const tensor_plan*> mine;
    for (std::size_t k = 0; k < all.size(); ++k) {
      // Shard 1: the embeddings, norm and the first half of the layers.
      const bool first =
          all[k].name.find("layers.") == std::string::npos ||
          std::stoi(all[k].name.substr(all[k].name.find("layers.") + 7)) < layers / 2;
      if (first != (shard == 0)) continue;
      mine.push_back(&all[k]);
      specs.push_back({all[k].name, "BF16",
                       all[k].cols == 0 ? std::vector<std::int64_t>{all[k].rows}
                                        : std::vector<std::int64_t>{all[k].rows, all[k].cols}});
      map += std::string(map.empty() ? "" : ",\n") + "\"" + all[k].name + "\": \"" + file + "\"";
    }
    io::safetensors_writer w(dir / file, specs, {{"format", "pt"}});
    while (!w.done()) {
      const std::string name = w.next().name;
      const auto* t =
          *std::find_if(mine.begin(), mine.end(), [&](const auto* p) { return p->name == name; });
      if (t->cols == 0) {
        w.write_matrix(Eigen::VectorXf::Ones(t->rows));
      } else {
        w.write_matrix(synthetic(t->rows, t->cols, std::hash<std::string>{}(name)));
      }
    }
    w.commit();
  }
  std::FILE* f = std::fopen((dir / io::checkpoint_index_name).c_str(), "w");
  std::fprintf(f, "{\"metadata\": {}, \"weight_map\": {\n%s}}\n", map.c_str());
  std::fclose(f);
  return dir;
}

fs::path tool(const char* name) {
  return fs::read_symlink("/proc/self/exe").parent_path() / "checkpoint" / name;
}

struct child_result {
  double seconds = 0;
  double peak_rss_mib = 0;
  int status = -1;
};

/// The resident set of this process now, in MiB.
double resident_mib() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  long size = 0;
  long resident = 0;
  if (f != nullptr) {
    if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

/// Runs a program, its output to /dev/null, and measures it. fork() and exec, not
/// posix_spawn: a vfork-style child shares this process's memory until it execs, and its
/// ru_maxrss then starts from this process's peak; a forked child's starts from this process's
/// resident set at the fork (reported as parent_rss_mib, an upper bound on the error).
child_result run(const fs::path& program, std::vector<std::string> args) {
  args.insert(args.begin(), program.string());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const auto start = std::chrono::steady_clock::now();
  child_result r;
  const pid_t pid = fork();
  if (pid < 0) return r;
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, STDOUT_FILENO);
    execv(program.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  rusage usage{};
  wait4(pid, &status, 0, &usage);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.peak_rss_mib = static_cast<double>(usage.ru_maxrss) / 1024.0;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

void report(benchmark::State& state, const child_result& r, const fs::path& checkpoint) {
  const auto c = io::checkpoint::open(checkpoint);
  const double largest = static_cast<double>(c.largest_tensor_elements()) * 4 / (1 << 20);
  state.counters["seconds"] = r.seconds;
  state.counters["peak_rss_mib"] = r.peak_rss_mib;
  state.counters["largest_tensor_mib"] = largest;
  state.counters["rss_over_largest"] = r.peak_rss_mib / largest;
  state.counters["checkpoint_gb"] = static_cast<double>(c.data_bytes()) / 1e9;
  state.counters["parent_rss_mib"] = resident_mib();
  if (r.status != 0) state.SkipWithError("the program failed");
}

fs::path scratch(const char* name) { return fs::temp_directory_path() / name; }

/// lowrank-inspect over the whole checkpoint, randomized spectra (rank 64).
void BM_inspect_llama(benchmark::State& state) {
  const fs::path ckpt = ensure_checkpoint();
  for (auto _ : state) {
    const auto r =
        run(tool("lowrank-inspect"), {ckpt.string(), "--rank", std::to_string(state.range(0)),
                                      "--json", scratch("lowrank_bench_inspect.json").string()});
    report(state, r, ckpt);
  }
}
BENCHMARK(BM_inspect_llama)->Arg(64)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

/// lowrank-compress to 10% of the layers' parameters, global allocation, randomized spectra
/// and factors (rank 256: the allocation's ranks stay below it).
void BM_compress_llama(benchmark::State& state) {
  const fs::path ckpt = ensure_checkpoint();
  for (auto _ : state) {
    const auto r = run(tool("lowrank-compress"),
                       {ckpt.string(), "--budget", "0.1", "--allocation", "global", "--rank", "256",
                        "--out", scratch("lowrank_bench_compressed.safetensors").string()});
    report(state, r, ckpt);
    fs::remove(scratch("lowrank_bench_compressed.safetensors"));
  }
}
BENCHMARK(BM_compress_llama)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

/// The same on the real all-MiniLM-L6-v2 when LOWRANK_BENCH_MINILM names its directory
/// (tools/minilm_calibration.py extracts it): exact spectra, then a compression to half.
void minilm(benchmark::State& state, const char* program, std::vector<std::string> args) {
  const char* dir = std::getenv("LOWRANK_BENCH_MINILM");
  if (dir == nullptr) {
    state.SkipWithError("set LOWRANK_BENCH_MINILM to the extracted model directory");
    for (auto _ : state) {
    }
    return;
  }
  args.insert(args.begin(), dir);
  for (auto _ : state) report(state, run(tool(program), args), dir);
}

void BM_inspect_minilm(benchmark::State& state) {
  minilm(state, "lowrank-inspect", {"--json", scratch("lowrank_bench_minilm.json").string()});
}
BENCHMARK(BM_inspect_minilm)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

void BM_compress_minilm(benchmark::State& state) {
  minilm(state, "lowrank-compress",
         {"--budget", "0.5", "--allocation", "global", "--out",
          scratch("lowrank_bench_minilm.safetensors").string()});
}
BENCHMARK(BM_compress_minilm)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

/// One matrix's spectrum: exact (values only) against randomized at rank 64.
void BM_spectrum(benchmark::State& state) {
  const Eigen::Index rows = state.range(0);
  const Eigen::Index cols = state.range(1);
  const bool exact = state.range(2) == 0;
  const Eigen::MatrixXf w = synthetic(rows, cols, 1);
  for (auto _ : state) {
    std::vector<double> s;
    if (exact) {
      s = lowrank::spectrum_of<float>(w);
    } else {
      const auto r = lowrank::randomized_svd(w, 64);
      s.assign(r.s.data(), r.s.data() + r.s.size());
    }
    benchmark::DoNotOptimize(s.data());
  }
  state.SetLabel(exact ? "exact" : "randomized k=64 q=2");
}
BENCHMARK(BM_spectrum)
    ->Args({kv, hidden, 0})
    ->Args({kv, hidden, 1})
    ->Args({hidden, hidden, 0})
    ->Args({hidden, hidden, 1})
    ->Args({intermediate, hidden, 0})
    ->Args({intermediate, hidden, 1})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  lowrank::bench::set_blas_threads(1);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
