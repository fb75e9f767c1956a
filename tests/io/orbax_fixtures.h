// The orbax checkpoints written by the TTT-E2E authors' code (tests/fixtures/orbax/, see its
// README) and what their code computed for them (reference.json).
#pragma once
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace ttt::test {

inline const std::string kOrbaxFixtures = TTT_ORBAX_FIXTURES;

// A fixture's reference.json: config, tokens, nll, loss, leaves.
inline nlohmann::json orbax_reference(const std::string& fixture) {
  std::ifstream in(kOrbaxFixtures + "/" + fixture + "/reference.json");
  return nlohmann::json::parse(in);
}

}  // namespace ttt::test
