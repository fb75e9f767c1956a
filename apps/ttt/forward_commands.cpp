// `ttt tokenize|detokenize|data ...` run `ttt-data` (apps/ttt/data_main.cpp), installed beside
// `ttt`, with the same arguments: see there why the text commands live in their own program.
#include <fcntl.h>
#include <limits.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "commands.h"
#include "common/error.h"

namespace ttt::cli {

std::string data_program() {
  char self[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  require(n > 0, "cannot find the ttt program's own path");
  std::string path(self, size_t(n));
  return path.substr(0, path.rfind('/') + 1) + "ttt-data";
}

void run_data_program(const std::vector<std::string>& args) {
  const std::string program = data_program();
  char log_path[] = "/tmp/ttt-data-XXXXXX";
  const int log = ::mkstemp(log_path);
  require(log >= 0, std::string("cannot create a temporary file: ") + std::strerror(errno));
  std::vector<std::string> full = {"ttt"};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::cout.flush();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, STDOUT_FILENO);
    ::dup2(log, STDERR_FILENO);
    ::execv(program.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  while (pid > 0 && ::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::string message(4096, '\0');
  const ssize_t got = ::pread(log, message.data(), message.size(), 0);
  message.resize(got > 0 ? size_t(got) : 0);
  ::close(log);
  ::unlink(log_path);
  if (pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  if (const auto newline = message.find('\n'); newline != std::string::npos) message.resize(newline);
  if (message.rfind("ttt: error: ", 0) == 0) message = message.substr(12);
  throw Error(message.empty() ? "cannot run '" + program + "' (built beside ttt)" : message);
}

namespace {

void add_forwarded(CLI::App& app, const std::string& name, const std::string& description) {
  CLI::App* command = app.add_subcommand(name, description + " (`ttt " + name + " --help` for its flags)");
  command->prefix_command();  // every argument after the name is passed on as it is
  command->set_help_flag();   // --help too
  command->allow_extras();
  command->callback([command, name] {
    const std::string program = data_program();
    std::vector<std::string> args = {"ttt", name};
    for (const std::string& extra : command->remaining()) args.push_back(extra);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::cout.flush();
    std::cerr.flush();
    ::execv(program.c_str(), argv.data());
    throw Error("cannot run '" + program + "' (built beside ttt): " + std::strerror(errno));
  });
}

}  // namespace

void add_text_commands(CLI::App& app) {
  add_forwarded(app, "tokenize", "Encode text to token ids");
  add_forwarded(app, "detokenize", "Decode token ids back to text");
  add_forwarded(app, "data", "Corpora and tokenizers: fetch, train-tokenizer, prepare, tokenizer-info");
}

}  // namespace ttt::cli
