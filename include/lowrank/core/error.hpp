#pragma once
/// @file
/// lowrank's error model (docs/architecture.md, "Errors").
///
/// - `lowrank::invalid_argument` (a `std::invalid_argument`): a caller mistake
///   detected at a public entry point: a wrong shape, rank, option or file.
/// - `lowrank::numerical_error` (a `std::runtime_error`): non-finite input, or a
///   factorisation that failed.
/// - Backend failures (CUDA libraries) are `std::system_error` with the
///   backend's own category.
///
/// Every message names the function, the argument, the value and what was
/// expected, e.g.
/// `lowrank::randomized_svd: argument 'k' is 0; expected 1 <= k <= min(m, n) = 40`.

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace lowrank {

/// A caller mistake: wrong shape, rank, option or malformed file.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// Non-finite data, or a factorisation that failed to converge.
class numerical_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class Value>
[[nodiscard]] std::string describe(std::string_view function, std::string_view argument,
                                   const Value& value, std::string_view expected) {
  std::ostringstream out;
  out << function << ": argument '" << argument << "' is " << value << "; expected " << expected;
  return out.str();
}

/// Throws lowrank::invalid_argument with the standard message.
template <class Value>
[[noreturn]] void throw_invalid_argument(std::string_view function, std::string_view argument,
                                         const Value& value, std::string_view expected) {
  throw invalid_argument(describe(function, argument, value, expected));
}

/// Throws lowrank::numerical_error with the standard message.
template <class Value>
[[noreturn]] void throw_numerical_error(std::string_view function, std::string_view argument,
                                        const Value& value, std::string_view expected) {
  throw numerical_error(describe(function, argument, value, expected));
}

}  // namespace detail
}  // namespace lowrank
