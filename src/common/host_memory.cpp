#include "common/host_memory.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>
#include <vector>

namespace ttt {
namespace {

// The limit in a cgroup memory file (a byte count), or -1: missing, "max" or not a number.
int64_t limit_in(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text.empty() ||
      !std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c) != 0; })) {
    return -1;
  }
  try {
    return std::stoll(text);
  } catch (const std::out_of_range&) {
    return -1;  // beyond int64: no limit
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

int64_t host_memory_limit(int64_t physical, const std::string& self_cgroup, const std::string& cgroup_root) {
  // Where to look: the roots of v2 (unified) and v1 (the memory controller's mount), and the
  // process's own cgroup under each, from /proc/self/cgroup's lines "id:controllers:path".
  std::vector<std::string> files = {cgroup_root + "/memory.max", cgroup_root + "/memory/memory.limit_in_bytes"};
  std::istringstream lines(self_cgroup);
  for (std::string line; std::getline(lines, line);) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1), path = line.substr(second + 1);
    if (path.empty() || path == "/") continue;
    if (controllers.empty()) files.push_back(cgroup_root + path + "/memory.max");
    std::istringstream names(controllers);
    for (std::string name; std::getline(names, name, ',');) {
      if (name == "memory") files.push_back(cgroup_root + "/memory" + path + "/memory.limit_in_bytes");
    }
  }
  int64_t limit = physical;
  for (const std::string& file : files) {
    const int64_t bytes = limit_in(file);
    if (bytes > 0) limit = std::min(limit, bytes);
  }
  return limit;
}

int64_t host_memory_limit() {
  const int64_t physical = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
  return host_memory_limit(physical, read_file("/proc/self/cgroup"), "/sys/fs/cgroup");
}

}  // namespace ttt
