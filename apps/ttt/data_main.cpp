// `ttt-data`: the text commands of `ttt` (tokenize, detokenize, data ...) in a program without
// libtorch. `ttt` runs it for those commands (apps/ttt/forward_commands.cpp): Debian's
// libsentencepiece exports the protobuf it bundles, and loaded beside libtorch's libprotobuf the
// two clash during start-up (a segfault in protobuf's static initialisers), so SentencePiece
// never shares a process with libtorch.
#include <iostream>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "run_app.h"

int main(int argc, char** argv) {
  CLI::App app{"ttt-data: tokenizers and corpora for ttt (run as `ttt tokenize|detokenize|data ...`)."};
  app.name("ttt");
  app.require_subcommand(1);
  ttt::cli::add_tokenize_command(app);
  ttt::cli::add_detokenize_command(app);
  ttt::cli::add_data_command(app);
  return ttt::cli::run_app(app, argc, argv, [](const std::exception& e) {
    std::string text = e.what();  // the first line only
    if (const auto newline = text.find('\n'); newline != std::string::npos) text.resize(newline);
    return text;
  });
}
