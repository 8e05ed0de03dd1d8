// The calling thread's current CUDA context, read and set through the
// driver's own entry points, looked up at run time: nothing links libcuda,
// so hoist still starts where there is no driver. The CUDA backend uses them
// to leave a caller's current device as it found it.
#pragma once

namespace hoist::cuda {

using Context = void*;  // a CUcontext; nullptr: none current

// Whether the driver's context calls were found (a driver is installed).
bool ContextCallsAvailable();
// The calling thread's current context; false where the call failed or is
// unavailable.
bool GetCurrentContext(Context* out);
// Makes `context` (which may be nullptr) current on the calling thread.
bool SetCurrentContext(Context context);

}  // namespace hoist::cuda
