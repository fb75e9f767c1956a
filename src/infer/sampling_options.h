// How the next token is chosen (infer/sampler.h), as plain data: torch-free, so that the
// server's request layer can carry it.
#pragma once
#include <cstdint>

namespace ttt {

struct SamplingOptions {
  double temperature = 1.0;         // 0: always the most likely token
  int64_t top_k = 0;                // keep the k most likely tokens (0: all)
  double top_p = 1.0;               // keep the fewest most likely tokens whose mass reaches p
  double repetition_penalty = 1.0;  // > 1 discourages tokens already in the context (CTRL's rule)
  uint64_t seed = 0;

  // Throws ttt::Error naming the option that is out of range.
  void validate() const;
};

}  // namespace ttt
