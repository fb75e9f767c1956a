#include "common/host_memory.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>
#include <stdexcept>
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
  // Where to look: the roots of v2 (unified) and v1 (the memory controller's mount), and every
  // cgroup from there down to the process's own (a limit on a parent holds for its children,
  // whose files do not show it: Slurm's job, systemd's slice), from /proc/self/cgroup's lines
  // "id:controllers:path".
  std::vector<std::string> files = {cgroup_root + "/memory.max", cgroup_root + "/memory/memory.limit_in_bytes"};
  std::istringstream lines(self_cgroup);
  for (std::string line; std::getline(lines, line);) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1), path = line.substr(second + 1);
    bool v1_memory = false;
    std::istringstream names(controllers);
    for (std::string name; std::getline(names, name, ',');) v1_memory = v1_memory || name == "memory";
    if ((!controllers.empty() && !v1_memory) || path.empty() || path == "/") continue;
    for (size_t end = path.find('/', 1);; end = path.find('/', end + 1)) {
      const std::string cgroup = path.substr(0, end);  // each ancestor, then the process's own
      files.push_back(controllers.empty() ? cgroup_root + cgroup + "/memory.max"
                                          : cgroup_root + "/memory" + cgroup + "/memory.limit_in_bytes");
      if (end == std::string::npos) break;
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
