#pragma once
/// @file
/// SLTrain layers (factors/sparse_plus_low_rank.hpp) to and from `.safetensors`, with
/// the names and shapes of SLTrain's state dict (andyjm3/SLTrain `SpLoRaLinear`), each
/// optionally under a prefix such as "model.layers.0.mlp.down_proj.":
///
///     lora_A        [r, in]    F32 (or the dtype asked for)
///     lora_B        [out, r]
///     sparse_value  [nnz]      in the support's (row-major) order
///     sparse_index  [nnz]      the support: flat row-major positions p = r in + c,
///                              increasing; I32 when out in < 2^31, else I64 (SLTrain keeps
///                              an int64 buffer; PyTorch's load_state_dict converts)
///     bias          [out]      when the layer has one
///
/// A layer with `support_storage::seed` writes no `sparse_index`: the metadata's
/// "support": "seed", "seed" and "layer" say how to draw it again. The metadata also holds
/// "lora_alpha", "r", "sp_ratio", "in_features" and "out_features".
///
/// Reading accepts `sparse_index` as any integer dtype (I8 to I64, U8 to U64) and takes
/// lora_alpha from the metadata when present (a file converted from SLTrain's state dict
/// has none: the caller's options.alpha then applies). Everything is checked before a layer
/// is built: missing tensors, shapes that disagree, an index unsorted, repeated or out of
/// range, non-finite values.
///
/// @throws lowrank::invalid_argument (function `lowrank::io::load_sltrain` or
///   `lowrank::io::save_sltrain`, or the layer's from_tensors / sparse_support's checks)
///   naming the argument, the value and what was expected; lowrank::numerical_error for
///   non-finite tensors.

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "lowrank/core/backend.hpp"
#include "lowrank/core/error.hpp"
#include "lowrank/core/matrix.hpp"
#include "lowrank/factors/sparse.hpp"
#include "lowrank/factors/sparse_plus_low_rank.hpp"
#include "lowrank/io/safetensors.hpp"

namespace lowrank::io {

/// What save_sltrain writes.
struct sltrain_save_options {
  dtype type = dtype::float32;  ///< the dtype of lora_A, lora_B, sparse_value and bias
  std::string prefix;           ///< prepended to every tensor name
};

namespace detail {

template <class T, class Backend>
Eigen::MatrixXd host_copy(context<Backend>& ctx, matrix_view<const T, Backend> x) {
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> h(x.rows(), x.cols());
  ops<Backend>::download(ctx, x, view(h));
  return h.template cast<double>();
}

template <class T, class Backend>
matrix<T, Backend> device_copy(context<Backend>& ctx, const Eigen::Matrix<T, -1, -1>& h) {
  matrix<T, Backend> out(ctx, h.rows(), h.cols());
  ops<Backend>::upload(ctx, view(h), out.view());
  return out;
}

}  // namespace detail

/// Writes `layer` (a pre-training layer, not an adapter) as SLTrain's state dict.
/// @throws lowrank::invalid_argument for an adapter layer, and as write_safetensors.
template <scalar T, class Backend>
void save_sltrain(context<Backend>& ctx, const std::filesystem::path& file,
                  const sparse_plus_low_rank<T, Backend>& layer,
                  const sltrain_save_options& options = {}) {
  const char* fn = "lowrank::io::save_sltrain";
  if (layer.is_adapter()) {
    lowrank::detail::throw_invalid_argument(fn, "layer", "an adapter on a frozen weight",
                                            "a pre-training layer (SLTrain has no base weight)");
  }
  const std::string& p = options.prefix;
  std::vector<tensor_to_write> tensors{
      {p + "lora_A", options.type, detail::host_copy(ctx, layer.a()), false},
      {p + "lora_B", options.type, detail::host_copy(ctx, layer.b()), false},
      {p + "sparse_value", options.type, detail::host_copy(ctx, layer.values().as_matrix()), true}};
  if (layer.bias().size() > 0) {
    tensors.push_back(
        {p + "bias", options.type, detail::host_copy(ctx, layer.bias().as_matrix()), true});
  }
  const auto& o = layer.options();
  std::map<std::string, std::string> metadata{
      {"format", "pt"},
      {"lora_alpha", std::to_string(o.alpha)},
      {"r", std::to_string(layer.rank())},
      {"sp_ratio", std::to_string(o.density)},
      {"in_features", std::to_string(layer.in_features())},
      {"out_features", std::to_string(layer.out_features())},
      {"support", o.storage == support_storage::seed ? "seed" : "indices"}};
  std::vector<integer_tensor_to_write> integers;
  if (o.storage == support_storage::seed) {
    metadata["seed"] = std::to_string(o.seed);
    metadata["layer"] = std::to_string(o.layer);
  } else {
    const index_t cells = layer.out_features() * layer.in_features();
    integers.push_back({p + "sparse_index", layer.support_copy(ctx).flat_indices(ctx),
                        cells <= std::numeric_limits<std::int32_t>::max()});
  }
  write_safetensors(file, tensors, metadata, integers);
}

/// Reads an SLTrain layer written by save_sltrain or converted from SLTrain's state dict.
/// `options` gives what the file does not say (alpha when the metadata lacks it, the
/// storage, the route); the rank, density and bias come from the tensors.
/// @throws see the file comment.
template <scalar T, class Backend = cpu>
[[nodiscard]] sparse_plus_low_rank<T, Backend> load_sltrain(
    context<Backend>& ctx, const std::filesystem::path& file,
    sparse_plus_low_rank_options options = {}, std::string_view prefix = {}) {
  const char* fn = "lowrank::io::load_sltrain";
  const safetensors_file f = safetensors_file::read(file);
  const std::string p(prefix);
  auto require = [&](const std::string& name) {
    if (!f.contains(name)) {
      lowrank::detail::throw_invalid_argument(
          fn, "file", detail::quote_path(file) + " without a tensor '" + name + "'",
          "SLTrain's tensors lora_A, lora_B, sparse_value (and sparse_index or a seed)");
    }
    return name;
  };
  const auto a = f.matrix<T>(require(p + "lora_A"));
  const auto b = f.matrix<T>(require(p + "lora_B"));
  const auto values = f.matrix<T>(require(p + "sparse_value"));
  const bool has_bias = f.contains(p + "bias");
  const auto bias = has_bias ? f.matrix<T>(p + "bias") : Eigen::Matrix<T, -1, -1>(0, 1);
  const auto& meta = f.metadata();
  if (meta.contains("lora_alpha")) options.alpha = std::stod(meta.at("lora_alpha"));
  const index_t out = b.rows(), in = a.cols();
  if (values.cols() != 1 || bias.cols() != 1) {
    lowrank::detail::throw_invalid_argument(
        fn, "file", detail::quote_path(file) + " with a sparse_value or bias of 2 dimensions",
        "1-D sparse_value and bias");
  }
  sparse_support<Backend> support;
  if (f.contains(p + "sparse_index")) {
    support =
        sparse_support<Backend>::from_flat_indices(ctx, out, in, f.integers(p + "sparse_index"));
  } else if (meta.contains("support") && meta.at("support") == "seed" && meta.contains("seed") &&
             meta.contains("layer")) {
    options.storage = support_storage::seed;
    options.seed = std::stoull(meta.at("seed"));
    options.layer = std::stoull(meta.at("layer"));
    support = sparse_support<Backend>::random(
        ctx, out, in, values.rows(),
        factor_stream(options.seed, options.layer, factor_stream_kind::support));
  } else {
    require(p + "sparse_index");
  }
  const auto ad = detail::device_copy<T, Backend>(ctx, a);
  const auto bd = detail::device_copy<T, Backend>(ctx, b);
  const auto vd = detail::device_copy<T, Backend>(ctx, values);
  const auto biasd = detail::device_copy<T, Backend>(ctx, bias);
  return sparse_plus_low_rank<T, Backend>::from_tensors(
      ctx, ad.view(), bd.view(), vector_view<const T, Backend>(vd.view().data(), vd.rows()),
      std::move(support), vector_view<const T, Backend>(biasd.view().data(), biasd.rows()),
      options);
}

}  // namespace lowrank::io
