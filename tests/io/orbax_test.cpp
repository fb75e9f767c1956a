// Reading orbax checkpoints: the OCDBT store, zarr arrays and the checkpoint folders, on the
// fixtures written by the authors' code (tests/fixtures/orbax) and on stores built here.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <zstd.h>

#include "io/orbax/orbax_checkpoint.h"
#include "io/orbax_fixtures.h"
#include "io/orbax/zstd_decoder.h"
#include "io/paths.h"
#include "io/orbax_test_store.h"
#include "test_files.h"

namespace ttt {
namespace {

using io::orbax::OrbaxCheckpoint;
using io::orbax::ZarrArray;
using test::expect_error;
using test::OrbaxTestStore;

const std::string& kFixtures = test::kOrbaxFixtures;
const auto reference = test::orbax_reference;

// A copy of a fixture to damage; returns its model_weights folder.
std::string copy_fixture(const test::ScratchDir& scratch, const std::string& fixture) {
  const std::string command =
      "cp -r " + kFixtures + "/" + fixture + " " + scratch.path("copy") + " && chmod -R u+w " + scratch.path("copy");
  EXPECT_EQ(std::system(command.c_str()), 0);
  return scratch.path("copy/100/model_weights");
}

void overwrite(const std::string& path, uint64_t offset, const std::string& bytes) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekp(std::streamoff(offset));
  file.write(bytes.data(), std::streamsize(bytes.size()));
}

TEST(Orbax, Crc32cMatchesTheStandardCheckValue) {
  EXPECT_EQ(io::orbax::crc32c("123456789"), 0xe3069283u);
  EXPECT_EQ(io::orbax::crc32c(""), 0u);
}

class OrbaxFixture : public testing::TestWithParam<std::string> {};

// Every leaf reference.json lists is an array with its shape and dtype; nothing else is.
TEST_P(OrbaxFixture, LeavesAndArraysMatchTheReference) {
  const nlohmann::json expected = reference(GetParam())["leaves"];
  const OrbaxCheckpoint checkpoint(io::orbax::resolve_model_weights(kFixtures + "/" + GetParam(), std::nullopt));
  ASSERT_EQ(checkpoint.leaves().size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const io::orbax::OrbaxLeaf& leaf = checkpoint.leaves()[i];
    SCOPED_TRACE(leaf.name);
    EXPECT_EQ("." + leaf.name, expected[i]["path"].get<std::string>());
    EXPECT_EQ(leaf.value_type, "jax.Array");
    const ZarrArray array = checkpoint.array(leaf.name);
    EXPECT_EQ(array.metadata().shape, expected[i]["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(io::orbax::dtype_name(array.metadata().dtype), expected[i]["dtype"].get<std::string>());
    EXPECT_TRUE(array.metadata().zstd);
    std::vector<char> data(array.metadata().bytes());
    uint64_t read = 0;
    array.read_into(data.data(), [&](uint64_t bytes) { read += bytes; });
    EXPECT_EQ(read, array.stored_bytes());
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, OrbaxFixture, testing::Values("orbax_e2e_a", "orbax_e2e_sharded"));

TEST(Orbax, ShardedFixtureSplitsArraysIntoChunks) {
  const OrbaxCheckpoint checkpoint(kFixtures + "/orbax_e2e_sharded/100/model_weights");
  const ZarrArray w1 = checkpoint.array("language_model.model.h.blocks.feed_forward.w1.weight");
  EXPECT_EQ(w1.metadata().shape, (std::vector<int64_t>{4, 64, 96}));
  EXPECT_EQ(w1.metadata().chunks, (std::vector<int64_t>{4, 32, 48}));
  for (const char* chunk : {"0.0.0", "0.0.1", "0.1.0", "0.1.1"}) {
    EXPECT_TRUE(checkpoint.store().contains(w1.path() + "/" + chunk)) << chunk;
  }
}

TEST(Orbax, AssemblesChunksIncludingPaddedEdgeChunks) {
  const test::ScratchDir scratch;
  std::vector<float> values(5 * 3 * 7);
  for (size_t i = 0; i < values.size(); ++i) values[i] = float(i) * 0.5f - 3.0f;
  OrbaxTestStore store;
  store.add_array("grid", OrbaxTestStore::float_array({5, 3, 7}, {2, 3, 3}, values));  // 3 x 1 x 3 chunks
  store.add_array("rows", OrbaxTestStore::float_array({5, 3, 7}, {2, 3, 7}, values));  // whole rows
  store.add_array("whole", OrbaxTestStore::float_array({5, 3, 7}, {5, 3, 7}, values));
  store.write(scratch.dir());
  const OrbaxCheckpoint checkpoint(scratch.dir());
  for (const char* name : {"grid", "rows", "whole"}) {
    const ZarrArray array = checkpoint.array(name);
    std::vector<float> read(values.size(), -99.0f);
    array.read_into(reinterpret_cast<char*>(read.data()));
    EXPECT_EQ(read, values) << name;
  }
  EXPECT_EQ(checkpoint.store().keys().size(), 3u + 9 + 3 + 1);
  EXPECT_FALSE(checkpoint.store().at("grid/0.0.0").is_inline);
  EXPECT_TRUE(checkpoint.store().at("grid/.zarray").is_inline);
}

TEST(Orbax, ArrayMetadataTheReaderDoesNotImplementIsNamed) {
  const test::ScratchDir scratch;
  const OrbaxTestStore::Array good = OrbaxTestStore::float_array({2, 2}, {2, 2}, {1, 2, 3, 4});
  const std::vector<std::pair<std::pair<std::string, nlohmann::json>, std::string>> cases = {
      {{"compressor", {{"id", "blosc"}}}, "compressor {\"id\":\"blosc\"} is not supported"},
      {{"order", "F"}, "order \"F\" is not supported"},
      {{"filters", {{{"id", "delta"}}}}, "filters"},
      {{"dtype", ">f4"}, "dtype \">f4\" is not supported"},
      {{"dtype", "<i4"}, "dtype \"<i4\""},
      {{"zarr_format", 3}, "\"zarr_format\" must be 2"},
      {{"chunks", {2}}, "does not fit \"shape\""},
      {{"chunks", {4, 2}}, "exceed \"shape\""},
      {{"chunks", {2, 0}}, "\"chunks\"[1] must be an integer from 1 to 281474976710656, got 0"},
      {{"shape", {2, 2.5}}, "\"shape\"[1] must be an integer from 0 to 281474976710656, got 2.5"},
      {{"shape", "2,2"}, "\"shape\" must be an array of integers, got \"2,2\""},
      {{"dimension_separator", "/"}, "dimension_separator \"/\""},
  };
  OrbaxTestStore store;
  for (size_t i = 0; i < cases.size(); ++i) {
    OrbaxTestStore::Array array = good;
    array.metadata[cases[i].first.first] = cases[i].first.second;
    store.add_array("a" + std::to_string(i), array);
  }
  store.write(scratch.dir());
  const OrbaxCheckpoint checkpoint(scratch.dir());
  for (size_t i = 0; i < cases.size(); ++i) {
    expect_error([&] { checkpoint.array("a" + std::to_string(i)); },
                 {"key 'a" + std::to_string(i) + "/.zarray'", cases[i].second});
  }
}

TEST(Orbax, MissingChunksAndWrongSizedChunksAreErrors) {
  const test::ScratchDir scratch;
  OrbaxTestStore store;
  store.add_array("missing", OrbaxTestStore::float_array({4, 4}, {2, 4}, std::vector<float>(16, 1.0f)));
  store.remove("missing/1.0");
  OrbaxTestStore::Array short_chunk = OrbaxTestStore::float_array({2, 4}, {2, 4}, std::vector<float>(8, 1.0f));
  short_chunk.chunks["0.0"].resize(20);
  store.add_array("short", short_chunk);
  store.write(scratch.dir());
  const OrbaxCheckpoint checkpoint(scratch.dir());
  expect_error([&] { checkpoint.array("missing"); },
               {scratch.dir(), "array 'missing': chunk 'missing/1.0' is missing"});
  std::vector<char> out(32);
  expect_error([&] { checkpoint.array("short").read_into(out.data()); }, {"key 'short/0.0'", "holds 20 bytes"});
  expect_error([&] { checkpoint.array("absent"); }, {"array 'absent' has no metadata"});
}

TEST(Orbax, ZstdChunksMustDecompressToExactlyTheirSize) {
  const std::string data(1000, 'x');
  std::string frame(ZSTD_compressBound(data.size()), '\0');
  frame.resize(ZSTD_compress(frame.data(), frame.size(), data.data(), data.size(), 1));
  std::string out(999, '\0');
  io::orbax::ZstdDecoder small(out.data(), out.size(), "chunk: ");
  expect_error([&] { small.feed(frame); }, {"chunk: ", "decompresses to more than the 999 bytes"});
  std::string bigger(1001, '\0');
  io::orbax::ZstdDecoder large(bigger.data(), bigger.size(), "chunk: ");
  large.feed(frame);
  expect_error([&] { large.finish(); }, {"decompresses to 1000 bytes instead of 1001"});
  io::orbax::ZstdDecoder cut(bigger.data(), 1000, "chunk: ");
  cut.feed(frame.substr(0, frame.size() - 3));
  expect_error([&] { cut.finish(); }, {"truncated or corrupt"});
  expect_error([&] { io::orbax::zstd_decompress(frame, 500, "node: "); }, {"node: ", "more than the limit of 500"});
  EXPECT_EQ(io::orbax::zstd_decompress(frame, 1000, "node: "), data);
}

TEST(Orbax, CorruptNodesTruncatedFilesAndMissingManifestsAreNamed) {
  {
    const test::ScratchDir scratch;
    const std::string dir = copy_fixture(scratch, "orbax_e2e_a");
    overwrite(dir + "/d/c2b88fd9e71c75bb7964c4eb3eb137c5", 40, "\x55");
    expect_error([&] { OrbaxCheckpoint checkpoint(dir); },
                 {"d/c2b88fd9e71c75bb7964c4eb3eb137c5", "CRC-32C checksum mismatch"});
  }
  {
    const test::ScratchDir scratch;
    const std::string dir = copy_fixture(scratch, "orbax_e2e_a");
    overwrite(dir + "/manifest.ocdbt", 0, "\x0d");
    expect_error([&] { OrbaxCheckpoint checkpoint(dir); }, {"manifest.ocdbt", "magic number 0x0cdb3a2a"});
  }
  {
    const test::ScratchDir scratch;
    const std::string dir = copy_fixture(scratch, "orbax_e2e_a");
    ASSERT_EQ(::truncate((dir + "/ocdbt.process_0/d/b382c23c0f27d7ebb63af05436987285").c_str(), 300000), 0);
    expect_error([&] { OrbaxCheckpoint checkpoint(dir); },
                 {"ocdbt.process_0/d/b382c23c0f27d7ebb63af05436987285", "feed_forward.w1.weight/0.0.0",
                  "runs past the end of the 300000-byte file"});
  }
  {
    const test::ScratchDir scratch;
    const std::string dir = copy_fixture(scratch, "orbax_e2e_a");
    ASSERT_EQ(std::remove((dir + "/manifest.ocdbt").c_str()), 0);
    expect_error([&] { OrbaxCheckpoint checkpoint(dir); }, {dir + "/manifest.ocdbt", "no such file"});
  }
}

TEST(Orbax, ResolvesStepFoldersStepsAndItems) {
  const test::ScratchDir scratch;
  const std::string base = kFixtures + "/orbax_e2e_a";
  for (const char* step : {"7", "0100", "20"}) {
    io::make_directories(scratch.path(std::string(step) + "/model_weights"));
  }
  io::make_directories(scratch.path("300.orbax-checkpoint-tmp-1/model_weights"));  // unfinished: not a step
  io::make_directories(scratch.path("400"));                                       // no item: not a step
  EXPECT_EQ(io::orbax::resolve_model_weights(scratch.dir(), std::nullopt), scratch.path("0100/model_weights"));
  EXPECT_EQ(io::orbax::resolve_model_weights(scratch.dir(), 20), scratch.path("20/model_weights"));
  expect_error([&] { io::orbax::resolve_model_weights(scratch.dir(), 8); },
               {scratch.dir(), "step 8 is not there (steps present: 7, 20, 100)"});
  EXPECT_EQ(io::orbax::resolve_model_weights(base + "/100", std::nullopt), base + "/100/model_weights");
  EXPECT_EQ(io::orbax::resolve_model_weights(base + "/100/model_weights", std::nullopt), base + "/100/model_weights");
  expect_error([&] { io::orbax::resolve_model_weights(base + "/100", 100); }, {"--step", "a step folder already"});
  expect_error([&] { io::orbax::resolve_model_weights(scratch.path("400"), std::nullopt); },
               {"no _METADATA, no model_weights/ and no step folders"});
  expect_error([&] { io::orbax::resolve_model_weights(scratch.path("nosuch"), std::nullopt); }, {"no such directory"});
}

}  // namespace
}  // namespace ttt
