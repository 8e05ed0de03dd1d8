// libFuzzer target for the small JSON inputs a user or a checkpoint hands
// hoist besides the headers: the shard index (model.safetensors.index.json),
// an inline device map, an --expect list and a --max-memory string.
//
// Every input goes to each parser. Beyond "no crash", it checks what they
// promise: an error is a one-line message; an index names only shards that
// stay inside the checkpoint directory, each once and sorted, and maps each
// tensor to one of them; a device map's devices are cpu, disk or cuda:N.
//
//   ./fuzz_json_inputs -max_total_time=30 fuzz/corpus-json-run fuzz/corpus-json
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "format/index.h"
#include "hoist/plan.h"
#include "plan/device_map.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_json_inputs: broken invariant: %s\n", what);
    std::abort();
  }
}

void CheckError(const hoist::Status& s) {
  Check(!s.message().empty(), "an error has a message");
  Check(s.message().find('\n') == std::string::npos, "an error is one line");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);

  hoist::Result<hoist::ParsedIndex> index = hoist::ParseIndexJson("index.json", text);
  if (!index.ok()) {
    CheckError(index.status());
    Check(index.status().message().rfind("index.json", 0) == 0, "an index error starts with the file's name");
  } else {
    Check(std::is_sorted(index->shards.begin(), index->shards.end()), "shards are sorted");
    Check(std::adjacent_find(index->shards.begin(), index->shards.end()) == index->shards.end(), "shards are unique");
    for (const std::string& shard : index->shards) {
      Check(!shard.empty() && shard.front() != '/', "a shard is a relative path");
      Check(shard != ".." && shard.rfind("../", 0) != 0 && shard.find("/../") == std::string::npos &&
                (shard.size() < 3 || shard.compare(shard.size() - 3, 3, "/..") != 0),
            "a shard stays inside the directory");
    }
    for (const auto& [name, shard] : index->weight_map) {
      Check(shard < index->shards.size(), "a tensor's shard is listed");
    }
  }

  // Only inline maps: anything else would be read as a file name.
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{') {
    hoist::Result<hoist::DeviceMapEntries> map = hoist::ParseDeviceMap(text);
    if (!map.ok()) {
      CheckError(map.status());
    } else {
      for (const auto& [key, device] : *map) {
        Check(device.kind != hoist::DeviceKind::kCuda || device.index >= 0, "a GPU index is not negative");
        Check(hoist::ParseDeviceId(device.ToString()).ok(), "a device reads back");
      }
    }
  }

  hoist::Result<std::vector<hoist::ExpectedTensor>> expect = hoist::ParseExpect(text, "expect.json");
  if (!expect.ok()) CheckError(expect.status());

  hoist::Result<std::map<hoist::DeviceId, uint64_t>> limits = hoist::ParseMaxMemory(text);
  if (!limits.ok()) CheckError(limits.status());
  return 0;
}
