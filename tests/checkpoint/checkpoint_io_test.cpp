// Checkpoints at scale (lowrank/io/checkpoint.hpp, lowrank/io/safetensors_writer.hpp):
// memory-mapped safetensors files, sharded checkpoints through their index, and the
// streaming writer; malformed checkpoints and index files give a clear error and write
// nothing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <Eigen/Core>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/io_test_support.hpp"
#include "lowrank/io/checkpoint.hpp"
#include "lowrank/io/safetensors.hpp"
#include "lowrank/io/safetensors_writer.hpp"

namespace checkpoint_io_tests {
namespace {

namespace io = lowrank::io;
using io_test::error_message;
using io_test::same_matrix;

class checkpoint_io : public io_test::scratch_directory_test {
 protected:
  checkpoint_io() : scratch_directory_test("lowrank_checkpoint_") {}

  // A small model: a BF16 matrix, an F16 matrix, an F32 vector.
  std::vector<io::tensor_to_write> model() const {
    // Deterministic values in (-1, 1).
    const auto values = [](Eigen::Index rows, Eigen::Index cols, double seed) {
      return Eigen::MatrixXd::NullaryExpr(rows, cols,
                                          [=](Eigen::Index i, Eigen::Index j) {
                                            return std::sin(seed + 1.7 * static_cast<double>(i) +
                                                            0.9 * static_cast<double>(j * j));
                                          })
          .eval();
    };
    const Eigen::MatrixXd q = values(6, 4, 1);
    const Eigen::MatrixXd v = values(3, 4, 2);
    const Eigen::MatrixXd n = values(4, 1, 3);
    return {{"layers.0.q_proj.weight", io::dtype::bfloat16, q, false},
            {"layers.0.v_proj.weight", io::dtype::float16, v, false},
            {"norm.weight", io::dtype::float32, n, true}};
  }

  void write_text(const std::filesystem::path& file, const std::string& text) const {
    std::ofstream out(file);
    out << text;
  }

  // Two shards and their index.
  void write_sharded() const {
    const auto t = model();
    io::write_safetensors(dir_ / "model-00001-of-00002.safetensors", {t[0], t[2]});
    io::write_safetensors(dir_ / "model-00002-of-00002.safetensors", {t[1]});
    write_text(dir_ / "model.safetensors.index.json",
               R"({"metadata": {"total_size": 80},
                   "weight_map": {"layers.0.q_proj.weight": "model-00001-of-00002.safetensors",
                                  "norm.weight": "model-00001-of-00002.safetensors",
                                  "layers.0.v_proj.weight": "model-00002-of-00002.safetensors"}})");
  }
};

TEST_F(checkpoint_io, MappedFileReadsWhatTheInMemoryReaderReads) {
  const auto t = model();
  io::write_safetensors(dir_ / "m.safetensors", t, {{"format", "pt"}});
  const auto in_memory = io::safetensors_file::read(dir_ / "m.safetensors");
  const auto mapped = io::safetensors_file::map(dir_ / "m.safetensors");
  EXPECT_TRUE(mapped.is_mapped());
  EXPECT_FALSE(in_memory.is_mapped());
  EXPECT_EQ(mapped.metadata(), in_memory.metadata());
  EXPECT_EQ(mapped.file_size(), in_memory.file_size());
  for (const auto& [name, info] : in_memory.tensors()) {
    // Twice: the pages handed back after the first conversion are read again.
    for (int pass = 0; pass < 2; ++pass) {
      EXPECT_TRUE(same_matrix(mapped.matrix<float>(name), in_memory.matrix<float>(name))) << name;
    }
    const auto a = mapped.tensor_bytes(name);
    const auto b = in_memory.tensor_bytes(name);
    EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << name;
  }
  // A copy shares the mapping and outlives the original.
  std::optional<io::safetensors_file> copy;
  {
    const auto original = io::safetensors_file::map(dir_ / "m.safetensors");
    copy = original;
  }
  EXPECT_TRUE(
      same_matrix(copy->matrix<double>("norm.weight"), in_memory.matrix<double>("norm.weight")));
}

TEST_F(checkpoint_io, MappedFileRefusesWhatReadRefuses) {
  const std::string missing =
      error_message([&] { (void)io::safetensors_file::map(dir_ / "none"); });
  EXPECT_NE(missing.find("lowrank::io::safetensors_file::map: argument 'file' is"),
            std::string::npos)
      << missing;
  EXPECT_NE(missing.find("which does not exist"), std::string::npos) << missing;
  EXPECT_NE(error_message([&] { (void)io::safetensors_file::map(dir_); }).find("a directory"),
            std::string::npos);
  io_test::write_bytes(dir_ / "empty.safetensors", {});
  EXPECT_NE(error_message([&] {
              (void)io::safetensors_file::map(dir_ / "empty.safetensors");
            }).find("with only 0 bytes"),
            std::string::npos);
  // Truncated: the header claims tensors past the end.
  io::write_safetensors(dir_ / "m.safetensors", model());
  auto bytes = io_test::read_bytes(dir_ / "m.safetensors");
  bytes.resize(bytes.size() - 3);
  io_test::write_bytes(dir_ / "cut.safetensors", bytes);
  const std::string cut =
      error_message([&] { (void)io::safetensors_file::map(dir_ / "cut.safetensors"); });
  EXPECT_NE(cut.find("cut.safetensors"), std::string::npos) << cut;
}

TEST_F(checkpoint_io, SingleFileAndDirectory) {
  const auto t = model();
  io::write_safetensors(dir_ / "model.safetensors", t, {{"format", "pt"}});
  for (const auto& path : {dir_ / "model.safetensors", dir_}) {
    const auto c = io::checkpoint::open(path);
    ASSERT_EQ(c.tensors().size(), 3u);
    EXPECT_EQ(c.tensors()[0].name, "layers.0.q_proj.weight");  // sorted
    EXPECT_EQ(c.files().size(), 1u);
    EXPECT_TRUE(c.index_file().empty());
    EXPECT_EQ(c.metadata().at("format"), "pt");
    EXPECT_TRUE(c.contains("norm.weight"));
    EXPECT_FALSE(c.contains("norm"));
    EXPECT_EQ(c.largest_tensor_elements(), 24);
    // BF16 and F16 convert exactly: the values are the written ones rounded once.
    const auto bf = io::safetensors_file::read(dir_ / "model.safetensors");
    EXPECT_TRUE(same_matrix(c.matrix<double>("layers.0.q_proj.weight"),
                            bf.matrix<double>("layers.0.q_proj.weight")));
  }
}

TEST_F(checkpoint_io, ShardedCheckpointThroughItsIndex) {
  write_sharded();
  const auto whole_dir = dir_ / "whole";
  std::filesystem::create_directories(whole_dir);
  io::write_safetensors(whole_dir / "model.safetensors", model());
  const auto whole = io::checkpoint::open(whole_dir);
  for (const auto& path : {dir_, dir_ / "model.safetensors.index.json"}) {
    const auto c = io::checkpoint::open(path);
    ASSERT_EQ(c.tensors().size(), 3u);
    EXPECT_EQ(c.files().size(), 2u);
    EXPECT_EQ(c.index_file(), dir_ / "model.safetensors.index.json");
    EXPECT_EQ(c.metadata().at("total_size"), "80");
    EXPECT_EQ(c.find("layers.0.v_proj.weight")->shard, 1u);
    for (const auto& e : whole.tensors()) {
      EXPECT_TRUE(same_matrix(c.matrix<float>(e.name), whole.matrix<float>(e.name))) << e.name;
    }
  }
  EXPECT_NE(error_message([&] { (void)io::checkpoint::open(dir_).matrix<float>("nope"); })
                .find("lowrank::io::checkpoint::matrix: argument 'name' is 'nope', which is not a "
                      "tensor of"),
            std::string::npos);
}

TEST_F(checkpoint_io, MalformedIndexesAreRefusedWithTheirReason) {
  write_sharded();
  const auto index = dir_ / "bad.json";
  const auto refuse = [&](const std::string& text, const std::string& reason) {
    write_text(index, text);
    const std::string message = error_message([&] { (void)io::checkpoint::open(index); });
    EXPECT_NE(message.find("lowrank::io::checkpoint::open: argument 'path' is"), std::string::npos)
        << message;
    EXPECT_NE(message.find(reason), std::string::npos) << text << "\n" << message;
  };
  refuse("{", "which is not JSON");
  refuse("[]", "without a \"weight_map\" object");
  refuse(R"({"weight_map": []})", "without a \"weight_map\" object");
  refuse(R"({"weight_map": {}})", "whose weight_map is empty");
  refuse(R"({"weight_map": {"a": 3}})", "gives the tensor 'a' the value 3");
  refuse(R"({"weight_map": {"a": "/etc/passwd"}})",
         "shard paths relative to the index's directory");
  refuse(R"({"weight_map": {"a": "../model-00002-of-00002.safetensors"}})", "without '..'");
  refuse(R"({"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}})", "the key 'a' twice");
  refuse(R"({"weight_map": {"layers.0.v_proj.weight": "missing.safetensors"}})",
         "missing.safetensors\" is unusable");
  // The index and the shards disagree.
  refuse(R"({"weight_map": {"layers.0.v_proj.weight": "model-00002-of-00002.safetensors",
                            "extra.weight": "model-00002-of-00002.safetensors"}})",
         "the tensor 'extra.weight' in");
  refuse(R"({"weight_map": {"layers.0.q_proj.weight": "model-00001-of-00002.safetensors"}})",
         "holds the tensor 'norm.weight', which the index does not list");
  refuse(R"({"weight_map": {"layers.0.q_proj.weight": "model-00001-of-00002.safetensors",
                            "norm.weight": "model-00002-of-00002.safetensors",
                            "layers.0.v_proj.weight": "model-00002-of-00002.safetensors"}})",
         "which the index puts in");
  refuse(R"({"metadata": 3, "weight_map": {"a": "b"}})", "\"metadata\" that is not an object");
  refuse(R"({"weight_map": {"a": "b"}, "x": )" + std::string(65, '[') + std::string(65, ']') + "}",
         "nests objects and arrays more than 64 deep");
  // A shard that is not a safetensors file: the reader's reason is in the message.
  write_text(dir_ / "junk.safetensors", "not a safetensors file at all");
  refuse(R"({"weight_map": {"a": "junk.safetensors"}})", "junk.safetensors\" is unusable (");
  // A directory with neither file.
  const auto empty = dir_ / "empty";
  std::filesystem::create_directories(empty);
  EXPECT_NE(error_message([&] {
              (void)io::checkpoint::open(empty);
            }).find("a directory with neither model.safetensors.index.json nor model.safetensors"),
            std::string::npos);
  EXPECT_NE(
      error_message([&] { (void)io::checkpoint::open(dir_ / "none"); }).find("does not exist"),
      std::string::npos);
}

TEST_F(checkpoint_io, StreamingWriterMatchesTheOneCallWriter) {
  const auto t = model();
  io::write_safetensors(dir_ / "reference.safetensors", t, {{"format", "pt"}});
  std::vector<io::tensor_spec> specs = {{"layers.0.q_proj.weight", "BF16", {6, 4}},
                                        {"layers.0.v_proj.weight", "F16", {3, 4}},
                                        {"norm.weight", "F32", {4}}};
  io::safetensors_writer w(dir_ / "streamed.safetensors", specs, {{"format", "pt"}});
  // Layout order: the F32 tensor first (larger elements), then the 2-byte ones as given.
  EXPECT_EQ(w.order(), (std::vector<std::string>{"norm.weight", "layers.0.q_proj.weight",
                                                 "layers.0.v_proj.weight"}));
  const auto reference = io::safetensors_file::read(dir_ / "reference.safetensors");
  while (!w.done()) {
    const std::string name = w.next().name;
    if (name == "layers.0.v_proj.weight") {
      w.write_bytes(reference.tensor_bytes(name));  // passed through unchanged
    } else {
      const auto& values = name == "norm.weight" ? t[2].values : t[0].values;
      if (name == "norm.weight") {
        w.write_matrix(Eigen::MatrixXd(values.transpose()));  // a 1 x n row works for [n]
      } else {
        w.write_matrix(values);
      }
    }
  }
  EXPECT_FALSE(std::filesystem::exists(dir_ / "streamed.safetensors"));  // not before commit()
  w.commit();
  EXPECT_EQ(io_test::read_bytes(dir_ / "streamed.safetensors"),
            io_test::read_bytes(dir_ / "reference.safetensors"));
}

TEST_F(checkpoint_io, StreamingWriterRefusesWrongDataAndLeavesNothingBehind) {
  io::write_safetensors(dir_ / "out.safetensors", model());
  const auto before = io_test::read_bytes(dir_ / "out.safetensors");
  {
    io::safetensors_writer w(dir_ / "out.safetensors", {{"a", "F32", {2, 3}}, {"b", "I32", {2}}});
    EXPECT_NE(error_message([&] {
                w.write_matrix(Eigen::MatrixXd::Zero(3, 2));
              }).find("3 x 2 values for the tensor 'a' of dtype 'F32' and shape [2, 3]"),
              std::string::npos);
    w.write_matrix(Eigen::MatrixXf::Ones(2, 3));
    EXPECT_NE(error_message([&] {
                w.write_matrix(Eigen::MatrixXd::Zero(2, 1));
              }).find("a tensor of dtype F32, F16, BF16 or F64"),
              std::string::npos);
    const std::vector<std::byte> seven(7);
    EXPECT_NE(error_message([&] { w.write_bytes(seven); }).find("7 bytes for the tensor 'b'"),
              std::string::npos);
    EXPECT_NE(error_message([&] { w.commit(); }).find("not yet written"), std::string::npos);
  }  // destroyed before commit(): the target is as it was, no temporary left
  EXPECT_EQ(io_test::read_bytes(dir_ / "out.safetensors"), before);
  EXPECT_EQ(io_test::directory_entries(dir_).size(), 1u);
  EXPECT_NE(error_message([&] {
              io::safetensors_writer(dir_ / "x", {{"a", "F33", {1}}});
            }).find("of dtype 'F33'"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              io::safetensors_writer(dir_ / "x", {{"a", "F32", {1}}, {"a", "F32", {1}}});
            }).find("distinct names"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              io::safetensors_writer(dir_ / "x", {{"a", "F32", {-1}}});
            }).find("dimensions >= 0"),
            std::string::npos);
}

// Converting every tensor of a mapped file in turn keeps the resident memory near one
// tensor: the pages are handed back after each conversion. 16 tensors of 4 MiB (BF16
// 2048 x 1024) make a 64 MiB file; the growth of the peak resident set while converting them
// all stays under 4 converted tensors (8 MiB each in float) plus slack, far below the file.
TEST_F(checkpoint_io, MappedReadingKeepsResidentMemoryNearOneTensor) {
  std::vector<io::tensor_spec> specs;
  for (int k = 0; k < 16; ++k) specs.push_back({"w" + std::to_string(k), "BF16", {2048, 1024}});
  {
    io::safetensors_writer w(dir_ / "big.safetensors", specs);
    const Eigen::MatrixXf block = Eigen::MatrixXf::Constant(2048, 1024, 0.5f);
    while (!w.done()) w.write_matrix(block);
    w.commit();
  }
  // The resident set now (the peak would remember earlier tests).
  const auto resident_mib = [] {
    std::ifstream statm("/proc/self/statm");
    long size = 0;
    long resident = 0;
    statm >> size >> resident;
    return resident * sysconf(_SC_PAGESIZE) / (1024 * 1024);
  };
  const auto c = io::checkpoint::open(dir_ / "big.safetensors");
  // Warm up the allocator with one conversion, then measure while each converted tensor lives.
  { const Eigen::MatrixXf first = c.matrix<float>("w0"); }
  const long before = resident_mib();
  long most = before;
  double sum = 0;
  for (const auto& e : c.tensors()) {
    const Eigen::MatrixXf m = c.matrix<float>(e.name);
    sum += m(0, 0);
    most = std::max(most, resident_mib());
  }
  EXPECT_EQ(sum, 8.0);
  EXPECT_LT(most - before, 40) << "the resident set grew by " << most - before
                               << " MiB reading a 64 MiB file";
}

}  // namespace
}  // namespace checkpoint_io_tests
