#include "io/subprocess.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include "test_files.h"

namespace ttt::io {
namespace {

Command shell(const std::string& script) { return {.program = "sh", .args = {"-c", script}, .search_path = true}; }

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(Subprocess, ReturnsTheExitStatus) {
  EXPECT_TRUE(run_command(shell("exit 0")).succeeded());
  const CommandExit ended = run_command(shell("exit 3"));
  EXPECT_FALSE(ended.succeeded());
  EXPECT_EQ(ended.exit_code, 3);
  EXPECT_EQ(ended.signal, 0);
  EXPECT_EQ(ended.describe(), "exited with status 3");
}

TEST(Subprocess, PassesArgumentsAsTheyAre) {
  test::ScratchDir dir;
  const CommandExit ended = run_command(
      {.program = "/bin/sh", .args = {"-c", "printf '%s|' \"$@\" > \"$0\"", dir.path("args.txt"), "a b", "", "'c'"}});
  ASSERT_TRUE(ended.succeeded()) << ended.describe();
  EXPECT_EQ(read_file(dir.path("args.txt")), "a b||'c'|");
}

TEST(Subprocess, ReportsAProgramThatCannotRun) {
  test::expect_error([] { run_command({.program = "ttt-no-such-program", .search_path = true}); },
                     {"cannot run 'ttt-no-such-program'", "not found on PATH"});
  test::expect_error([] { run_command({.program = "/nonexistent/ttt-no-such-program"}); },
                     {"cannot run '/nonexistent/ttt-no-such-program'", "No such file or directory"});
  test::ScratchDir dir;
  std::ofstream(dir.path("not-executable")) << "#!/bin/sh\n";
  test::expect_error([&] { run_command({.program = dir.path("not-executable")}); },
                     {"cannot run '" + dir.path("not-executable") + "'", "Permission denied"});
}

TEST(Subprocess, ReportsDeathBySignal) {
  const CommandExit ended = run_command(shell("kill -TERM $$"));
  EXPECT_FALSE(ended.succeeded());
  EXPECT_EQ(ended.signal, SIGTERM);
  EXPECT_EQ(ended.exit_code, 128 + SIGTERM);
  EXPECT_NE(ended.describe().find("killed by signal 15"), std::string::npos) << ended.describe();
}

TEST(Subprocess, RunsInTheWorkingDirectory) {
  test::ScratchDir dir;
  ASSERT_TRUE(run_command(shell("pwd > here.txt"), {.working_directory = dir.dir()}).succeeded());
  char resolved[PATH_MAX];
  ASSERT_NE(::realpath(dir.dir().c_str(), resolved), nullptr);
  EXPECT_EQ(read_file(dir.path("here.txt")), std::string(resolved) + "\n");
  test::expect_error([&] { run_command(shell("true"), {.working_directory = dir.path("absent")}); },
                     {"cannot run 'sh' in '" + dir.path("absent") + "'", "No such file or directory"});
}

TEST(Subprocess, CapturesStandardErrorAndDiscardsStandardOutput) {
  const CommandExit ended =
      run_command(shell("echo out; echo err >&2; exit 2"), {.discard_stdout = true, .capture_stderr = true});
  EXPECT_EQ(ended.exit_code, 2);
  EXPECT_EQ(ended.error_output, "err\n");
  // More than a pipe holds: the child must not block on a full pipe.
  const CommandExit long_output = run_command(shell("head -c 200000 /dev/zero >&2"), {.capture_stderr = true});
  EXPECT_TRUE(long_output.succeeded());
  EXPECT_EQ(long_output.error_output.size(), 64u * 1024u);

  testing::internal::CaptureStdout();
  const bool shown = run_command(shell("echo shown")).succeeded();
  const bool discarded = run_command(shell("echo discarded"), {.discard_stdout = true}).succeeded();
  const std::string printed = testing::internal::GetCapturedStdout();
  EXPECT_TRUE(shown && discarded);
  EXPECT_EQ(printed, "shown\n");
}

void on_alarm(int) {}

// A signal handler installed without SA_RESTART (as `ttt train`'s Ctrl-C handler is) interrupts
// waitpid and read with EINTR while the child runs: the wait goes on.
TEST(Subprocess, WaitsThroughInterruptingSignals) {
  struct sigaction action {};
  struct sigaction previous {};
  action.sa_handler = on_alarm;
  sigemptyset(&action.sa_mask);
  ASSERT_EQ(sigaction(SIGALRM, &action, &previous), 0);
  const itimerval every_10ms{{0, 10000}, {0, 10000}};
  const itimerval off{};
  ASSERT_EQ(setitimer(ITIMER_REAL, &every_10ms, nullptr), 0);
  const CommandExit ended = run_command(shell("sleep 0.3; echo done >&2; exit 4"), {.capture_stderr = true});
  setitimer(ITIMER_REAL, &off, nullptr);
  sigaction(SIGALRM, &previous, nullptr);
  EXPECT_EQ(ended.exit_code, 4);
  EXPECT_EQ(ended.error_output, "done\n");
}

// Runs `action` in a child process and returns its exit status: replace_process_with only
// returns by exec or by throwing.
template <typename Action>
int exit_status_of_child(Action action) {
  std::fflush(nullptr);  // or the child would print the parent's buffered output again
  const pid_t pid = fork();
  if (pid == 0) {
    action();
    _exit(100);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(Subprocess, StartsWithoutWaitingWithItsOwnEnvironmentAndProcessGroup) {
  setenv("TTT_SUBPROCESS_KEPT", "kept", 1);
  setenv("TTT_SUBPROCESS_SET", "inherited", 1);
  const Command check = shell(
      "test \"$TTT_SUBPROCESS_KEPT\" = kept && test \"$TTT_SUBPROCESS_SET\" = given && "
      "test \"$(cut -d' ' -f5 /proc/$$/stat)\" = $$ && cat >/dev/null");  // its own group; waits for stdin's end
  int to_child[2];
  ASSERT_EQ(pipe2(to_child, O_CLOEXEC), 0);  // the child keeps only its stdin copy
  const int saved_stdin = dup(STDIN_FILENO);
  dup2(to_child[0], STDIN_FILENO);
  Command command = check;
  command.environment = {"TTT_SUBPROCESS_SET=given"};
  const int pid = start_command(command, {.own_process_group = true});
  dup2(saved_stdin, STDIN_FILENO);
  close(saved_stdin);
  close(to_child[0]);
  EXPECT_FALSE(wait_command(pid, /*block=*/false).has_value());  // still reading
  close(to_child[1]);
  const std::optional<CommandExit> ended = wait_command(pid);
  ASSERT_TRUE(ended.has_value());
  EXPECT_TRUE(ended->succeeded()) << ended->describe();
  EXPECT_EQ(std::getenv("TTT_SUBPROCESS_SET"), std::string("inherited"));
}

TEST(Subprocess, ReplacesThisProcess) {
  EXPECT_EQ(exit_status_of_child([] { replace_process_with(shell("exit 7")); }), 7);
  // A program that cannot run is an error naming it, in this process.
  EXPECT_EQ(exit_status_of_child([] {
              try {
                replace_process_with({.program = "/nonexistent/ttt-no-such-program"});
              } catch (const Error& e) {
                _exit(std::string(e.what()).find("cannot run '/nonexistent/ttt-no-such-program'") == 0 ? 0 : 1);
              }
            }),
            0);
}

TEST(Subprocess, FindsProgramsOnPath) {
  EXPECT_EQ(find_on_path("sh").rfind('/', 0), 0u);
  EXPECT_EQ(find_on_path("ttt-no-such-program"), "");
  EXPECT_EQ(find_on_path("."), "");  // directories are not programs
}

}  // namespace
}  // namespace ttt::io
