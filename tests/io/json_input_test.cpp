// io::json_integer, the one check by which every reader takes an integer out of JSON.
#include "io/json_input.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "test_files.h"

namespace ttt::io {
namespace {

using nlohmann::json;

constexpr int64_t kLowest = std::numeric_limits<int64_t>::min();
constexpr int64_t kHighest = std::numeric_limits<int64_t>::max();

TEST(JsonInteger, TakesTheIntegersOfTheRangeBoundsIncluded) {
  EXPECT_EQ(json_integer(json(-3), -3, 7, "x"), -3);
  EXPECT_EQ(json_integer(json(7), -3, 7, "x"), 7);
  EXPECT_EQ(json_integer(json(2), -3, 7, "x"), 2);
  // As parsed: non-negative integers are nlohmann's unsigned numbers, negative ones signed.
  EXPECT_EQ(json_integer(json::parse("7"), -3, 7, "x"), 7);
  EXPECT_EQ(json_integer(json::parse("-3"), -3, 7, "x"), -3);
  EXPECT_EQ(json_integer(json::parse("9223372036854775807"), 0, kHighest, "x"), kHighest);
  EXPECT_EQ(json_integer(json::parse("-9223372036854775808"), kLowest, 0, "x"), kLowest);
}

TEST(JsonInteger, RefusesAnythingElseNamingWhatAndTheRange) {
  const std::string range = "config.json: 'steps' must be an integer from -3 to 7, got ";
  const auto expect_refused = [&](const json& value, const std::string& shown) {
    SCOPED_TRACE(shown);
    test::expect_error([&] { json_integer(value, -3, 7, "config.json: 'steps'"); }, {range + shown});
  };
  expect_refused(json(-4), "-4");
  expect_refused(json(8), "8");
  expect_refused(json::parse("8"), "8");
  // 1e999: the parser refuses it, but a value built in code may hold infinity (dumped as null).
  expect_refused(json(std::numeric_limits<double>::infinity()), "null");
  expect_refused(json(2.5), "2.5");
  expect_refused(json(2.0), "2.0");
  expect_refused(json(true), "true");
  expect_refused(json("3"), "\"3\"");
  expect_refused(json(nullptr), "null");
  expect_refused(json::array({1}), "[1]");
  // Above INT64_MAX: get<int64_t>() would wrap it to a number in the range.
  expect_refused(json::parse("18446744073709551615"), "18446744073709551615");
  expect_refused(json(uint64_t(1) << 63 | 5), "9223372036854775813");
  // A float beyond int64, whose get<int64_t>() is undefined behaviour.
  expect_refused(json(1e300), "1e+300");
}

TEST(JsonInteger, LeavesUnsaidABoundThatIsNoBound) {
  test::expect_error([] { json_integer(json(-1), 0, kHighest, "n"); }, {"n must be an integer >= 0, got -1"});
  test::expect_error([] { json_integer(json(1), kLowest, 0, "n"); }, {"n must be an integer <= 0, got 1"});
  test::expect_error([] { json_integer(json(0.5), kLowest, kHighest, "n"); }, {"n must be an integer, got 0.5"});
}

TEST(JsonInteger, ShowsALongValueCutShortOnOneLine) {
  try {
    json_integer(json("\n\xff" + std::string(1000, 'a')), 0, 1, "v");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    const std::string escaped = "got \"\\n\xEF\xBF\xBD";  // the newline escaped, the byte 0xFF as U+FFFD
    EXPECT_NE(message.find(escaped + "aaa"), std::string::npos) << message;
    EXPECT_LT(message.size(), 200u) << message;
    EXPECT_EQ(message.substr(message.size() - 3), "...") << message;
  }
}

}  // namespace
}  // namespace ttt::io
