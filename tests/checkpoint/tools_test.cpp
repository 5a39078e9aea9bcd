// lowrank-inspect, lowrank-compress and lowrank-merge end to end (bench/checkpoint/main.cpp),
// run as programs on small checkpoints: against PEFT's merge_and_unload (fixtures from
// tools/make_checkpoint_fixtures.py), the intruder counts of the authors' definition, the
// compression report against the written factors, and bad input (clear error, nothing
// written, no input overwritten).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <Eigen/Core>
#include <Eigen/QR>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "io/io_test_support.hpp"
#include "lowrank/io/checkpoint.hpp"
#include "lowrank/io/peft.hpp"
#include "lowrank/io/safetensors.hpp"

#ifdef LOWRANK_TEST_TOOLS_DIR

namespace tools_tests {
namespace {

namespace fs = std::filesystem;
namespace io = lowrank::io;
using Eigen::MatrixXd;

const fs::path fixtures = LOWRANK_TEST_CHECKPOINT_FIXTURE_DIR;
const fs::path tools = LOWRANK_TEST_TOOLS_DIR;

struct run_result {
  int status = -1;
  std::string output;  // stdout and stderr
};

class checkpoint_tools : public io_test::scratch_directory_test {
 protected:
  checkpoint_tools() : scratch_directory_test("lowrank_tools_") {}

  run_result run(const std::string& program, const std::string& args) const {
    const fs::path log = dir_ / "log.txt";
    const std::string command =
        "'" + (tools / program).string() + "' " + args + " > '" + log.string() + "' 2>&1";
    const int raw = std::system(command.c_str());
    run_result r;
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    r.output = text.str();
    return r;
  }

  static std::string q(const fs::path& p) { return "'" + p.string() + "'"; }
};

// PEFT rounds the merge from float32; we round once from double. For BF16 and F16 the two
// agree on every entry of the fixture (a float32 error is far below their half ulp); for F32,
// within an ulp of the largest entry where W and s B A nearly cancel.
void expect_merged_like_peft(const fs::path& merged, const fs::path& expected) {
  const auto got = io::checkpoint::open(merged);
  const auto want = io::checkpoint::open(expected);
  ASSERT_EQ(got.tensors().size(), want.tensors().size());
  for (const auto& e : want.tensors()) {
    SCOPED_TRACE(e.name);
    ASSERT_TRUE(got.contains(e.name));
    EXPECT_EQ(got.find(e.name)->info.dtype_name, e.info.dtype_name);
    const MatrixXd a = got.matrix<double>(e.name);
    const MatrixXd b = want.matrix<double>(e.name);
    if (e.info.dtype_name == "F32") {
      EXPECT_LE((a - b).cwiseAbs().maxCoeff(), 0x1p-23 * b.cwiseAbs().maxCoeff());
    } else {
      EXPECT_TRUE(io_test::same_matrix(a, b));
    }
  }
}

TEST_F(checkpoint_tools, MergeMatchesPeftMergeAndUnload) {
  for (const std::string kind : {"lora", "dora"}) {
    SCOPED_TRACE(kind);
    const fs::path out = dir_ / (kind + ".safetensors");
    const auto r = run("lowrank-merge", q(fixtures / "merge_base.safetensors") + " " +
                                            q(fixtures / ("merge_" + kind)) + " --out " + q(out));
    ASSERT_EQ(r.status, 0) << r.output;
    expect_merged_like_peft(out, fixtures / ("merge_" + kind + "_expected.safetensors"));
  }
}

TEST_F(checkpoint_tools, UnmergeRestoresTheBaseToItsRounding) {
  const fs::path merged = dir_ / "merged.safetensors";
  const fs::path restored = dir_ / "restored.safetensors";
  ASSERT_EQ(run("lowrank-merge", q(fixtures / "merge_base.safetensors") + " " +
                                     q(fixtures / "merge_lora") + " --out " + q(merged))
                .status,
            0);
  const auto r = run("lowrank-merge", q(merged) + " " + q(fixtures / "merge_lora") +
                                          " --unmerge --out " + q(restored));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto base = io::checkpoint::open(fixtures / "merge_base.safetensors");
  const auto back = io::checkpoint::open(restored);
  for (const auto& e : base.tensors()) {
    SCOPED_TRACE(e.name);
    const MatrixXd a = back.matrix<double>(e.name);
    const MatrixXd b = base.matrix<double>(e.name);
    // Two roundings (merge, unmerge) of the dtype: at most one ulp of each entry apart, an
    // ulp being 2^-7 relative in BF16, 2^-10 in F16, 2^-23 in F32.
    const double ulp = e.info.dtype_name == "BF16"  ? 0x1p-7
                       : e.info.dtype_name == "F16" ? 0x1p-10
                                                    : 0x1p-23;
    EXPECT_LE((a - b).cwiseAbs().maxCoeff(), 2 * ulp * b.cwiseAbs().maxCoeff());
  }
  // DoRA cannot be undone from the files: a clear refusal, nothing written.
  const auto dora = run("lowrank-merge", q(merged) + " " + q(fixtures / "merge_dora") +
                                             " --unmerge --out " + q(dir_ / "x.safetensors"));
  EXPECT_EQ(dora.status, 2);
  EXPECT_NE(dora.output.find("a DoRA merge cannot be undone"), std::string::npos) << dora.output;
  EXPECT_FALSE(fs::exists(dir_ / "x.safetensors"));
}

TEST_F(checkpoint_tools, MergeRefusesToOverwriteItsInput) {
  fs::copy_file(fixtures / "merge_base.safetensors", dir_ / "base.safetensors");
  const auto before = io_test::read_bytes(dir_ / "base.safetensors");
  const auto r =
      run("lowrank-merge", q(dir_ / "base.safetensors") + " " + q(fixtures / "merge_lora") +
                               " --out " + q(dir_ / "." / "base.safetensors"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("is an input"), std::string::npos) << r.output;
  EXPECT_EQ(io_test::read_bytes(dir_ / "base.safetensors"), before);
}

// The authors' intruder definition on a LoRA-tuned model: merge the adapter with
// lowrank-merge, then inspect it against the base.
TEST_F(checkpoint_tools, InspectFindsThePeftFixturesIntruders) {
  const fs::path tuned = dir_ / "tuned.safetensors";
  ASSERT_EQ(run("lowrank-merge", q(fixtures / "intruder_base.safetensors") + " " +
                                     q(fixtures / "intruder_adapter") + " --out " + q(tuned))
                .status,
            0);
  const fs::path report = dir_ / "inspect.json";
  const auto r =
      run("lowrank-inspect", q(tuned) + " --base " + q(fixtures / "intruder_base.safetensors") +
                                 " --json " + q(report) + " --plots " + q(dir_ / "plots"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(report);
  const auto doc = nlohmann::json::parse(in);
  std::ifstream ein(fixtures / "intruder_expected.json");
  const auto expected = nlohmann::json::parse(ein);
  ASSERT_EQ(doc["rows"].size(), 2u);
  for (const auto& row : doc["rows"]) {
    const std::string module =
        row["name"].get<std::string>().substr(0, row["name"].get<std::string>().size() - 7);
    SCOPED_TRACE(module);
    const auto& x = expected["modules"][module];
    EXPECT_EQ(row["base"]["intruder_indices"], x["intruders"]);
    const auto got = row["base"]["max_abs_cos"].get<std::vector<double>>();
    const auto want = x["max_abs_cos"].get<std::vector<double>>();
    ASSERT_EQ(got.size(), want.size());
    // Both from float32 SVDs of matrices that agree to float rounding; the fixture keeps its
    // values 0.02 away from epsilon, so the counts cannot flip.
    for (std::size_t j = 0; j < got.size(); ++j) EXPECT_NEAR(got[j], want[j], 1e-3) << j;
  }
  EXPECT_TRUE(fs::exists(dir_ / "plots" / "overview.svg"));
  EXPECT_TRUE(fs::exists(dir_ / "plots" / "layers.0.q_proj.weight.svg"));
}

// --reduce-intruders writes PEFT's mitigated adapter: merged, it has fewer intruders.
TEST_F(checkpoint_tools, ReduceIntrudersWritesTheMitigatedAdapter) {
  const auto r =
      run("lowrank-merge", q(fixtures / "intruder_base.safetensors") + " " +
                               q(fixtures / "intruder_adapter") +
                               " --reduce-intruders --lambda 0 --out " + q(dir_ / "reduced"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto adapter = io::read_peft_adapter<double>(dir_ / "reduced");
  ASSERT_EQ(adapter.modules.size(), 2u);
  ASSERT_EQ(
      run("lowrank-merge", q(fixtures / "intruder_base.safetensors") + " " + q(dir_ / "reduced") +
                               " --out " + q(dir_ / "tuned.safetensors"))
          .status,
      0);
  const auto i = run("lowrank-inspect", q(dir_ / "tuned.safetensors") + " --base " +
                                            q(fixtures / "intruder_base.safetensors") + " --json " +
                                            q(dir_ / "i.json"));
  ASSERT_EQ(i.status, 0) << i.output;
  std::ifstream in(dir_ / "i.json");
  const auto doc = nlohmann::json::parse(in);
  // Removed entirely (lambda 0), q_proj's three intruders (the fixture's) are fewer now.
  EXPECT_LT(doc["rows"][0]["base"]["intruders"].get<int>(), 3) << doc["rows"][0]["base"].dump();
}

TEST_F(checkpoint_tools, InspectShardsCombineToTheWholeRun) {
  const fs::path ckpt = fixtures / "spectra.safetensors";
  ASSERT_EQ(run("lowrank-inspect", q(ckpt) + " --json " + q(dir_ / "all.json")).status, 0);
  ASSERT_EQ(run("lowrank-inspect", q(ckpt) + " --shard 1/2 --json " + q(dir_ / "p1.json")).status,
            0);
  ASSERT_EQ(run("lowrank-inspect", q(ckpt) + " --shard 2/2 --json " + q(dir_ / "p2.json")).status,
            0);
  const auto r =
      run("lowrank-inspect", "--combine " + q(dir_ / "p1.json") + " " + q(dir_ / "p2.json") +
                                 " --json " + q(dir_ / "joined.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream a(dir_ / "all.json");
  std::ifstream b(dir_ / "joined.json");
  std::ifstream p1(dir_ / "p1.json");
  const auto all = nlohmann::json::parse(a);
  const auto joined = nlohmann::json::parse(b);
  EXPECT_EQ(all["rows"], joined["rows"]);
  EXPECT_EQ(all["rows"].size(), 5u);  // the 2-D tensors; the 1-D bias is skipped
  EXPECT_LT(nlohmann::json::parse(p1)["rows"].size(), 5u);
  // The same part twice is refused.
  const auto twice =
      run("lowrank-inspect", "--combine " + q(dir_ / "p1.json") + " " + q(dir_ / "p1.json"));
  EXPECT_EQ(twice.status, 2);
  EXPECT_NE(twice.output.find("is in two parts"), std::string::npos) << twice.output;
}

// A small checkpoint: three weights with planted spectra, a bias, an embedding; BF16 and F32.
class compress_tools : public checkpoint_tools {
 protected:
  void SetUp() override {
    checkpoint_tools::SetUp();
    std::mt19937_64 gen(7);
    std::normal_distribution<double> normal;
    const auto gaussian = [&](Eigen::Index r, Eigen::Index c) {
      MatrixXd m(r, c);
      for (Eigen::Index j = 0; j < c; ++j) {
        for (Eigen::Index i = 0; i < r; ++i) m(i, j) = normal(gen);
      }
      return m;
    };
    const auto planted = [&](Eigen::Index r, Eigen::Index c, double decay) {
      const Eigen::Index p = std::min(r, c);
      Eigen::VectorXd s(p);
      for (Eigen::Index i = 0; i < p; ++i) s(i) = std::pow(decay, static_cast<double>(i));
      const Eigen::HouseholderQR<MatrixXd> qu(gaussian(r, p));
      const Eigen::HouseholderQR<MatrixXd> qv(gaussian(c, p));
      const MatrixXd u = qu.householderQ() * MatrixXd::Identity(r, p);
      const MatrixXd v = qv.householderQ() * MatrixXd::Identity(c, p);
      return MatrixXd(u * s.asDiagonal() * v.transpose());
    };
    io::write_safetensors(
        dir_ / "model.safetensors",
        {{"layers.0.q_proj.weight", io::dtype::bfloat16, planted(48, 32, 0.8), false},
         {"layers.0.down_proj.weight", io::dtype::float32, planted(32, 64, 0.95), false},
         {"layers.0.up_proj.weight", io::dtype::float32, planted(64, 32, 0.6), false},
         {"layers.0.up_proj.bias", io::dtype::float32, gaussian(64, 1), true},
         {"embed_tokens.weight", io::dtype::float32, gaussian(20, 32), false}},
        {{"format", "pt"}});
    // Anisotropic inputs for each layer's Gram.
    const auto gram = [&](Eigen::Index n) {
      MatrixXd x = gaussian(400, n);
      for (Eigen::Index j = 0; j < n; ++j) x.col(j) *= std::pow(0.85, static_cast<double>(j));
      return MatrixXd(x.transpose() * x);
    };
    io::write_safetensors(dir_ / "grams.safetensors",
                          {{"layers.0.q_proj.gram", io::dtype::float64, gram(32), false},
                           {"layers.0.down_proj.gram", io::dtype::float64, gram(64), false},
                           {"layers.0.up_proj.gram", io::dtype::float64, gram(32), false}});
  }
};

// Compress, then reconstruct: the written factors give the report's errors, the report's
// parameters fit the budget, untouched tensors are byte for byte the input's.
TEST_F(compress_tools, CompressThenReconstructEqualsTheReport) {
  for (const std::string allocation : {"uniform", "energy", "welore", "global"}) {
    SCOPED_TRACE(allocation);
    const fs::path out = dir_ / ("c_" + allocation + ".safetensors");
    const fs::path report = dir_ / ("c_" + allocation + ".json");
    const auto r =
        run("lowrank-compress", q(dir_ / "model.safetensors") + " --budget 0.4 --allocation " +
                                    allocation + " --out " + q(out) + " --report " + q(report));
    ASSERT_EQ(r.status, 0) << r.output;
    std::ifstream in(report);
    const auto doc = nlohmann::json::parse(in);
    EXPECT_LE(doc["parameters"].get<double>(), 0.4 * doc["original_parameters"].get<double>());
    EXPECT_EQ(doc["original_parameters"].get<long>(), 48 * 32 + 32 * 64 + 64 * 32);  // no embedding
    const auto original = io::checkpoint::open(dir_ / "model.safetensors");
    const auto compressed = io::checkpoint::open(out);
    for (const auto& m : doc["matrices"]) {
      const std::string name = m["name"];
      const std::string module = name.substr(0, name.size() - 7);
      if (!m["factored"].get<bool>()) {
        EXPECT_TRUE(compressed.contains(name));
        continue;
      }
      EXPECT_FALSE(compressed.contains(name));
      const MatrixXd u = compressed.matrix<double>(module + ".lowrank_u");
      const MatrixXd v = compressed.matrix<double>(module + ".lowrank_v");
      EXPECT_EQ(u.cols(), m["rank"].get<long>());
      const MatrixXd w = original.matrix<double>(name);
      const double err = (w - u * v).norm() / w.norm();
      // The report measures the factors before they are stored: BF16 storage adds up to
      // 2^-8 relative per entry.
      const double tol = original.find(name)->info.dtype_name == "BF16" ? 1e-2 : 1e-5;
      EXPECT_NEAR(err, m["relative_error"].get<double>(), tol) << name;
      // The exact SVD's error is the spectrum's prediction.
      EXPECT_NEAR(m["relative_error"].get<double>(), m["predicted_relative_error"].get<double>(),
                  1e-4)
          << name;
    }
    for (const std::string kept : {"layers.0.up_proj.bias", "embed_tokens.weight"}) {
      const auto a = original.tensor_bytes(kept);
      const auto b = compressed.tensor_bytes(kept);
      EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << kept;
    }
    EXPECT_EQ(compressed.metadata().at("format"), "pt");
  }
}

// A sharded run (spectra by shard, then one combining run) writes what one run writes.
TEST_F(compress_tools, ShardedSpectraCombineToTheSingleRun) {
  const std::string ckpt = q(dir_ / "model.safetensors");
  const std::string grams = " --grams " + q(dir_ / "grams.safetensors");
  ASSERT_EQ(
      run("lowrank-compress", ckpt + " --budget 0.4" + grams + " --out " +
                                  q(dir_ / "one.safetensors") + " --report " + q(dir_ / "one.json"))
          .status,
      0);
  for (int i = 1; i <= 2; ++i) {
    const auto r =
        run("lowrank-compress", ckpt + grams + " --shard " + std::to_string(i) + "/2 --spectra " +
                                    q(dir_ / ("part" + std::to_string(i) + ".json")));
    ASSERT_EQ(r.status, 0) << r.output;
  }
  const std::string parts = " --combine " + q(dir_ / "part1.json") + " " + q(dir_ / "part2.json");
  const auto r = run("lowrank-compress", ckpt + " --budget 0.4" + grams + parts + " --out " +
                                             q(dir_ / "two.safetensors") + " --report " +
                                             q(dir_ / "two.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(io_test::read_bytes(dir_ / "one.safetensors"),
            io_test::read_bytes(dir_ / "two.safetensors"));
  std::ifstream a(dir_ / "one.json");
  std::ifstream b(dir_ / "two.json");
  EXPECT_EQ(nlohmann::json::parse(a)["matrices"], nlohmann::json::parse(b)["matrices"]);
  // A part missing, a part twice, or parts made with other settings are refused.
  const auto missing =
      run("lowrank-compress", ckpt + " --budget 0.4" + grams + " --combine " +
                                  q(dir_ / "part1.json") + " --out " + q(dir_ / "x.safetensors"));
  EXPECT_EQ(missing.status, 2);
  EXPECT_NE(missing.output.find("selected matrices missing"), std::string::npos) << missing.output;
  const auto twice = run("lowrank-compress",
                         ckpt + " --budget 0.4" + grams + " --combine " + q(dir_ / "part1.json") +
                             " " + q(dir_ / "part1.json") + " --out " + q(dir_ / "x.safetensors"));
  EXPECT_NE(twice.output.find("is in two parts"), std::string::npos) << twice.output;
  const auto other = run("lowrank-compress",
                         ckpt + " --budget 0.4" + parts + " --out " + q(dir_ / "x.safetensors"));
  EXPECT_NE(other.output.find("was made with"), std::string::npos) << other.output;
  EXPECT_FALSE(fs::exists(dir_ / "x.safetensors"));
}

TEST_F(compress_tools, ActivationAwareLowersTheOutputError) {
  const auto compress = [&](const std::string& extra, const std::string& tag) {
    const fs::path report = dir_ / (tag + ".json");
    const auto r =
        run("lowrank-compress",
            q(dir_ / "model.safetensors") + " --budget 0.4 --allocation uniform --out " +
                q(dir_ / (tag + ".safetensors")) + " --report " + q(report) + " " + extra);
    EXPECT_EQ(r.status, 0) << r.output;
    std::ifstream in(report);
    return nlohmann::json::parse(in);
  };
  const auto plain = compress("", "plain");
  const auto aware = compress("--grams " + q(dir_ / "grams.safetensors"), "aware");
  // The output error of the plain factors, with the same Grams.
  const auto grams = io::checkpoint::open(dir_ / "grams.safetensors");
  const auto original = io::checkpoint::open(dir_ / "model.safetensors");
  const auto plain_ckpt = io::checkpoint::open(dir_ / "plain.safetensors");
  for (std::size_t j = 0; j < 3; ++j) {
    const auto& a = aware["matrices"][j];
    const std::string name = a["name"];
    ASSERT_EQ(plain["matrices"][j]["name"], name);
    if (!a["factored"].get<bool>()) continue;
    const std::string module = name.substr(0, name.size() - 7);
    const MatrixXd g = grams.matrix<double>(module + ".gram");
    const MatrixXd w = original.matrix<double>(name);
    const MatrixXd d = w - plain_ckpt.matrix<double>(module + ".lowrank_u") *
                               plain_ckpt.matrix<double>(module + ".lowrank_v");
    const double plain_output =
        std::sqrt((d * g * d.transpose()).trace() / (w * g * w.transpose()).trace());
    EXPECT_LT(a["output_relative_error"].get<double>(), plain_output) << name;
    EXPECT_GT(a["relative_error"].get<double>(),
              plain["matrices"][j]["relative_error"].get<double>())
        << name;
  }
}

TEST_F(compress_tools, BadInputGivesAClearErrorAndWritesNothing) {
  const std::string ckpt = q(dir_ / "model.safetensors");
  const fs::path out = dir_ / "out.safetensors";
  const auto refused = [&](const std::string& args, const std::string& reason, int status = 2) {
    const auto r = run("lowrank-compress", args);
    EXPECT_EQ(r.status, status) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(reason), std::string::npos) << args << "\n" << r.output;
    EXPECT_FALSE(fs::exists(out)) << args;
  };
  refused(ckpt + " --budget 1.5 --out " + q(out),
          "--budget expects the fraction of parameters to keep, in (0, 1]");
  refused(ckpt + " --budget 0 --out " + q(out), "in (0, 1]");
  refused(ckpt + " --budget 0.5 --target nothing_here --out " + q(out),
          "match no 2-D floating-point tensor");
  refused(ckpt + " --budget 0.5 --allocation best --out " + q(out),
          "--allocation expects uniform, energy, welore or global");
  refused(ckpt + " --budget 0.001 --out " + q(out), "every matrix at rank 1 already keeps", 1);
  // The output is the input.
  const auto before = io_test::read_bytes(dir_ / "model.safetensors");
  const auto same =
      run("lowrank-compress", ckpt + " --budget 0.5 --out " + q(dir_ / "model.safetensors"));
  EXPECT_EQ(same.status, 2);
  EXPECT_NE(same.output.find("is an input"), std::string::npos) << same.output;
  EXPECT_EQ(io_test::read_bytes(dir_ / "model.safetensors"), before);
  // A truncated checkpoint.
  auto bytes = before;
  bytes.resize(bytes.size() / 2);
  io_test::write_bytes(dir_ / "cut.safetensors", bytes);
  refused(q(dir_ / "cut.safetensors") + " --budget 0.5 --out " + q(out), "cut.safetensors", 1);
  // A Gram that is not positive semidefinite.
  MatrixXd bad = MatrixXd::Identity(32, 32);
  bad(0, 0) = -5;
  io::write_safetensors(dir_ / "bad_grams.safetensors",
                        {{"layers.0.q_proj.gram", io::dtype::float64, bad, false}});
  refused(ckpt + " --budget 0.5 --target q_proj --grams " + q(dir_ / "bad_grams.safetensors") +
              " --out " + q(out),
          "a positive semidefinite matrix (X^T X)");
  refused(ckpt + " --budget 0.5 --grams " + q(dir_ / "bad_grams.safetensors") + " --out " + q(out),
          "has no tensor 'layers.0.down_proj.gram'");
}

// EoRA: compensate a lossy checkpoint (ours, at a low budget) with a PEFT adapter, then merge
// that adapter back with lowrank-merge: the output error drops.
TEST_F(compress_tools, EoraAdapterCompensatesAndMerges) {
  // A lossy checkpoint of plain weights: the original's weights rounded to BF16 coarsely
  // (scaled by 8 first) stand in for any quantizer.
  const auto original = io::checkpoint::open(dir_ / "model.safetensors");
  std::vector<io::tensor_to_write> lossy;
  for (const auto& e : original.tensors()) {
    if (e.info.shape.size() != 2) continue;
    MatrixXd w = original.matrix<double>(e.name);
    w = (w * 8).array().round().matrix() / 8;
    lossy.push_back({e.name, io::dtype::float32, w, false});
  }
  io::write_safetensors(dir_ / "lossy.safetensors", lossy);
  const fs::path adapter = dir_ / "eora";
  const auto r =
      run("lowrank-compress", q(dir_ / "model.safetensors") + " --compensate " +
                                  q(dir_ / "lossy.safetensors") + " --eora-rank 4 --grams " +
                                  q(dir_ / "grams.safetensors") + " --out " + q(adapter));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto peft = io::read_peft_adapter<double>(adapter);
  ASSERT_EQ(peft.modules.size(), 3u);
  const fs::path merged = dir_ / "merged.safetensors";
  ASSERT_EQ(
      run("lowrank-merge", q(dir_ / "lossy.safetensors") + " " + q(adapter) + " --out " + q(merged))
          .status,
      0);
  const auto grams = io::checkpoint::open(dir_ / "grams.safetensors");
  const auto before = io::checkpoint::open(dir_ / "lossy.safetensors");
  const auto after = io::checkpoint::open(merged);
  for (const auto& m : peft.modules) {
    SCOPED_TRACE(m.name);
    const MatrixXd g = grams.matrix<double>(m.name + ".gram");
    const MatrixXd w = original.matrix<double>(m.name + ".weight");
    const auto out_err = [&](const MatrixXd& approx) {
      const MatrixXd d = w - approx;
      return std::sqrt((d * g * d.transpose()).trace());
    };
    EXPECT_LT(out_err(after.matrix<double>(m.name + ".weight")),
              0.9 * out_err(before.matrix<double>(m.name + ".weight")));
  }
}

// The real all-MiniLM-L6-v2, when LOWRANK_TEST_MINILM names the directory that
// tools/minilm_calibration.py writes (model/ and grams.safetensors); skipped otherwise.
TEST_F(checkpoint_tools, RealMiniLmWhenPresent) {
  const char* root = std::getenv("LOWRANK_TEST_MINILM");
  if (root == nullptr || !fs::exists(fs::path(root) / "model" / "model.safetensors")) {
    GTEST_SKIP()
        << "set LOWRANK_TEST_MINILM to the output directory of tools/minilm_calibration.py";
  }
  const fs::path model = fs::path(root) / "model";
  const auto i = run("lowrank-inspect", q(model) + " --json " + q(dir_ / "i.json"));
  ASSERT_EQ(i.status, 0) << i.output;
  std::ifstream in(dir_ / "i.json");
  const auto doc = nlohmann::json::parse(in);
  EXPECT_EQ(doc["rows"].size(), 40u);  // the I64 position_ids is not a weight
  const auto c = run("lowrank-compress",
                     q(model) + " --budget 0.5 --grams " + q(fs::path(root) / "grams.safetensors") +
                         " --out " + q(dir_ / "c.safetensors") + " --report " + q(dir_ / "c.json"));
  ASSERT_EQ(c.status, 0) << c.output;
  std::ifstream rin(dir_ / "c.json");
  const auto report = nlohmann::json::parse(rin);
  EXPECT_LE(report["parameters"].get<double>(), 0.5 * report["original_parameters"].get<double>());
  EXPECT_EQ(report["matrices"].size(), 37u);
}

}  // namespace
}  // namespace tools_tests

#endif  // LOWRANK_TEST_TOOLS_DIR
