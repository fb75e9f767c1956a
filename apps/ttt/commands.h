// The subcommands of `ttt`, each declared once with its flags and help text.
#pragma once
#include <CLI/CLI.hpp>

namespace ttt::cli {

void add_init_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_grad_command(CLI::App& app);

// Tokenizers and corpora (apps/ttt/data_commands.cpp; built where PCRE2 and SentencePiece are).
void add_tokenize_command(CLI::App& app);
void add_detokenize_command(CLI::App& app);
void add_data_command(CLI::App& app);

}  // namespace ttt::cli
