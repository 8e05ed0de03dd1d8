#include "hoist/status.h"

namespace hoist {

const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kCorruption: return "corruption";
    case StatusCode::kNotFound: return "not found";
    case StatusCode::kIoError: return "I/O error";
    case StatusCode::kOutOfMemory: return "out of memory";
    case StatusCode::kDevice: return "device error";
    case StatusCode::kNotSupported: return "not supported";
    case StatusCode::kCancelled: return "cancelled";
  }
  return "unknown";
}

}  // namespace hoist
