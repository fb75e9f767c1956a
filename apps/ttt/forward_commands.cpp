// `ttt tokenize|detokenize|data ...` run `ttt-data` (apps/ttt/data_main.cpp), installed beside
// `ttt`, with the same arguments: see there why the text commands live in their own program.
#include <limits.h>
#include <unistd.h>

#include "commands.h"
#include "common/error.h"
#include "io/subprocess.h"

namespace ttt::cli {

std::string ttt_program() {
  char self[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  require(n > 0, "cannot find the ttt program's own path");
  return std::string(self, size_t(n));
}

std::string data_program() {
  const std::string path = ttt_program();
  return path.substr(0, path.rfind('/') + 1) + "ttt-data";
}

void run_data_program(const std::vector<std::string>& args) {
  const io::CommandExit ended =
      io::run_command({.program = data_program(), .args = args}, {.discard_stdout = true, .capture_stderr = true});
  if (ended.succeeded()) return;
  // ttt-data's own one-line error, without its "ttt: error: " (ours is added where it is caught).
  std::string message = ended.error_output.substr(0, ended.error_output.find('\n'));
  if (message.rfind("ttt: error: ", 0) == 0) message = message.substr(12);
  throw Error(message.empty() ? "ttt-data " + ended.describe() : message);
}

namespace {

void add_forwarded(CLI::App& app, const std::string& name, const std::string& description) {
  CLI::App* command = app.add_subcommand(name, description + " (`ttt " + name + " --help` for its flags)");
  command->prefix_command();  // every argument after the name is passed on as it is
  command->set_help_flag();   // --help too
  command->allow_extras();
  command->callback([command, name] {
    // In place of ttt, so that ttt-data's output, exit status and Ctrl-C are the user's directly.
    std::vector<std::string> args = {name};
    for (const std::string& extra : command->remaining()) args.push_back(extra);
    io::replace_process_with({.program = data_program(), .args = args});
  });
}

}  // namespace

void add_text_commands(CLI::App& app) {
  add_forwarded(app, "tokenize", "Encode text to token ids");
  add_forwarded(app, "detokenize", "Decode token ids back to text");
  add_forwarded(app, "data", "Corpora and tokenizers: fetch, train-tokenizer, prepare, tokenizer-info, niah-prompts");
}

}  // namespace ttt::cli
