// The subcommands of `ttt`, each declared once with its flags and help text.
#pragma once
#include <CLI/CLI.hpp>

namespace ttt::cli {

void add_init_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_eval_command(CLI::App& app);
// `ttt eval niah` (apps/ttt/niah_command.cpp), under `eval`.
void add_niah_command(CLI::App& eval);
void add_grad_command(CLI::App& app);
void add_train_command(CLI::App& app);
// `ttt bench` (apps/ttt/bench_command.cpp).
void add_bench_command(CLI::App& app);

// Tokenizers and corpora (apps/ttt/data_commands.cpp), built into `ttt-data`, a program without
// libtorch (see apps/ttt/data_main.cpp for why), where PCRE2 and SentencePiece are installed.
void add_tokenize_command(CLI::App& app);
void add_detokenize_command(CLI::App& app);
void add_data_command(CLI::App& app);
// In `ttt`: tokenize, detokenize and data, run by `ttt-data` (apps/ttt/forward_commands.cpp).
void add_text_commands(CLI::App& app);
// `ttt launch` (apps/ttt/launch_command.cpp): the ranks of a data-parallel job on this machine.
void add_launch_command(CLI::App& app);
// This program's own path (apps/ttt/forward_commands.cpp).
std::string ttt_program();

// The `ttt-data` program beside `ttt`, and running it to completion with `args` (after the
// program name); its error line becomes a ttt::Error. Built where TTT_WITH_TEXT is defined.
std::string data_program();
void run_data_program(const std::vector<std::string>& args);

// `ttt generate` (apps/ttt/generate_command.cpp).
void add_generate_command(CLI::App& app);

// `ttt serve` (apps/ttt/serve_command.cpp), built where cpp-httplib is (TTT_WITH_SERVE).
void add_serve_command(CLI::App& app);

// `ttt convert orbax` (apps/ttt/convert_command.cpp), built where libzstd is (TTT_WITH_ORBAX).
void add_convert_command(CLI::App& app);

}  // namespace ttt::cli
