// The error model: exception types and the standard message format.

#include "lowrank/core/error.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace error_tests {
namespace {

static_assert(std::is_base_of_v<std::invalid_argument, lowrank::invalid_argument>);
static_assert(std::is_base_of_v<std::logic_error, lowrank::invalid_argument>);
static_assert(std::is_base_of_v<std::runtime_error, lowrank::numerical_error>);
static_assert(!std::is_base_of_v<std::logic_error, lowrank::numerical_error>);
static_assert(!std::is_base_of_v<lowrank::invalid_argument, lowrank::numerical_error>);
static_assert(!std::is_base_of_v<lowrank::numerical_error, lowrank::invalid_argument>);

TEST(Error, InvalidArgumentIsCaughtAsStdInvalidArgument) {
  EXPECT_THROW(lowrank::detail::throw_invalid_argument("f", "x", 1, "2"), std::invalid_argument);
  EXPECT_THROW(lowrank::detail::throw_invalid_argument("f", "x", 1, "2"), std::logic_error);
  EXPECT_THROW(lowrank::detail::throw_invalid_argument("f", "x", 1, "2"),
               lowrank::invalid_argument);
}

TEST(Error, NumericalErrorIsCaughtAsStdRuntimeError) {
  EXPECT_THROW(lowrank::detail::throw_numerical_error("f", "x", 1, "2"), std::runtime_error);
  EXPECT_THROW(lowrank::detail::throw_numerical_error("f", "x", 1, "2"), lowrank::numerical_error);
}

template <class Exception, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception thrown";
  return {};
}

TEST(Error, InvalidArgumentMessageFormat) {
  EXPECT_EQ(message_of<lowrank::invalid_argument>([] {
              lowrank::detail::throw_invalid_argument("lowrank::randomized_svd", "k", 0,
                                                      "1 <= k <= min(m, n) = 40");
            }),
            "lowrank::randomized_svd: argument 'k' is 0; expected 1 <= k <= min(m, n) = 40");
  // Values of other types are streamed as they are.
  EXPECT_EQ(message_of<lowrank::invalid_argument>([] {
              lowrank::detail::throw_invalid_argument("f", "name", std::string("abc"), "xyz");
            }),
            "f: argument 'name' is abc; expected xyz");
  EXPECT_EQ(message_of<lowrank::invalid_argument>(
                [] { lowrank::detail::throw_invalid_argument("g", "tol", 0.5, "> 1"); }),
            "g: argument 'tol' is 0.5; expected > 1");
  EXPECT_EQ(message_of<lowrank::invalid_argument>(
                [] { lowrank::detail::throw_invalid_argument("h", "n", -3L, "n >= 0"); }),
            "h: argument 'n' is -3; expected n >= 0");
}

TEST(Error, NumericalErrorMessageFormat) {
  EXPECT_EQ(message_of<lowrank::numerical_error>([] {
              lowrank::detail::throw_numerical_error("lowrank::ops<cpu>::svd", "info", 3,
                                                     "0 from LAPACK gesdd");
            }),
            "lowrank::ops<cpu>::svd: argument 'info' is 3; expected 0 from LAPACK gesdd");
}

}  // namespace
}  // namespace error_tests
