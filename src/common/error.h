// Errors a user can act on. Every failure caused by input (files, flags, configs) is
// thrown as ttt::Error with a one-line message; the program prints it and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace ttt {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws ttt::Error(message) unless `condition` holds.
inline void require(bool condition, const std::string& message) {
  if (!condition) throw Error(message);
}

// A one-line description of any exception, without libtorch's C++ backtraces (all of it,
// backtraces included, when TORCH_SHOW_CPP_STACKTRACES=1), and without PyTorch's advice to
// ask for expandable segments where they are asked for.
std::string describe(const std::exception& e);

}  // namespace ttt
