// Running other programs (bash, gnuplot, ttt-data) by POSIX fork and exec. Safe in a process
// with threads (libtorch's): the child does nothing but redirect, change directory and exec.
#pragma once
#include <string>
#include <vector>

namespace ttt::io {

// Aggregates for designated initializers ({.program = "bash", .args = {...}, .search_path = true});
// members default to `= {}` so that GCC 12's -Wextra accepts leaving them out.
struct Command {
  std::string program;                 // a path, or with search_path a name looked up in $PATH
  std::vector<std::string> args = {};  // after the program (which is the child's argv[0])
  bool search_path = false;
};

struct RunOptions {
  std::string working_directory = {};  // "": this process's
  bool discard_stdout = false;         // the child's standard output goes to /dev/null
  bool capture_stderr = false;         // the child's standard error goes to CommandExit::error_output
};

struct CommandExit {
  int exit_code = 0;         // its exit status, or 128 + the signal that killed it (as shells say)
  int signal = 0;            // the signal that killed it; 0 when it exited
  std::string error_output;  // its standard error when captured (the first 64 KiB)

  bool succeeded() const { return exit_code == 0 && signal == 0; }
  // "exited with status 3", "was killed by signal 9 (Killed)".
  std::string describe() const;
};

// Runs `command` to its end and says how it ended. Throws ttt::Error naming the program when
// it cannot be started (not found, not executable, no such working directory). Flushes this
// process's standard streams first, so that output stays in order.
CommandExit run_command(const Command& command, const RunOptions& options = {});

// Execs `command` in place of this process: its output, exit status and signals (Ctrl-C) are
// then the program's own. Returns only by throwing ttt::Error naming the program.
[[noreturn]] void replace_process_with(const Command& command);

// The path of the executable `name` in $PATH; "" when there is none.
std::string find_on_path(const std::string& name);

}  // namespace ttt::io
