#include "serve/text_codec.h"

#include <unistd.h>

#include "common/error.h"
#include "io/frames.h"
#include "io/subprocess.h"

namespace ttt::serve {

TextCodec::TextCodec(const std::string& data_program, const std::string& tokenizer, io::TokenTable table)
    : table_(std::move(table)) {
  const io::PipedChild child = io::start_piped_command(
      {.program = data_program, .args = {"tokenize", "--tokenizer", tokenizer, "--frames"}}, {.end_with_parent = true});
  pid_ = child.pid;
  to_child_ = child.to_child;
  from_child_ = child.from_child;
}

TextCodec::~TextCodec() {
  ::close(to_child_);  // its standard input ends: it exits
  ::close(from_child_);
  try {
    io::wait_command(pid_);
  } catch (const std::exception&) {
    // Already reaped or gone: nothing left to wait for.
  }
}

std::vector<int64_t> TextCodec::encode(const std::string& text) {
  const std::lock_guard lock(mutex_);
  io::write_frame(to_child_, text);
  const std::optional<std::string> reply = io::read_frame(from_child_);
  require(reply.has_value(), "the tokenizer process (ttt-data) has ended");
  return io::decode_reply(*reply);
}

std::string TextCodec::piece(int64_t id) const {
  if (id < 0 || id >= static_cast<int64_t>(table_.pieces.size()) || table_.special[id] != 0) return "";
  return table_.pieces[id];
}

}  // namespace ttt::serve
