#include "io/token_table.h"

#include <cstring>

#include "common/error.h"
#include "io/atomic_file.h"
#include "io/input_file.h"

namespace ttt::io {
namespace {

constexpr char kMagic[] = "ttt-token-table/1\n";

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

void TokenTable::write(const std::string& path) const {
  require(pieces.size() == special.size(), "internal: token table sizes differ");
  std::string out = kMagic;
  put_u32(out, static_cast<uint32_t>(tokenizer.size()));
  out += tokenizer;
  put_u32(out, static_cast<uint32_t>(pieces.size()));
  put_u32(out, bos_id);
  put_u32(out, eos_id);
  for (size_t i = 0; i < pieces.size(); ++i) {
    out.push_back(static_cast<char>(special[i]));
    put_u32(out, static_cast<uint32_t>(pieces[i].size()));
    out += pieces[i];
  }
  write_text_file(path, out);
}

TokenTable TokenTable::read(const std::string& path) {
  InputFile file = open_input_file(path, "token table '" + path + "': ");
  std::string data(file.size, '\0');
  require(static_cast<bool>(file.stream.read(data.data(), static_cast<std::streamsize>(data.size()))),
          path + ": cannot read the token table");
  size_t at = 0;
  const auto fail = [&](const std::string& why) { return Error(path + ": not a token table: " + why); };
  const auto take = [&](size_t n) {
    if (data.size() - at < n) throw fail("truncated");
    const size_t from = at;
    at += n;
    return std::string_view(data).substr(from, n);
  };
  const auto u32 = [&] {
    const std::string_view b = take(4);
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(b[i])) << (8 * i);
    return v;
  };
  if (take(std::strlen(kMagic)) != kMagic) throw fail("wrong header");
  TokenTable table;
  table.tokenizer = std::string(take(u32()));
  const uint32_t count = u32();
  table.bos_id = u32();
  table.eos_id = u32();
  if (count == 0 || table.bos_id >= count || table.eos_id >= count) throw fail("bad counts");
  for (uint32_t i = 0; i < count; ++i) {
    table.special.push_back(static_cast<uint8_t>(take(1)[0]));
    table.pieces.emplace_back(take(u32()));
  }
  if (at != data.size()) throw fail("trailing bytes");
  return table;
}

}  // namespace ttt::io
