// libFuzzer target for the safetensors header parser.
//
// Feeds arbitrary bytes to ParseSafetensorsBuffer as a whole file image and
// checks what the parser promises beyond "no crash": a failure is a
// Corruption with a one-line message that names the file; a success is a
// header whose tensors tile the data section exactly, with sizes that match
// their dtype and shape. A broken promise aborts, so libFuzzer reports it.
//
//   ./fuzz_header -max_total_time=60 fuzz/corpus-run fuzz/corpus
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "format/safetensors.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_header: broken invariant: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  hoist::Result<hoist::ParsedHeader> r = hoist::ParseSafetensorsBuffer("fuzz", bytes);
  if (!r.ok()) {
    const hoist::Status& s = r.status();
    Check(s.code() == hoist::StatusCode::kCorruption, "failure is not kCorruption");
    Check(s.message().rfind("fuzz: ", 0) == 0, "message does not start with the file label");
    Check(s.message().find('\n') == std::string::npos, "message spans more than one line");
    return 0;
  }
  const hoist::ParsedHeader& h = *r;
  Check(size >= 8, "accepted a file shorter than 8 bytes");
  Check(h.header_bytes <= hoist::kMaxHeaderBytes, "header over the limit");
  Check(h.data_offset_bytes == 8 + h.header_bytes, "data offset is not 8 + N");
  Check(h.data_offset_bytes + h.data_bytes == size, "header + data != file size");
  uint64_t expected = 0;
  for (const hoist::HeaderTensor& t : h.tensors) {
    Check(t.begin_bytes == expected, "tensors do not tile the data section");
    Check(t.begin_bytes <= t.end_bytes, "begin > end");
    hoist::Result<uint64_t> nbytes = hoist::TensorBytes(t.dtype, t.shape);
    Check(nbytes.ok() && *nbytes == t.end_bytes - t.begin_bytes, "size does not match dtype and shape");
    expected = t.end_bytes;
  }
  Check(expected == h.data_bytes, "tensors do not cover the data section");
  return 0;
}
