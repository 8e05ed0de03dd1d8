// hoist as a C++ library: open a checkpoint, plan it onto the first GPU when
// there is one (else the host), load it with one reservation, and look at a
// tensor. Built with the project (build/hoist_example) from the public
// headers alone, so the README's example keeps compiling.
//
//   build/hoist_example PATH [TENSOR]
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "hoist/catalog.h"
#include "hoist/device.h"
#include "hoist/loader.h"
#include "hoist/plan.h"
#ifdef HOIST_EXAMPLE_CUDA
#include "hoist/cuda.h"
#endif

namespace {

int Fail(const hoist::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.message().c_str());
  return s.IsBadInput() ? 2 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s PATH [TENSOR]\n", argv[0]);
    return 2;
  }
  // Every header is read and checked; no tensor data yet.
  hoist::Result<hoist::Catalog> catalog = hoist::OpenCatalog(argv[1]);
  if (!catalog.ok()) return Fail(catalog.status());

  // The devices: the host, and each GPU the CUDA backend finds.
  hoist::DeviceRegistry devices = hoist::MakeCpuRegistry();
  int gpus = 0;
#ifdef HOIST_EXAMPLE_CUDA
  if (hoist::Status s = hoist::RegisterCudaDevices(&devices, &gpus); !s.ok()) return Fail(s);
#endif

  // The plan: every tensor on one device, at its offset in that device's
  // single reservation (a device map would spread them).
  hoist::PlanOptions plan_options;
  plan_options.device = gpus > 0 ? hoist::DeviceId::Cuda(0) : hoist::DeviceId::Cpu();
  hoist::Result<hoist::LoadPlan> plan = hoist::BuildPlan(*catalog, plan_options);
  if (!plan.ok()) return Fail(plan.status());

  hoist::LoadOptions load_options;  // parallel reads, pinned staging for GPUs
  hoist::Result<hoist::LoadedModel> model = hoist::Load(*catalog, std::move(plan).value(), devices, load_options);
  if (!model.ok()) return Fail(model.status());
  const hoist::LoadStats& stats = model->stats();
  std::printf("%zu tensors, %llu bytes onto %s in %.3f s, %d allocation(s)\n", model->tensors().size(),
              static_cast<unsigned long long>(stats.bytes_loaded), plan_options.device->ToString().c_str(),
              stats.seconds, stats.driver_allocs);

  // One tensor: its place, and its first bytes (copied back from a GPU).
  const std::string name = argc == 3 ? argv[2] : model->tensors().front().name;
  const hoist::TensorView* view = model->Find(name);
  if (view == nullptr) return Fail(hoist::NotFound("no tensor '" + name + "' in " + argv[1]));
  std::vector<unsigned char> head(std::min<uint64_t>(view->size_bytes, 8));
  if (hoist::Status s = devices.Find(view->device)->CopyToHost(head.data(), view->data, head.size()); !s.ok()) {
    return Fail(s);
  }
  std::string shape;
  for (uint64_t d : view->shape) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
  std::printf("%s: %s [%s] on %s, first bytes", view->name.c_str(), std::string(hoist::DTypeName(view->dtype)).c_str(),
              shape.c_str(), view->device.ToString().c_str());
  for (unsigned char b : head) std::printf(" %02x", b);
  std::printf("\n");
  return 0;
}
