#include "data/documents.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include <fstream>

#include "test_files.h"

namespace ttt::data {
namespace {

TEST(Documents, ListsFilesRecursivelySortedSkippingHiddenAndTheManifest) {
  test::ScratchDir dir;
  ::mkdir(dir.path("b").c_str(), 0755);
  ::mkdir(dir.path("a").c_str(), 0755);
  ::mkdir(dir.path("a/.hidden").c_str(), 0755);
  std::ofstream(dir.path("b/2.txt")) << "two";
  std::ofstream(dir.path("a/1.txt")) << "one!";
  std::ofstream(dir.path("a/.hidden/x.txt")) << "hidden";
  std::ofstream(dir.path("a/.dotfile")) << "hidden";
  std::ofstream(dir.path("manifest.json")) << "{}";
  std::ofstream(dir.path("top.txt")) << "";
  const std::vector<Document> docs = list_documents({dir.path("")});
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].name, "a/1.txt");
  EXPECT_EQ(docs[0].size, 4u);
  EXPECT_EQ(docs[1].name, "b/2.txt");
  EXPECT_EQ(docs[2].name, "top.txt");
  EXPECT_EQ(read_document(docs[0]), "one!");
  // A file given directly is a document named by its file name.
  const std::vector<Document> single = list_documents({dir.path("b/2.txt")});
  ASSERT_EQ(single.size(), 1u);
  EXPECT_EQ(single[0].name, "2.txt");
}

TEST(Documents, MissingInputsAreClearErrors) {
  test::expect_error([] { list_documents({"/nonexistent/corpus"}); }, {"/nonexistent/corpus", "no such file"});
  test::ScratchDir empty;
  test::expect_error([&] { list_documents({empty.path("")}); }, {"no documents"});
  test::expect_error([] { list_documents({}); }, {"no input"});
}

TEST(Documents, StableFractionDependsOnTheNameAlone) {
  EXPECT_EQ(stable_fraction("a/1.txt"), stable_fraction(std::string("a/1.txt")));
  EXPECT_NE(stable_fraction("a/1.txt"), stable_fraction("a/2.txt"));
  // Spread over [0, 1): of 1000 names about half fall below 0.5.
  int below = 0;
  for (int i = 0; i < 1000; ++i) {
    const double f = stable_fraction("doc" + std::to_string(i));
    ASSERT_GE(f, 0.0);
    ASSERT_LT(f, 1.0);
    below += f < 0.5;
  }
  EXPECT_GT(below, 430);
  EXPECT_LT(below, 570);
}

}  // namespace
}  // namespace ttt::data
