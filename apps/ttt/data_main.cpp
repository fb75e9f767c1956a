// `ttt-data`: the text commands of `ttt` (tokenize, detokenize, data ...) in a program without
// libtorch. `ttt` runs it for those commands (apps/ttt/forward_commands.cpp): Debian's
// libsentencepiece exports the protobuf it bundles, and loaded beside libtorch's libprotobuf the
// two clash during start-up (a segfault in protobuf's static initialisers), so SentencePiece
// never shares a process with libtorch.
#include <iostream>

#include <CLI/CLI.hpp>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"ttt-data: tokenizers and corpora for ttt (run as `ttt tokenize|detokenize|data ...`)."};
  app.name("ttt");
  app.require_subcommand(1);
  ttt::cli::add_tokenize_command(app);
  ttt::cli::add_detokenize_command(app);
  ttt::cli::add_data_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ttt: error: " << e.what() << " (see ttt --help)\n";
    return e.get_exit_code();
  } catch (const std::exception& e) {
    std::string text = e.what();
    if (const auto newline = text.find('\n'); newline != std::string::npos) text.resize(newline);
    std::cerr << "ttt: error: " << text << "\n";
    return 1;
  }
  return 0;
}
