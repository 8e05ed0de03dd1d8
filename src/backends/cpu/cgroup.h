// How much memory this process's memory cgroup still allows: a container's
// limit is often far below MemAvailable, and a load past it is killed, not
// refused, so the cpu device's free memory is the smaller of the two.
#pragma once

#include <cstdint>
#include <string>

namespace hoist {

// Reads `proc_cgroup` (/proc/self/cgroup) and, under `sys_cgroup`
// (/sys/fs/cgroup), cgroup v2's memory.max and memory.current or v1's
// memory/.../memory.limit_in_bytes and memory.usage_in_bytes; returns the
// smallest limit minus usage over the hierarchies listed, 0 when usage is
// over the limit, and UINT64_MAX when there is no limit or nothing can be
// read.
uint64_t CgroupHeadroomBytes(const std::string& proc_cgroup, const std::string& sys_cgroup);

}  // namespace hoist
