// A rank's place in its job, and the job's ranks as threads of one process on Gloo: what
// `Communicator` promises its callers.
#include "train/distributed.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "test_files.h"
#include "ttt_build_features.h"

namespace ttt {
namespace {

// CPU ranks need c10d's Gloo, which a build without Gloo's headers (PyTorch's wheel) lacks.
#if TTT_WITH_GLOO && defined(USE_C10D_GLOO)
constexpr bool kWithGloo = true;
#else
constexpr bool kWithGloo = false;
#endif

constexpr std::chrono::milliseconds kTimeout{60'000};

// Runs `work(rank, its communicator)` for every rank of a job of `world` ranks on threads; their
// results in rank order. A rank's exception comes out of the call.
template <typename Result>
std::vector<Result> on_ranks(int world, const std::function<Result(int, std::unique_ptr<Communicator>&)>& work) {
  const int port = test::free_port();
  std::vector<std::future<Result>> running;
  for (int rank = 0; rank < world; ++rank) {
    running.push_back(std::async(std::launch::async, [=, &work] {
      JobRank job;
      job.rank = rank;
      job.local_rank = rank;
      job.world_size = world;
      job.master_port = port;
      std::unique_ptr<Communicator> ranks = Communicator::connect(job, torch::kCPU, "gloo", kTimeout);
      return work(rank, ranks);
    }));
  }
  std::vector<Result> results;
  for (std::future<Result>& r : running) results.push_back(r.get());
  return results;
}

// The variables torchrun sets, as a rank reads them; each test process sets its own.
TEST(JobRank, FromTheEnvironment) {
  for (const char* name : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) {
    unsetenv(name);
  }
  EXPECT_FALSE(JobRank::from_environment().has_value());  // a process of its own
  setenv("WORLD_SIZE", "4", 1);
  setenv("RANK", "3", 1);
  std::optional<JobRank> job = JobRank::from_environment();
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->rank, 3);
  EXPECT_EQ(job->local_rank, 3);
  EXPECT_EQ(job->local_world_size, 4);  // unsaid: every rank on this host
  setenv("LOCAL_RANK", "1", 1);
  setenv("LOCAL_WORLD_SIZE", "2", 1);
  setenv("MASTER_PORT", "29400", 1);
  job = JobRank::from_environment();
  EXPECT_EQ(job->local_rank, 1);
  EXPECT_EQ(job->local_world_size, 2);
  EXPECT_EQ(job->master_port, 29400);
  setenv("LOCAL_WORLD_SIZE", "5", 1);
  test::expect_error([] { JobRank::from_environment(); }, {"$LOCAL_WORLD_SIZE (5)", "$WORLD_SIZE (4)"});
  setenv("LOCAL_WORLD_SIZE", "two", 1);
  test::expect_error([] { JobRank::from_environment(); }, {"$LOCAL_WORLD_SIZE", "'two'"});
  setenv("LOCAL_WORLD_SIZE", "2", 1);
  setenv("RANK", "4", 1);
  test::expect_error([] { JobRank::from_environment(); }, {"$RANK (4)"});
  for (const char* name : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"}) unsetenv(name);
}

TEST(Communicator, AnyIsTrueOnEveryRankWhereOneRankSaysSo) {
  if (!kWithGloo) GTEST_SKIP() << "ttt was built without Gloo";
  using Answers = std::vector<bool>;
  const std::vector<Answers> answers = on_ranks<Answers>(3, [](int rank, std::unique_ptr<Communicator>& ranks) {
    return Answers{ranks->any(false), ranks->any(rank == 2), ranks->any(true), ranks->any(false)};
  });
  for (const Answers& a : answers) EXPECT_EQ(a, (Answers{false, true, true, false}));
}

TEST(Communicator, AllGatherTextGivesEveryRankEveryText) {
  if (!kWithGloo) GTEST_SKIP() << "ttt was built without Gloo";
  using Texts = std::vector<std::string>;
  const std::vector<Texts> texts = on_ranks<Texts>(2, [](int rank, std::unique_ptr<Communicator>& ranks) {
    return ranks->all_gather_text("greeting", rank == 0 ? "" : "from rank 1\nwith a newline");
  });
  for (const Texts& t : texts) EXPECT_EQ(t, (Texts{"", "from rank 1\nwith a newline"}));
}

// What the trainer's checks rely on: `any` tells a rank that another one is gone long before
// the timeout, where a wait on the store would last all of it.
TEST(Communicator, AnyFailsAtOnceWhereARankIsGone) {
  if (!kWithGloo) GTEST_SKIP() << "ttt was built without Gloo";
  using Waited = double;  // seconds rank 0 waited for its answer; 0 for rank 1
  const std::vector<Waited> waited = on_ranks<Waited>(2, [](int rank, std::unique_ptr<Communicator>& ranks) {
    EXPECT_FALSE(ranks->any(false));
    if (rank == 1) {
      ranks.reset();  // its connections close, as a killed process's do
      return 0.0;
    }
    const auto start = std::chrono::steady_clock::now();
    test::expect_error([&] { ranks->any(false); }, {"rank 0: ", "another rank died"});
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  });
  EXPECT_LT(waited[0], 10.0) << "the timeout is " << kTimeout.count() / 1000 << " s";
}

}  // namespace
}  // namespace ttt
