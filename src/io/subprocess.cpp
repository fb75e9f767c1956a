#include "io/subprocess.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>

#include "common/error.h"

extern char** environ;

namespace ttt::io {
namespace {

constexpr size_t kMaxErrorOutput = 64 * 1024;

// What the child reports through a close-on-exec pipe when it fails before exec: the parent
// reads end-of-file when exec succeeds.
struct ChildFailure {
  enum Stage : int { kRedirect, kChangeDirectory, kExec } stage;
  int error;
};

// The program's path, its argv and environment, built before fork: the child of a threaded
// process must not allocate (another thread may have held malloc's lock at fork).
struct Executable {
  explicit Executable(const Command& command) : words{command.program} {
    words.insert(words.end(), command.args.begin(), command.args.end());
    for (std::string& word : words) argv.push_back(word.data());
    argv.push_back(nullptr);
    const auto name_of = [](const std::string& entry) { return entry.substr(0, entry.find('=')); };
    for (char** entry = environ; *entry; ++entry) {
      const std::string inherited = *entry;
      const bool overridden = std::any_of(command.environment.begin(), command.environment.end(),
                                          [&](const std::string& set) { return name_of(set) == name_of(inherited); });
      if (!overridden) variables.push_back(inherited);
    }
    variables.insert(variables.end(), command.environment.begin(), command.environment.end());
    for (std::string& variable : variables) envp.push_back(variable.data());
    envp.push_back(nullptr);
    path = command.program;
    if (command.search_path && command.program.find('/') == std::string::npos) {
      path = find_on_path(command.program);
      require(!path.empty(), "cannot run '" + command.program + "': not found on PATH");
    }
  }
  std::vector<std::string> words, variables;
  std::vector<char*> argv, envp;
  std::string path;
};

void flush_standard_streams() {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
}

void close_pipe(int fds[2]) {
  for (int i = 0; i < 2; ++i) {
    if (fds[i] >= 0) ::close(fds[i]);
    fds[i] = -1;
  }
}

ssize_t read_retrying(int fd, void* buffer, size_t size) {
  ssize_t got;
  do {
    got = ::read(fd, buffer, size);
  } while (got < 0 && errno == EINTR);
  return got;
}

// Waits for `pid` (with `flags` WNOHANG: returns 0 while it runs): waitpid returns EINTR when a
// signal handler runs (ttt train's Ctrl-C one).
pid_t wait_retrying(pid_t pid, const std::string& program, int& status, int flags = 0) {
  pid_t ended;
  while ((ended = ::waitpid(pid, &status, flags)) < 0) {
    if (errno != EINTR) throw Error("cannot wait for '" + program + "': " + std::strerror(errno));
  }
  return ended;
}

CommandExit exit_of(int status) {
  CommandExit ended;
  if (WIFSIGNALED(status)) {
    ended.signal = WTERMSIG(status);
    ended.exit_code = 128 + ended.signal;
  } else {
    ended.exit_code = WEXITSTATUS(status);
  }
  return ended;
}

[[noreturn]] void fail_in_child(int report_fd, ChildFailure::Stage stage) {
  const ChildFailure failure{stage, errno};
  [[maybe_unused]] const ssize_t written = ::write(report_fd, &failure, sizeof failure);
  ::_exit(127);
}

std::string failure_message(const Command& command, const RunOptions& options, const ChildFailure& failure) {
  const std::string reason = std::strerror(failure.error);
  const std::string program = "cannot run '" + command.program + "'";
  switch (failure.stage) {
    case ChildFailure::kRedirect:
      return program + ": cannot redirect its output: " + reason;
    case ChildFailure::kChangeDirectory:
      return program + " in '" + options.working_directory + "': " + reason;
    case ChildFailure::kExec:
      break;
  }
  return program + ": " + reason;
}

// Forks and execs `command`; returns the child once exec succeeded, or throws (the child reaped)
// when it failed. `error_output` is a pipe for the child's standard error, or {-1, -1}: its
// write end is closed here. `stdio` (or null) are the ends the child reads as its standard
// input and writes as its standard output; the caller closes them.
pid_t spawn(const Command& command, const RunOptions& options, int error_output[2], const int* stdio = nullptr) {
  Executable executable(command);
  int report[2] = {-1, -1};
  if (::pipe2(report, O_CLOEXEC) != 0) {
    const std::string reason = std::strerror(errno);
    close_pipe(error_output);
    throw Error("cannot run '" + command.program + "': " + reason);
  }
  flush_standard_streams();
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (options.own_process_group) ::setpgid(0, 0);
    if (options.end_with_parent) ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (options.discard_stdout) {
      const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);  // only its copy in fd 1 stays
      if (null < 0 || ::dup2(null, STDOUT_FILENO) < 0) fail_in_child(report[1], ChildFailure::kRedirect);
    }
    if (stdio && (::dup2(stdio[0], STDIN_FILENO) < 0 || ::dup2(stdio[1], STDOUT_FILENO) < 0)) {
      fail_in_child(report[1], ChildFailure::kRedirect);
    }
    if (error_output[1] >= 0 && ::dup2(error_output[1], STDERR_FILENO) < 0) {
      fail_in_child(report[1], ChildFailure::kRedirect);
    }
    if (!options.working_directory.empty() && ::chdir(options.working_directory.c_str()) != 0) {
      fail_in_child(report[1], ChildFailure::kChangeDirectory);
    }
    ::execve(executable.path.c_str(), executable.argv.data(), executable.envp.data());
    fail_in_child(report[1], ChildFailure::kExec);
  }
  const int fork_error = errno;
  ::close(report[1]);
  report[1] = -1;
  if (error_output[1] >= 0) ::close(error_output[1]);
  error_output[1] = -1;
  if (pid < 0) {
    close_pipe(report);
    close_pipe(error_output);
    throw Error("cannot run '" + command.program + "': " + std::strerror(fork_error));
  }
  ChildFailure failure{};
  const bool failed = read_retrying(report[0], &failure, sizeof failure) == sizeof failure;
  close_pipe(report);
  if (failed) {
    close_pipe(error_output);
    int status = 0;
    wait_retrying(pid, command.program, status);
    throw Error(failure_message(command, options, failure));
  }
  return pid;
}

}  // namespace

std::string CommandExit::describe() const {
  if (signal != 0) return "was killed by signal " + std::to_string(signal) + " (" + ::strsignal(signal) + ")";
  return "exited with status " + std::to_string(exit_code);
}

CommandExit run_command(const Command& command, const RunOptions& options) {
  int error_output[2] = {-1, -1};
  if (options.capture_stderr && ::pipe2(error_output, O_CLOEXEC) != 0) {
    throw Error("cannot run '" + command.program + "': " + std::strerror(errno));
  }
  const pid_t pid = spawn(command, options, error_output);
  std::string captured;
  if (error_output[0] >= 0) {
    // Read to the end before waiting: a child blocked on a full pipe would never exit.
    char buffer[4096];
    for (ssize_t got; (got = read_retrying(error_output[0], buffer, sizeof buffer)) > 0;) {
      captured.append(buffer, std::min(size_t(got), kMaxErrorOutput - captured.size()));
    }
  }
  close_pipe(error_output);
  int status = 0;
  wait_retrying(pid, command.program, status);
  CommandExit ended = exit_of(status);
  ended.error_output = std::move(captured);
  return ended;
}

int start_command(const Command& command, const RunOptions& options) {
  require(!options.capture_stderr, "internal: start_command cannot capture standard error");
  int no_pipe[2] = {-1, -1};
  return spawn(command, options, no_pipe);
}

PipedChild start_piped_command(const Command& command, const RunOptions& options) {
  require(!options.capture_stderr && !options.discard_stdout, "internal: a piped command keeps its own streams");
  int to_child[2] = {-1, -1}, from_child[2] = {-1, -1};
  if (::pipe2(to_child, O_CLOEXEC) != 0 || ::pipe2(from_child, O_CLOEXEC) != 0) {
    const std::string reason = std::strerror(errno);
    close_pipe(to_child);
    close_pipe(from_child);
    throw Error("cannot run '" + command.program + "': " + reason);
  }
  const int stdio[2] = {to_child[0], from_child[1]};
  int no_pipe[2] = {-1, -1};
  pid_t pid = -1;
  try {
    pid = spawn(command, options, no_pipe, stdio);
  } catch (...) {
    close_pipe(to_child);
    close_pipe(from_child);
    throw;
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  return {pid, to_child[1], from_child[0]};
}

std::optional<CommandExit> wait_command(int pid, bool block) {
  int status = 0;
  if (wait_retrying(pid, "process " + std::to_string(pid), status, block ? 0 : WNOHANG) == 0) return std::nullopt;
  return exit_of(status);
}

void replace_process_with(const Command& command) {
  Executable executable(command);
  flush_standard_streams();
  ::execv(executable.path.c_str(), executable.argv.data());
  throw Error("cannot run '" + command.program + "': " + std::strerror(errno));
}

std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/" + name;
    struct stat info {};
    if (::stat(candidate.c_str(), &info) == 0 && S_ISREG(info.st_mode) && ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

}  // namespace ttt::io
