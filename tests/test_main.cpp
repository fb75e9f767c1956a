#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // The tests use tiny tensors and ctest runs them in parallel processes: intra-op
  // threads would only oversubscribe the cores.
  torch::set_num_threads(1);
  return RUN_ALL_TESTS();
}
