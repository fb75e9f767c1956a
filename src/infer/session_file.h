// The metadata of a saved session file (Session::save): torch-free, so that the fuzz harness
// of session files covers everything but making tensors of the state.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ttt {

// Version 2 added the file's checksum; version 1 files still load, with a warning.
inline constexpr const char* kSessionFormat = "ttt-session/2";
inline constexpr const char* kSessionFormatWithoutChecksum = "ttt-session/1";

struct SessionFileHeader {
  std::string config_json;        // the model config it was saved with
  std::string model_fingerprint;  // of the weights it was saved with
  int64_t position = 0;           // tokens read
  int64_t inner_steps = 0;
  std::vector<int64_t> pending;  // inputs of the chunk not yet trained on (at most position)
};

// Validates a session file's metadata (checksum already verified when `checksum_verified`):
// any bad value is a one-line ttt::Error naming `path`.
SessionFileHeader parse_session_metadata(const std::map<std::string, std::string>& metadata, bool checksum_verified,
                                         const std::string& path);

}  // namespace ttt
