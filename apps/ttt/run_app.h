// How `ttt` and `ttt-data` end: help on request, and every error as one line on stderr
// ("ttt: error: ...") with a non-zero exit, never a crash or a stack trace.
#pragma once
#include <exception>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

namespace ttt::cli {

// A word where a command was expected that names none: `ttt nosuch` gives {"", "nosuch"},
// `ttt data nosuch` {"data ", "nosuch"}; an empty word when there is none.
struct UnknownCommand {
  std::string parents, word;
};

inline UnknownCommand unknown_command(const CLI::App& app) {
  const CLI::App* level = &app;
  UnknownCommand unknown;
  for (std::vector<CLI::App*> chosen = level->get_subcommands(); !chosen.empty(); chosen = level->get_subcommands()) {
    level = chosen.front();
    unknown.parents += level->get_name() + " ";
  }
  if (level->get_subcommands([](const CLI::App*) { return true; }).empty()) return {};
  const std::vector<std::string> left = level->remaining();
  if (!left.empty() && left.front().rfind('-', 0) != 0) unknown.word = left.front();
  return unknown;
}

// Parses and runs the chosen command; `describe` turns an exception into its one line.
inline int run_app(CLI::App& app, int argc, char** argv, std::string (*describe)(const std::exception&)) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Checked first: CLI11 answers `ttt nosuch` with "A subcommand is required" and
    // `ttt nosuch --help` with the help.
    if (const UnknownCommand unknown = unknown_command(app); !unknown.word.empty()) {
      std::cerr << "ttt: error: unknown command '" << unknown.parents << unknown.word << "' (see ttt "
                << unknown.parents << "--help)\n";
      return static_cast<int>(CLI::ExitCodes::ExtrasError);
    }
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help
    std::cerr << "ttt: error: " << e.what() << " (see ttt --help)\n";
    return e.get_exit_code();
  } catch (const std::exception& e) {
    std::cerr << "ttt: error: " << describe(e) << "\n";
    return 1;
  }
  return 0;
}

}  // namespace ttt::cli
