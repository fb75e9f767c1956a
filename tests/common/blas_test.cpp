#include <gtest/gtest.h>

#include "common/blas.h"

// The set-up must install an optimised BLAS: libtorch's GEMMs are ~25x slower without one.
TEST(Blas, LibtorchRunsOnAnOptimisedBlas) {
  const ttt::BlasInfo info = ttt::blas_info();
  EXPECT_TRUE(info.optimized) << "BLAS in use: " << info.library;
}
