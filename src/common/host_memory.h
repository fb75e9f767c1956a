// How much host memory this process may use: the machine's physical memory, or less where a
// cgroup limits it (a container: its limit, not the host's RAM, is what the kernel enforces
// by killing the process). Budgets for host buffers (parked activations, pinned weights)
// start from it.
#pragma once
#include <cstdint>
#include <string>

namespace ttt {

// Physical memory, or the lowest cgroup memory limit that applies to this process.
int64_t host_memory_limit();

// The same from given sources, for tests: `physical` bytes; `self_cgroup`, the text of
// /proc/self/cgroup; `cgroup_root`, where the cgroup filesystems are mounted (/sys/fs/cgroup).
// Reads cgroup v2's memory.max and v1's memory.limit_in_bytes at the mount's root and in every
// cgroup down to the process's own; a file that is missing, "max" or unreadable sets no limit.
int64_t host_memory_limit(int64_t physical, const std::string& self_cgroup, const std::string& cgroup_root);

}  // namespace ttt
