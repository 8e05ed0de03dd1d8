// What a load may place on a device, shared by the load's refusal before it
// allocates and `hoist plan`'s warning of the same.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "hoist/device.h"
#include "hoist/status.h"

namespace hoist {

struct Availability {
  uint64_t bytes = 0;
  bool max_memory = false;  // --max-memory decided it, not free memory
  std::string why;          // "free N minus a M margin", or "--max-memory"
};

// `device`'s free memory less `margin` (GPUs only), capped by `limit` (a
// --max-memory figure) where given. With no device, the limit alone; with
// neither, nothing is known (nullopt).
Result<std::optional<Availability>> AvailableOn(DeviceId id, Device* device, uint64_t margin,
                                                std::optional<uint64_t> limit);

}  // namespace hoist
