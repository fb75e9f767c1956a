#include "eval/plot.h"

#include <sstream>

#include "common/error.h"
#include "io/subprocess.h"

namespace ttt {

std::string context_label(int64_t tokens) {
  return tokens % 1024 == 0 ? std::to_string(tokens / 1024) + "K" : std::to_string(tokens);
}

std::string context_axis(const std::vector<int64_t>& contexts) {
  std::ostringstream axis;
  axis << "set logscale x 2\nset xrange [" << contexts.front() / 1.5 << ":" << contexts.back() * 1.5
       << "]\nset xtics (";
  for (size_t c = 0; c < contexts.size(); ++c) {
    axis << (c ? ", " : "") << "'" << context_label(contexts[c]) << "' " << contexts[c];
  }
  axis << ")\n";
  return axis.str();
}

bool run_gnuplot(const std::string& dir, const std::string& script) {
  const std::string gnuplot = io::find_on_path("gnuplot");
  if (gnuplot.empty()) return false;
  const io::CommandExit ended = io::run_command({.program = gnuplot, .args = {script}}, {.working_directory = dir});
  require(ended.succeeded(), "gnuplot failed on " + dir + "/" + script + " (it " + ended.describe() + ")");
  return true;
}

}  // namespace ttt
