#include "load/fit.h"

#include "util/text.h"

namespace hoist {

Result<std::optional<Availability>> AvailableOn(DeviceId id, Device* device, uint64_t margin,
                                                std::optional<uint64_t> limit) {
  std::optional<Availability> out;
  if (device != nullptr) {
    HOIST_ASSIGN_OR_RETURN(MemoryInfo mem, device->GetMemoryInfo());
    const uint64_t m = id.kind == DeviceKind::kCuda ? margin : 0;
    out = Availability{mem.free_bytes > m ? mem.free_bytes - m : 0, false,
                       "free " + ByteText(mem.free_bytes) + (m ? " minus a " + ByteText(m) + " margin" : "")};
  }
  if (limit && (!out || *limit < out->bytes)) out = Availability{*limit, true, Opt("--max-memory")};
  return out;
}

}  // namespace hoist
