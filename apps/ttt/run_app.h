// How `ttt` and `ttt-data` end: help on request, and every error as one line on stderr
// ("ttt: error: ...") with a non-zero exit, never a crash or a stack trace.
#pragma once
#include <exception>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

namespace ttt::cli {

// Parses and runs the chosen command; `describe` turns an exception into its one line.
inline int run_app(CLI::App& app, int argc, char** argv, std::string (*describe)(const std::exception&)) {
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
    std::cerr << "ttt: error: " << describe(e) << "\n";
    return 1;
  }
  return 0;
}

}  // namespace ttt::cli
