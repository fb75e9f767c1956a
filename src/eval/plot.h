// What the evaluation reports share without libtorch: how context lengths are written, and
// plots as gnuplot scripts beside their data. gnuplot has no library to call, so the program
// renders a script where it is installed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ttt {

// "8K" for multiples of 1024, else the number.
std::string context_label(int64_t tokens);

// gnuplot lines for an x axis of context lengths: log2, a tic labelled at each length, a
// margin either side.
std::string context_axis(const std::vector<int64_t>& contexts);

// Runs `gnuplot script` in `dir` (the script names its own output). Returns false when gnuplot
// is not on PATH; throws ttt::Error naming the script when gnuplot fails on it.
bool run_gnuplot(const std::string& dir, const std::string& script);

// What to say when no plot could be drawn.
inline constexpr const char* kNoGnuplotWarning = "ttt: warning: gnuplot not found, no plot drawn (install gnuplot-nox)";

}  // namespace ttt
