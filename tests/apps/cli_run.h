// Running the real `ttt` program (TTT_BINARY, defined for the CLI tests) as a user does.
#pragma once
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "test_files.h"

namespace ttt::test {

struct CliRun {
  int exit_code;
  std::string output;  // stdout and stderr together
};

inline CliRun run_ttt(const std::string& args) {
  const std::string log = temp_path("out.txt");
  const int status =
      std::system(("OMP_NUM_THREADS=1 " + std::string(TTT_BINARY) + " " + args + " >" + log + " 2>&1").c_str());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  return {WEXITSTATUS(status), text.str()};
}

// A bad input fails with one clear line, never a crash or a stack trace.
inline void expect_clean_failure(const CliRun& run, const std::string& fragment) {
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.output.rfind("ttt: error: ", 0), 0u) << run.output;
  EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 1) << run.output;
  EXPECT_NE(run.output.find(fragment), std::string::npos) << run.output;
}

}  // namespace ttt::test
