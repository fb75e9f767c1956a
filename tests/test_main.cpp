#include <gtest/gtest.h>
#include <torch/types.h>

#include "common/device_allocator.h"
#include "common/malloc_tuning.h"

int main(int argc, char** argv) {
  ttt::tune_malloc_for_tensors();  // as in the ttt program
  ttt::prefer_expandable_device_segments();
  ::testing::InitGoogleTest(&argc, argv);
  // The tests use tiny tensors and ctest runs them in parallel processes: intra-op
  // threads would only oversubscribe the cores.
  torch::set_num_threads(1);
  return RUN_ALL_TESTS();
}
