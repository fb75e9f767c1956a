// Running other programs (bash, gnuplot, ttt-data) by POSIX fork and exec. Safe in a process
// with threads (libtorch's): the child does nothing but redirect, change directory and exec.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace ttt::io {

// Aggregates for designated initializers ({.program = "bash", .args = {...}, .search_path = true});
// members default to `= {}` so that GCC 12's -Wextra accepts leaving them out.
struct Command {
  std::string program;                 // a path, or with search_path a name looked up in $PATH
  std::vector<std::string> args = {};  // after the program (which is the child's argv[0])
  bool search_path = false;
  std::vector<std::string> environment = {};  // "NAME=value": set for the child, over this process's
};

struct RunOptions {
  std::string working_directory = {};  // "": this process's
  bool discard_stdout = false;         // the child's standard output goes to /dev/null
  bool capture_stderr = false;         // the child's standard error goes to CommandExit::error_output
  // The child leads a process group of its own: a terminal's Ctrl-C reaches this process only,
  // which decides what to pass on.
  bool own_process_group = false;
  bool end_with_parent = false;  // the child gets SIGTERM when this process dies (Linux)
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

// Starts `command` and returns its process id without waiting for it; errors as run_command's.
// capture_stderr is run_command's alone.
int start_command(const Command& command, const RunOptions& options = {});
// A child reading this process's requests on its standard input and answering on its standard
// output (a coprocess); its standard error is this process's. The caller closes both ends and
// waits for `pid` (closing `to_child` is the usual way to end it).
struct PipedChild {
  int pid = -1;
  int to_child = -1;    // write end: the child's standard input
  int from_child = -1;  // read end: the child's standard output
};
PipedChild start_piped_command(const Command& command, const RunOptions& options = {});

// How the child `pid` of start_command ended, waiting for it; with `block` false, nothing
// while it still runs.
std::optional<CommandExit> wait_command(int pid, bool block = true);

// Execs `command` in place of this process: its output, exit status and signals (Ctrl-C) are
// then the program's own. Returns only by throwing ttt::Error naming the program.
[[noreturn]] void replace_process_with(const Command& command);

// The path of the executable `name` in $PATH; "" when there is none.
std::string find_on_path(const std::string& name);

}  // namespace ttt::io
