#include "io/token_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/error.h"
#include "test_util.h"

namespace ttt::io {
namespace {

class TokenFileTest : public ::testing::Test {
 protected:

  std::string path(const std::string& name) const { return dir_.path(name); }

  std::string write_bytes(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
    return path(name);
  }

  test::ScratchDir dir_;
};

TEST_F(TokenFileTest, RoundTrips) {
  const std::vector<int64_t> tokens = {0, 1, 50256, 65536, 4294967295};
  write_token_file(path("t.u32"), tokens);
  EXPECT_EQ(test::file_size(path("t.u32")), static_cast<int64_t>(4 * tokens.size()));
  EXPECT_EQ(read_token_file(path("t.u32")), tokens);
}

TEST_F(TokenFileTest, UsesLittleEndianUint32) {
  write_token_file(path("w.u32"), {1, 0x01020304});
  std::ifstream in(path("w.u32"), std::ios::binary);
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  EXPECT_EQ(bytes, std::string("\x01\x00\x00\x00\x04\x03\x02\x01", 8));

  const std::string file = write_bytes("r.u32", std::string("\x07\x00\x00\x00\xff\xff\xff\xff", 8));
  EXPECT_EQ(read_token_file(file), (std::vector<int64_t>{7, 4294967295}));
}

TEST_F(TokenFileTest, RejectsBadFiles) {
  test::expect_error([&] { read_token_file(path("absent.u32")); }, {"absent.u32", "no such file"});
  test::expect_error([&] { read_token_file(write_bytes("empty.u32", "")); }, {"empty.u32", "empty"});
  test::expect_error([&] { read_token_file(write_bytes("odd.u32", "abcdef")); }, {"odd.u32", "size 6", "multiple of 4"});
  test::expect_error([&] { read_token_file(dir_.path(".")); }, {"not a regular file"});
}

TEST_F(TokenFileTest, RejectsOutOfRangeTokensAndWritesNothing) {
  test::expect_error([&] { write_token_file(path("neg.u32"), {5, -1}); }, {"neg.u32", "token -1", "position 1"});
  test::expect_error([&] { write_token_file(path("big.u32"), {4294967296}); }, {"big.u32", "token 4294967296"});
  EXPECT_TRUE(dir_.files().empty());
}

}  // namespace
}  // namespace ttt::io
