#include "backends/cuda/context.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

namespace hoist::cuda {
namespace {

struct ContextCalls {
  CUresult (*get)(CUcontext*) = nullptr;
  CUresult (*set)(CUcontext) = nullptr;
};

// Looked up once; both null where there is no driver.
const ContextCalls& Calls() {
  static const ContextCalls calls = [] {
    ContextCalls c;
    void* get = nullptr;
    void* set = nullptr;
    cudaDriverEntryPointQueryResult found_get{}, found_set{};
    const bool ok =
        cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &get, 12000, cudaEnableDefault, &found_get) ==
            cudaSuccess &&
        cudaGetDriverEntryPointByVersion("cuCtxSetCurrent", &set, 12000, cudaEnableDefault, &found_set) ==
            cudaSuccess &&
        found_get == cudaDriverEntryPointSuccess && found_set == cudaDriverEntryPointSuccess && get && set;
    if (ok) {
      c.get = reinterpret_cast<CUresult (*)(CUcontext*)>(get);
      c.set = reinterpret_cast<CUresult (*)(CUcontext)>(set);
    } else {
      (void)cudaGetLastError();  // nothing to report: the caller's device is simply not restored
    }
    return c;
  }();
  return calls;
}

}  // namespace

bool ContextCallsAvailable() { return Calls().get != nullptr; }

bool GetCurrentContext(Context* out) {
  CUcontext ctx = nullptr;
  if (Calls().get == nullptr || Calls().get(&ctx) != CUDA_SUCCESS) return false;
  *out = ctx;
  return true;
}

bool SetCurrentContext(Context context) {
  return Calls().set != nullptr && Calls().set(static_cast<CUcontext>(context)) == CUDA_SUCCESS;
}

}  // namespace hoist::cuda
