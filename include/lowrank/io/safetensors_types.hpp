#pragma once
/// @file
/// The public data types of lowrank/io/safetensors.hpp: the dtypes lowrank converts to and
/// from matrices, and the description of one tensor of a validated safetensors file (the
/// format and its rules: see lowrank/io/safetensors.hpp). Included by that header, and by
/// the header parser in lowrank/io/detail/safetensors_header.hpp, which fills tensor_info.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lowrank::io {

/// Element types lowrank converts to and from matrices.
enum class dtype { float32, float16, bfloat16, float64 };

/// The safetensors spelling of a dtype: "F32", "F16", "BF16" or "F64".
[[nodiscard]] inline std::string_view name(dtype d) noexcept {
  switch (d) {
    case dtype::float32:
      return "F32";
    case dtype::float16:
      return "F16";
    case dtype::bfloat16:
      return "BF16";
    case dtype::float64:
      return "F64";
  }
  return "unknown";
}

/// One tensor of a validated file.
struct tensor_info {
  /// The header's dtype, e.g. "F32" or "I64": always one of the reference's dtypes.
  std::string dtype_name;
  /// The dtype when lowrank converts it (F32, F16, BF16, F64); empty otherwise.
  std::optional<dtype> type;
  std::vector<std::int64_t> shape;  ///< every dimension >= 0; [] is a scalar
  std::size_t begin = 0;            ///< offsets into the data buffer, begin <= end
  std::size_t end = 0;
};

}  // namespace lowrank::io
