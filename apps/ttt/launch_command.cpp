// `ttt launch`: the ranks of a data-parallel job on one machine, started as torchrun starts its
// workers (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <thread>

#include "commands.h"
#include "common/error.h"
#include "io/subprocess.h"

namespace ttt::cli {
namespace {

volatile std::sig_atomic_t g_signal = 0;

void on_signal(int signal) { g_signal = signal; }

// Every Ctrl-C and SIGTERM is passed on to the ranks (they run in a process group of their own);
// a rank's first one stops it with a checkpoint, its second kills it, as for `ttt train` alone.
void install_forwarding_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

// A port no one listens on now (the kernel's choice), for rank 0's store.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  require(fd >= 0, "cannot open a socket to find a free port");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  const bool found = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
                     ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  require(found, "cannot find a free port: give --master-port");
  return ntohs(address.sin_port);
}

struct Rank {
  int rank;
  int pid;
  std::optional<io::CommandExit> exit;
};

}  // namespace

void add_launch_command(CLI::App& app) {
  struct Options {
    int nproc_per_node = 1, nnodes = 1, node_rank = 0, master_port = 0;
    std::string master_addr = "127.0.0.1";
    double grace_s = 30;
    std::vector<std::string> args;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand(
      "launch",
      "Run the ranks of a data-parallel job on this machine: N copies of `ttt ARGS...` (`train ...`), one\n"
      "per GPU on a GPU machine, each told its place as torchrun tells its workers. Ctrl-C is passed to\n"
      "every rank (they save a checkpoint and stop); when one rank fails the others are stopped and the\n"
      "job fails naming it. On several machines run one launch per machine, with the same --nnodes,\n"
      "--master-addr and --master-port and each its own --node-rank.");
  command->add_option("--nproc-per-node,-n", options->nproc_per_node, "ranks on this machine")
      ->required()
      ->check(CLI::PositiveNumber);
  command->add_option("--nnodes", options->nnodes, "machines in the job")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command->add_option("--node-rank", options->node_rank, "this machine's place among them, from 0")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command
      ->add_option("--master-addr", options->master_addr, "address of the machine of rank 0 (which serves the store)")
      ->capture_default_str();
  command
      ->add_option("--master-port", options->master_port,
                   "its port (default: a free port on a single machine, 29500 on several)")
      ->check(CLI::Range(1, 65535));
  command->add_option("--grace", options->grace_s, "seconds the other ranks get to stop once one failed")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("args", options->args, "the ttt command every rank runs, after --: -- train --config ...")
      ->required();

  command->callback([options] {
    require(options->node_rank < options->nnodes, "--node-rank must be less than --nnodes");
    const int port = options->master_port ? options->master_port : options->nnodes == 1 ? free_port() : 29500;
    const int local_world = options->nproc_per_node, world = local_world * options->nnodes;
    const std::string program = ttt_program();

    install_forwarding_handlers();
    std::vector<Rank> ranks;
    for (int local = 0; local < local_world; ++local) {
      const int rank = options->node_rank * local_world + local;
      const io::Command rank_command{
          .program = program,
          .args = options->args,
          .environment = {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(local),
                          "WORLD_SIZE=" + std::to_string(world), "LOCAL_WORLD_SIZE=" + std::to_string(local_world),
                          "MASTER_ADDR=" + options->master_addr, "MASTER_PORT=" + std::to_string(port)}};
      ranks.push_back(
          {rank, io::start_command(rank_command, {.own_process_group = true, .end_with_parent = true}), {}});
    }

    // Watch the ranks: pass signals on; when one fails, stop the others, killing them after the grace.
    std::string failures;
    bool signalled = false;
    std::optional<std::chrono::steady_clock::time_point> kill_at;
    const auto running = [&] {
      return std::count_if(ranks.begin(), ranks.end(), [](const Rank& r) { return !r.exit; });
    };
    const auto send_all = [&](int signal) {
      for (const Rank& r : ranks) {
        if (!r.exit) ::kill(r.pid, signal);
      }
    };
    while (running() > 0) {
      if (g_signal) {
        signalled = true;
        send_all(g_signal);
        g_signal = 0;
      }
      bool newly_failed = false;
      for (Rank& r : ranks) {
        if (r.exit || !(r.exit = io::wait_command(r.pid, /*block=*/false))) continue;
        const bool stopped = signalled && r.exit->exit_code == 130;
        if (r.exit->succeeded() || stopped || kill_at) continue;
        failures += (failures.empty() ? "" : ", ") + ("rank " + std::to_string(r.rank) + " " + r.exit->describe());
        newly_failed = true;
      }
      if (newly_failed) {
        send_all(SIGTERM);
        kill_at = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                         std::chrono::duration<double>(options->grace_s));
      }
      if (kill_at && std::chrono::steady_clock::now() >= *kill_at) send_all(SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!failures.empty()) throw Error(failures + "; the job's other ranks were stopped");
    if (signalled) std::exit(130);
  });
}

}  // namespace ttt::cli
