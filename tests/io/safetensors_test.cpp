#include "io/safetensors.h"

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

// Little-endian bytes of `value`, built arithmetically so the test does not share the
// implementation's assumption about the host.
std::string le_bytes(uint64_t value, int size) {
  std::string bytes;
  for (int i = 0; i < size; ++i) bytes.push_back(char((value >> (8 * i)) & 0xff));
  return bytes;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}


// Each test gets a fresh directory of its own, so it can also check what is left in it.
class SafetensorsTest : public ::testing::Test {
 protected:

  std::string path(const std::string& name) const { return dir_.path(name); }

  std::string write_bytes(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
    return path(name);
  }

  // A file made by hand: the header length, the (unpadded) header text, then `data`.
  std::string write_raw(const std::string& header, const std::string& data = "") const {
    return write_bytes("raw.safetensors", le_bytes(header.size(), 8) + header + data);
  }

  std::vector<std::string> files() const { return dir_.files(); }

  void expect_read_error(const std::string& file, const std::vector<std::string>& parts) const {
    test::expect_error([&] { read_safetensors(file); }, parts);
  }

  test::ScratchDir dir_;
};

TEST_F(SafetensorsTest, RoundTripsEveryDtypeShapeAndMetadata) {
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const std::map<std::string, torch::Tensor> tensors = {
      {"cube", torch::arange(24, f32).reshape({2, 3, 4}) / 8 - 1},
      {"scalar", torch::tensor(-3.75f)},
      {"empty", torch::zeros({0, 3}, f32)},
      {"f64", torch::tensor({1.0 / 3, 1e-300, -2.5e300}, torch::kFloat64)},
      {"bf16", torch::tensor({{1.5f, -2.0f}, {0.0078125f, 3.0e38f}}).to(torch::kBFloat16)},
      {"f16", torch::tensor({0.5f, -65504.0f, 5.9604645e-8f}).to(torch::kFloat16)},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "12"}};
  const std::string file = path("model.safetensors");
  write_safetensors(file, tensors, metadata);

  const SafetensorsFile read = read_safetensors(file);
  EXPECT_EQ(read.metadata, metadata);
  ASSERT_EQ(read.tensors.size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_EQ(read.tensors.count(name), 1u);
    const torch::Tensor& actual = read.tensors.at(name);
    EXPECT_EQ(actual.scalar_type(), expected.scalar_type());
    EXPECT_EQ(actual.sizes(), expected.sizes());
    EXPECT_TRUE(actual.device().is_cpu());
    EXPECT_TRUE(actual.is_contiguous());
    EXPECT_TRUE(torch::equal(actual, expected));
  }
  EXPECT_EQ(read.tensors.at("scalar").dim(), 0);
  EXPECT_EQ(read.tensors.at("scalar").item<float>(), -3.75f);
  EXPECT_EQ(read.tensors.at("f64")[1].item<double>(), 1e-300);
  EXPECT_EQ(read.tensors.at("bf16")[1][0].item<float>(), 0.0078125f);
  EXPECT_EQ(read.tensors.at("f16")[2].item<float>(), 5.9604645e-8f);
}

TEST_F(SafetensorsTest, WritesNonContiguousTensorsByValue) {
  const torch::Tensor transposed = torch::arange(6, torch::kFloat32).reshape({2, 3}).t();
  ASSERT_FALSE(transposed.is_contiguous());
  write_safetensors(path("t.safetensors"), {{"t", transposed}});
  const torch::Tensor read = read_safetensors(path("t.safetensors")).tensors.at("t");
  EXPECT_TRUE(read.is_contiguous());
  EXPECT_TRUE(torch::equal(read, transposed));
}

TEST_F(SafetensorsTest, EmptyCheckpointRoundTrips) {
  write_safetensors(path("empty.safetensors"), {});
  Checksum checksum;  // of the header without the checksum: "{}"
  checksum.update("{}", 2);
  std::string header = R"({"__metadata__":{"checksum_xxh3_64":")" + checksum_text(checksum.digest()) + R"("}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  EXPECT_EQ(read_bytes(path("empty.safetensors")), le_bytes(header.size(), 8) + header);
  const SafetensorsFile read = read_safetensors(path("empty.safetensors"));
  EXPECT_TRUE(read.tensors.empty());
  EXPECT_TRUE(read.metadata.empty());
}

TEST_F(SafetensorsTest, ReadsHandBuiltFile) {
  const std::string header =
      R"({"__metadata__":{"k":"v"},"d":{"dtype":"F64","shape":[1,1],"data_offsets":[16,24]},)"
      R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("b":{"dtype":"BF16","shape":[],"data_offsets":[12,14]},)"
      R"("c":{"dtype":"F16","shape":[1],"data_offsets":[14,16]}})";
  const std::string data = le_bytes(0x3F800000, 4) + le_bytes(0xC0000000, 4) + le_bytes(0x3F000000, 4) +  // 1, -2, 0.5
                           le_bytes(0xBFC0, 2) +                                                          // bf16 -1.5
                           le_bytes(0x4000, 2) +                                                          // f16 2
                           le_bytes(0x3FD0000000000000, 8);                                               // f64 0.25
  const SafetensorsFile read = read_safetensors(write_raw(header, data));

  EXPECT_EQ(read.metadata, (std::map<std::string, std::string>{{"k", "v"}}));
  ASSERT_EQ(read.tensors.size(), 4u);
  const torch::Tensor& a = read.tensors.at("a");
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(a, torch::tensor({1.0f, -2.0f, 0.5f})));
  const torch::Tensor& b = read.tensors.at("b");
  EXPECT_EQ(b.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(b.dim(), 0);
  EXPECT_EQ(b.item<float>(), -1.5f);
  const torch::Tensor& c = read.tensors.at("c");
  EXPECT_EQ(c.scalar_type(), torch::kFloat16);
  EXPECT_EQ(c.sizes(), torch::IntArrayRef({1}));
  EXPECT_EQ(c.item<float>(), 2.0f);
  const torch::Tensor& d = read.tensors.at("d");
  EXPECT_EQ(d.scalar_type(), torch::kFloat64);
  EXPECT_EQ(d.sizes(), torch::IntArrayRef({1, 1}));
  EXPECT_EQ(d.item<double>(), 0.25);
}

TEST_F(SafetensorsTest, WritesTheExactByteLayout) {
  // "b" is given first but "a" comes first in the file: tensors are laid out by name.
  write_safetensors(path("tiny.safetensors"),
                    {{"b", torch::tensor({1.0f}).to(torch::kFloat16)}, {"a", torch::tensor({1.0f, -2.0f})}},
                    {{"k", "v"}});
  const std::string tensors =
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[1],"data_offsets":[8,10]}})";
  const std::string data = le_bytes(0x3F800000, 4) + le_bytes(0xC0000000, 4) + le_bytes(0x3C00, 2);
  // The checksum: XXH3-64 of the header without it (keys sorted, no spaces), then the data.
  Checksum checksum;
  const std::string canonical = R"({"__metadata__":{"k":"v"},"a":{"data_offsets":[0,8],"dtype":"F32","shape":[2]},)"
                                R"("b":{"data_offsets":[8,10],"dtype":"F16","shape":[1]}})";
  checksum.update(canonical.data(), canonical.size());
  checksum.update(data.data(), data.size());
  std::string header =
      R"({"__metadata__":{"k":"v","checksum_xxh3_64":")" + checksum_text(checksum.digest()) + R"("},)" + tensors;
  header.append((8 - header.size() % 8) % 8, ' ');
  ASSERT_EQ(header.size() % 8, 0u);
  const std::string expected = le_bytes(header.size(), 8) + header + data;
  EXPECT_EQ(read_bytes(path("tiny.safetensors")), expected);
}

TEST(Checksum, IsXxh3AndTakesPiecesAsAWhole) {
  EXPECT_EQ(Checksum().digest(), 0x2D06800538D394C2ull);  // XXH3-64 of no bytes, xxHash's own test value
  const std::string text(1000, 'x');
  Checksum whole, pieces;
  whole.update(text.data(), text.size());
  for (size_t i = 0; i < text.size(); i += 7) pieces.update(text.data() + i, std::min<size_t>(7, text.size() - i));
  EXPECT_EQ(whole.digest(), pieces.digest());
  EXPECT_NE(whole.digest(), Checksum().digest());
  EXPECT_EQ(parse_checksum_text(checksum_text(whole.digest())), whole.digest());
  for (const char* bad : {"", "0123", "0123456789ABCDEF", "0123456789abcdeg", "0123456789abcdef0"}) {
    EXPECT_FALSE(parse_checksum_text(bad).has_value()) << bad;
  }
}

TEST_F(SafetensorsTest, ChecksumIsVerifiedWherePresent) {
  write_safetensors(path("a.safetensors"), {{"w", torch::arange(64, torch::kFloat32)}}, {{"k", "v"}});
  const SafetensorsFile read = read_safetensors(path("a.safetensors"));
  EXPECT_TRUE(read.checksum_verified);
  EXPECT_EQ(read.metadata, (std::map<std::string, std::string>{{"k", "v"}}));  // the checksum is not shown

  std::string bytes = read_bytes(path("a.safetensors"));
  bytes[bytes.size() - 100] ^= 0x10;  // one bit of one float
  expect_read_error(write_bytes("flipped.safetensors", bytes), {"flipped.safetensors", "corrupted", "checksum"});

  // Files of other tools have none and load; a checksum that is there must be well formed.
  const std::string entry = R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  EXPECT_FALSE(read_safetensors(write_raw("{" + entry + "}", "abcd")).checksum_verified);
  expect_read_error(write_raw(R"({"__metadata__":{"checksum_xxh3_64":"0000000000000000"},)" + entry + "}", "abcd"),
                    {"corrupted"});
  expect_read_error(write_raw(R"({"__metadata__":{"checksum_xxh3_64":"12"},)" + entry + "}", "abcd"),
                    {"checksum_xxh3_64", "16 lowercase hex digits"});
  test::expect_error(
      [&] {
        write_safetensors(path("b.safetensors"), {}, {{"checksum_xxh3_64", "x"}});
      },
      {"checksum_xxh3_64", "reserved"});
}

TEST_F(SafetensorsTest, RejectsDeepJsonAndHugeHeadersBeforeReadingThem) {
  expect_read_error(write_raw(R"({"__metadata__":{"k":)" + std::string(100, '[') + std::string(100, ']') + "}}"),
                    {"raw.safetensors", "nested deeper than 64"});
  expect_read_error(write_raw(R"({"x":1e999})"), {"raw.safetensors", "not valid JSON"});
  expect_read_error(write_raw(std::string("{}\0{", 4)), {"raw.safetensors", "NUL byte at byte 2"});
  // A header length over 100 MB in a file that long (sparse: nothing is written).
  const std::string big = write_bytes("big.safetensors", le_bytes(100'000'001, 8));
  ASSERT_EQ(::truncate(big.c_str(), 100'000'100), 0);
  expect_read_error(big, {"big.safetensors", "header length 100000001", "over the limit"});
}

TEST_F(SafetensorsTest, RejectsMissingOrShortFiles) {
  expect_read_error(path("absent.safetensors"), {"absent.safetensors", "no such file"});
  expect_read_error(dir_.path("."), {"not a regular file"});
  expect_read_error(write_bytes("short.safetensors", "abc"), {"short.safetensors", "shorter than the 8-byte"});
  expect_read_error(write_bytes("long.safetensors", le_bytes(100, 8) + "{}"), {"header length 100"});
}

TEST_F(SafetensorsTest, RejectsHeadersThatAreNotJsonObjects) {
  expect_read_error(write_raw("{not json"), {"raw.safetensors", "not valid JSON"});
  expect_read_error(write_raw(""), {"not valid JSON"});
  expect_read_error(write_raw("[1,2]"), {"must be a JSON object"});
  expect_read_error(write_raw(R"({"w":5})"), {"\"w\"", "must be an object"});
}

TEST_F(SafetensorsTest, RejectsEntriesWithMissingFields) {
  expect_read_error(write_raw(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')), {"\"w\"", "dtype"});
  expect_read_error(write_raw(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, '\0')), {"\"w\"", "shape"});
  expect_read_error(write_raw(R"({"w":{"dtype":"F32","shape":[1]}})", std::string(4, '\0')), {"\"w\"", "data_offsets"});
}

TEST_F(SafetensorsTest, RejectsUnknownDtypes) {
  expect_read_error(write_raw(R"({"w":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
                    {"\"w\"", "I32", "unsupported dtype"});
  expect_read_error(write_raw(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
                    {"\"w\"", "dtype"});
}

TEST_F(SafetensorsTest, RejectsBadShapes) {
  for (const auto& [shape, fragment] : std::vector<std::pair<std::string, std::string>>{
           {"[-1]", "shape[0] must be an integer >= 0, got -1"},
           {"[1.5]", "shape[0] must be an integer >= 0, got 1.5"},
           {"[\"2\"]", "shape[0] must be an integer >= 0, got \"2\""},
           {"[2,-3]", "shape[1] must be an integer >= 0, got -3"},
           {"[1,9223372036854775808]", "shape[1] must be an integer >= 0, got 9223372036854775808"},
           {"4", "shape must be an array of non-negative integers, got 4"}}) {
    SCOPED_TRACE(shape);
    const std::string header = R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,4]}})";
    expect_read_error(write_raw(header, std::string(4, '\0')), {"\"w\"", fragment});
  }
}

TEST_F(SafetensorsTest, RejectsBadDataOffsets) {
  const std::string data(8, '\0');
  expect_read_error(write_raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", data),
                    {"\"w\"", "end before"});
  expect_read_error(write_raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", data),
                    {"\"w\"", "data_offsets"});
  expect_read_error(write_raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", data),
                    {"\"w\"", "data_offsets"});
  expect_read_error(write_raw(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data),
                    {"\"w\"", "truncated"});
}

TEST_F(SafetensorsTest, RejectsTruncatedFiles) {
  const std::string file = path("cut.safetensors");
  write_safetensors(file, {{"first", torch::ones({4})}, {"second", torch::ones({4})}});
  ASSERT_EQ(::truncate(file.c_str(), test::file_size(file) - 1), 0);
  expect_read_error(file, {"cut.safetensors", "\"second\"", "truncated"});
}

TEST_F(SafetensorsTest, RejectsByteSizeMismatch) {
  expect_read_error(write_raw(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
                    {"\"w\"", "needs 12 bytes", "hold 8"});
  expect_read_error(write_raw(R"({"w":{"dtype":"F64","shape":[],"data_offsets":[0,4]}})", std::string(8, '\0')),
                    {"\"w\"", "needs 8 bytes"});
  // 2^62 * 2^62 elements overflow 64 bits rather than wrapping to a size that might match.
  expect_read_error(
      write_raw(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})"),
      {"\"w\"", "more than 2^64"});
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  expect_read_error(write_raw(header, std::string(12, '\0')), {"\"a\"", "\"b\"", "overlap"});
}

TEST_F(SafetensorsTest, RejectsNonStringMetadata) {
  expect_read_error(write_raw(R"({"__metadata__":{"k":3}})"), {"__metadata__", "\"k\"", "must be a string"});
  expect_read_error(write_raw(R"({"__metadata__":["k"]})"), {"__metadata__", "must be an object"});
}

TEST_F(SafetensorsTest, WriteLeavesOnlyTheTargetFile) {
  const std::string file = path("model.safetensors");
  write_safetensors(file, {{"w", torch::ones({2})}});
  write_safetensors(file, {{"w", torch::full({3}, 2.0f)}});  // replaces the old file
  EXPECT_EQ(files(), std::vector<std::string>{"model.safetensors"});
  EXPECT_TRUE(torch::equal(read_safetensors(file).tensors.at("w"), torch::full({3}, 2.0f)));
}

TEST_F(SafetensorsTest, UnsupportedDtypeThrowsAndWritesNothing) {
  const std::string file = path("model.safetensors");
  test::expect_error([&] { write_safetensors(file, {{"ids", torch::arange(3, torch::kInt32)}}); },
               {"model.safetensors", "\"ids\"", "Int", "cannot be stored"});
  EXPECT_TRUE(files().empty());

  // A failed write leaves an existing file as it was.
  write_safetensors(file, {{"w", torch::ones({2})}});
  const std::string before = read_bytes(file);
  test::expect_error([&] { write_safetensors(file, {{"w", torch::ones({2})}, {"x", torch::ones({2}, torch::kInt64)}}); },
               {"\"x\"", "Long"});
  EXPECT_EQ(read_bytes(file), before);
  EXPECT_EQ(files(), std::vector<std::string>{"model.safetensors"});
}

TEST_F(SafetensorsTest, RejectsReservedNameAndMissingDirectory) {
  test::expect_error([&] { write_safetensors(path("m.safetensors"), {{"__metadata__", torch::ones({1})}}); },
               {"\"__metadata__\"", "reserved"});
  test::expect_error([&] { write_safetensors(path("no/such/dir/m.safetensors"), {{"w", torch::ones({1})}}); },
               {"no/such/dir/m.safetensors", "cannot create temporary file"});
  EXPECT_TRUE(files().empty());
}

}  // namespace
}  // namespace ttt::io
